"""A run's components, built from its config: source, tokenizer, autoencoder, model, batches.

    run = build_components(cfg)                      # everything as the config names it
    run = build_components(cfg, tokenizer=ByteTokenizer(), autoencoder=IdentityAutoencoder())
    batch = run.batches.batch_at(step, cfg.train.seed)

What is passed in is used as given; the rest is built: the source by ``data.*``
(``build_source``), the tokenizer by ``data.tokenizer`` (``build_tokenizer``), the autoencoder
by ``autoencoder.name`` (``build_autoencoder``), the model by ``Transfusion.build``, and the
batch builder over them. ``transfusion train`` makes its tokenizer and autoencoder in the run
folder and its model sharded (``distributed.build_model``), and passes them in.
"""

from __future__ import annotations

from dataclasses import dataclass

from transfusion.autoencoders import Autoencoder, load_autoencoder
from transfusion.config import Config
from transfusion.data.sources import Source, build_source
from transfusion.data.stream import BatchBuilder
from transfusion.hf import pretrained_tokenizer
from transfusion.model.transfusion import Transfusion
from transfusion.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer

BPE_TEXTS = 20_000  # documents whose text a run's BPE tokenizer learns from


@dataclass
class Components:
    source: Source  # the training documents, as the batches read them (reweighted by data.mix_by=tokens)
    tokenizer: Tokenizer
    autoencoder: Autoencoder
    model: Transfusion  # untrained unless passed in
    batches: BatchBuilder  # .batch_at(step, seed, rows): the packed, encoded batches of training


def build_tokenizer(cfg: Config, source: Source) -> Tokenizer:
    """The run's tokenizer: a pretrained model's own (``model.init_from``, on a first start),
    bytes, a BPE learnt from ``source``'s text (``data.tokenizer=bpe``), or a tokenizer.json."""
    spec = cfg.data.tokenizer
    if cfg.model.init_from and not cfg.train.init_from:  # a pretrained model reads with its own tokenizer
        return pretrained_tokenizer(cfg.model.init_from)
    if spec == "bytes":
        return ByteTokenizer()
    if spec == "bpe":
        return BPETokenizer.train(source.text_sample(BPE_TEXTS, cfg.train.seed), cfg.data.bpe_vocab_size)
    return load_tokenizer(spec)


def build_autoencoder(cfg: Config, source: Source) -> Autoencoder:
    """The autoencoder ``autoencoder.name`` names; a corpus of precomputed latents brings its
    own (checked by fingerprint). ``train`` has none to load: ``transfusion train`` trains it."""
    ae = source.autoencoder(cfg.autoencoder.name)
    if ae is not None:
        return ae
    if cfg.autoencoder.name == "train":
        raise ValueError("autoencoder.name=train is trained into a run folder by `transfusion train`: "
                         "pass an autoencoder, or name one (a folder, a Hub repo id, identity)")
    return load_autoencoder(cfg.autoencoder.name)


def build_components(cfg: Config, *, source: Source | None = None, tokenizer: Tokenizer | None = None,
                     autoencoder: Autoencoder | None = None, model: Transfusion | None = None,
                     seed: int | None = None) -> Components:
    """The components of a run of ``cfg``, those given used as they are; ``seed``: the new
    model's initialisation (default ``train.seed``)."""
    source = build_source(cfg) if source is None else source
    tokenizer = build_tokenizer(cfg, source) if tokenizer is None else tokenizer
    autoencoder = build_autoencoder(cfg, source) if autoencoder is None else autoencoder
    if model is None:
        model = Transfusion.build(cfg.model, cfg.image, tokenizer, autoencoder, cfg.train.seed if seed is None else seed)
    batches = BatchBuilder(cfg, source, tokenizer, autoencoder, model.num_patches)
    return Components(batches.source, tokenizer, autoencoder, model, batches)
