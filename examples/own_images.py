"""Your own captioned images, end to end: autoencoder, train, generate, caption, evaluate.

    python examples/own_images.py --images data/emoji --work runs/emoji
    python examples/own_images.py --images data/emoji --work runs/emoji --autoencoder path/to/diffusers_vae

``--images`` holds ``train/`` and ``test/`` folders of NAME.png + NAME.txt (any folder the
``transfusion train data.dataset=...`` reader takes; ``examples/emoji_folder.py`` writes one).
Each step prints the command it runs, so the same can be typed by hand, and is skipped when
its output exists: an interrupted run resumes. See examples/own_images.md for what it measured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# names from the emoji folder: six seen in training, and two held out ("pizza", "woman light skin tone")
PROMPTS = ["red apple", "grinning face", "dog face", "rocket", "Japan", "blue heart", "pizza", "woman light skin tone"]
SAMPLER = ["--sampler", "dpm++", "--steps", "25", "--cfg", "3"]


def sh(args: list) -> None:
    print("$ " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True)


def reference_fids(images: Path, autoencoder: Path, size: int, n: int) -> dict:
    """What FID means on this data: held-out images against as many training images (the
    floor a perfect model would reach at this n), and held-out images against their own
    autoencoder reconstructions (what the latent space alone costs)."""
    import torch

    from transfusion.autoencoders import load_autoencoder
    from transfusion.data.ondisk import ImageFolderDocuments
    from transfusion.metrics.fid import InceptionFeatures, fid

    def pixels(split: str) -> torch.Tensor:
        data = ImageFolderDocuments(images / split, image_size=size)
        return torch.stack([data[i].images[0].pixels for i in range(min(n, len(data)))])

    test, train = pixels("test"), pixels("train")
    ae = load_autoencoder(autoencoder)
    with torch.no_grad():
        recon = torch.cat([ae.decode(ae.encode(chunk)) for chunk in test.split(32)])
    features = InceptionFeatures()
    real = features(test)
    return {"images": len(test), "train_vs_test": fid(real, features(train)),
            "reconstructions_vs_test": fid(real, features(recon))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, type=Path, help="a folder with train/ and test/ image folders")
    parser.add_argument("--work", required=True, type=Path, help="where the autoencoder, run and outputs go")
    parser.add_argument("--autoencoder", default=None,
                        help="a diffusers AutoencoderKL folder or Hub id; default: train a small one (train_vae.py)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--n", type=int, default=256, help="held-out images per evaluation suite")
    parser.add_argument("--no-fid", action="store_true", help="skip FID (it needs the [eval] extra)")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for training")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    work, run = args.work, args.work / "run"
    work.mkdir(parents=True, exist_ok=True)

    # 1. the frozen autoencoder: yours, or a small one trained on the training images
    autoencoder = args.autoencoder or work / "vae"
    if args.autoencoder is None and not (work / "vae" / "config.json").is_file():
        sh([sys.executable, HERE / "train_vae.py", args.images / "train", "--out", autoencoder,
            "--size", args.size, "--steps", args.vae_steps])

    # 2. train on the folder ({split} picks train/ for training, test/ for evaluation)
    if not (run / "report.json").is_file():
        start = time.perf_counter()
        sh(["transfusion", "train", "--preset", args.preset, "--out", run, f"data.dataset={args.images}/{{split}}",
            f"image.size={args.size}", f"autoencoder.name={autoencoder}", *args.overrides])
        (work / "train_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")

    # 3. generate from captions, 4. caption held-out images, 5. evaluate
    if not (work / "generated").is_dir():
        sh(["transfusion", "generate", run, *PROMPTS, "--n", "4", *SAMPLER, "--out", work / "generated"])
    held_out = sorted((args.images / "test").glob("*.png"))[:8]
    if not (work / "captions.json").is_file():
        sh(["transfusion", "caption", run, *held_out, "--out", work / "captions.json"])
    report_path = work / "eval" / "report.json"
    if not report_path.is_file():
        sh(["transfusion", "eval", run, "--suite", "text", "t2i", "i2t", "--n", args.n, *SAMPLER,
            *(["--no-fid"] if args.no_fid else []), "--out", report_path])
    report = json.loads(report_path.read_text())

    summary = {
        "train_seconds": float((work / "train_seconds.txt").read_text()) if (work / "train_seconds.txt").is_file()
        else None,  # a run trained before this script timed it
        "caption_perplexity": report["text"]["captions"]["perplexity"],
        "english_perplexity": report["text"]["english"]["perplexity"],
        "cider_d": report["i2t"]["cider_d"],
        "fid": report["t2i"].get("fid"),
    }
    if not args.no_fid:
        cached = work / "reference_fid.json"
        if not cached.is_file():
            cached.write_text(json.dumps(reference_fids(args.images, Path(autoencoder), args.size, args.n), indent=2))
        summary["reference_fid"] = json.loads(cached.read_text())
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
