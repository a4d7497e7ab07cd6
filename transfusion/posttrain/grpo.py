"""Group-relative policy optimisation (GRPO) towards an exact reward, on the image or the caption path.

    transfusion posttrain runs/small --out runs/small_grpo --reward shapes posttrain.steps=200

One update (``Posttrainer.update``): ``posttrain.prompts`` prompts of the training split (captions,
with ``posttrain.kinds`` only those of the named shapes scene kinds; an edit reward's instructions
with their sources; a caption reward's images), ``posttrain.group``
samples each, drawn by the current model with a sampler whose every step has an exact
log-probability (``policy.py``: DDPM's posterior, or a flow's SDE; ``captions.py``: tokens);
each sample scored by the reward; a sample's advantage its reward's standing in its prompt's
group, A = (r - mean) / (std + 1e-4) (Shao et al. 2024, arXiv 2402.03300; on diffusion steps as
Flow-GRPO, Liu et al. 2025, arXiv 2505.05470); then PPO's clipped objective (Schulman et al.
2017) on each step's probability ratio (per latent element for images, as DDPO does; per token
for captions), plus ``kl`` times the KL to the starting model (for images ||mu - mu_start||^2 /
(2 sigma^2) per element, both Gaussians sharing sigma; for tokens k3). Full weights train, or
LoRA adapters (``train.lora.rank``, ``docs/posttraining.md``).

A post-training run is a run folder: ``config.yaml`` (the start's, with ``train.init_from`` the
start checkpoint and the ``posttrain`` section), ``checkpoints/`` (whole weights, or the
adapters on the start), ``metrics.jsonl`` (per update: reward, what the judge reads, KL, clip
share, samples drawn, wall clock, the share of groups that teach anything, also per attribute;
held-out figures at ``eval_every``), ``samples/`` and
``curves.png``; it resumes exactly where it stopped (the prompts and the sampler's noise of
update u depend only on the seed and u). Ctrl-C saves after the running update and exits.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import yaml
from torch.distributed.checkpoint.state_dict import get_state_dict
from tqdm import tqdm

from transfusion.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint
from transfusion.config import Config, LoraConfig, config_yaml, from_dict, load_config, resumed, to_dict, with_fields
from transfusion.data.registry import load_dataset
from transfusion.data.shapes import paraphrase_of
from transfusion.fileio import RunLock, atomic_text
from transfusion.model.lora import add_lora, has_lora
from transfusion.posttrain.captions import CaptionPolicy
from transfusion.posttrain.objective import group_advantages, varied_groups
from transfusion.posttrain.policy import ImagePolicy, Prompt
from transfusion.posttrain.rewards import CAPTION_REWARDS, EDIT_REWARDS, load_reward
from transfusion.tracking import Tracker
from transfusion.train import StopRequest, truncate_metrics
from transfusion.train_state import load_training_state, save_checkpoint
from transfusion.visualize import plot_posttraining

EVAL_SEED = 1_000_003  # the held-out prompts' sampler noise: the same at every evaluation


def prompts_of(cfg: Config, split: str, n: int, start: int = 0, documents: list[int] | None = None) -> list[Prompt]:
    """``n`` prompts from document ``start`` on (wrapping around a finite split): the captions of
    the dataset's caption + image documents, or for an edit reward the instructions of
    ``data.edit_dataset``'s triples, with their sources, or for a caption reward those
    documents' images (the prompt's text empty: the caption is what the policy says).
    ``documents``: the indices to walk instead of all of them (``training_documents``)."""
    edits, captioning = cfg.posttrain.reward in EDIT_REWARDS, cfg.posttrain.reward in CAPTION_REWARDS
    spec = cfg.data.edit_dataset if edits else cfg.data.dataset
    data = load_dataset(spec, split, cfg.image.size)
    order = documents if documents is not None else range(len(data))
    out, i = [], start
    while len(out) < n:
        doc = data[order[i % len(order)]]
        if edits and doc.kind == "edit":
            out.append(Prompt(doc.segments[1].text, doc.segments[0].pixels, doc.meta))
        elif not edits and doc.kind == "pair":
            out.append(Prompt("", doc.images[0].pixels, doc.meta) if captioning else Prompt(doc.caption, meta=doc.meta))
        i += 1
        if i - start > 50 * n + len(order):
            what = "editing triples" if edits else "caption + image documents"
            raise ValueError(f"the {split} split of {spec!r} holds no {what}")
    return out


def training_documents(cfg: Config) -> list[int] | None:
    """The documents whose captions the run trains on: those of the scene kinds
    ``posttrain.kinds`` names (shapes data), or None for all of them."""
    pt = cfg.posttrain
    if not pt.kinds:
        return None
    if pt.reward in EDIT_REWARDS:
        raise ValueError("posttrain.kinds picks captions by their scene's kind; an edit reward's prompts are edits")
    data = load_dataset(cfg.data.dataset, pt.split, cfg.image.size)
    if not hasattr(data, "indices_of"):
        raise ValueError(f"posttrain.kinds picks captions by their scene's kind: data.dataset={cfg.data.dataset!r} "
                         "has no scene kinds (the built-in shapes data has)")
    documents = data.indices_of(pt.kinds)
    if not documents:
        raise ValueError(f"the {pt.split} split of {cfg.data.dataset!r} holds no scenes of kinds {pt.kinds}")
    return documents


def held_out_split(cfg: Config) -> str:
    """Where the held-out reward is measured: the validation split, or the test split of data
    that has none (the built-in edits); it is reported, never used to choose anything."""
    return "test" if cfg.posttrain.reward in EDIT_REWARDS else "validation"


def start_config(start: str | Path, overrides: list[str]) -> tuple[Config, Path]:
    """The run's config: the start checkpoint's, its own LoRA and post-training settings back at
    their defaults (a start that was a LoRA or post-training run passes on its weights, not its
    recipe), then ``overrides``, and ``train.init_from`` = the start, as an absolute path (a run
    resumes whichever way its start is spelled)."""
    ckpt = resolve_checkpoint(start).resolve()
    saved = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
    fresh = with_fields(saved, {"train": {"lora": LoraConfig()}, "posttrain": to_dict(Config())["posttrain"]})
    return load_config(start=fresh, overrides=[*overrides, f"train.init_from={ckpt}"]), ckpt


class Posttrainer:
    """One post-training run: the model, its starting copy, the optimizer, the policy and reward."""

    def __init__(self, cfg: Config, start: Path, out: Path):
        self.cfg, self.out = cfg, out
        loaded = load_checkpoint(start)
        self.tokenizer, self.autoencoder = loaded.tokenizer, loaded.autoencoder
        self.model = loaded.model.train()
        pt = cfg.posttrain
        self.captioning = pt.reward in CAPTION_REWARDS
        if cfg.train.lora.rank:
            add_lora(self.model, cfg.train.lora, base=str(start))
        else:  # the trunk and image layers; for images the token embedding and LM head keep the text as it was
            self.model.requires_grad_(True)
            self.model.token_embed.requires_grad_(self.captioning)
            self.model.lm_head.requires_grad_(self.captioning)
        self.reference = None
        if pt.kl > 0:  # the starting model: the adapters switched off, or a frozen copy
            self.reference = self.model if has_lora(self.model) else copy.deepcopy(self.model).requires_grad_(False)
        if self.captioning:
            self.policy = CaptionPolicy(self.model, self.tokenizer, self.autoencoder, cfg)
        else:
            self.policy = ImagePolicy(self.model, self.tokenizer, self.autoencoder, cfg)
        if not self.captioning and self.policy.flow and pt.flow_noise <= 0:
            raise ValueError("posttrain.flow_noise=0 samples the flow's ODE: no step has a log-probability to train on")
        self.reward = load_reward(pt.reward)
        self.documents = training_documents(cfg)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=pt.lr, betas=(0.9, 0.999), weight_decay=0.0)
        get_state_dict(self.model, self.optimizer)  # gives every parameter its optimizer state (at lr 0), as a
        # resumed run's has: a layer the image path never reaches (an edit's reference input) has none otherwise
        self.samples_drawn = 0
        self.wall_seconds = 0.0  # of the updates so far, across resumes (evaluations not counted)

    def rollout(self, prompts: list[str], generator: torch.Generator):
        """The policy's rollout of ``prompts`` by the model, the starting model's log-densities kept for the KL."""
        reference = self.reference
        if reference is not None and has_lora(reference):
            reference = _without_adapters(self.model)
        return self.policy.rollout(self.model, prompts, generator, reference=reference)

    def draw(self, step: int):
        """Update ``step``'s samples, drawn by the model as it is: its prompts, each ``group``
        times in a row, the rollout, its outputs and their rewards, and the generator, which the
        update goes on to use (the prompts and noise depend only on the seed and ``step``)."""
        pt, cfg = self.cfg.posttrain, self.cfg
        generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
        prompts = prompts_of(cfg, pt.split, pt.prompts, start=step * pt.prompts, documents=self.documents)
        grouped = [p for p in prompts for _ in range(pt.group)]
        self.model.eval()
        rollout = self.rollout(grouped, generator)
        outputs = self.policy.outputs(rollout)
        return grouped, rollout, outputs, self.policy.score(self.reward, grouped, outputs), generator

    def update(self, step: int) -> dict:
        """One GRPO update: sample, score, and move the model; returns the update's log row (its
        loss, KL and clipped share those of the last of ``inner_epochs`` passes)."""
        pt = self.cfg.posttrain
        started = time.time()
        grouped, rollout, outputs, rewards, generator = self.draw(step)
        advantages = group_advantages(rewards, pt.group)
        self.samples_drawn += len(grouped)
        self.model.train()
        for _ in range(pt.inner_epochs):
            stats = self.policy.backward(self.model, rollout, advantages, pt, generator)
            stats["grad_norm"] = self._step()
        self.wall_seconds += time.time() - started
        return {"step": step + 1, "reward": rewards.mean().item(), "reward_std": rewards.std().item(),
                "groups_varied": varied_groups(rewards.tolist(), pt.group), **stats,
                **{f"train_{k}": v for k, v in self.policy.judged(grouped, outputs, pt.group).items()},
                "samples_drawn": self.samples_drawn, "seconds": time.time() - started,
                "wall_seconds": self.wall_seconds}

    def save(self, done: int) -> None:
        """The checkpoint after update ``done``: weights (or adapters), optimizer, samples drawn, time."""
        save_checkpoint(self.out / "checkpoints", done, self.model, self.cfg, self.tokenizer, self.autoencoder,
                        self.optimizer, keep=self.cfg.train.keep_checkpoints,
                        extra_state={"samples_drawn": self.samples_drawn, "wall_seconds": self.wall_seconds})

    def _step(self) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        """Held-out reward and what the judges read: ``eval_prompts`` prompts of ``held_out_split``,
        one sample each, the same noise every time (and for captions with a scene the same scenes
        in other words); a grid in ``samples/``."""
        prompts = prompts_of(self.cfg, held_out_split(self.cfg), self.cfg.posttrain.eval_prompts)
        self.model.eval()
        row = {"step": step, "samples_drawn": self.samples_drawn, "wall_seconds": self.wall_seconds}
        outputs = self._held_out(prompts, "heldout", row)
        if prompts[0] and all("scene" in p.meta for p in prompts):  # captions training never worded so
            self._held_out([Prompt(paraphrase_of(p.meta["scene"]), meta=p.meta) for p in prompts], "paraphrased", row)
        (self.out / "samples").mkdir(exist_ok=True)
        self.policy.grid(prompts, outputs).save(self.out / "samples" / f"step_{step:06d}.png")
        return row

    def _held_out(self, prompts: list[Prompt], name: str, row: dict):
        """Sample ``prompts`` with the evaluation noise; their reward and judged shares into ``row``."""
        outputs = self.policy.outputs(self.policy.rollout(self.model, prompts, torch.Generator().manual_seed(EVAL_SEED)))
        row[f"{name}_reward"] = self.policy.score(self.reward, prompts, outputs).mean().item()
        row.update({f"{name}_{k}": v for k, v in self.policy.judged(prompts, outputs).items()})
        return outputs


def _without_adapters(model):
    """``model`` as its start computes: a callable that runs it with its LoRA layers switched off."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]

    def forward(*args, **kwargs):
        for layer in layers:
            layer.enable_adapters(False)
        try:
            return model(*args, **kwargs)
        finally:
            for layer in layers:
                layer.enable_adapters(True)

    return forward


