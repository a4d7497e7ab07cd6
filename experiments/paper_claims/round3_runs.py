"""The third round's runs and store: protocol, autoencoders fixed per round, training, scoring
from the EMA, tuning on the validation split (``round3.py`` runs the claims and writes the tables)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

import common
from common import LINEAR, LONG, PROTOCOL, ROOT, SEEDS, SMOKE, T2I_N, _read, _write, budget_plan

RUNS = Path(os.environ.get("CLAIMS_RUNS", ROOT / "runs" / ("claims3_smoke" if SMOKE else "claims3")))
STORE = Path(os.environ.get("CLAIMS_STORE", RUNS / "scores" if SMOKE else ROOT / "experiments" / "paper_claims" / "scores3"))
EMA = ["train.ema_decay=0.999", "train.ema_warmup=true"]
AE_STEPS = 20 if SMOKE else 1500  # both kinds, so neither has had longer to converge
VALIDATION_N = 8 if SMOKE else 256
GUIDANCES = (1.5, 3.0) if SMOKE else (1.5, 2.0, 3.0, 5.0, 7.5)
FAST_STEPS, DDPM_STEPS = (4, 4) if SMOKE else (25, 250)
SHARED = 5.0  # round two's guidance for both arms (the paper's, after Chameleon)


class NotInStore(Exception):
    """A score the store lacks, asked for while only the tables are rebuilt (``--table``)."""


STORE_ONLY = False  # --table: read the store, run nothing


def sh(args: list) -> None:
    """``common.sh``, its wall clock logged in this round's store (scores3/commands.jsonl)."""
    if STORE_ONLY:
        raise NotInStore(" ".join(map(str, args[:3])))
    common.sh(args, STORE / "commands.jsonl")


def hours() -> float:
    """The wall clock of every command of the round so far, in hours."""
    log = STORE / "commands.jsonl"
    return sum(json.loads(line)["seconds"] for line in log.read_text().splitlines()) / 3600 if log.is_file() else 0.0


def ae_dir(kind: str) -> Path:
    return RUNS / f"ae_{kind}"


ARMS = {
    "linear": [*LINEAR],  # Table 3's Transfusion: linear 2x2 patches (16 per image), bidirectional within an image
    "chameleon": ["image.objective=tokens", f"autoencoder.name={ae_dir('vq')}"],
    "linear_causal": [*LINEAR, "image.attention=causal"],
    "linear_p1": ["image.adapter=linear", "image.patch_size=1"],  # 64 patches per image
    "linear_p1_causal": ["image.adapter=linear", "image.patch_size=1", "image.attention=causal"],
}


def is_codes(arm: str) -> bool:
    return "image.objective=tokens" in ARMS[arm]


def overrides(arm: str, seed: int) -> list[str]:
    return [*PROTOCOL, *EMA, f"autoencoder.name={ae_dir('kl')}", *ARMS[arm], f"train.seed={seed}"]


def sha256(folder: Path) -> str:
    return hashlib.sha256((folder / "autoencoder.safetensors").read_bytes()).hexdigest()


def autoencoders() -> dict[str, str]:
    """The round's KL and VQ autoencoders: restored from the store, else trained (the same steps
    each) and copied into it. {kind: sha256}."""
    hashes = {}
    for kind in ("kl", "vq"):
        folder, kept = ae_dir(kind), STORE / "autoencoders" / kind
        if not (folder / "autoencoder.json").is_file():
            if (kept / "autoencoder.json").is_file():
                shutil.copytree(kept, folder, dirs_exist_ok=True)
            else:
                vq = ["--vq", "--codebook-size", "512"] if kind == "vq" else []
                sh(["transfusion", "autoencoder", "train", *vq, "--data", "shapes", "--out", folder,
                    "--steps", str(AE_STEPS)])
        if not (kept / "autoencoder.json").is_file():
            kept.mkdir(parents=True, exist_ok=True)
            for name in ("autoencoder.json", "autoencoder.safetensors"):
                shutil.copy2(folder / name, kept / name)
        hashes[kind] = sha256(folder)
        if hashes[kind] != sha256(kept):
            raise SystemExit(f"{folder} is not the autoencoder the stored scores used ({kept}); "
                             f"delete {folder} to restore it from the store")
    return hashes


