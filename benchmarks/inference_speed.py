"""CPU inference speed against quality: fp32 eager (today's default) against thread counts,
int8 dynamic quantisation of the trunk and torch.compile (``engine/speedups.py``).

    python benchmarks/inference_speed.py RUN [--variants fp32 threads1 int8 bf16 compile] [--repeats 5]
        [--quality 1000] [--out docs/measurements/inference_speed_RUN.json]

For each variant: seconds per image (one caption, SDE-DPM-Solver++ 25 steps, guidance 3, the
interactive default) and per caption (one image, greedy, 24 tokens), medians over
``--repeats`` after a warm-up call (whose time, a compile's included, is shown apart); with
``--quality N``, the attribute reader's scores of N held-out captions' images and of N
held-out images' captions, as ``transfusion eval`` computes them. Variants run one after the
other in one process, interleaved over the repeats so that a slower moment of the machine
falls on all of them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from transfusion.checkpoint import load_checkpoint
from transfusion.data.document import Image
from transfusion.engine import Engine, Request, tasks
from transfusion.engine.speedups import bf16_trunk, compiled, quantized_trunk
from transfusion.evaluate import evaluate

VARIANTS = {"fp32": lambda m: m, "threads1": lambda m: m, "int8": quantized_trunk, "bf16": bf16_trunk,
            "int8-tensor": lambda m: quantized_trunk(m, per_channel=False), "compile": compiled,
            "int8+compile": lambda m: compiled(quantized_trunk(m))}
THREADS = {"threads1": 1}  # variant -> torch threads (else the default)
IMAGE_REQUEST = Request(sampler="dpm++sde", steps=25, guidance=3.0, seed=0)


def one_image(engine: Engine) -> None:
    tasks.text_to_image(engine, ["a large red circle on the left"], IMAGE_REQUEST)


def one_caption(engine: Engine, pixels: torch.Tensor) -> None:
    tasks.caption(engine, [[Image(pixels)]], Request(max_new_tokens=24))


def timed(fn, threads: int | None) -> float:
    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(default)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run or checkpoint folder")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quality", type=int, default=0, help="held-out captions and images scored per variant")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args()
    loaded = load_checkpoint(args.run)
    pixels = torch.zeros(3, loaded.config.image.size, loaded.config.image.size)
    engines, warmup = {}, {}
    for name in args.variants:
        engine = Engine(VARIANTS[name](loaded.model), loaded.tokenizer, loaded.autoencoder, loaded.config)
        warmup[name] = timed(lambda: (one_image(engine), one_caption(engine, pixels)), THREADS.get(name))
        engines[name] = engine
    times: dict = {name: {"image": [], "caption": []} for name in args.variants}
    for _ in range(args.repeats):
        for name, engine in engines.items():
            times[name]["image"].append(timed(lambda: one_image(engine), THREADS.get(name)))
            times[name]["caption"].append(timed(lambda: one_caption(engine, pixels), THREADS.get(name)))
    rows = {}
    for name in args.variants:
        rows[name] = {"image_s": statistics.median(times[name]["image"]),
                      "caption_s": statistics.median(times[name]["caption"]), "warmup_s": warmup[name]}
        if args.quality:
            model = engines[name].model
            run = type(loaded)(model, loaded.tokenizer, loaded.autoencoder, loaded.config, loaded.step, loaded.path)
            torch.set_num_threads(THREADS.get(name) or torch.get_num_threads())
            report, _ = evaluate(run, ("t2i", "i2t"), args.quality, IMAGE_REQUEST, fid=False)
            rows[name]["t2i"] = report["t2i"]["accuracy"]
            rows[name]["i2t"] = report["i2t"]["accuracy"]
    base = rows[args.variants[0]]
    print(f"{loaded.path} ({torch.get_num_threads()} threads by default), medians of {args.repeats}")
    print("| variant | s / image | speed-up | s / caption | speed-up | first call (s) |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['image_s']:.2f} | {base['image_s'] / r['image_s']:.2f}x | {r['caption_s']:.3f} | "
              f"{base['caption_s'] / r['caption_s']:.2f}x | {r['warmup_s']:.1f} |")
    if args.quality:
        attributes = list(base["t2i"])
        print("\n| variant | " + " | ".join(f"t2i {a}" for a in attributes) + " | "
              + " | ".join(f"caption {a}" for a in base["i2t"]) + " |")
        print("|---|" + "---|" * (len(attributes) + len(base["i2t"])))
        for name, r in rows.items():
            print(f"| {name} | " + " | ".join(f"{100 * r['t2i'][a]:.1f}%" for a in attributes) + " | "
                  + " | ".join(f"{100 * v:.1f}%" for v in r["i2t"].values()) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"run": str(args.run), "repeats": args.repeats, "quality_n": args.quality,
                                        "threads": torch.get_num_threads(), "variants": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
