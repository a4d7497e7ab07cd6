"""``transfusion tokenizer``, ``autoencoder`` and ``data``: the assets a run is built from
(a BPE tokenizer, an image autoencoder, a sharded corpus or its latents)."""

from __future__ import annotations

from pathlib import Path

from transfusion.cli.flags import parser


def tokenizer(argv: list[str]) -> None:
    from transfusion.config import load_config
    from transfusion.data.sources import build_source
    from transfusion.tokenizer import BPETokenizer, save_tokenizer

    p = parser("tokenizer", "Train a BPE tokenizer.")
    p.add_argument("action", choices=["train"])
    p.add_argument("--data", default="shapes", help="shapes | mnist | a .jsonl manifest | an image folder")
    p.add_argument("--text", default="text", help="text source mixed in ('' for none)")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--samples", type=int, default=20_000, help="documents drawn for training")
    p.add_argument("--out", required=True, help="path of the tokenizer.json to write")
    args = p.parse_args(argv)
    cfg = load_config(overrides=[f"data.dataset={args.data}", f"data.text_dataset={args.text}"])
    tokenizer = BPETokenizer.train(build_source(cfg).text_sample(args.samples, seed=0), args.vocab_size)
    save_tokenizer(tokenizer, args.out)
    print(f"wrote {args.out}: vocabulary {tokenizer.vocab_size}")


def autoencoder(argv: list[str]) -> None:
    import torch

    from transfusion.autoencoders import KLAutoencoder, VQAutoencoder, save_autoencoder, train_autoencoder
    from transfusion.autoencoders.training import DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_STEPS, image_of
    from transfusion.autoencoders.vq import DEFAULT_CODE_DIM
    from transfusion.data.registry import load_dataset
    from transfusion.visualize import reconstruction_grid

    p = parser("autoencoder", "Train a KL (or, with --vq, a VQ) autoencoder, save it, print and draw its "
                "reconstructions.")
    p.add_argument("action", choices=["train"])
    p.add_argument("--data", default="shapes", help="a data.dataset name or path (its images are used)")
    p.add_argument("--out", required=True, help="folder for autoencoder.safetensors/.json and reconstructions.png")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--latent-channels", type=int, default=None,
                   help="latent channels (KL, default 4) or code vector size (VQ, default 8)")
    p.add_argument("--vq", action="store_true", help="a VQ autoencoder: discrete codes (the Chameleon baseline)")
    p.add_argument("--codebook-size", type=int, default=512, help="VQ codebook entries")
    p.add_argument("--downsample", type=int, default=4)
    p.add_argument("--width", type=int, default=16, help="channels at full resolution")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    train_data, test_data = (load_dataset(args.data, split, args.size) for split in ("train", "test"))
    channels = image_of(train_data[0]).shape[0]
    if args.vq:
        model = VQAutoencoder(channels, args.codebook_size, args.latent_channels or DEFAULT_CODE_DIM,
                              args.downsample, args.width)
    else:
        model = KLAutoencoder(channels, args.latent_channels or 4, args.downsample, args.width)
    model.latent_shape(args.size, args.size)  # fail before training on an impossible size
    metrics = train_autoencoder(model, train_data, args.steps, args.batch_size, lr=args.lr, seed=args.seed)
    extra = (f"codebook: {metrics['usage']:.0%} of {args.codebook_size} codes used, perplexity "
             f"{metrics['perplexity']:.0f}" if args.vq else f"latent scale {metrics['scale']:.3f}")
    save_autoencoder(model, args.out)
    pixels = torch.stack([image_of(test_data[i]) for i in range(min(256, len(test_data)))])  # (N, C, H, W)
    recon = model.decode(model.encode(pixels))
    reconstruction_grid(pixels[:8], recon[:8]).save(Path(args.out) / "reconstructions.png")
    print(f"trained {args.steps} steps in {metrics['seconds']:.0f}s; {extra}\n"
          f"train reconstruction: mse {metrics['mse']:.4f}  l1 {metrics['l1']:.4f}\n"
          f"test reconstruction:  mse {(recon - pixels).square().mean():.4f}  "
          f"l1 {(recon - pixels).abs().mean():.4f}  ({len(pixels)} images)\n"
          f"saved the autoencoder and reconstructions.png in {args.out}")


def data(argv: list[str]) -> None:
    from transfusion.data.precompute import precompute_latents, write_corpus

    if not argv or argv[0] not in ("shards", "precompute"):
        raise SystemExit("usage: transfusion data shards --data shapes --out DIR | "
                         "transfusion data precompute SHARDS --autoencoder DIR --out DIR")
    p = parser(f"data {argv[0]}", "Write a sharded corpus, or encode one's images to latents ahead of training.")
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", type=int, default=32)
    if argv[0] == "shards":
        p.add_argument("--data", default="shapes", help="a data.dataset name or path")
        p.add_argument("--docs", type=int, default=10_000)
        p.add_argument("--per-shard", type=int, default=1_000)
        args = p.parse_args(argv[1:])
        n = write_corpus(args.data, args.out, args.docs, args.per_shard, args.image_size)
        print(f"wrote {args.docs} documents in {n} shards to {args.out}")
        return
    p.add_argument("shards", help="a folder of .tar shards or a glob")
    p.add_argument("--autoencoder", required=True, help="an autoencoder folder (e.g. RUN/autoencoder)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv[1:])
    info = precompute_latents(args.shards, args.autoencoder, args.out, args.workers, args.image_size)
    print(f"encoded {info['documents']} documents ({info['skipped']} corrupt records skipped) into {args.out} "
          f"in {info['seconds']:.0f}s on {args.workers} processes")
