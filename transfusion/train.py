"""Train a Transfusion model on text and images at once.

    transfusion train --preset tiny --out runs/tiny                  # the main job, ~15 min on 2 cores
    transfusion train --preset debug --out runs/dbg train.steps=50   # seconds
    transfusion train --preset small --out runs/small my.yaml model.dim=512
    transfusion train --preset tiny --out runs/chameleon image.objective=tokens image.autoencoder=train
                                                                     # the Chameleon baseline (VQ image tokens)

The same command after an interruption (Ctrl-C, kill -9, a crash) resumes from the last
checkpoint and continues as if it had never stopped: the batch of each step depends only
on (seed, step), and model, optimizer and step are restored.

Writes into --out: config.yaml (resolved), tokenizer.json, metrics.jsonl, losses.png,
checkpoints/step_*/, samples/step_*.png (+ captions of held-out images), report.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from transfusion.autoencoder import Autoencoder, load_autoencoder
from transfusion.checkpoint import Loaded, list_checkpoints, save_checkpoint
from transfusion.config import Config, from_dict, load_config, save_config, to_dict
from transfusion.data.stream import BatchBuilder, build_mixture
from transfusion.diffusion import Diffusion
from transfusion.model.transfusion import Transfusion
from transfusion.objective import compute_losses
from transfusion.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer, save_tokenizer


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup, then cosine decay to ``min_lr`` at the last step."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, cfg.train.steps - o.warmup_steps)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_tokenizer(cfg: Config, mixture) -> Tokenizer:
    spec = cfg.data.tokenizer
    if spec == "bytes":
        return ByteTokenizer()
    if spec == "bpe":
        import random

        rng = random.Random(cfg.train.seed)
        texts = [mixture.draw(rng).caption for _ in range(20_000)]
        return BPETokenizer.train(texts, cfg.data.bpe_vocab_size)
    return load_tokenizer(spec)


def prepare_autoencoder(cfg: Config, out: Path) -> Autoencoder:
    """The run's frozen autoencoder; ``image.autoencoder=train`` trains one into RUN/autoencoder once."""
    if cfg.image.autoencoder != "train":
        return load_autoencoder(cfg.image.autoencoder)
    folder = out / "autoencoder"
    if (folder / "autoencoder.json").is_file():
        return load_autoencoder(folder)
    from transfusion.autoencoder import KLAutoencoder, save_autoencoder, save_reconstructions, train_autoencoder
    from transfusion.data.registry import load_dataset

    i = cfg.image
    torch.manual_seed(cfg.train.seed)
    data = load_dataset(cfg.data.dataset, "train", i.size)
    if i.objective == "tokens":
        from transfusion.vq import VQAutoencoder, train_vq

        ae: Autoencoder = VQAutoencoder(codebook_size=i.ae_codebook_size, code_dim=i.ae_latent_channels,
                                        downsample=i.ae_downsample, width=i.ae_width)
        metrics = train_vq(ae, data, i.ae_steps, batch_size=16, seed=cfg.train.seed)
        print(f"vq autoencoder: {metrics['usage']:.0%} of {i.ae_codebook_size} codes used (perplexity "
              f"{metrics['perplexity']:.0f})")
    else:
        ae = KLAutoencoder(latent_channels=i.ae_latent_channels, downsample=i.ae_downsample, width=i.ae_width)
        metrics = train_autoencoder(ae, data, i.ae_steps, batch_size=16, seed=cfg.train.seed)
    print(f"autoencoder: reconstruction mse {metrics['mse']:.4f} after {i.ae_steps} steps ({metrics['seconds']:.0f}s)")
    save_autoencoder(ae, folder)
    test = load_dataset(cfg.data.dataset, "test", i.size)
    pixels = torch.stack([test[j].images[0].pixels for j in range(8)])
    save_reconstructions(pixels, ae.decode(ae.encode(pixels)), folder / "reconstructions.png")
    return ae


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW; matrices decay, vectors (norms, biases) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    o = cfg.optim
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr, betas=tuple(o.betas), eps=o.eps,
    )