def flops_per_step(arm: str, seed: int) -> float:
    """6 N x mean real tokens of the run's first 64 batches, kept in the store."""
    path, key = STORE / "flops_per_step.json", f"{arm}_s{seed}"
    known = _read(path)
    if key not in known:
        from transfusion.components import build_components
        from transfusion.config import load_config

        cfg = load_config("tiny", overrides=overrides(arm, seed))
        run = build_components(cfg)
        tokens = sum(run.batches.batch_at(s, cfg.train.seed).num_tokens for s in range(64)) / 64
        known[key] = 6 * run.model.num_params(active=True) * tokens
        _write(path, known)
    return known[key]


def eval_flags(settings: dict) -> list[str]:
    """`transfusion eval` flags of a sampling setting: sampler, steps, cfg, clip, image_temperature, top_k."""
    flags = []
    for key, value in sorted(settings.items()):
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def setting_name(settings: dict) -> str:
    return "_".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in sorted(settings.items()))


@dataclass
class Run:
    """One training run of the round (EMA on), scored from its EMA weights."""

    arm: str
    seed: int
    plan: dict  # {budget: checkpoint step}

    @property
    def name(self) -> str:
        return f"{self.arm}_s{self.seed}_{max(self.plan):.0e}"

    @property
    def folder(self) -> Path:
        return RUNS / self.name

    def trained(self) -> Path:
        if not (self.folder / "report.json").is_file():
            autoencoders()
            sh(["transfusion", "train", "--preset", "tiny", "--out", self.folder, *overrides(self.arm, self.seed),
                f"train.steps={max(self.plan.values())}", f"train.checkpoint_every={min(self.plan.values())}",
                "train.keep_checkpoints=0", "train.sample_every=0", "train.eval_samples=16"])
        record = STORE / self.name / "run.json"
        if not record.is_file():
            saved = json.loads((self.folder / "report.json").read_text())
            tokens = {str(step): json.loads((self.checkpoint(step) / "state.json").read_text())["tokens_seen"]
                      for step in sorted(set(self.plan.values()))}
            _write(record, {"active_parameters": saved.get("active_parameters", saved["model_parameters"]),
                            "tokens_seen": tokens})
        return self.folder

    def checkpoint(self, step: int) -> Path:
        return self.folder / "checkpoints" / f"step_{step:06d}"

    def flops(self, step: int) -> float:
        """Training FLOPs at ``step``: 6 N x the real tokens seen."""
        path = STORE / self.name / "run.json"
        if not path.is_file():
            self.trained()
        record = json.loads(path.read_text())
        return 6 * record["active_parameters"] * record["tokens_seen"][str(step)]

    def score(self, step: int, suite: str, n: int, settings: dict | None = None, split: str = "test") -> dict:
        """`transfusion eval --ema` of one suite, from the store when it holds it; the report
        records the sha256 of the autoencoder it used."""
        tag = f"_{setting_name(settings)}" if settings else ""
        name = f"step{step}_{suite}_{split}_n{n}{tag}.json"
        stored = STORE / self.name / name
        if not stored.is_file():
            out = self.trained() / "eval" / name
            if not out.is_file():
                sh(["transfusion", "eval", self.checkpoint(step), "--ema", "--suite", suite, "--n", str(n),
                    "--split", split, *eval_flags(settings or {}), "--out", out])
            report = json.loads(out.read_text())
            ae = "vq" if is_codes(self.arm) else "kl"
            report["autoencoder_sha256"] = sha256(ae_dir(ae))
            _write(stored, report)
        return json.loads(stored.read_text())


