"""Post-training with GRPO (``transfusion/posttrain``): exact step log-probabilities, the update's
direction, and runs that resume exactly."""

import json
import math
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from transfusion.checkpoint import list_checkpoints, load_checkpoint
from transfusion.cli import COMMANDS
from transfusion.config import load_config
from transfusion.posttrain.grpo import Posttrainer, start_config
from transfusion.posttrain.objective import group_advantages, varied_groups
from transfusion.posttrain.policy import ImagePolicy, gaussian_log_prob
from transfusion.posttrain.rewards import load_reward, score_all
from transfusion.samplers import sample

SMALL = ["posttrain.prompts=2", "posttrain.group=4", "posttrain.sample_steps=10", "posttrain.eval_prompts=4"]


@pytest.fixture
def policy(debug_run):
    loaded = load_checkpoint(debug_run)
    cfg = load_config(files=[loaded.path / "config.yaml"], overrides=["posttrain.sample_steps=10"])
    return loaded, ImagePolicy(loaded.model, loaded.tokenizer, loaded.autoencoder, cfg)


def test_the_policy_samples_what_the_library_s_ddpm_sampler_samples(policy):
    """Same noise, same steps: the rollout is the ``ddpm`` sampler's trajectory (diffusers' DDPM
    step, posterior variance beta_tilde), so its log-probabilities are those of that sampler."""
    loaded, pol = policy
    captions = ["a small red circle at the top", "a big blue square on the left"]
    rollout = pol.rollout(loaded.model, captions, torch.Generator().manual_seed(3))
    rows = pol.rows(captions, "cpu")
    with torch.no_grad():
        reference = sample(lambda x, t: pol.noise(loaded.model, rows, x, int(t[0])), (2, *pol.shape), pol.diffusion,
                           "ddpm", 10, torch.Generator().manual_seed(3), clip=pol.clip)
    torch.testing.assert_close(rollout.samples, reference, rtol=1e-4, atol=1e-4)
    assert rollout.log_probs.shape == (9, 2)  # the last step (to t = 0) is deterministic


def test_a_step_s_log_probability_is_its_gaussian_density_and_its_gradient_checks(policy):
    loaded, pol = policy
    captions = ["a small red circle at the top"]
    rollout = pol.rollout(loaded.model, captions, torch.Generator().manual_seed(0))
    k = 4
    log_prob, mean, std = pol.step(loaded.model, rollout, k)
    normal = torch.distributions.Normal(mean.detach(), std)
    expected = normal.log_prob(rollout.latents[k + 1]).flatten(1).sum(1)
    torch.testing.assert_close(log_prob.detach(), expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(log_prob.detach(), rollout.log_probs[k], rtol=1e-5, atol=1e-3)  # as sampled
    draws = torch.stack([mean.detach() + std * torch.randn_like(mean) for _ in range(400)])[:, 0]
    entropy = 0.5 * mean[0].numel() * math.log(2 * math.pi * math.e * std**2)
    mean_nll = -gaussian_log_prob(draws, mean.detach().expand_as(draws), std).mean()
    assert abs(mean_nll.item() - entropy) < 0.02 * abs(entropy) + 1  # a Monte Carlo check of the density
    # the gradient that GRPO follows, against a finite difference in one weight
    weight = loaded.model.image.proj_out.bias if hasattr(loaded.model.image, "proj_out") else None
    assert weight is not None
    weight.requires_grad_(True)
    loaded.model.zero_grad()
    pol.step(loaded.model, rollout, k)[0].sum().backward()
    h = 1e-3
    with torch.no_grad():
        weight[0] += h
        up = pol.step(loaded.model, rollout, k)[0].sum()
        weight[0] -= 2 * h
        down = pol.step(loaded.model, rollout, k)[0].sum()
        weight[0] += h
    assert weight.grad[0].item() == pytest.approx(((up - down) / (2 * h)).item(), rel=0.05, abs=0.05)


def test_group_advantages_rank_samples_within_their_caption():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2]), 4)
    assert adv[0] > adv[2] > adv[1] and torch.allclose(adv[4:], torch.zeros(4))  # a tied group teaches nothing
    assert abs(adv[:4].sum().item()) < 1e-5


