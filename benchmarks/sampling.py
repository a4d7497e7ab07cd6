"""Sampling speed: seconds per denoising step and per image versus prefix length.

    python benchmarks/sampling.py [--checkpoint RUN] [--prefixes 16 64 256 1024] [--repeats 3]

For every prefix length, with the prefix KV cache on and off (off: every prefix recomputed
at every step, ``Engine(cache_prefix=False)``), batch 1 and 8, guidance off (scale 1) and
on (scale 3), it times ``DiffusionImages.make`` on prompts already in the cache with ``s1`` and
``s2`` deterministic (DDIM) steps: the difference over ``s2 - s1`` is the cost of one
denoising step. Seconds per image are for an ``--image-steps`` image: (a whole one-step
``Engine.generate`` call, prefill and decoding included, + the remaining steps at the
measured step cost) / batch. Medians over ``--repeats`` runs. The last table is the cache's acceptance figure: step cost
at a 256-token prefix over that at a 16-token prefix.

Without ``--checkpoint`` the model is the ``small`` preset's shape with random weights
(speed does not depend on the weights): 6 layers of width 256, 16 latent patches per image.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from transfusion.autoencoders import new_autoencoder
from transfusion.checkpoint import load_checkpoint
from transfusion.config import load_config
from transfusion.data.document import Tokens
from transfusion.engine import Engine, Request, Row
from transfusion.model.transfusion import Transfusion
from transfusion.tokenizer import ByteTokenizer


def build(checkpoint: str | None, longest: int):
    if checkpoint:
        loaded = load_checkpoint(checkpoint)
        return loaded.model, loaded.tokenizer, loaded.autoencoder, loaded.config
    cfg = load_config("small", overrides=[f"model.max_seq_len={longest}"])
    tok = ByteTokenizer()
    ae = new_autoencoder(cfg.autoencoder).eval()
    torch.manual_seed(0)
    return Transfusion(cfg.model, cfg.image, tok.vocab_size, ae.latent_channels, seed=cfg.train.seed).eval(), tok, ae, cfg


def timed(engine: Engine, prompts: list, req: Request) -> float:
    """Seconds of a whole generation (prefill, BOI, a ``req.steps``-step image, decoding)."""
    start = time.perf_counter()
    engine.generate(prompts, req, force_image=True)
    return time.perf_counter() - start


def timed_denoise(engine: Engine, prompts: list, req: Request) -> float:
    """Seconds of the image maker alone (``DiffusionImages.make``), for prompts whose prefix (and
    BOI) is in the cache."""
    req = req.resolve(engine.config, engine.ae)
    B = len(prompts)
    cache, positions, _ = engine.prefill(prompts)
    hidden = engine.step_text(cache, torch.full((B,), engine.tok.boi_id), positions, torch.ones(B, dtype=torch.bool))
    rows = torch.arange(B)
    generators = [torch.Generator().manual_seed(b) for b in range(B)]
    start = time.perf_counter()
    engine.image_maker.make(cache, rows, positions, req, generators, [Row(list(p), []) for p in prompts], hidden)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a run or checkpoint folder (default: random small model)")
    p.add_argument("--prefixes", type=int, nargs="+", default=[16, 64, 256, 1024])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--s1", type=int, default=1)
    p.add_argument("--s2", type=int, default=9)
    p.add_argument("--image-steps", type=int, default=30, help="steps of the image that s/image is quoted for")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, ae, cfg = build(args.checkpoint, max(args.prefixes) + 64)
    engines = {True: Engine(model, tok, ae, cfg), False: Engine(model, tok, ae, cfg, cache_prefix=False)}
    n = model.num_patches(ae.latent_shape(cfg.image.size, cfg.image.size)[1:])
    fits = [q for q in args.prefixes if q + n + 1 <= cfg.model.max_seq_len]
    if fits != args.prefixes:
        print(f"skipping prefixes that leave no room for an image in model.max_seq_len={cfg.model.max_seq_len}")
        args.prefixes = fits
    print(f"model: {model.num_params() / 1e6:.1f}M parameters, {n} patches per image, {args.threads} threads, "
          f"medians of {args.repeats}; s/step from {args.s1} vs {args.s2} DDIM steps of DiffusionImages.make")

    rows = []
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for prefix in args.prefixes:
            ids = torch.randint(0, 255, (prefix - 1,), generator=generator).tolist()  # + BOS = prefix tokens
            for batch in args.batches:
                prompts = [[Tokens(tuple(ids))] for _ in range(batch)]
                for guidance in (1.0, 3.0):
                    for cache in (True, False):
                        engine = engines[cache]
                        req = Request(max_new_tokens=1, sampler="ddim", guidance=guidance)
                        with_steps = lambda k: dataclasses.replace(req, steps=k)  # noqa: E731
                        timed(engine, prompts, with_steps(1))  # warm-up
                        whole, t1, t2 = [], [], []
                        for _ in range(args.repeats):
                            whole.append(timed(engine, prompts, with_steps(args.s1)))
                            t1.append(timed_denoise(engine, prompts, with_steps(args.s1)))
                            t2.append(timed_denoise(engine, prompts, with_steps(args.s2)))
                        step = statistics.median(b - a for a, b in zip(t1, t2)) / (args.s2 - args.s1)
                        per_image = (statistics.median(whole) + (args.image_steps - args.s1) * step) / batch
                        rows.append({"prefix": prefix, "batch": batch, "guidance": guidance, "cache": cache,
                                     "step_ms": step * 1e3, "image_s": per_image})
                        print(f"  prefix {prefix:5d}  batch {batch}  cfg {guidance:g}  cache {'on ' if cache else 'off'}"
                              f"  {step * 1e3:8.1f} ms/step  {per_image:7.3f} s/image", flush=True)

    print(f"\n| prefix | batch | cfg | ms/step cache on | ms/step cache off | speed-up | s/image ({args.image_steps} "
          f"steps) on | off |")
    print("|---|---|---|---|---|---|---|---|")
    get = {(r["prefix"], r["batch"], r["guidance"], r["cache"]): r for r in rows}
    for prefix in args.prefixes:
        for batch in args.batches:
            for guidance in (1.0, 3.0):
                on, off = get[prefix, batch, guidance, True], get[prefix, batch, guidance, False]
                print(f"| {prefix} | {batch} | {guidance:g} | {on['step_ms']:.1f} | {off['step_ms']:.1f} | "
                      f"{off['step_ms'] / max(on['step_ms'], 1e-9):.1f}x | {on['image_s']:.3f} | {off['image_s']:.3f} |")
    if 16 in args.prefixes and 256 in args.prefixes:
        print("\nstep cost at a 256-token prefix / at a 16-token prefix (acceptance: cache on <= 1.5)")
        print("| batch | cfg | cache on | cache off |")
        print("|---|---|---|---|")
        for batch in args.batches:
            for guidance in (1.0, 3.0):
                ratio = [get[256, batch, guidance, c]["step_ms"] / max(get[16, batch, guidance, c]["step_ms"], 1e-9)
                         for c in (True, False)]
                print(f"| {batch} | {guidance:g} | {ratio[0]:.2f} | {ratio[1]:.2f} |")


if __name__ == "__main__":
    main()
