"""Typed configuration: nested dataclasses, named presets, YAML files and dot-list overrides.

    cfg = load_config(preset="tiny", files=["configs/flow_mot.yaml"], overrides=["train.steps=100"])

Precedence, lowest first: dataclass defaults, the preset, YAML files, ``key.sub=value``
overrides. The resolved config is saved next to every run and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from transfusion.presets import PRESETS

# Each field has a role, which the rules below (``resumed``, ``with_fields``) read:
#   architecture: what the weights mean; a fine-tune start (train.init_from) takes them from the start
#                 (``lm=True``: also set by a pretrained language model, model.init_from)
#   execution:    how a run is executed, not what it computes; a resumed run may change them
#   sampling:     how samples, grids and evaluations are drawn; may change at any time
#   recipe:       what a run trains on and how (data, optimizer, seed); fixed once a run has started
ROLES = ("architecture", "execution", "sampling", "recipe")


def _field(role: str, default: Any = None, factory=None, lm: bool = False) -> Any:
    metadata = {"role": role, "lm": lm}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def arch(default: Any = None, factory=None, lm: bool = False) -> Any:
    return _field("architecture", default, factory, lm)


def execution(default: Any) -> Any:
    return _field("execution", default)


def sampling(default: Any) -> Any:
    return _field("sampling", default)


def recipe(default: Any = None, factory=None) -> Any:
    return _field("recipe", default, factory)


Sampler = Literal["auto", "ddpm", "ddim", "dpm++", "dpm++sde", "unipc", "euler", "heun"]


@dataclass
class ModelConfig:
    dim: int = arch(256, lm=True)
    n_layers: int = arch(4, lm=True)
    n_heads: int = arch(4, lm=True)
    mlp_hidden: int = arch(0, lm=True)  # 0: the Llama default, 8/3 * dim rounded up to a multiple of 64
    max_seq_len: int = arch(512)  # longest document the model takes (RoPE positions)
    rope_theta: float = arch(10000.0, lm=True)
    # rotary frequencies rescaled for long contexts: none | llama3 (Llama 3.1 / 3.2: channels whose wavelength
    # exceeds rope_original_max_len / rope_low_freq_factor turn rope_factor times slower, those below
    # rope_original_max_len / rope_high_freq_factor stay, those between are interpolated)
    rope_scaling: Literal["none", "llama3"] = arch("none", lm=True)
    rope_factor: float = arch(1.0, lm=True)
    rope_low_freq_factor: float = arch(1.0, lm=True)
    rope_high_freq_factor: float = arch(4.0, lm=True)
    rope_original_max_len: int = arch(8192, lm=True)
    norm_eps: float = arch(1e-5, lm=True)
    # sdpa (dense boolean mask) | chunked (query blocks, no L x L mask) | flex (CUDA)
    attention: Literal["sdpa", "chunked", "flex"] = execution("sdpa")
    attention_chunk: int = execution(512)  # chunked: queries per block
    mot: bool = arch(False)  # Mixture-of-Transformers: a text and an image copy of every trunk norm and projection
    n_kv_heads: int = arch(0, lm=True)  # key/value heads (grouped-query attention); 0: n_heads
    head_dim: int = arch(0, lm=True)  # channels per head; 0: dim // n_heads (Qwen3: 16 x 128 over 1024)
    qkv_bias: bool = arch(False, lm=True)  # biases on the q/k/v projections (Qwen2)
    qk_norm: bool = arch(False, lm=True)  # RMSNorm of each query and key head before the rotation (Qwen3)
    tie_embeddings: bool = arch(False, lm=True)  # the LM head is the token embedding
    # a Hugging Face causal-LM folder (Llama, SmolLM, Qwen2/2.5, Qwen3) whose trunk, embedding, LM head and
    # tokenizer start the run; its architecture fields (lm=True) replace the preset's (transfusion/hf.py)
    init_from: str = arch("")
    # LMFusion: with mot and init_from, the text copies, embedding and LM head stay the pretrained ones, frozen;
    # the image copies (which start as copies of them) and the image layers train
    freeze_text: bool = arch(False)


@dataclass
class ImageConfig:
    """What an image is to the model: its size, how it is predicted, and the layers that carry it."""

    size: int = arch(32)  # pixels, square; the default for data and sampling
    # diffusion: continuous latents, diffusion loss (Transfusion) | tokens: discrete VQ codes in
    # the vocabulary, next-token loss only (the Chameleon baseline; needs a VQ autoencoder)
    objective: Literal["diffusion", "tokens"] = arch("diffusion")
    attention: Literal["bidirectional", "causal"] = arch("bidirectional")  # among one image's patches (ablation)
    adapter: Literal["linear", "unet"] = arch("unet")  # the modality-specific image in/out layers
    patch_size: int = arch(2)  # k: a k x k patch of the (U-Net-downsampled) latent is one token
    unet_channels: list[int] = arch(factory=lambda: [64, 128])  # one down block each
    max_grid: int = arch(64)  # largest patch grid side for the 2-D position embedding
    # editing: an image denoised after a clean context image (an edit's source) also gets that image
    # through its adapter's input, added by a zero-initialised layer (InstructPix2Pix's conditioning,
    # Brooks et al. 2023; beyond the paper, which edits through the sequence alone)
    edit_reference: bool = arch(False)


@dataclass
class AutoencoderConfig:
    """The frozen autoencoder between pixels and latents (or, for image.objective=tokens, VQ codes)."""

    # identity (pixels are the latents) | train (a small KL, or a VQ for image.objective=tokens, trained at the
    # run's start into RUN/autoencoder) | a folder (transfusion autoencoder train, or a diffusers AutoencoderKL)
    # | a Hugging Face repo id
    name: str = arch("identity")
    latent_channels: int = arch(4)  # name=train: latent channels (a VQ's code vector size)
    codebook_size: int = arch(512)  # name=train with image.objective=tokens
    downsample: int = arch(4)  # name=train: pixels per latent side
    width: int = arch(16)  # name=train: channels of its first convolution
    steps: int = arch(1000)  # name=train: optimisation steps


@dataclass
class DiffusionConfig:
    """The noise process the model is trained on (Sec. 2.2 and 3.1 of the paper) and its loss weighting."""

    objective: Literal["ddpm", "flow"] = arch("ddpm")  # ddpm (the paper: epsilon, cosine) | flow (rectified flow)
    timesteps: int = arch(1000)  # T; flow times t in [0, 1] reach the model as T t
    schedule: Literal["cosine"] = arch("cosine")
    loss_weight: float = recipe(5.0)  # lambda in L = L_LM + lambda * L_image (the paper's 5 is for ddpm)
    flow_logit_mean: float = arch(0.0)  # flow: t = sigmoid(mean + std z) (SD3's logit-normal)
    flow_logit_std: float = arch(1.0)
    flow_shift: float = arch(1.0)  # flow: timestep shift s, t' = s t / (1 + (s - 1) t); 1: none
    flow_shift_reference: int = arch(0)  # > 0: s = sqrt(latent elements / this), SD3's resolution rule
    image_first_prob: float = recipe(0.2)
    image_first_max_t: int = recipe(500)  # noise cap for image-first (captioning) examples
    caption_dropout: float = recipe(0.1)


@dataclass
class SamplingConfig:
    """The run's sampling defaults, for sample grids, evaluation and every generation command
    (``engine.Request.resolve`` fills a request's unset settings from here, and only there)."""

    sampler: Sampler = sampling("auto")  # auto: the objective's first (ddpm; euler for flow); see samplers.py
    steps: int = sampling(250)  # denoising steps of that sampler (the paper: DDPM with 250)
    guidance: float = sampling(3.0)  # classifier-free guidance scale
    # clamp predicted x0 to [-c, c] while sampling; 0: off; -1 (auto): the autoencoder's sample_clip,
    # 1 for pixels (the identity autoencoder), 3 for unit-spread latents (a guard: see autoencoders/base.py)
    clip_sample: float = sampling(-1.0)


@dataclass
class DataConfig:
    dataset: str = recipe("shapes")  # shapes | mnist | a .jsonl manifest | an image folder | .tar shards
    workers: int = execution(2)  # processes that read and decode .tar shards ahead of training
    text_dataset: str = recipe("text")  # real English text for the text-only share; "" for none
    text_fraction: float = recipe(0.1)  # share of documents that are text only (of tokens with mix_by=tokens)
    interleaved_fraction: float = recipe(0.05)  # share of multi-image documents (shapes only)
    edit_dataset: str = recipe("edits")  # editing triples: edits (shapes edits, data/edits.py) | a .jsonl manifest
    edit_fraction: float = recipe(0.0)  # share of documents that are editing triples (fine-tuning for edits)
    # what the fractions count: documents, or tokens (the paper's 1:1 text : image-caption mix is by
    # tokens; by documents an arm whose images take more positions sees less text per FLOP)
    mix_by: Literal["documents", "tokens"] = recipe("documents")
    tokenizer: str = recipe("bytes")  # bytes | bpe (trained on the run's own text) | a tokenizer.json
    bpe_vocab_size: int = recipe(1024)
    seq_len: int = recipe(256)  # tokens per packed row
    batch_size: int = recipe(8)  # rows per step: the global batch, over all processes and accumulation steps
    tokens_per_step: int = recipe(0)  # > 0: the global batch as a token budget (batch_size = this // seq_len)


@dataclass
class OptimConfig:
    lr: float = recipe(3e-4)
    min_lr: float = recipe(1.5e-5)
    warmup_steps: int = recipe(4000)
    betas: list[float] = recipe(factory=lambda: [0.9, 0.95])
    eps: float = recipe(1e-8)
    weight_decay: float = recipe(0.1)
    grad_clip: float = recipe(1.0)


@dataclass
class LoraConfig:
    """LoRA adapters through peft: with ``rank`` > 0 only they train and are saved (``model/lora.py``)."""

    rank: int = recipe(0)  # 0: off (every weight trains)
    alpha: float = recipe(16.0)  # the update is scaled by alpha / rank
    dropout: float = recipe(0.0)  # on an adapter's input
    # which layers get one: the trunk's attention (q/k/v, output) and MLP, the image layers (linear and conv)
    modules: list[Literal["attention", "mlp", "image"]] = recipe(factory=lambda: ["attention", "mlp"])
    modality: Literal["both", "text", "image"] = recipe("both")  # under model.mot: which copy of each trunk layer


@dataclass
class TrainConfig:
    steps: int = execution(1000)
    seed: int = recipe(0)
    device: str = execution("auto")  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N
    threads: int = execution(0)  # torch CPU threads; 0: leave torch's default
    log_every: int = execution(10)
    log: Literal["jsonl", "tensorboard", "wandb"] = execution("jsonl")  # metrics.jsonl is always written
    sample_every: int = execution(0)  # 0: only at the end
    checkpoint_every: int = execution(200)
    keep_checkpoints: int = execution(2)
    eval_samples: int = execution(64)  # held-out captions scored at the end of a run
    compile: bool = execution(False)  # torch.compile each transformer block
    # scale (see transfusion/distributed.py); with one process parallel is ignored
    parallel: Literal["ddp", "fsdp"] = execution("ddp")  # fsdp: FSDP2, weights, grads, optimizer state sharded
    grad_accum: int = execution(1)  # micro-batches per step on each process
    precision: Literal["fp32", "bf16"] = execution("fp32")  # bf16: autocast (on CUDA)
    activation_checkpointing: bool = execution(False)  # recompute each block in backward: less memory, ~1/3 more
    ema_decay: float = recipe(0.0)  # > 0: keep an EMA of the weights (sharded like them), saved as ema.safetensors
    # decay min(ema_decay, (1 + t) / (10 + t)) at step t: about the last tenth of a short run, not its random start
    ema_warmup: bool = recipe(False)
    # fine-tuning: a run or checkpoint folder whose weights start this run (a new optimizer and schedule); its
    # architecture fields (model.*, image.*, autoencoder.*, the diffusion process), tokenizer and autoencoder are kept
    init_from: str = recipe("")
    lora: LoraConfig = recipe(factory=LoraConfig)


@dataclass
class PosttrainConfig:
    """GRPO on the image path, towards an exact reward (``transfusion posttrain``, ``posttrain/grpo.py``)."""

    reward: str = recipe("shapes")  # a name of posttrain/rewards.py (shapes, shapes_strict, edit, ...) or python:m.f
    prompts: int = recipe(8)  # prompts per update
    group: int = recipe(8)  # samples per prompt: advantages are relative to the prompt's group
    steps: int = execution(100)  # updates
    sample_steps: int = recipe(20)  # denoising steps of the sampler (ancestral DDPM posterior, strided)
    guidance: float = recipe(1.0)  # classifier-free guidance while sampling (1: off)
    flow_noise: float = recipe(0.7)  # a flow run's SDE noise scale a (Flow-GRPO's; 0: the Euler ODE)
    clip_range: float = recipe(0.2)  # PPO's ratio clip
    kl: float = recipe(0.01)  # weight of the KL to the starting model, per denoising step
    lr: float = recipe(1e-5)
    inner_epochs: int = recipe(1)  # passes over each batch of samples
    timestep_fraction: float = recipe(1.0)  # share of the denoising steps each update trains on
    split: str = recipe("train")  # the dataset split whose captions are the prompts
    kinds: list[Literal["single", "count", "relation"]] = recipe(factory=list)  # only these scenes' captions (shapes)
    eval_every: int = execution(25)  # updates between held-out measurements, on eval_prompts prompts (0: at the end)
    eval_prompts: int = execution(64)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    posttrain: PosttrainConfig = field(default_factory=PosttrainConfig)


def fields_of(cfg: Config, *roles: str, lm: bool | None = None) -> dict[str, dict[str, Any]]:
    """``{section: {name: value}}`` of ``cfg``'s fields with one of ``roles`` (and, for ``lm``,
    only those a pretrained language model sets, or only the others)."""
    if not set(roles) <= set(ROLES):
        raise ValueError(f"unknown field role in {roles}; the roles are {', '.join(ROLES)}")
    out: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            if f.metadata["role"] in roles and (lm is None or f.metadata["lm"] == lm):
                out.setdefault(section.name, {})[f.name] = getattr(values, f.name)
    return out


def with_fields(cfg: Config, fields: dict[str, dict[str, Any]]) -> Config:
    """A checked copy of ``cfg`` with ``fields`` (``{section: {name: value}}``) replaced."""
    sections = {s: dataclasses.replace(getattr(cfg, s), **values) for s, values in fields.items()}
    out = dataclasses.replace(cfg, **sections)
    validate(out)
    return out


def resumed(saved: Config, cfg: Config, where: str) -> Config:
    """The config a run resumes with: ``saved`` (the run's), with ``cfg``'s execution and
    sampling fields; any other difference is an error (``where`` names the run in it)."""
    a, b = to_dict(saved), to_dict(cfg)
    diff = [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k] and _role(s, k) not in ("execution", "sampling")]
    if diff:
        raise ValueError(f"{where} holds a run with another config (differs in {', '.join(diff)}); "
                         f"use a new --out or the same settings to resume")
    return with_fields(saved, fields_of(cfg, "execution", "sampling"))