def posttrain(start: str | Path, out: str | Path, overrides: list[str] = ()) -> Path:
    """Post-train the checkpoint ``start`` into the run folder ``out`` (resuming it if it holds
    one); returns ``out``. Ctrl-C saves the state after the running update and exits (130); a
    second Ctrl-C stops at once, saving nothing."""
    out = Path(out)
    cfg, ckpt = start_config(start, list(overrides))
    saved = out / "config.yaml"
    if saved.is_file():
        cfg = resumed(from_dict(yaml.safe_load(saved.read_text())), cfg, str(out))
    with RunLock(out):
        atomic_text(saved, config_yaml(cfg))
        trainer = Posttrainer(cfg, ckpt, out)
        first = 0
        done = list_checkpoints(out / "checkpoints")
        if done:
            state = load_training_state(done[-1], trainer.model, trainer.optimizer)
            first, trainer.samples_drawn = state["step"], state.get("samples_drawn", 0)
            trainer.wall_seconds = state.get("wall_seconds", 0.0)
        truncate_metrics(out / "metrics.jsonl", first)
        tracker = Tracker(out, cfg.train.log, to_dict(cfg), resume_step=first)
        pt = cfg.posttrain
        completed = first
        try:
            with StopRequest() as stop:
                if first == 0:
                    tracker.log(trainer.evaluate(0))
                for step in tqdm(range(first, pt.steps), desc="posttrain", initial=first, total=pt.steps):
                    tracker.log(trainer.update(step))
                    completed = done = step + 1
                    saved = done % cfg.train.checkpoint_every == 0 or done == pt.steps
                    if saved:
                        trainer.save(done)
                    if (pt.eval_every and done % pt.eval_every == 0) or done == pt.steps:
                        tracker.log(trainer.evaluate(done))
                        plot_posttraining(out / "metrics.jsonl", out / "curves.png")
                    if stop.asked and done < pt.steps:  # Ctrl-C: saved after the whole update, then out
                        if not saved:
                            trainer.save(done)
                        print(f"\ninterrupted: saved update {done}; rerun the same command to resume", flush=True)
                        raise SystemExit(130)
        except KeyboardInterrupt:  # a second Ctrl-C: perhaps mid-update, so nothing is saved
            print(f"\nstopped at once after update {completed}, without saving; rerun the same command to resume "
                  f"from the last checkpoint in {out / 'checkpoints'}", flush=True)
            raise SystemExit(130)
        finally:
            tracker.close()
    return out
