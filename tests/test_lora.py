"""LoRA through peft (``train.lora.*``, ``transfusion/model/lora.py``): fresh adapters compute the
base model exactly, only they train, and what is saved is peft's own format."""

import copy
import json
import shutil

import pytest
import torch

from transfusion.autoencoders import IdentityAutoencoder
from transfusion.components import build_components
from transfusion.config import load_config
from transfusion.diffusion import Diffusion
from transfusion.model.lora import add_lora, load_adapter, merge_lora, target_modules, write_adapter
from transfusion.model.transfusion import Transfusion
from transfusion.objective import compute_losses
from transfusion.tokenizer import ByteTokenizer

peft = pytest.importorskip("peft")
EVERYTHING = ["train.lora.rank=4", "train.lora.modules=[attention,mlp,image]", "train.init_from=runs/base"]


def build(*overrides):
    cfg = load_config("debug", overrides=list(overrides))
    return cfg, Transfusion(cfg.model, cfg.image, ByteTokenizer().vocab_size, 3, seed=0)


def a_batch(cfg, model):
    parts = build_components(cfg, tokenizer=ByteTokenizer(), autoencoder=IdentityAutoencoder(), model=model)
    batch = parts.batches.batch_at(0, seed=0)
    assert batch.latents and batch.num_text_targets > 0
    return batch


def run(model, batch):
    groups = [batch.image_group(ids, torch.stack([batch.latents[i] for i in ids]), batch.t[ids])
              for ids in batch.shape_groups()]
    hidden, noise = model(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, groups)
    return torch.cat([hidden.flatten(), *[n.flatten() for n in noise]])


def train_a_little(model, cfg, batch, steps=3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        torch.manual_seed(0)
        compute_losses(model, batch, Diffusion(), 5.0)["total"].backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("extra", [[], ["model.mot=true"], ["image.adapter=unet"]], ids=["dense", "mot", "unet"])
def test_fresh_adapters_compute_exactly_the_base_model(extra):
    cfg, base = build(*extra, *EVERYTHING)
    batch = a_batch(cfg, base)
    with torch.no_grad():
        expected = run(base, batch)
        adapted = add_lora(copy.deepcopy(base), cfg.train.lora)
        assert any(".lora_A." in n for n, _ in adapted.named_parameters())
        assert torch.equal(run(adapted, batch), expected)


def test_the_settings_pick_the_layers_and_either_copy_of_a_mot_trunk():
    cfg, mot = build("model.mot=true", *EVERYTHING, "train.lora.modality=image", "train.lora.modules=[mlp]")
    names = target_modules(cfg.train.lora, mot)
    assert names and all(".mlp.image." in n for n in names) and len(names) == 2 * cfg.model.n_layers
    cfg, dense = build(*EVERYTHING)
    names = target_modules(cfg.train.lora, dense)
    assert {n.split(".")[-1] for n in names if n.startswith("trunk")} == {"qkv", "out", "gate_up", "down"}
    assert any(n.startswith("image.") for n in names)
    with pytest.raises(ValueError, match="needs model.mot=true"):
        load_config("debug", overrides=[*EVERYTHING, "train.lora.modality=text"])
    with pytest.raises(ValueError, match="name it with train.init_from"):
        load_config("debug", overrides=["train.lora.rank=4"])
    with pytest.raises(ValueError, match="must be one of"):
        load_config("debug", overrides=["train.lora.modules=[attn]"])


def test_only_the_adapters_train():
    cfg, model = build("model.mot=true", *EVERYTHING)
    batch = a_batch(cfg, model)
    add_lora(model, cfg.train.lora)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_a_little(model, cfg, batch)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_" in n for n in changed)
    assert {n for n in changed if ".lora_B." in n}  # B leaves zero: the adapted model now differs
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)


