"""Training throughput and MFU: tokens/s and model FLOP utilisation of the training step.

    python benchmarks/train_throughput.py                       # debug, tiny, 0.16B-shaped, on this CPU
    python benchmarks/train_throughput.py --presets tiny --steps 20
    python benchmarks/train_throughput.py --device cuda --precision bf16 --presets 0.16B

MFU is the achieved FLOP/s of the step (FLOPs counted by torch on the real batch: forward,
backward; the optimizer's few FLOPs are left out) over the machine's measured peak: the
fp32 (or bf16) matmul FLOP/s of one large square matmul. The 0.16B-shaped run keeps the
paper's 16 layers of width 768 but packs rows of 512 tokens (CPU: a short run), with an
untrained KL autoencoder of the preset's shape standing in for the trained one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from transfusion.autoencoders import IdentityAutoencoder, KLAutoencoder, new_autoencoder
from transfusion.components import build_components
from transfusion.config import load_config
from transfusion.diffusion import Diffusion
from transfusion.distributed import World
from transfusion.tokenizer import ByteTokenizer
from transfusion.flops import count_step_flops, matmul_peak_flops
from transfusion.optim import build_optimizer
from transfusion.step import train_step

SHAPES = {  # preset -> overrides that make it a short run here
    "debug": [],
    "tiny": [],
    # the 0.16B trunk on 64 px pixels through the earlier U-Net (64 positions an image): the figure docs/speed.md tracks
    "0.16B": ["data.seq_len=512", "data.batch_size=2", "image.size=64", "model.max_seq_len=512",
              "autoencoder.name=identity", "image.unet_channels=[128,256]", "image.patch_size=2"],
}


def measure(preset: str, steps: int, device: torch.device, precision: str, extra: list[str]) -> dict:
    cfg = load_config(preset, overrides=[*SHAPES.get(preset, []), f"train.precision={precision}", *extra])
    if cfg.autoencoder.name == "train":  # an untrained one of the preset's shape: the same latent sizes
        ae = new_autoencoder(cfg.autoencoder)
    elif cfg.autoencoder.name == "identity":
        ae = IdentityAutoencoder()
    else:  # a pretrained one (the paper presets' 8x, 4-channel KL-VAE): an untrained stand-in of its latent sizes
        ae = KLAutoencoder(latent_channels=4, downsample=8, width=16)
    run = build_components(cfg, tokenizer=ByteTokenizer(), autoencoder=ae.eval())
    model, builder = run.model.to(device), run.batches
    if cfg.train.compile:
        for block in model.trunk.blocks:
            block.compile()
    optimizer = build_optimizer(model, cfg)
    diffusion = Diffusion(cfg.diffusion.timesteps)
    batches = [builder.batch_at(s, 0).to(device) for s in range(steps + 2)]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    autocast = (lambda: torch.autocast(device.type, dtype)) if precision == "bf16" else nullcontext
    with autocast():
        flops_per_token = count_step_flops(model, batches[0], diffusion, cfg) / batches[0].num_tokens
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for s, batch in enumerate(batches):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        train_step(model, [batch], diffusion, cfg, World(), autocast)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        sync()
        if s >= 2:  # two warm-up steps
            times.append((time.perf_counter() - start) / batch.num_tokens)
    seconds_per_token = statistics.median(times)
    peak = matmul_peak_flops(n=2048, device=device, dtype=dtype, trials=3)  # right after the steps, as they ran
    tokens_per_s = 1 / seconds_per_token
    return {"preset": preset, "params_m": model.num_params() / 1e6, "tokens_per_step": batches[0].num_tokens,
            "tokens_per_s": tokens_per_s, "gflop_per_token": flops_per_token / 1e9,
            "achieved_tflops": tokens_per_s * flops_per_token / 1e12, "peak_tflops": peak / 1e12,
            "mfu": tokens_per_s * flops_per_token / peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=list(SHAPES))
    p.add_argument("--steps", type=int, default=10, help="timed steps (median), after 2 warm-up steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("settings", nargs="*", help="key=value config overrides for every preset")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{'preset':<8} {'params':>8} {'tok/step':>8} {'tok/s':>9} {'GFLOP/tok':>10} {'TFLOP/s':>8} "
          f"{'peak':>8} {'MFU':>6}")
    for preset in args.presets:
        r = measure(preset, args.steps, device, args.precision, args.settings)
        print(f"{preset:<8} {r['params_m']:7.1f}M {r['tokens_per_step']:8d} {r['tokens_per_s']:9.0f} "
              f"{r['gflop_per_token']:10.4f} {r['achieved_tflops']:8.3f} {r['peak_tflops']:8.3f} {r['mfu']:6.1%}",
              flush=True)


if __name__ == "__main__":
    main()