def test_rewards_are_checked_and_user_rewards_load_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def red(caption, pixels):\n    return float((pixels[0] > 0).float().mean())\n"
                                            "def broken(caption, pixels):\n    return 2.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    images = torch.zeros(2, 3, 16, 16)
    images[0, 0] = 1.0
    assert score_all(load_reward("python:my_rewards.red"), ["a", "b"], images).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="must be a number in"):
        score_all(load_reward("python:my_rewards.broken"), ["a"], images[:1])
    for spec in ("nonsense", "python:no_such_module.f", "python:my_rewards.missing"):
        with pytest.raises(ValueError):
            load_reward(spec)
    assert 0 <= load_reward("shapes")("a small red circle at the top", images[0]) <= 1
    sys.modules.pop("my_rewards", None)


def _trainer(debug_run, tmp_path, *overrides):
    cfg, ckpt = start_config(debug_run, [*SMALL, *overrides])
    return Posttrainer(cfg, ckpt, tmp_path)


def test_zero_advantage_leaves_the_weights_unchanged(debug_run, tmp_path, monkeypatch):
    trainer = _trainer(debug_run, tmp_path, "posttrain.lr=1e-2", "posttrain.kl=0.1")
    monkeypatch.setattr(trainer, "reward", lambda caption, pixels: 0.5)  # every sample as good as its group
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for step in range(2):
        trainer.update(step)
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def redness(caption, pixels):
    """A reward that prefers red: how much more red the image holds than green and blue."""
    return float(((pixels[0] - pixels[1:].mean(0)).mean() / 2 + 0.5).clamp(0, 1))


@pytest.mark.parametrize("lora", [[], ["train.lora.rank=8", "train.lora.modules=[attention,mlp,image]"]],
                         ids=["full", "lora"])
def test_a_reward_that_prefers_red_makes_the_images_redder(debug_run, tmp_path, monkeypatch, lora):
    trainer = _trainer(debug_run, tmp_path, "posttrain.lr=3e-3" if lora else "posttrain.lr=1e-3", "posttrain.kl=0",
                       "posttrain.group=8", *lora)
    monkeypatch.setattr(trainer, "reward", redness)
    captions = ["a small red circle at the top", "a big blue square on the left"] * 4

    def held_out():
        rollout = trainer.policy.rollout(trainer.model, captions, torch.Generator().manual_seed(99))
        return score_all(redness, captions, trainer.policy.pixels(rollout.samples)).mean().item()

    before = held_out()
    for step in range(8):
        trainer.update(step)
    after = held_out()
    assert after > before + 0.02, (before, after)


def test_posttrain_resumes_exactly_and_leaves_a_loadable_run(debug_run, tmp_path, monkeypatch):
    args = [*SMALL, "posttrain.lr=1e-3", "train.checkpoint_every=2", "train.keep_checkpoints=0"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    COMMANDS["posttrain"]([str(debug_run), "--out", str(straight), *args, "posttrain.steps=4"])
    COMMANDS["posttrain"]([str(debug_run), "--out", str(resumed), *args, "posttrain.steps=2"])
    monkeypatch.chdir(debug_run.parent)  # the start spelled another way: relative to the working directory
    COMMANDS["posttrain"]([debug_run.name, "--out", str(resumed), *args, "posttrain.steps=4"])
    a = load_file(straight / "checkpoints" / "step_000004" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "step_000004" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3, 4]
    assert (resumed / "samples" / "step_000004.png").is_file() and (resumed / "curves.png").is_file()
    assert load_checkpoint(resumed).step == 4
    shutil.rmtree(straight)


def test_posttrain_with_lora_saves_adapters_on_its_start_and_measures_the_kl(debug_run, tmp_path):
    out = tmp_path / "lora"
    COMMANDS["posttrain"]([str(debug_run), "--out", str(out), "--reward", "shapes", *SMALL, "posttrain.steps=2",
                           "posttrain.lr=1e-2", "posttrain.kl=0.1", "train.lora.rank=4"])
    ckpt = out / "checkpoints" / "step_000002"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in rows if "reward" in r]
    assert updates[0]["kl"] == 0 and updates[1]["kl"] > 0  # the adapters start at the reference, then leave it
    start, tuned = load_checkpoint(debug_run).model.state_dict(), load_checkpoint(out).model.state_dict()
    assert any(not torch.equal(start[k], tuned[k]) for k in start)