def test_save_load_and_merge_agree_and_peft_reads_the_files(tmp_path):
    cfg, base = build(*EVERYTHING)
    batch = a_batch(cfg, base)
    tuned = add_lora(copy.deepcopy(base), cfg.train.lora, base="runs/base")
    train_a_little(tuned, cfg, batch)
    write_adapter(tuned.state_dict(), tuned.lora_config, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    with torch.no_grad():
        expected = run(tuned, batch)
        assert not torch.allclose(expected, run(base, batch))  # training moved it
        loaded = load_adapter(copy.deepcopy(base), tmp_path / "adapter")
        assert torch.equal(run(loaded, batch), expected)
        merged = merge_lora(loaded)
        assert set(merged.state_dict()) == set(base.state_dict())  # the base model's names again
        torch.testing.assert_close(run(merged, batch), expected, rtol=1e-4, atol=1e-5)
        by_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "adapter"))
        assert torch.equal(run(by_peft.base_model.model, batch), expected)


def test_an_adapter_for_another_model_is_refused(tmp_path):
    cfg, base = build(*EVERYTHING)
    tuned = add_lora(copy.deepcopy(base), cfg.train.lora)
    write_adapter(tuned.state_dict(), tuned.lora_config, tmp_path / "adapter")
    _, wider = build("model.dim=96", *EVERYTHING)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_adapter(wider, tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="holds no LoRA adapter"):
        load_adapter(copy.deepcopy(base), tmp_path)
    (tmp_path / "adapter" / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_adapter(copy.deepcopy(base), tmp_path / "adapter")


def test_a_model_built_on_the_meta_device_with_adapters_starts_where_the_base_does():
    """How a sharded run builds it: adapters added on the meta device, then every weight
    initialised by name (the base layers as without adapters, B at zero)."""
    cfg, base = build(*EVERYTHING)
    with torch.device("meta"):
        meta = Transfusion(cfg.model, cfg.image, ByteTokenizer().vocab_size, 3, seed=0)
    add_lora(meta, cfg.train.lora)
    meta.to_empty(device="cpu")
    meta.init_weights(0)
    batch = a_batch(cfg, base)
    with torch.no_grad():
        assert torch.equal(run(meta, batch), run(base, batch))
    assert all(torch.count_nonzero(p) == 0 for n, p in meta.named_parameters() if ".lora_B." in n)


def test_a_lora_fine_tune_saves_its_adapters_alone_and_loads_merged_on_its_start(debug_run, tmp_path):
    from safetensors.torch import load_file

    from transfusion.checkpoint import load_checkpoint, resolve_checkpoint
    from transfusion.cli import COMMANDS

    out = tmp_path / "lora"
    args = [f"train.init_from={debug_run}", "train.lora.rank=4", "train.steps=3", "train.checkpoint_every=1",
            "train.keep_checkpoints=0", "train.eval_samples=2", "sampling.steps=2", "train.ema_decay=0.9",
            "optim.warmup_steps=0"]
    COMMANDS["train"](["--preset", "debug", "--out", str(out), *args])
    ckpt, start = resolve_checkpoint(out), resolve_checkpoint(debug_run)
    assert ckpt.name == "step_000003" and not (ckpt / "model.safetensors").exists()
    saved = load_file(ckpt / "adapter_model.safetensors")
    assert saved and all(k.startswith("base_model.model.trunk.") and ".lora_" in k for k in saved)
    assert set(load_file(ckpt / "ema.safetensors")) == set(saved)
    assert (ckpt / "adapter_model.safetensors").stat().st_size < (start / "model.safetensors").stat().st_size / 4
    base, tuned = load_checkpoint(debug_run).model.state_dict(), load_checkpoint(out).model.state_dict()
    assert set(tuned) == set(base)
    moved = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert moved and all(k.startswith("trunk.") and k.split(".")[-2] in ("qkv", "out", "gate_up", "down") for k in moved)
    assert load_checkpoint(out, ema=True).step == 3

    resumed = tmp_path / "resumed"  # stopped after step 2: resumes from its adapters and their optimizer state
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000003")
    COMMANDS["train"](["--preset", "debug", "--out", str(resumed), *args])
    again = load_file(resolve_checkpoint(resumed) / "adapter_model.safetensors")
    assert again.keys() == saved.keys() and all(torch.equal(again[k], saved[k]) for k in saved)


@pytest.fixture(scope="module")
def lora_run(debug_run, fine_tune):
    return fine_tune("lora", debug_run, "train.lora.rank=4", "optim.warmup_steps=0")


def test_lora_flag_pipeline_and_merge_lora_give_the_same_weights(debug_run, lora_run, tmp_path):
    from safetensors.torch import load_file

    from transfusion import Pipeline
    from transfusion.checkpoint import load_checkpoint, resolve_checkpoint
    from transfusion.cli import COMMANDS

    expected = load_checkpoint(lora_run).model.state_dict()
    by_flag = load_checkpoint(debug_run, lora=lora_run).model.state_dict()  # an adapter on a named base
    by_peft_folder = load_checkpoint(debug_run, lora=resolve_checkpoint(lora_run)).model.state_dict()
    piped = Pipeline.from_pretrained(debug_run, lora=lora_run, precision="fp32").loaded.model.state_dict()
    for weights in (by_flag, by_peft_folder, piped):
        assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in expected)

    COMMANDS["merge-lora"]([str(lora_run), str(tmp_path / "merged")])
    merged = load_checkpoint(tmp_path / "merged")
    assert merged.config.train.lora.rank == 0 and (tmp_path / "merged" / "model.safetensors").is_file()
    assert all(torch.equal(merged.model.state_dict()[k], expected[k]) for k in expected)
    assert "lm_head.weight" in load_file(tmp_path / "merged" / "model.safetensors") or merged.config.model.tie_embeddings

    COMMANDS["generate"]([str(debug_run), "a red circle", "--lora", str(lora_run), "--steps", "2",
                          "--out", str(tmp_path / "samples")])
    assert list((tmp_path / "samples").glob("*.png"))


