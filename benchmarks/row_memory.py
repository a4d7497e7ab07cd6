"""Peak memory and time of one training step against row length, at the 0.16B trunk's shape.

    python benchmarks/row_memory.py                                   # rows of 256 .. 4096 tokens
    python benchmarks/row_memory.py --lengths 4096 --layouts one_document model.attention=sdpa
    python benchmarks/row_memory.py --lengths 4096 train.activation_checkpointing=true
    python benchmarks/row_memory.py --plot docs/measurements/row_memory.jsonl docs/speed/memory_vs_row.png

The trunk is the paper's 0.16B (16 layers, width 768, 12 heads); images are 64 px pixels
through the two-block U-Net of ``benchmarks/train_throughput.py`` (64 positions each), so
the row length is the variable. Two layouts of one row:

    packed        documents of 32 text tokens + one image, packed first-fit (training's rows):
                  the mask is block-diagonal, one small block per document
    one_document  one document of text and images alternating over the whole row: the mask
                  is causal over all of it (the worst case)

Each measurement is a fresh process (its peak resident memory, ``ru_maxrss``, is its own):
model, AdamW, two steps (the second timed). Prints one line per setting.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

LAYOUTS = ("packed", "one_document")
TEXT, PATCHES = 32, 64  # text tokens before each image; positions of a 64 px image
PAIR = TEXT + 1 + PATCHES + 1  # text, BOI, patches, EOI
SHAPE = ["model.dim=768", "model.n_layers=16", "model.n_heads=12", "image.size=64", "autoencoder.name=identity",
         "image.unet_channels=[128,256]", "image.patch_size=2", "image.adapter=unet"]


def documents(layout: str, length: int, generator):
    """Segments of the row's documents: many short ones, or one that fills the row."""
    import torch

    from transfusion.data.document import Image, Tokens

    pair = lambda: [Tokens(tuple(torch.randint(0, 256, (TEXT,), generator=generator).tolist())),  # noqa: E731
                    Image(torch.rand(3, 64, 64, generator=generator) * 2 - 1)]
    if layout == "packed":  # each document: BOS, one pair, EOS
        return [pair() for _ in range(max(1, length // (PAIR + 2)))]
    return [[seg for _ in range(max(1, (length - 2) // PAIR)) for seg in pair()]]


def worker(layout: str, length: int, overrides: list[str]) -> dict:
    import torch

    from transfusion.autoencoders import IdentityAutoencoder
    from transfusion.components import build_components
    from transfusion.config import load_config
    from transfusion.data.document import Image
    from transfusion.data.packing import layout as lay_out, pack
    from transfusion.diffusion import Diffusion
    from transfusion.objective import compute_losses
    from transfusion.optim import build_optimizer
    from transfusion.tokenizer import ByteTokenizer

    torch.set_num_threads(2)
    cfg = load_config(None, overrides=[*SHAPE, f"model.max_seq_len={length}", f"data.seq_len={length}", *overrides])
    run = build_components(cfg, tokenizer=ByteTokenizer(), autoencoder=IdentityAutoencoder())
    tok, model = run.tokenizer, run.model
    model.trunk.checkpointing = cfg.train.activation_checkpointing
    g = torch.Generator().manual_seed(0)
    lays = []
    for doc in documents(layout, length, g):
        images = [s.pixels for s in doc if isinstance(s, Image)]
        lays.append(lay_out(doc, images, [cfg.diffusion.timesteps] * len(images), tok, model.num_patches))
    batch, placed = pack(lays, 1, length, tok.pad_id)
    optimizer, diffusion = build_optimizer(model, cfg), Diffusion(cfg.diffusion.timesteps)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = 0.0
    for _ in range(2):
        start = time.perf_counter()
        batch.t, batch.noise = diffusion.draw(batch.latents, batch.max_t, g)
        loss = compute_losses(model, batch, diffusion, cfg.diffusion.loss_weight)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - start
    return {"layout": layout, "length": length, "tokens": int((batch.doc_ids >= 0).sum()), "documents": placed,
            "attention": cfg.model.attention, "checkpointing": cfg.train.activation_checkpointing,
            "params_m": model.num_params() / 1e6, "seconds": seconds, "model_mb": before,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def plot(results: str, png: str) -> None:
    """Peak memory and step time against row length, one line per (layout, attention, checkpointing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(results) if line.strip()]
    series: dict = {}
    for r in rows:  # the latest measurement of each point
        series.setdefault((r["layout"], r["attention"], r["checkpointing"]), {})[r["length"]] = r
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (layout, attention, ckpt), points in sorted(series.items()):
        lengths = sorted(points)
        label = f"{layout}, {attention}" + (", checkpointing" if ckpt else "")
        style = "-" if layout == "packed" else "--"
        axes[0].plot(lengths, [points[n]["peak_mb"] / 1024 for n in lengths], style, marker="o", label=label)
        axes[1].plot(lengths, [points[n]["seconds"] for n in lengths], style, marker="o", label=label)
    for ax, title in zip(axes, ("peak resident memory (GiB)", "training step (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("row length (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].axhline(8, color="grey", lw=0.8)
    axes[0].legend(fontsize=7)
    fig.suptitle("0.16B trunk (16 x 768), one row per step, 2 CPU threads, fp32")
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 1024, 2048, 4096])
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    p.add_argument("--out", help="also append each result as a JSON line here")
    p.add_argument("--plot", nargs=2, metavar=("RESULTS_JSONL", "PNG"), help="draw earlier results and exit")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value config overrides (model.attention=..., ...)")
    args = p.parse_args()
    if args.plot:
        return plot(*args.plot)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.overrides)))
        return
    print(f"{'layout':<13} {'row':>5} {'tokens':>6} {'docs':>4} {'attention':>9} {'ckpt':>5} {'step s':>7} "
          f"{'model MB':>9} {'peak MB':>8}", flush=True)
    for layout in args.layouts:
        for length in args.lengths:
            done = subprocess.run([sys.executable, __file__, "--worker", layout, str(length), *args.overrides],
                                  capture_output=True, text=True)
            if done.returncode:
                print(f"{layout:<13} {length:>5} failed: {done.stderr.strip().splitlines()[-1]}", flush=True)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{layout:<13} {length:>5} {r['tokens']:>6} {r['documents']:>4} {r['attention']:>9} "
                  f"{str(r['checkpointing']):>5} {r['seconds']:7.2f} {r['model_mb']:9.0f} {r['peak_mb']:8.0f}", flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps({**r, "overrides": args.overrides}) + "\n")


if __name__ == "__main__":
    main()