def _role(section: str, name: str) -> str:
    (f,) = [f for f in dataclasses.fields(type(getattr(Config(), section))) if f.name == name]
    return f.metadata["role"]


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin is Literal:  # a constrained string: one of its values
        if value not in get_args(hint):
            raise ValueError(f"config key {key!r} must be one of {', '.join(map(repr, get_args(hint)))}, "
                             f"got {value!r}")
        return value
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


# keys renamed when the image section was split by concern: configs written before (a run's config.yaml,
# a checkpoint's, a user's YAML) still load
RENAMED = {("image", "autoencoder"): ("autoencoder", "name"),
           **{("image", f"ae_{k}"): ("autoencoder", k)
              for k in ("latent_channels", "codebook_size", "downsample", "width", "steps")},
           ("image", "clip_sample"): ("sampling", "clip_sample"), ("diffusion", "sampler"): ("sampling", "sampler"),
           ("diffusion", "sample_steps"): ("sampling", "steps"), ("diffusion", "guidance"): ("sampling", "guidance")}


def _renamed(updates: dict) -> dict:
    """``updates`` (a whole config's mapping) with keys of ``RENAMED`` under their current names."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in updates.items()}
    for (section, key), (new_section, new_key) in RENAMED.items():
        old, new = out.get(section), out.setdefault(new_section, {})
        if isinstance(old, dict) and key in old and isinstance(new, dict):  # else _merge names what is wrong
            new[new_key] = old.pop(key)
    return out


def _merge(obj: Any, updates: dict, prefix: str = "") -> None:
    if not prefix:
        updates = _renamed(updates)
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


def load_config(preset: str | None = None, files: list[str | Path] = (), overrides: list[str] = (),
                start: Config | None = None) -> Config:  # start: a config to begin from, not Config() (a copy)
    cfg = from_dict(to_dict(start)) if start is not None else Config()
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
    """Every rule that ties fields together (each field's own type, ``Literal`` values included, is
    checked as it is read). The sampler a run names is checked against its objective where the
    samplers live (``samplers.check_sampling``)."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for name, hint in get_type_hints(type(values)).items():
            if get_origin(hint) is Literal:
                _coerce(getattr(values, name), hint, f"{section.name}.{name}")
    m = cfg.model
    if m.head_dim < 0 or m.head_dim % 2 or (not m.head_dim and (m.dim % m.n_heads or (m.dim // m.n_heads) % 2)):
        raise ValueError(f"model.dim={m.dim} must split into model.n_heads={m.n_heads} heads of even size, or "
                         f"model.head_dim={m.head_dim} must be a positive even size")
    if m.rope_scaling == "llama3" and not (m.rope_factor >= 1 and 0 < m.rope_low_freq_factor < m.rope_high_freq_factor
                                           and m.rope_original_max_len > 0):
        raise ValueError("model.rope_scaling=llama3 needs rope_factor >= 1, 0 < rope_low_freq_factor < "
                         "rope_high_freq_factor and rope_original_max_len > 0")
    if m.n_kv_heads and m.n_heads % m.n_kv_heads:
        raise ValueError(f"model.n_heads={m.n_heads} must be a multiple of model.n_kv_heads={m.n_kv_heads}")
    if m.freeze_text and not (m.mot and m.init_from):
        raise ValueError("model.freeze_text=true needs model.mot=true and model.init_from (the LMFusion recipe: "
                         "frozen pretrained text weights, trainable image copies)")
    if m.attention_chunk < 1:
        raise ValueError(f"model.attention_chunk must be at least 1, got {m.attention_chunk}")
    if cfg.image.edit_reference and cfg.image.objective != "diffusion":
        raise ValueError("image.edit_reference feeds an edit's source to the image adapter: it needs "
                         "image.objective=diffusion")
    if cfg.sampling.clip_sample < 0 and cfg.sampling.clip_sample != -1:
        raise ValueError(f"sampling.clip_sample must be -1 (auto), 0 (off) or positive, got {cfg.sampling.clip_sample}")
    if not (1 <= cfg.sampling.steps <= cfg.diffusion.timesteps and cfg.sampling.guidance >= 0):
        raise ValueError(f"sampling.steps={cfg.sampling.steps} must be in 1..diffusion.timesteps="
                         f"{cfg.diffusion.timesteps} and sampling.guidance={cfg.sampling.guidance} >= 0")
    d = cfg.diffusion
    if d.objective == "flow" and not (d.flow_logit_std > 0 and d.flow_shift > 0 and d.flow_shift_reference >= 0):
        raise ValueError("diffusion.flow_logit_std and diffusion.flow_shift must be positive, "
                         "diffusion.flow_shift_reference >= 0")
    if not 1 <= d.image_first_max_t <= d.timesteps:
        raise ValueError(f"diffusion.image_first_max_t={d.image_first_max_t} must be in [1, diffusion.timesteps="
                         f"{d.timesteps}] (the noise cap of image-first examples, in timesteps)")
    if not (0 <= d.image_first_prob <= 1 and 0 <= d.caption_dropout <= 1):
        raise ValueError(f"diffusion.image_first_prob={d.image_first_prob} and diffusion.caption_dropout="
                         f"{d.caption_dropout} must be in [0, 1]")
    o = cfg.optim
    if not (0 < o.lr < float("inf") and 0 <= o.min_lr <= o.lr):
        raise ValueError(f"optim.lr={o.lr} must be positive and finite, and optim.min_lr={o.min_lr} in [0, lr]")
    t = cfg.train
    if t.grad_accum < 1 or not 0 <= t.ema_decay < 1:
        raise ValueError(f"train.grad_accum={t.grad_accum} must be >= 1 and train.ema_decay={t.ema_decay} in [0, 1)")
    lo = t.lora
    lora_rules = [  # (broken, why)
        (lo.rank < 0 or lo.alpha <= 0 or not 0 <= lo.dropout < 1 or (lo.rank and not lo.modules),
         f"rank={lo.rank} must be >= 0 (0: off), alpha={lo.alpha} positive, dropout in [0, 1), modules not empty"),
        (lo.rank and not (t.init_from or m.init_from), "it adapts a trained model: name it with train.init_from (a "
         "run or checkpoint) or model.init_from (a pretrained language model)"),
        (lo.rank and m.init_from and not t.init_from and cfg.image.objective != "diffusion", "from a pretrained "
         "language model it needs image.objective=diffusion (the image codes' rows would stay untrained)"),
        (lo.rank and m.freeze_text, "it freezes every weight but the adapters: drop model.freeze_text"),
        (lo.rank and lo.modality != "both" and not m.mot, f"modality={lo.modality} picks one copy of a "
         "Mixture-of-Transformers trunk: it needs model.mot=true")]
    for broken, why in lora_rules:
        if broken:
            raise ValueError(f"train.lora: {why}")
    pt = cfg.posttrain
    counts = min(pt.prompts, pt.group - 1, pt.steps, pt.sample_steps, pt.inner_epochs)
    if not (counts >= 1 and 0 < pt.timestep_fraction <= 1 and min(pt.kl, pt.flow_noise) >= 0 and pt.clip_range > 0
            and pt.lr > 0 and pt.guidance >= 1):
        raise ValueError("posttrain: prompts, steps, sample_steps, inner_epochs >= 1, group >= 2 (advantages compare a "
                         f"group), timestep_fraction in (0, 1], kl, flow_noise >= 0, clip_range, lr > 0, guidance >= 1: {pt}")
    shares = (cfg.data.text_fraction, cfg.data.interleaved_fraction, cfg.data.edit_fraction)
    if not all(0 <= f <= 1 for f in shares) or sum(shares) > 1:
        raise ValueError(f"data.text_fraction, data.interleaved_fraction and data.edit_fraction must be in [0, 1] "
                         f"and sum to at most 1, got {shares}")
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