def test_merge_lora_refuses_what_it_cannot_do_and_leaves_folders_alone(debug_run, lora_run, tmp_path):
    from transfusion.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for argv in (["merge-lora", str(lora_run), str(mine)],  # a folder holding the user's files
                 ["merge-lora", str(debug_run), str(tmp_path / "x")],  # whole weights, no adapter named
                 ["generate", str(debug_run), "a red circle", "--lora", str(debug_run), "--out", str(tmp_path / "y")]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 1
    assert (mine / "notes.txt").read_text() == "keep me" and not (tmp_path / "x").exists()


def test_a_lora_run_from_a_pretrained_language_model_trains_its_image_layers_in_full(pretrained_lm_untied, tmp_path):
    from safetensors.torch import load_file

    from transfusion.checkpoint import load_checkpoint, resolve_checkpoint
    from transfusion.cli import COMMANDS

    lm, out = pretrained_lm_untied[2], tmp_path / "from_lm"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), f"model.init_from={lm}", "train.lora.rank=4",
                       "train.steps=2", "train.eval_samples=2", "sampling.steps=2", "optim.warmup_steps=0"])
    ckpt = resolve_checkpoint(out)
    saved = load_file(ckpt / "adapter_model.safetensors")
    assert {k.split(".")[2] for k in saved} == {"trunk", "image"}  # base_model.model.<module>...
    assert all(".lora_" in k for k in saved if ".trunk." in k)
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["image"] and config["base_model_name_or_path"] == str(lm)

    loaded = load_checkpoint(out)  # the language model, the image layers it trained, the adapters merged
    own = loaded.model.state_dict()
    images = {k.removeprefix("base_model.model."): v for k, v in saved.items() if ".image." in k}
    assert all(torch.equal(own[k], v) for k, v in images.items())
    fresh = Transfusion.build(loaded.config.model, loaded.config.image, loaded.tokenizer, loaded.autoencoder)
    by_peft = peft.PeftModel.from_pretrained(fresh, str(ckpt)).base_model.model
    copy_of_image = by_peft.image.modules_to_save["default"].state_dict()
    assert all(torch.equal(copy_of_image[k.removeprefix("image.")], v) for k, v in images.items())


def test_layers_that_train_in_full_get_no_adapter():
    cfg, model = build(*EVERYTHING)
    add_lora(model, cfg.train.lora, train_fully=("image",))
    assert not any(".lora_" in n for n, _ in model.image.named_parameters())
    assert all(p.requires_grad for p in model.image.parameters())
    assert any(".lora_" in n for n, _ in model.trunk.named_parameters())
    cfg, model = build(*EVERYTHING[:1], "train.lora.modules=[image]", *EVERYTHING[2:])
    with pytest.raises(ValueError, match="only layers that train in full"):
        add_lora(model, cfg.train.lora, train_fully=("image",))