def matmul_peak_flops(seconds: float = 0.5, n: int = 1024) -> float:
    """Measured fp32 matmul FLOP/s of this machine: the MFU denominator."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def count_step_flops(model, batch, diffusion, cfg) -> float:
    """FLOPs of one training step (forward + backward), counted by torch on a real batch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        compute_losses(model, batch, diffusion, cfg.diffusion.loss_weight)["total"].backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def resolve_run_config(out: Path, cfg: Config) -> Config:
    """A run folder keeps its config: resuming with a different one (but train.steps) is an error."""
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return cfg
    saved = from_dict(yaml.safe_load(saved_path.read_text()))
    a, b = to_dict(saved), to_dict(cfg)
    a["train"].pop("steps"), b["train"].pop("steps")
    if a != b:
        diff = [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k]]
        raise ValueError(
            f"{out} holds a run with another config (differs in {', '.join(diff)}); "
            f"use a new --out or the same settings to resume"
        )
    saved.train.steps = cfg.train.steps
    return saved


def truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines after ``step`` so a resumed run does not log a step twice."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def write_samples(loaded: Loaded, out: Path, step: int, n: int) -> dict:
    """Sample grid for held-out captions, captions for held-out images; returns the scores."""
    from transfusion.engine import Request
    from transfusion.evaluate import evaluate
    from transfusion.visualize import image_grid

    summary, samples = evaluate(loaded, ("t2i", "i2t"), n, Request(seed=loaded.config.train.seed), fid=False)
    t2i, i2t = samples["t2i"], samples["i2t"]
    folder = out / "samples"
    folder.mkdir(exist_ok=True)
    image_grid(t2i["images"][:32], t2i["captions"][:32]).save(folder / f"step_{step:06d}.png")
    image_grid(i2t["images"][:32], i2t["generated"][:32]).save(folder / f"step_{step:06d}_captions.png")
    with open(folder / f"step_{step:06d}_captions.txt", "w") as f:
        for ref, gen in zip(i2t["references"], i2t["generated"]):
            f.write(f"truth: {ref}\nmodel: {gen}\n\n")
    result = {"step": step, **summary}
    (folder / f"step_{step:06d}.json").write_text(json.dumps(result, indent=2) + "\n")  # how they were made
    return result


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="transfusion train", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="debug | tiny | small | 0.16B | ... | 7B")
    p.add_argument("--out", required=True, help="run folder (created; resumed if it holds checkpoints)")
    p.add_argument("settings", nargs="*", help="CONFIG.yaml files and key.sub=value overrides")
    args = p.parse_args(argv)

    # ---- setup
    files = [s for s in args.settings if "=" not in s]
    overrides = [s for s in args.settings if "=" in s]
    out = Path(args.out)
    cfg = resolve_run_config(out, load_config(args.preset, files, overrides))
    if cfg.model.attention == "flex" and torch.device(cfg.train.device).type == "cpu":
        raise ValueError("model.attention=flex trains on CUDA only (FlexAttention has no CPU backward); use sdpa")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    device = torch.device(cfg.train.device)

    # ---- data, tokenizer, autoencoder
    mixture = build_mixture(cfg)
    if (out / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(out / "tokenizer.json")
    else:
        tokenizer = build_tokenizer(cfg, mixture)
        save_tokenizer(tokenizer, out / "tokenizer.json")
    autoencoder = prepare_autoencoder(cfg, out).eval()

    # ---- model and optimizer
    model = Transfusion.build(cfg, tokenizer, autoencoder).to(device)
    optimizer = build_optimizer(model, cfg)
    diffusion = Diffusion(cfg.diffusion.timesteps, cfg.diffusion.schedule)
    builder = BatchBuilder(cfg, mixture, tokenizer, autoencoder, model.num_patches)

    start, tokens_seen = 0, 0
    checkpoints = list_checkpoints(out / "checkpoints")
    if checkpoints:
        from safetensors.torch import load_file

        last = checkpoints[-1]
        model.load_state_dict(load_file(last / "model.safetensors"))
        optimizer.load_state_dict(torch.load(last / "optimizer.pt", weights_only=True))
        state = json.loads((last / "state.json").read_text())
        start, tokens_seen = state["step"], state.get("tokens_seen", 0)
        print(f"resuming from {last} (step {start})")
    truncate_metrics(out / "metrics.jsonl", start)
    step_model = torch.compile(model) if cfg.train.compile else model
    print(f"model: {model.num_params() / 1e6:.2f}M parameters ({model.num_params(True) / 1e6:.2f}M in the trunk), "
          f"vocab {tokenizer.vocab_size}, {model.patch_reduction}x patch reduction")

    def checkpoint(step: int) -> None:
        save_checkpoint(out / "checkpoints", step, model, tokenizer, autoencoder, optimizer,
                        extra_state={"tokens_seen": tokens_seen}, keep=cfg.train.keep_checkpoints)

    def sample(step: int, n: int) -> dict:
        model.eval()
        result = write_samples(Loaded(model, tokenizer, autoencoder, cfg, step, out), out, step, n)
        model.train()
        return result

    # ---- loop
    peak = matmul_peak_flops()
    first = builder.batch_at(start, cfg.train.seed).to(device)
    flops_per_token = count_step_flops(model, first, diffusion, cfg) / first.num_tokens
    n_params = model.num_params()  # train_flops = 6 N D, N all parameters, D real tokens seen (as the paper counts)
    metrics = open(out / "metrics.jsonl", "a")
    model.train()
    bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc="train")
    window_tokens, window_start = 0, time.perf_counter()
    completed = start
    try:
        for step in bar:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = builder.batch_at(step, cfg.train.seed).to(device)
            generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
            losses = compute_losses(step_model, batch, diffusion, cfg.diffusion.loss_weight, generator)
            if not torch.isfinite(losses["total"]):
                raise FloatingPointError(
                    f"loss is {losses['total'].item()} at step {step} ("
                    + ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items() if k != "total")
                    + f"); the last checkpoint in {out / 'checkpoints'} is "
                    f"intact: lower optim.lr or check the data, then rerun to resume"
                )
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            completed = done = step + 1
            window_tokens += batch.num_tokens
            tokens_seen += batch.num_tokens

            if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                elapsed = time.perf_counter() - window_start
                tokens_per_s = window_tokens / elapsed
                row = {"step": done, **{k: v.item() for k, v in losses.items()}, "lr": lr, "grad_norm": grad_norm.item(),
                       "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * flops_per_token / peak,
                       "tokens_seen": tokens_seen, "train_flops": 6 * n_params * tokens_seen}
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                bar.set_postfix({k: f"{row[k]:.4f}" for k in losses if k != "total"} | {"tok_s": f"{tokens_per_s:.0f}"})
                window_tokens, window_start = 0, time.perf_counter()
            pause = time.perf_counter()
            if done % cfg.train.checkpoint_every == 0 and done < cfg.train.steps:
                checkpoint(done)
            if cfg.train.sample_every and done % cfg.train.sample_every == 0 and done < cfg.train.steps:
                sample(done, min(16, cfg.train.eval_samples))
            window_start += time.perf_counter() - pause  # tokens/s measures training alone
    except KeyboardInterrupt:
        checkpoint(completed)
        print(f"\ninterrupted: saved step {completed}; rerun the same command to resume")
        raise SystemExit(130)
    finally:
        metrics.close()

    # ---- end of run: checkpoint, samples, report, plot
    final = cfg.train.steps
    checkpoint(final)
    from transfusion.visualize import plot_losses

    plot_losses(out / "metrics.jsonl", out / "losses.png")
    report = sample(final, cfg.train.eval_samples)
    report["model_parameters"] = model.num_params()
    report["matmul_peak_gflops"] = peak / 1e9
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("t2i", "i2t")}, indent=1))
    return out
