"""Does an LMFusion run (``model.freeze_text``) learn to begin an image on its own?

    python benchmarks/lmfusion_images.py [--folder PRETRAINED_LM] [--steps 200] [--n 64] [--out runs/lmfusion]
    python benchmarks/lmfusion_images.py --frozen-new-rows ...   # the recipe before BOI/EOI rows trained

Trains a `debug`-size LMFusion run (MoT, frozen pretrained text weights) from a pretrained
language model folder (default: the tiny random Llama with a 320-token BPE that the tests use),
with 20% interleaved documents, then continues N held-out interleaved documents from their first
phrase, greedily and without forcing an image, and prints how many emit an image. With
``--frozen-new-rows`` the added BOI/EOI rows of the embedding and LM head stay frozen at their
starting values, as every row was before: the model then cannot learn when to emit BOI. A run
folder that already exists is resumed (a finished one only re-samples).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", default=None, help="a transformers Llama / Qwen folder (default: a tiny random one)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--n", type=int, default=64, help="held-out interleaved documents continued")
    p.add_argument("--out", default="runs/lmfusion_images")
    p.add_argument("--frozen-new-rows", action="store_true", help="keep BOI/EOI rows frozen (the old recipe)")
    args = p.parse_args()

    from transfusion.checkpoint import load_checkpoint
    from transfusion.cli import COMMANDS
    from transfusion.engine import Engine, Request, tasks
    from transfusion.evaluate import held_out_interleaved
    from transfusion.tokenizer import BPETokenizer

    out = Path(args.out) / f"{'frozen' if args.frozen_new_rows else 'trained'}_rows_{args.steps}"
    folder = args.folder
    if folder is None:
        folder = Path(args.out) / "llama"
        if not (folder / "config.json").is_file():
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import pretrained_folder  # the tests' tiny random Llama

            pretrained_folder(Path(args.out), tie=True)
    if args.frozen_new_rows:
        BPETokenizer.new_ids = property(lambda self: ())  # freeze_text then trains no embedding or head row
    start = time.perf_counter()
    COMMANDS["train"](["--preset", "debug", "--out", str(out), f"model.init_from={folder}", "model.mot=true",
                       "model.freeze_text=true", f"train.steps={args.steps}", "optim.warmup_steps=10",
                       "data.interleaved_fraction=0.2", "train.eval_samples=2", "sampling.steps=2",
                       f"train.checkpoint_every={args.steps}"])
    seconds = time.perf_counter() - start
    loaded = load_checkpoint(out)
    docs = held_out_interleaved(loaded, args.n)
    prompts = [[d.segments[0]] for d in docs]  # the first phrase: the model decides whether an image follows
    engine = Engine(loaded.model, loaded.tokenizer, loaded.autoencoder, loaded.config)
    samples = tasks.continue_documents(engine, prompts, Request(max_new_tokens=16, max_images=4, steps=2),
                                       batch_size=16).samples
    emitting = sum(bool(s.images) for s in samples)
    images = sum(len(s.images) for s in samples)
    phrases = sum(len(d.meta["scenes"]) for d in docs)
    rows = "frozen" if args.frozen_new_rows else "trained"
    print(f"BOI/EOI rows {rows}, {args.steps} steps ({seconds:.0f} s): {emitting}/{len(samples)} documents emit an "
          f"image unforced ({images} images for {phrases} phrases of the held-out documents)")


if __name__ == "__main__":
    main()