def test_a_flow_run_samples_the_sde_of_its_flow_and_without_noise_its_euler_steps(tmp_path):
    """Flow-GRPO's SDE: with noise scale 0 it is the run's Euler sampler; with noise, each
    step's log-probability is its Gaussian density and the samples still land near the ODE's."""
    from transfusion.autoencoders import IdentityAutoencoder
    from transfusion.model.transfusion import Transfusion
    from transfusion.tokenizer import ByteTokenizer

    tok, ae = ByteTokenizer(), IdentityAutoencoder()
    cfg = load_config("debug", overrides=["diffusion.objective=flow", "sampling.sampler=euler",
                                          "posttrain.sample_steps=8", "posttrain.flow_noise=0"])
    model = Transfusion.build(cfg.model, cfg.image, tok, ae).eval()
    pol = ImagePolicy(model, tok, ae, cfg)
    captions = ["a small red circle at the top", "a big blue square on the left"]
    ode = pol.rollout(model, captions, torch.Generator().manual_seed(5))
    rows = pol.rows(captions, "cpu")
    with torch.no_grad():
        euler = sample(lambda x, t: pol.noise(model, rows, x, float(t[0]) / pol.diffusion.T), (2, *pol.shape),
                       pol.diffusion, "euler", 8, torch.Generator().manual_seed(5), clip=pol.clip)
    torch.testing.assert_close(ode.samples, euler, rtol=1e-3, atol=1e-3)

    noisy = ImagePolicy(model, tok, ae, load_config("debug", overrides=[
        "diffusion.objective=flow", "sampling.sampler=euler", "posttrain.sample_steps=8"]))
    rollout = noisy.rollout(model, captions, torch.Generator().manual_seed(5))
    assert rollout.log_probs.shape == (7, 2)
    log_prob, mean, std = noisy.step(model, rollout, 3)
    expected = torch.distributions.Normal(mean, std).log_prob(rollout.latents[4]).flatten(1).sum(1)
    torch.testing.assert_close(log_prob, expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("reference", [False, True], ids=["sequence", "edit_reference"])
def test_an_edit_prompt_reads_its_source(reference):
    """An edit's rows hold the clean source before the instruction (and, with
    image.edit_reference, at the image layers): another source changes the prediction; the
    unconditional branch of guidance holds neither."""
    from transfusion.autoencoders import IdentityAutoencoder
    from transfusion.model.transfusion import Transfusion
    from transfusion.posttrain.policy import Prompt
    from transfusion.tokenizer import ByteTokenizer

    tok, ae = ByteTokenizer(), IdentityAutoencoder()
    cfg = load_config("debug", overrides=[f"image.edit_reference={str(reference).lower()}", "posttrain.guidance=2"])
    model = Transfusion.build(cfg.model, cfg.image, tok, ae, seed=1).eval()
    if reference:  # the reference layer starts at zero: give it weights, as training would
        torch.nn.init.normal_(model.image.reference_in.weight, std=0.1)
    pol = ImagePolicy(model, tok, ae, cfg)
    source = torch.rand(3, 16, 16) * 2 - 1
    prompts = [Prompt("make the circle blue", source), Prompt("make the circle blue", -source)]
    rows = pol.rows(prompts, "cpu")
    assert rows.context is not None and rows.context.latents.shape[0] == 2  # the conditional rows hold the source
    assert (rows.reference is not None) == reference
    x = torch.randn(1, *pol.shape).repeat(2, 1, 1, 1)
    with torch.no_grad():
        eps = pol.noise(model, rows, x, 500)
        conditional = ImagePolicy(model, tok, ae, cfg, guidance=1)
        plain = conditional.noise(model, conditional.rows(prompts, "cpu"), x, 500)
        captions = ["a red circle", "a blue square"]
        t2i_guided = pol.noise(model, pol.rows(captions, "cpu"), x, 500)
        t2i_plain = conditional.noise(model, conditional.rows(captions, "cpu"), x, 500)
    assert not torch.allclose(eps[0], eps[1])
    assert not torch.allclose(plain[0], plain[1])
    # guided = u + 2 (c - u): the unconditional branch, as `transfusion edit --cfg` guides with one scale,
    # holds neither instruction nor source, so it is text to image's
    unconditional, t2i_unconditional = 2 * plain - eps, 2 * t2i_plain - t2i_guided
    torch.testing.assert_close(unconditional[0], unconditional[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(unconditional, t2i_unconditional, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="all edits"):
        pol.rows([Prompt("make it blue", source), Prompt("a red circle")], "cpu")


def test_the_edit_reward_reads_the_true_edit():
    import numpy as np

    from transfusion.data.edits import edit_document, sample_edit
    from transfusion.posttrain.policy import Prompt

    edit = sample_edit(np.random.default_rng(0), "recolour")
    doc = edit_document(edit, 32)
    source, instruction, target = doc.segments[0].pixels, doc.segments[1].text, doc.segments[2].pixels
    prompt = Prompt(instruction, source, doc.meta)
    reward = load_reward("edit")
    assert score_all(reward, [prompt, prompt], torch.stack([target, source])).tolist() == [1.0, 0.5]
    assert load_reward("edit_exact")(prompt, source, source) == 0.0
    with pytest.raises(ValueError, match="true edit"):
        reward("make it blue", target, source)


def test_the_strict_shapes_reward_counts_an_object_the_caption_does_not_ask_for():
    import itertools

    from transfusion.data.shapes import Scene, ShapesDataset, render
    from transfusion.metrics.shapes_reader import read_image, score

    docs = [d for d in (ShapesDataset("validation", size=32)[i] for i in range(60)) if d.kind == "pair"]
    relations = [d for d in docs if d.meta["scene"].kind == "relation"]
    singles = [d.meta["scene"].objects[0] for d in docs if d.meta["scene"].kind == "single"]
    shapes, strict, exact = (load_reward(name) for name in ("shapes", "shapes_strict", "shapes_exact"))
    for doc in relations:
        assert shapes(doc.caption, doc.images[0].pixels) == strict(doc.caption, doc.images[0].pixels) == 1.0
    # a relation drawn with a third object beside it: every stated attribute holds, and one object too many
    for doc, extra in itertools.product(relations, singles):
        scene = doc.meta["scene"]
        pixels = render(Scene("relation", [*scene.objects, extra], scene.relation), 32)
        if len(read_image(pixels)) == 3 and shapes(doc.caption, pixels) == 1.0:
            break
    else:
        pytest.fail("no relation scene took a third object apart from its two")
    assert strict(doc.caption, pixels) == 0.75 and exact(doc.caption, pixels) == 0.0
    assert score(pixels, doc.caption)["objects"] is False and score(doc.images[0].pixels, doc.caption)["objects"]


def test_the_groups_that_teach_are_counted_per_attribute():
    import dataclasses

    from transfusion.data.shapes import Scene, ShapesDataset, render
    from transfusion.metrics.shapes_reader import score
    from transfusion.posttrain.policy import Prompt
    from transfusion.posttrain.rewards import judged_images

    assert varied_groups([0.5, 0.5, 1.0, 0.5, 0.0, 0.0], 2) == pytest.approx(1 / 3)
    assert varied_groups([True, False, None, None], 2) == 1.0 and varied_groups([None, None], 2) is None
    docs = [d for d in (ShapesDataset("validation", size=32)[i] for i in range(80)) if d.kind == "pair"]
    relation = next(d for d in docs if d.meta["scene"].kind == "relation")
    single = next(d for d in docs if d.meta["scene"].kind == "single")
    scene = relation.meta["scene"]
    a, b = scene.objects  # the two objects' places exchanged: the stated relation no longer holds
    exchanged = [dataclasses.replace(a, center=b.center), dataclasses.replace(b, center=a.center)]
    swapped = render(Scene("relation", exchanged, scene.relation), 32)
    right = relation.images[0].pixels
    assert score(right, scene)["relation"] and score(swapped, scene)["relation"] is False
    prompts = [Prompt(d.caption, meta=d.meta) for d in (relation, relation, relation, relation, single, single)]
    judged = judged_images(prompts, torch.stack([right, right, right, swapped, *[single.images[0].pixels] * 2]),
                           edits=False, group=2)
    # two relation groups, one of them split on the relation; colour holds in every sample
    assert judged["varied_relation"] == 0.5 and judged["varied_colour"] == 0.0 and judged["relation"] == 0.75
    assert "varied_position" in judged and judged["varied_position"] == 0.0  # stated by the single scene only
    assert "varied_relation" not in judged_images(prompts, torch.stack([right] * 6), edits=False)  # no groups


def test_posttrain_with_the_edit_reward_samples_edits_of_the_training_triples(debug_run, tmp_path):
    out = tmp_path / "edit"
    COMMANDS["posttrain"]([str(debug_run), "--out", str(out), "--reward", "edit", *SMALL, "posttrain.steps=1"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"train_success", "train_preservation", "train_varied_success"} <= set(rows[1])
    assert "heldout_preservation" in rows[-1] and 0 <= rows[1]["groups_varied"] <= 1
    assert 0 <= rows[1]["reward"] <= 1 and (out / "samples" / "step_000001.png").is_file()


def test_held_out_prompts_in_other_words_are_judged_against_their_scene(debug_run, tmp_path):
    from transfusion.data.shapes import ShapesDataset, caption_of, paraphrase_of
    from transfusion.posttrain.policy import Prompt

    docs = [d for d in (ShapesDataset("validation", size=32)[i] for i in range(40)) if d.kind == "pair"]
    kinds = {d.meta["scene"].kind for d in docs}
    assert kinds == {"single", "count", "relation"}
    reward = load_reward("shapes")
    for doc in docs:
        scene, pixels = doc.meta["scene"], doc.images[0].pixels
        assert paraphrase_of(scene) != caption_of(scene)
        assert reward(Prompt(paraphrase_of(scene), meta=doc.meta), pixels) == reward(doc.caption, pixels) == 1.0
    trainer = _trainer(debug_run, tmp_path)
    row = trainer.evaluate(0)
    assert {"heldout_reward", "paraphrased_reward", "paraphrased_colour"} <= set(row)


def test_a_caption_s_log_probabilities_are_those_it_was_sampled_with(debug_run, tmp_path):
    """Each token's log-probability, read in one teacher-forced pass, equals the log-softmax the
    sampler drew it from (the caption so far as the prompt)."""
    cfg, ckpt = start_config(debug_run, [*SMALL, "posttrain.reward=captions"])
    trainer = Posttrainer(cfg, ckpt, tmp_path)
    pol, model = trainer.policy, trainer.model.eval()
    from transfusion.posttrain.grpo import prompts_of

    prompts = prompts_of(cfg, "validation", 2)
    assert all(p == "" and p.source is not None for p in prompts)  # the caption is the policy's to say
    rollout = pol.rollout(model, prompts, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for row, ids in enumerate(rollout.tokens):
            for j in range(min(len(ids), 4)):  # token j follows the caption's first j (the first, <eoi>)
                batch, group, starts = pol._inputs(pol.latents([prompts[row]], "cpu"), [ids[:j]], "cpu")
                last = torch.zeros_like(batch.tokens, dtype=torch.bool)
                last[0, starts[0] + j - 1] = True
                expected = pol._logits(model, batch, group, last).log_softmax(-1)[0, ids[j]]
                assert rollout.log_probs[row, j].item() == pytest.approx(expected.item(), abs=1e-4)
    assert rollout.mask.sum().item() == sum(len(ids) for ids in rollout.tokens)


def lower_case(prompt, caption, image):
    """A caption reward the debug model can climb: the share of its characters that are a-z."""
    return sum(ch.islower() and ch.isascii() for ch in caption) / max(1, len(caption))


def test_a_caption_reward_moves_the_captions(debug_run, tmp_path, monkeypatch):
    cfg, ckpt = start_config(debug_run, [*SMALL, "posttrain.reward=captions", "posttrain.group=8", "posttrain.lr=1e-2",
                                         "posttrain.kl=0"])
    trainer = Posttrainer(cfg, ckpt, tmp_path)
    monkeypatch.setattr(trainer, "reward", lower_case)
    from transfusion.posttrain.grpo import prompts_of

    held_out = prompts_of(cfg, "validation", 8)

    def share():
        rollout = trainer.policy.rollout(trainer.model, held_out, torch.Generator().manual_seed(7))
        texts = rollout.texts(trainer.tokenizer)
        return sum(lower_case(None, t, None) * len(t) for t in texts) / max(1, sum(len(t) for t in texts))

    before = share()
    for step in range(8):
        row = trainer.update(step)
    assert share() > before + 0.04 and {"train_colour", "kl", "clipped"} <= set(row)


def test_posttrain_with_the_captions_reward_logs_what_the_captions_state(debug_run, tmp_path):
    out = tmp_path / "captions"
    COMMANDS["posttrain"]([str(debug_run), "--out", str(out), "--reward", "captions", *SMALL, "posttrain.steps=1"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "train_colour" in rows[1] and "heldout_colour" in rows[-1] and (out / "curves.png").is_file()
    assert load_checkpoint(out).step == 1


def test_ctrl_c_mid_update_saves_after_that_update_and_the_resumed_run_matches_an_uninterrupted_one(
        debug_run, tmp_path, monkeypatch):
    import os
    import signal

    args = [*SMALL, "posttrain.lr=1e-3", "train.checkpoint_every=100", "posttrain.steps=3"]
    straight, out = tmp_path / "straight", tmp_path / "interrupted"
    COMMANDS["posttrain"]([str(debug_run), "--out", str(straight), *args])
    real, calls = Posttrainer.update, []

    def interrupted(self, step):  # Ctrl-C arrives in the middle of the second update
        calls.append(step)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, step)

    monkeypatch.setattr(Posttrainer, "update", interrupted)
    with pytest.raises(SystemExit) as stopped:
        COMMANDS["posttrain"]([str(debug_run), "--out", str(out), *args])
    assert stopped.value.code == 130 and calls == [0, 1]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_000002"]  # after the whole update
    monkeypatch.setattr(Posttrainer, "update", real)
    COMMANDS["posttrain"]([str(debug_run), "--out", str(out), *args])
    a = load_file(straight / "checkpoints" / "step_000003" / "model.safetensors")
    b = load_file(out / "checkpoints" / "step_000003" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3]


def test_a_start_passes_on_its_weights_not_its_lora_or_post_training_recipe(debug_run, fine_tune, tmp_path):
    lora_start = fine_tune("lora_start", debug_run, "train.lora.rank=4", "posttrain.group=3")
    cfg, ckpt = start_config(lora_start, ["posttrain.prompts=5"])
    assert cfg.train.lora.rank == 0 and cfg.posttrain.group == 8 and cfg.posttrain.prompts == 5
    assert cfg.train.init_from == str(ckpt) and ckpt.parent.parent == lora_start


def test_posttrain_kinds_trains_on_those_scenes_captions_in_turn_and_holds_out_every_kind(debug_run, tmp_path):
    from transfusion.data.shapes import ShapesDataset
    from transfusion.posttrain.grpo import prompts_of, training_documents

    cfg, ckpt = start_config(debug_run, [*SMALL, "posttrain.kinds=[count,relation]"])
    documents = training_documents(cfg)
    train = ShapesDataset("train", size=32)
    assert documents[:8] == [i for i in range(60) if train[i].meta["scene"].kind != "single"][:8]
    updates = [prompts_of(cfg, "train", 8, start=u * 8, documents=documents) for u in range(3)]
    drawn = [p for prompts in updates for p in prompts]  # update u: the u-th run of 8 such documents, none twice
    assert [p.meta["scene"] for p in drawn] == [train[i].meta["scene"] for i in documents[:24]]
    assert {p.meta["scene"].kind for p in drawn} == {"count", "relation"}
    trainer = Posttrainer(cfg, ckpt, tmp_path)
    grouped = trainer.draw(1)[0]  # update 1: documents 2 and 3 of the kinds, 4 samples each
    assert [p.meta["scene"] for p in grouped] == [train[i].meta["scene"] for i in documents[2:4] for _ in range(4)]
    held_out = prompts_of(cfg, "validation", 40)  # measured on every kind, as without posttrain.kinds
    assert {p.meta["scene"].kind for p in held_out} == {"single", "count", "relation"}
    with pytest.raises(ValueError, match="an edit reward's prompts are edits"):
        training_documents(start_config(debug_run, ["posttrain.kinds=[count]", "posttrain.reward=edit"])[0])
    with pytest.raises(ValueError, match="has no scene kinds"):
        training_documents(start_config(debug_run, ["posttrain.kinds=[count]", "data.dataset=edits"])[0])
