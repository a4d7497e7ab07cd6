"""Encode a sharded corpus's images into autoencoder latents once, ahead of training.

    transfusion data shards --data shapes --out corpus/ --docs 20000 --per-shard 1000
    transfusion data precompute corpus/ --autoencoder runs/tiny/autoencoder --out latents/ --workers 4

Each worker process takes every ``workers``-th shard and writes a shard of the same name
whose image segments are ``{"latent": NAME.npy}`` float arrays. The corpus names its
autoencoder: a copy of it in ``autoencoder/`` and its fingerprint in ``latents.json``, so
training on ``data.dataset=latents/`` skips encoding altogether and uses that autoencoder
(a run given another one stops with an error). Corrupt records are counted, reported and
left out.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from transfusion.autoencoders import autoencoder_fingerprint, load_autoencoder, save_autoencoder
from transfusion.data.ondisk import BadRecordError
from transfusion.data.shards import CORPUS_AUTOENCODER, ShardedCorpus, add_record, decode_record, read_records
from transfusion.fileio import atomic_text, atomic_write


def _encode_shard(job: tuple[str, str, str, int, int]) -> tuple[str, int, int, list[str]]:
    """Worker: one shard in, one latent shard out; returns (name, written, skipped, errors)."""
    src, folder, out, image_size, batch = job
    torch.set_num_threads(1)
    ae = load_autoencoder(folder).eval()
    src, target = Path(src), Path(out) / Path(src).name
    written, errors, pending = 0, [], []

    def npy(latent: torch.Tensor) -> bytes:
        buf = io.BytesIO()
        np.save(buf, latent.float().numpy(), allow_pickle=False)
        return buf.getvalue()

    def flush(tar):
        nonlocal written
        pixels = [image.pixels for _, doc in pending for image in doc.images]
        latents = iter(ae.encode(torch.stack(pixels)) if pixels else [])
        for key, doc in pending:
            add_record(tar, key, doc, (npy(next(latents)) for _ in doc.images), "latent", "npy")
            written += 1
        pending.clear()

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w") as tar, torch.no_grad():
            for _, key, members in read_records(src):
                if isinstance(members, Exception):
                    errors.append(f"{src.name}: unreadable from here on ({members})")
                    break
                try:
                    pending.append((key, decode_record(key, members, image_size, latents=False)))
                except BadRecordError as err:
                    errors.append(f"{src.name}: {err}")
                if len(pending) >= batch:
                    flush(tar)
            flush(tar)

    atomic_write(target, write)
    return src.name, written, len(errors), errors


def precompute_latents(shards: str, autoencoder: str | Path, out: str | Path, workers: int = 2,
                       image_size: int = 32, batch: int = 64) -> dict:
    """Encode every shard of ``shards`` into ``out`` on ``workers`` processes; returns counts."""
    corpus = ShardedCorpus(shards, image_size, streams=1)
    if corpus.latents:
        raise ValueError(f"{shards} already holds latents")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(s), str(autoencoder), str(out), image_size, batch) for s in corpus.shards]
    start, written, skipped = time.perf_counter(), 0, 0
    ctx = mp.get_context("spawn")  # fresh interpreters: no inherited torch threads
    with ctx.Pool(max(1, min(workers, len(jobs)))) as pool:
        for name, n, bad, errors in pool.imap_unordered(_encode_shard, jobs):
            written, skipped = written + n, skipped + bad
            for e in errors:
                print(f"skipped a corrupt record: {e}", file=sys.stderr)
            print(f"{name}: {n} documents", flush=True)
    ae = load_autoencoder(autoencoder)
    save_autoencoder(ae, out / CORPUS_AUTOENCODER)
    info = {"autoencoder": str(Path(autoencoder).resolve()), "fingerprint": autoencoder_fingerprint(ae),
            "latent_channels": ae.latent_channels, "image_size": image_size, "documents": written, "skipped": skipped}
    atomic_text(out / "latents.json", json.dumps(info, indent=2) + "\n")
    return {**info, "seconds": time.perf_counter() - start}


def write_corpus(data: str, out: str | Path, docs: int, per_shard: int, image_size: int = 32, seed: int = 0) -> int:
    """A sharded corpus of ``docs`` documents drawn from a dataset (``data.dataset`` names)."""
    import random

    from transfusion.config import load_config
    from transfusion.data.shards import write_shard
    from transfusion.data.sources import drawn_mixture

    cfg = load_config(overrides=[f"data.dataset={data}", f"image.size={image_size}"])
    mixture = drawn_mixture(cfg)
    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, docs, per_shard)):
        n = min(per_shard, docs - start)
        write_shard(out / f"shard-{i:06d}.tar", (mixture.draw(rng) for _ in range(n)), start=start)
    return -(-docs // per_shard)
