"""The flex attention path against the sdpa path: same outputs (and, on CUDA, gradients), and speed.

    python benchmarks/flex_vs_sdpa.py                      # CPU: forward only (no flex backward on CPU)
    python benchmarks/flex_vs_sdpa.py --device cuda --preset 0.16B --seq-len 4096
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from transfusion.autoencoders import IdentityAutoencoder
from transfusion.components import build_components
from transfusion.config import load_config
from transfusion.diffusion import Diffusion
from transfusion.objective import compute_losses
from transfusion.tokenizer import ByteTokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="debug")
    p.add_argument("--seq-len", type=int, default=0, help="0: the preset's")
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    device = torch.device(args.device)
    backward = device.type == "cuda"
    # pixels through the earlier U-Net (8x: 1,024 positions per 256 px image), so no pretrained autoencoder is needed
    overrides = [f"data.batch_size={args.rows}", "autoencoder.name=identity", "image.unet_channels=[128,256]",
                 "image.patch_size=2"]
    if args.seq_len:
        overrides += [f"data.seq_len={args.seq_len}", f"model.max_seq_len={args.seq_len}"]
    tok = ByteTokenizer()
    models, results = {}, {}
    for attention in ("sdpa", "flex"):
        cfg = load_config(args.preset, overrides=[*overrides, f"model.attention={attention}"])
        run = build_components(cfg, tokenizer=tok, autoencoder=IdentityAutoencoder())
        models[attention] = run.model.to(device)
    batch = run.batches.batch_at(0, 0).to(device)  # the same batch for both (the configs differ in attention only)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for attention, model in models.items():
        times = []
        for _ in range(args.repeats + 1):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            with torch.set_grad_enabled(backward), torch.autocast(device.type, torch.bfloat16, enabled=backward):
                losses = compute_losses(model, batch, Diffusion(), 5.0)
                if backward:
                    losses["total"].backward()
            sync()
            times.append(time.perf_counter() - start)
        grads = [p.grad.float().clone() for p in model.parameters()] if backward else []
        results[attention] = (losses, grads, statistics.median(times[1:]))
    (a, ga, ta), (b, gb, tb) = results["sdpa"], results["flex"]
    for k in a:
        print(f"{k:>6}: sdpa {a[k].item():.6f}  flex {b[k].item():.6f}")
    if backward:
        worst = max(((x - y).abs().max() / (x.abs().max() + 1e-8)).item() for x, y in zip(ga, gb))
        print(f"largest relative gradient difference: {worst:.2e}")
    print(f"{'forward+backward' if backward else 'forward'}: sdpa {ta * 1e3:.1f} ms, flex {tb * 1e3:.1f} ms "
          f"({ta / tb:.2f}x)")
    if abs(a["total"].item() - b["total"].item()) > 2e-2 * abs(a["total"].item()):
        raise SystemExit("flex and sdpa disagree")


if __name__ == "__main__":
    main()
