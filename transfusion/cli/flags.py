"""The flag groups and helpers that the ``transfusion`` subcommands share."""

from __future__ import annotations

import argparse

from transfusion.samplers import SAMPLER_STEPS


def checkpoint_flags(p: argparse.ArgumentParser, precision: str | None = "auto") -> None:
    p.add_argument("checkpoint", help="a run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--ema", action="store_true", help="use the EMA of the weights (runs with train.ema_decay > 0)")
    p.add_argument("--lora", metavar="FOLDER", default=None,
                   help="a LoRA adapter to merge into the checkpoint's weights: peft's folder, or a LoRA run "
                        "(train.lora.rank > 0); with --ema its EMA")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N")
    if precision:
        p.add_argument("--precision", default=precision, choices=["auto", "fp32", "bf16", "int8"],
                       help=f"the trunk's products (default {precision}): auto is bf16 on a CPU with native bf16, "
                            "else fp32; int8 (CPU) is faster, scores within 2 points of fp32 (docs/speed.md)")


def sampling_flags(p: argparse.ArgumentParser, interactive: bool = False) -> None:
    p.add_argument("--sampler", default=None, choices=list(SAMPLER_STEPS),
                   help="default: dpm++sde for a ddpm run whose sampling.sampler is auto (measured best quality "
                        "per second), else the run's" if interactive else
                        "default: the run's sampling.sampler (ddpm with 250 steps, the paper's)")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the run's sampling.steps for its sampler, else "
                        + ", ".join(f"{k} {v}" for k, v in SAMPLER_STEPS.items()) + ")")
    p.add_argument("--eta", type=float, default=0.0, help="ddim: noise share, 0 deterministic .. 1 ancestral")
    p.add_argument("--cfg", "--guidance", dest="cfg", type=float, default=None,
                   help="classifier-free guidance scale (default: the run's sampling.guidance; 1: off)")
    p.add_argument("--clip", type=float, default=None,
                   help="clamp the predicted x0 to [-CLIP, CLIP] while denoising (default: the run's "
                        "sampling.clip_sample, 1 for pixels and 3 for latents; 0: off)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")


def strength_flag(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument("--strength", type=float, default=1.0,
                   help=prefix + "start from the source noised to this share of the steps (SDEdit; 1: from pure noise)")


def decoding_flags(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="most generated text tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="text decoding (0: greedy, the paper's default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)


def load(args):
    from transfusion.checkpoint import load_checkpoint
    from transfusion.distributed import resolve_device

    loaded = load_checkpoint(args.checkpoint, device=resolve_device(args.device), ema=args.ema, lora=args.lora)
    if getattr(args, "precision", None):
        from transfusion.engine.speedups import with_precision

        loaded = with_precision(loaded, args.precision)
    return loaded


def size_type(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    try:
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW (pixels), got {text!r}") from None


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"transfusion {prog}", description=description)
