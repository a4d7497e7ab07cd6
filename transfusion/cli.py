"""The ``transfusion`` command: a thin layer over the library.

    transfusion train --preset tiny --out runs/tiny [CONFIG.yaml] [key=value ...]
    transfusion evaluate RUN_OR_CHECKPOINT [--n 64] [--steps 50] [--guidance 3] [--out report.json]
    transfusion tokenizer train --data shapes --out tokenizer.json [--vocab-size 512]
    transfusion autoencoder train --data shapes --out ae/ [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
import sys


def _evaluate(argv: list[str]) -> None:
    from transfusion.checkpoint import load_checkpoint
    from transfusion.evaluate import report

    p = argparse.ArgumentParser(prog="transfusion evaluate", description="Score held-out text to image and captioning.")
    p.add_argument("checkpoint", help="a run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--n", type=int, default=64, help="held-out captions / images to score")
    p.add_argument("--steps", type=int, default=None, help="DDPM steps (default: the run's diffusion.sample_steps)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the run's diffusion.guidance)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the JSON report here too")
    args = p.parse_args(argv)
    loaded = load_checkpoint(args.checkpoint)
    d = loaded.config.diffusion
    summary, _, _ = report(loaded, args.n, args.steps or d.sample_steps,
                           d.guidance if args.guidance is None else args.guidance, args.seed)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def _tokenizer(argv: list[str]) -> None:
    import random

    from transfusion.config import load_config
    from transfusion.data.stream import build_mixture
    from transfusion.tokenizer import BPETokenizer, save_tokenizer

    p = argparse.ArgumentParser(prog="transfusion tokenizer", description="Train a BPE tokenizer.")
    p.add_argument("action", choices=["train"])
    p.add_argument("--data", default="shapes", help="shapes | mnist | a .jsonl manifest | an image folder")
    p.add_argument("--text", default="text", help="text source mixed in ('' for none)")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--samples", type=int, default=20_000, help="documents drawn for training")
    p.add_argument("--out", required=True, help="path of the tokenizer.json to write")
    args = p.parse_args(argv)
    cfg = load_config(overrides=[f"data.dataset={args.data}", f"data.text_dataset={args.text}"])
    mixture = build_mixture(cfg)
    rng = random.Random(0)
    tokenizer = BPETokenizer.train((mixture.draw(rng).caption for _ in range(args.samples)), args.vocab_size)
    save_tokenizer(tokenizer, args.out)
    print(f"wrote {args.out}: vocabulary {tokenizer.vocab_size}")


def _autoencoder(argv: list[str]) -> None:
    from transfusion.autoencoder import cli_train

    if not argv or argv[0] != "train":
        raise SystemExit("usage: transfusion autoencoder train --data shapes --out DIR [...]")
    cli_train(argv[1:])


COMMANDS = {
    "train": lambda argv: __import__("transfusion.train", fromlist=["main"]).main(argv),
    "evaluate": _evaluate,
    "tokenizer": _tokenizer,
    "autoencoder": _autoencoder,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        raise SystemExit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    try:
        COMMANDS[argv[0]](argv[1:])
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"transfusion {argv[0]}: error: {err}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