def train(arm: str, seed: int, budgets: tuple[float, ...] = LONG) -> Run:
    """The run of ``arm`` and ``seed`` to the largest budget, a checkpoint at each."""
    path = STORE / f"{arm}_s{seed}_{max(budgets):.0e}" / "plan.json"
    if STORE_ONLY and not path.is_file():
        raise NotInStore(f"{arm} seed {seed}")
    return Run(arm, seed, budget_plan(path, budgets, lambda: flops_per_step(arm, seed), autoencoders))


# ---------------------------------------------------------------- tuning on the validation split
def grid(arm: str) -> list[dict]:
    """The first sweep's settings (DDPM 250 joins later, at the best of them, for diffusion arms)."""
    if is_codes(arm):
        return [{"cfg": g, "image_temperature": t, "top_k": k} for g in GUIDANCES for t in (0.8, 1.0) for k in (0, 64)]
    return [{"sampler": "dpm++", "steps": FAST_STEPS, "cfg": g, "clip": c} for g in GUIDANCES for c in (3.0, 0.0)]


def tuned(arm: str) -> dict:
    """Each setting's validation FID (seed 0, largest budget) and the best; kept in the store."""
    path = STORE / "tuning" / f"{arm}.json"
    if path.is_file():
        return json.loads(path.read_text())
    run = train(arm, 0)
    step = run.plan[max(run.plan)]
    rows = []
    for settings in grid(arm):
        report = run.score(step, "t2i", VALIDATION_N, settings, split="validation")
        rows.append({"settings": settings, "fid": report["t2i"]["fid"], "accuracy": report["t2i"]["accuracy"],
                     **({"clamp": report["t2i"]["clamp"]} if "clamp" in report["t2i"] else {})})
    best = min(rows, key=lambda r: r["fid"])
    if not is_codes(arm):  # DDPM 250 at the best guidance and clamp
        slow = {**best["settings"], "sampler": "ddpm", "steps": DDPM_STEPS}
        report = run.score(step, "t2i", VALIDATION_N, slow, split="validation")
        rows.append({"settings": slow, "fid": report["t2i"]["fid"], "accuracy": report["t2i"]["accuracy"],
                     **({"clamp": report["t2i"]["clamp"]} if "clamp" in report["t2i"] else {})})
        best = min(rows, key=lambda r: r["fid"])
    result = {"arm": arm, "run": run.name, "step": step, "split": "validation", "n": VALIDATION_N,
              "rows": rows, "best": best["settings"]}
    _write(path, result)
    return result


def shared(arm: str) -> dict:
    """Round two's settings: guidance 5; Transfusion with DDPM 250 and the clamp at its default."""
    if is_codes(arm):
        return {"cfg": SHARED, "image_temperature": 1.0, "top_k": 0}
    return {"sampler": "ddpm", "steps": DDPM_STEPS, "cfg": SHARED, "clip": 3.0}


def floor(arm: str) -> dict:
    """The floor of ``arm``'s autoencoder on the test images of the arms' FID."""
    run = train(arm, 0)
    return run.score(run.plan[max(run.plan)], "floor", T2I_N)


def collect(arm: str, settings_of) -> dict:
    """{budget: [report per seed]} of ``arm``'s t2i (with settings_of(arm, step, top)), text and i2t."""
    out: dict = {}
    for seed in SEEDS:
        run = train(arm, seed)
        top = run.plan[max(run.plan)]
        for budget, step in sorted(run.plan.items()):
            settings = settings_of(arm, step == top)
            if settings is None:
                continue
            n = T2I_N if step == top else (8 if SMOKE else 256)
            scored = run.score(step, "t2i", n, settings)
            report = {"t2i": scored["t2i"], "sha": scored["autoencoder_sha256"], "flops": run.flops(step), "step": step}
            report["text"] = run.score(step, "text", 8 if SMOKE else 256)["text"]
            report["i2t"] = run.score(step, "i2t", 8 if SMOKE else 256)["i2t"]
            out.setdefault(budget, []).append(report)
    return out


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


ATTRIBUTES = ("colour", "shape", "size", "position", "count", "relation", "exact")


