"""Typed configuration: nested dataclasses, named presets, YAML files and dot-list overrides.

    cfg = load_config(preset="tiny", files=["configs/flow_mot.yaml"], overrides=["train.steps=100"])

Precedence, lowest first: dataclass defaults, the preset, YAML files, ``key.sub=value``
overrides. The resolved config is saved next to every run and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

# each sampler's step count when neither a request nor the run's config names one, per objective
SAMPLER_STEPS = {"ddpm": 250, "ddim": 50, "dpm++": 25, "dpm++sde": 25, "unipc": 25, "euler": 25, "heun": 25}
OBJECTIVE_SAMPLERS = {"ddpm": ("ddpm", "ddim", "dpm++", "dpm++sde", "unipc"), "flow": ("euler", "heun")}


def default_sampler(objective: str) -> str:
    """What ``diffusion.sampler=auto`` means: the first sampler of the objective."""
    return OBJECTIVE_SAMPLERS[objective][0]


def check_sampler(name: str, steps: int | None = None, timesteps: int = 1000, objective: str | None = None,
                  eta: float = 0.0) -> None:
    """A clear error for an unknown sampler name, one of the other objective, a step count it cannot
    take, or an ``eta`` (DDIM's noise share, in [0, 1]) given to another sampler.

    DDIM (diffusers' ``DDIMScheduler``) steps from t to t - T // steps whatever the grid:
    with a count that does not divide T, some steps would land on the wrong noise level.
    """
    if name not in SAMPLER_STEPS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_STEPS)}")
    if objective is not None and name not in OBJECTIVE_SAMPLERS[objective]:
        raise ValueError(f"sampler {name!r} does not sample diffusion.objective={objective}; use one of "
                         f"{', '.join(OBJECTIVE_SAMPLERS[objective])}")
    if not 0 <= eta <= 1 or (eta and name != "ddim"):
        raise ValueError(f"eta must be in [0, 1] and is DDIM's; got {eta} for {name}")
    if steps is None:
        return
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampling steps must be in 1..{timesteps}, got {steps}")
    if name == "ddim" and timesteps % steps:
        divisors = [d for d in range(1, timesteps + 1) if timesteps % d == 0]
        near = [max(d for d in divisors if d < steps), min(d for d in divisors if d > steps)]
        raise ValueError(f"ddim needs a step count that divides the {timesteps} training timesteps; {steps} does "
                         f"not (try {near[0]} or {near[1]}, or dpm++, which takes any count)")


@dataclass
class ModelConfig:
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden: int = 0  # 0: the Llama default, 8/3 * dim rounded up to a multiple of 64
    max_seq_len: int = 512  # longest document the model takes (RoPE positions)
    rope_theta: float = 10000.0
    # rotary frequencies rescaled for long contexts: none | llama3 (Llama 3.1 / 3.2: channels whose wavelength
    # exceeds rope_original_max_len / rope_low_freq_factor turn rope_factor times slower, those below
    # rope_original_max_len / rope_high_freq_factor stay, those between are interpolated)
    rope_scaling: str = "none"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    norm_eps: float = 1e-5
    attention: str = "sdpa"  # sdpa (dense boolean mask) | chunked (query blocks, no L x L mask) | flex (CUDA)
    attention_chunk: int = 512  # chunked: queries per block
    mot: bool = False  # Mixture-of-Transformers: a text and an image copy of every trunk norm and projection
    n_kv_heads: int = 0  # key/value heads (grouped-query attention); 0: n_heads
    head_dim: int = 0  # channels per head; 0: dim // n_heads (Qwen3 has wider heads: 16 x 128 over 1024)
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2)
    qk_norm: bool = False  # RMSNorm of each query and key head before the rotation (Qwen3)
    tie_embeddings: bool = False  # the LM head is the token embedding
    # a Hugging Face causal-LM folder (Llama, SmolLM, Qwen2/2.5, Qwen3) whose trunk, embedding, LM head and
    # tokenizer start the run; its architecture fields replace the preset's (transfusion/hf.py)
    init_from: str = ""
    # LMFusion: with mot and init_from, the text copies, embedding and LM head stay the pretrained ones, frozen;
    # the image copies (which start as copies of them) and the image layers train
    freeze_text: bool = False


@dataclass
class ImageConfig:
    size: int = 32  # pixels, square; the default for data and sampling
    # diffusion: continuous latents, diffusion loss (Transfusion) | tokens: discrete VQ codes in
    # the vocabulary, next-token loss only (the Chameleon baseline; needs a VQ autoencoder)
    objective: str = "diffusion"
    attention: str = "bidirectional"  # among the patches of one image: bidirectional | causal (ablation)
    autoencoder: str = "identity"  # identity | train (a small KL, or for objective=tokens VQ, AE trained first) | a folder
    ae_latent_channels: int = 4  # for autoencoder=train (the code vector size of a VQ)
    ae_codebook_size: int = 512  # for autoencoder=train with objective=tokens
    ae_downsample: int = 4
    ae_width: int = 16
    ae_steps: int = 1000
    adapter: str = "unet"  # linear | unet: the modality-specific image in/out layers
    patch_size: int = 2  # k: a k x k patch of the (U-Net-downsampled) latent is one token
    unet_channels: list[int] = field(default_factory=lambda: [64, 128])  # one down block each
    max_grid: int = 64  # largest patch grid side for the 2-D position embedding
    # clamp predicted x0 to [-c, c] while sampling; 0: off; -1 (auto): the autoencoder's sample_clip,
    # 1 for pixels (the identity autoencoder), 3 for unit-spread latents (a guard: see autoencoders/base.py)
    clip_sample: float = -1.0
    # editing: an image denoised after a clean context image (an edit's source) also gets that image
    # through its adapter's input, added by a zero-initialised layer (InstructPix2Pix's conditioning,
    # Brooks et al. 2023; beyond the paper, which edits through the sequence alone)
    edit_reference: bool = False


@dataclass
class DiffusionConfig:
    objective: str = "ddpm"  # ddpm (the paper: epsilon, cosine schedule) | flow (rectified flow, velocity)
    timesteps: int = 1000  # T; flow times t in [0, 1] reach the model as T t
    schedule: str = "cosine"
    loss_weight: float = 5.0  # lambda in L = L_LM + lambda * L_image (the paper's 5 is for ddpm)
    flow_logit_mean: float = 0.0  # flow: t = sigmoid(mean + std z) (SD3's logit-normal)
    flow_logit_std: float = 1.0
    flow_shift: float = 1.0  # flow: timestep shift s, t' = s t / (1 + (s - 1) t); 1: none
    flow_shift_reference: int = 0  # > 0: s = sqrt(latent elements / this), SD3's resolution rule
    image_first_prob: float = 0.2
    image_first_max_t: int = 500  # noise cap for image-first (captioning) examples
    caption_dropout: float = 0.1
    sampler: str = "auto"  # for sample grids and evaluation: auto (ddpm; euler for flow) | ddpm | ddim | dpm++ | euler | heun
    sample_steps: int = 250  # denoising steps of that sampler (paper: DDPM with 250); other samplers: SAMPLER_STEPS
    guidance: float = 3.0  # classifier-free guidance scale


@dataclass
class DataConfig:
    dataset: str = "shapes"  # shapes | mnist | a .jsonl manifest | an image folder | .tar shards (data/shards.py)
    workers: int = 2  # processes that read and decode .tar shards ahead of training
    text_dataset: str = "text"  # real English text for the text-only share; "" for none
    text_fraction: float = 0.1  # share of documents that are text only (of tokens with mix_by=tokens)
    interleaved_fraction: float = 0.05  # share of multi-image documents (shapes only)
    edit_dataset: str = "edits"  # editing triples: edits (shapes edits, data/edits.py) | a .jsonl manifest of them
    edit_fraction: float = 0.0  # share of documents that are editing triples (fine-tuning for `transfusion edit`)
    # what the fractions count: documents, or tokens (the paper's 1:1 text : image-caption mix is by
    # tokens; by documents an arm whose images take more positions sees less text per FLOP)
    mix_by: str = "documents"
    tokenizer: str = "bytes"  # bytes | bpe (trained on the run's own text) | a tokenizer.json
    bpe_vocab_size: int = 1024
    seq_len: int = 256  # tokens per packed row
    batch_size: int = 8  # rows per step: the global batch, over all processes and accumulation steps
    tokens_per_step: int = 0  # > 0: the global batch as a token budget (batch_size = this // seq_len)


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 1.5e-5
    warmup_steps: int = 4000
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 1000
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0: leave torch's default
    log_every: int = 10
    log: str = "jsonl"  # jsonl (metrics.jsonl, always written) | tensorboard | wandb (offline without a login)
    sample_every: int = 0  # 0: only at the end
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    eval_samples: int = 64  # held-out captions scored at the end of a run
    compile: bool = False  # torch.compile each transformer block
    # scale (see transfusion/distributed.py); with one process parallel is ignored
    parallel: str = "ddp"  # ddp (replicated weights) | fsdp (FSDP2: weights, grads, optimizer state sharded)
    grad_accum: int = 1  # micro-batches per step on each process
    precision: str = "fp32"  # fp32 | bf16 (autocast; on CUDA)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute
    ema_decay: float = 0.0  # > 0: keep an EMA of the weights (sharded like them), saved as ema.safetensors
    # fine-tuning: a run or checkpoint folder whose weights start this run (a new optimizer and schedule); its
    # architecture (model.*, image.*, the diffusion objective), tokenizer and autoencoder are kept
    init_from: str = ""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# the paper's frozen 8x autoencoder (its own 86M KL-VAE, 8 latent channels) is not public: Stable Diffusion's
# KL-VAE (8x, 4 channels) stands in; a 16-channel AutoencoderKL (e.g. FLUX.1's vae/) by image.autoencoder=REPO_OR_DIR
PAPER_AUTOENCODER = "stabilityai/sd-vae-ft-mse"


def _paper(layers: int, dim: int, heads: int) -> dict:
    """The paper's sizes (Table 1) on its image recipe: 256 px -> 32x32 latents of a frozen 8x
    autoencoder, one U-Net down block then 1x1 patches (the paper's 2x2 patch): 256 positions per image."""
    return {
        "model": {"dim": dim, "n_layers": layers, "n_heads": heads, "max_seq_len": 4096},
        "image": {"size": 256, "autoencoder": PAPER_AUTOENCODER, "patch_size": 1, "adapter": "unet",
                  "unet_channels": [min(dim, 512)]},
        "data": {"tokenizer": "bpe", "bpe_vocab_size": 32000, "seq_len": 4096, "batch_size": 1},
        "diffusion": {"sample_steps": 250},
    }


def _cpu(layers: int, steps: int, warmup: int, log_every: int, checkpoint_every: int, sample_every: int) -> dict:
    """CPU presets: 32 px images through a small KL autoencoder trained at the start of the
    run (8x8x4 latents), one U-Net down block, so 16 tokens per image; a BPE on the run's text.
    One document in five is interleaved (two or three shapes images, each after its own phrase):
    at the default 5% a 4-layer model gave the later images the first phrase's colour too often."""
    return {
        "model": {"dim": 256, "n_layers": layers, "n_heads": 4, "max_seq_len": 256},
        "image": {"size": 32, "autoencoder": "train", "unet_channels": [64], "patch_size": 1, "clip_sample": 3.0},
        "data": {"tokenizer": "bpe", "bpe_vocab_size": 512, "seq_len": 256, "batch_size": 8,
                 "interleaved_fraction": 0.2},
        "optim": {"lr": 1e-3, "warmup_steps": warmup, "min_lr": 1e-4},
        "train": {"steps": steps, "log_every": log_every, "checkpoint_every": checkpoint_every,
                  "sample_every": sample_every},
    }


PRESETS: dict[str, dict] = {
    # seconds; for tests and smoke runs
    "debug": {
        "model": {"dim": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 256},
        "image": {"size": 16, "unet_channels": [16], "patch_size": 2},
        "data": {"seq_len": 128, "batch_size": 4},
        "optim": {"lr": 1e-3, "warmup_steps": 5, "min_lr": 1e-4},
        "diffusion": {"sample_steps": 10},
        "train": {"steps": 20, "log_every": 5, "checkpoint_every": 10, "eval_samples": 8},
    },
    # the main job: about 7 to 11 minutes on 2 CPU cores
    "tiny": _cpu(layers=4, steps=1200, warmup=100, log_every=20, checkpoint_every=200, sample_every=400),
    # a longer CPU run: about an hour here
    "small": _cpu(layers=6, steps=3300, warmup=200, log_every=50, checkpoint_every=300, sample_every=1100),
    # the paper's sizes (Table 1): layers / width / heads
    "0.16B": _paper(16, 768, 12),
    "0.37B": _paper(24, 1024, 16),
    "0.76B": _paper(24, 1536, 24),
    "1.4B": _paper(24, 2048, 16),
    "7B": _paper(32, 4096, 32),
}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} expects a list, got {value!r}")
        (item,) = get_args(hint)
        return [_coerce(v, item, key) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r} expects true/false, got {value!r}")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML reads 1e-6 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"config key {key!r} expects {getattr(hint, '__name__', hint)}, got {value!r}")


def _merge(obj: Any, updates: dict, prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in hints:
            valid = ", ".join(f"{prefix}{n}" for n in hints)
            raise ValueError(f"unknown config key {key!r}; valid keys here: {valid}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config key {key!r} is a section; give it a mapping")
            _merge(current, value, prefix=f"{key}.")
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def _dotlist_to_dict(overrides: list[str]) -> dict:
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        path, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            raise ValueError(f"override {item!r}: {raw!r} is not a valid YAML value (quote it)") from None
        node = out
        parts = path.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_config(preset: str | None = None, files: list[str | Path] = (), overrides: list[str] = ()) -> Config:
    cfg = Config()
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        _merge(cfg, PRESETS[preset])
    for path in files:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err)
            raise ValueError(f"config file {path}{where} is not valid YAML: {problem}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
        _merge(cfg, data)
    _merge(cfg, _dotlist_to_dict(list(overrides)))
    if cfg.data.tokens_per_step > 0:
        cfg.data.batch_size = cfg.data.tokens_per_step // cfg.data.seq_len
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    m = cfg.model
    if m.head_dim < 0 or m.head_dim % 2 or (not m.head_dim and (m.dim % m.n_heads or (m.dim // m.n_heads) % 2)):
        raise ValueError(f"model.dim={m.dim} must split into model.n_heads={m.n_heads} heads of even size, or "
                         f"model.head_dim={m.head_dim} must be a positive even size")
    if m.rope_scaling not in ("none", "llama3"):
        raise ValueError(f"model.rope_scaling must be 'none' or 'llama3', got {m.rope_scaling!r}")
    if m.rope_scaling == "llama3" and not (m.rope_factor >= 1 and 0 < m.rope_low_freq_factor < m.rope_high_freq_factor
                                           and m.rope_original_max_len > 0):
        raise ValueError("model.rope_scaling=llama3 needs rope_factor >= 1, 0 < rope_low_freq_factor < "
                         "rope_high_freq_factor and rope_original_max_len > 0")
    if m.n_kv_heads and m.n_heads % m.n_kv_heads:
        raise ValueError(f"model.n_heads={m.n_heads} must be a multiple of model.n_kv_heads={m.n_kv_heads}")
    if m.freeze_text and not (m.mot and m.init_from):
        raise ValueError("model.freeze_text=true needs model.mot=true and model.init_from (the LMFusion recipe: "
                         "frozen pretrained text weights, trainable image copies)")
    if m.attention not in ("sdpa", "chunked", "flex"):
        raise ValueError(f"model.attention must be 'sdpa', 'chunked' or 'flex', got {m.attention!r}")
    if m.attention_chunk < 1:
        raise ValueError(f"model.attention_chunk must be at least 1, got {m.attention_chunk}")
    if cfg.image.objective not in ("diffusion", "tokens"):
        raise ValueError(f"image.objective must be 'diffusion' or 'tokens', got {cfg.image.objective!r}")
    if cfg.image.edit_reference and cfg.image.objective != "diffusion":
        raise ValueError("image.edit_reference feeds an edit's source to the image adapter: it needs "
                         "image.objective=diffusion")
    if cfg.image.attention not in ("bidirectional", "causal"):
        raise ValueError(f"image.attention must be 'bidirectional' or 'causal', got {cfg.image.attention!r}")
    if cfg.image.adapter not in ("linear", "unet"):
        raise ValueError(f"image.adapter must be 'linear' or 'unet', got {cfg.image.adapter!r}")
    if cfg.image.clip_sample < 0 and cfg.image.clip_sample != -1:
        raise ValueError(f"image.clip_sample must be -1 (auto), 0 (off) or positive, got {cfg.image.clip_sample}")
    d = cfg.diffusion
    if d.objective not in OBJECTIVE_SAMPLERS:
        raise ValueError(f"diffusion.objective must be 'ddpm' or 'flow', got {d.objective!r}")
    if d.objective == "flow" and not (d.flow_logit_std > 0 and d.flow_shift > 0 and d.flow_shift_reference >= 0):
        raise ValueError("diffusion.flow_logit_std and diffusion.flow_shift must be positive, "
                         "diffusion.flow_shift_reference >= 0")
    if not 1 <= d.image_first_max_t <= d.timesteps:
        raise ValueError(f"diffusion.image_first_max_t={d.image_first_max_t} must be in [1, diffusion.timesteps="
                         f"{d.timesteps}] (the noise cap of image-first examples, in timesteps)")
    if not (0 <= d.image_first_prob <= 1 and 0 <= d.caption_dropout <= 1):
        raise ValueError(f"diffusion.image_first_prob={d.image_first_prob} and diffusion.caption_dropout="
                         f"{d.caption_dropout} must be in [0, 1]")
    sampler = default_sampler(d.objective) if d.sampler == "auto" else d.sampler
    check_sampler(sampler, d.sample_steps, d.timesteps, d.objective)
    o = cfg.optim
    if not (0 < o.lr < float("inf") and 0 <= o.min_lr <= o.lr):
        raise ValueError(f"optim.lr={o.lr} must be positive and finite, and optim.min_lr={o.min_lr} in [0, lr]")
    t = cfg.train
    if t.parallel not in ("ddp", "fsdp"):
        raise ValueError(f"train.parallel must be 'ddp' or 'fsdp', got {t.parallel!r}")
    if t.log not in ("jsonl", "tensorboard", "wandb"):
        raise ValueError(f"train.log must be 'jsonl', 'tensorboard' or 'wandb', got {t.log!r}")
    if t.precision not in ("fp32", "bf16"):
        raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {t.precision!r}")
    if t.grad_accum < 1 or not 0 <= t.ema_decay < 1:
        raise ValueError(f"train.grad_accum={t.grad_accum} must be >= 1 and train.ema_decay={t.ema_decay} in [0, 1)")
    shares = (cfg.data.text_fraction, cfg.data.interleaved_fraction, cfg.data.edit_fraction)
    if not all(0 <= f <= 1 for f in shares) or sum(shares) > 1:
        raise ValueError(f"data.text_fraction, data.interleaved_fraction and data.edit_fraction must be in [0, 1] "
                         f"and sum to at most 1, got {shares}")
    if cfg.data.mix_by not in ("documents", "tokens"):
        raise ValueError(f"data.mix_by must be 'documents' or 'tokens', got {cfg.data.mix_by!r}")
    if cfg.data.batch_size < 1:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} must be >= 1 (data.tokens_per_step="
                         f"{cfg.data.tokens_per_step} buys fewer than one row of data.seq_len={cfg.data.seq_len})")
    if cfg.data.seq_len > m.max_seq_len:
        raise ValueError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={m.max_seq_len}")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    cfg = Config()
    _merge(cfg, data)
    validate(cfg)
    return cfg


def config_yaml(cfg: Config) -> str:
    """The config as the YAML text that ``load_config(files=[...])`` reads back."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
