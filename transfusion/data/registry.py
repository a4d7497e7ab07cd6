"""Dataset names -> datasets: what ``data.dataset`` in a config may say.

    load_dataset("shapes", "train", image_size=32)     # synthetic shapes with scene captions
    load_dataset("mnist", "test", image_size=32)       # real handwritten digits
    load_dataset("text", "train", image_size=32)       # English prose, text-only documents
    load_dataset("edits", "train", image_size=32)      # shapes editing triples (source, instruction, output)
    load_dataset("data/{split}.jsonl", "train", 64)    # a JSONL manifest of documents
    load_dataset("photos/{split}", "test", 64)         # a folder of images + NAME.txt captions
    load_dataset("corpus/{split}", "test", 64)         # .tar shards (its first documents)
    load_dataset("corpus/{split}", "train", 64, streams=8)  # .tar shards whole, read as 8 streams (training's)
    load_dataset("laion/{split}", "train", 64)         # .tar shards of img2dataset pairs (KEY.jpg + KEY.txt)
    load_dataset("hf/{split}", "train", 64)            # Parquet files of image bytes + captions (HF datasets)

Every dataset has ``__len__`` and ``__getitem__(i) -> Document``. Built-in datasets carry
a fixed train/test split; ``shapes`` also a validation split (1,000 documents of the training
distribution, for tuning before a test). User data has none: a ``{split}`` in the path is
replaced by the split name, and a path without it serves the same documents to every split.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_NAMES = ("shapes", "mnist", "text", "edits")
SPLITS = ("train", "validation", "test")
EVAL_DOCUMENTS = 4096  # documents a sharded corpus lends to evaluation and autoencoder training


def load_dataset(spec: str, split: str, image_size: int, on_error: str = "raise", streams: int = 0, seed: int = 0):
    """The dataset named by ``spec`` for ``split`` ("train", "validation" or "test").

    ``spec`` is a built-in name (``BUILTIN_NAMES``), a path ending in ``.jsonl`` or an
    existing folder of captioned images; images come out as (3, image_size, image_size).
    ``on_error`` ("raise" | "skip") applies to user data: see ``transfusion.data.ondisk``.
    .tar shards give their first ``EVAL_DOCUMENTS`` documents, or with ``streams`` > 0 the
    whole ``ShardedCorpus``, read as that many streams in a shard order shuffled by ``seed``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "validation" and spec in BUILTIN_NAMES and spec != "shapes":
        raise ValueError(f"the built-in {spec!r} data has no validation split (shapes has); "
                         "tune on the train split's documents or a folder of your own")
    # imports are local: each dataset pulls in only what it needs
    if spec == "shapes":
        from transfusion.data.shapes import ShapesDataset

        return ShapesDataset(split, size=image_size)
    if spec == "mnist":
        from transfusion.data.mnist import MnistDataset

        return MnistDataset(split, size=image_size)
    if spec == "edits":
        from transfusion.data.edits import EditsDataset

        return EditsDataset(split, size=image_size)
    if spec == "text":
        from transfusion.data.text import EnglishText

        return EnglishText(split)
    from transfusion.data.shards import ShardedCorpus, is_sharded

    path = Path(spec.replace("{split}", split)).expanduser()
    if is_sharded(str(path)):
        if streams > 0:
            return ShardedCorpus(str(path), image_size, streams, seed)
        return ShardedCorpus(str(path), image_size, streams=1).head(EVAL_DOCUMENTS)
    from transfusion.data.parquet import ParquetDocuments, is_parquet

    if is_parquet(str(path)):
        return ParquetDocuments(str(path), image_size=image_size, on_error=on_error)
    if path.suffix == ".jsonl":
        from transfusion.data.ondisk import JsonlDocuments

        return JsonlDocuments(path, image_size=image_size, on_error=on_error)
    if path.is_dir():
        from transfusion.data.ondisk import ImageFolderDocuments

        return ImageFolderDocuments(path, image_size=image_size, on_error=on_error)
    raise ValueError(
        f"unknown dataset {spec!r}: expected one of {', '.join(BUILTIN_NAMES)}, "
        f"a path to a .jsonl manifest, .tar shards, .parquet files or an existing folder of images with NAME.txt "
        f"captions"
    )
