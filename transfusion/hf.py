"""Hugging Face transformers folders of causal LMs, read into this library's model and written back.

    fields = model_fields("path/to/SmolLM-135M")      # ModelConfig fields of its trunk (dim, heads, GQA, ...)
    tokenizer = pretrained_tokenizer("path/to/SmolLM-135M")   # its tokenizer.json, its BOS/EOS/PAD, + BOI/EOI
    load_text_weights(model, "path/to/SmolLM-135M", tokenizer.new_ids)   # embedding, trunk, LM head

A run names the folder as ``model.init_from``: ``with_pretrained_fields(cfg)`` takes its
architecture, training builds the model and loads the weights before the first step. The
folder is read at that first start only: the architecture is then in the run's config.yaml and
the tokenizer (with the embedding's padded size) in its tokenizer.json.

Families: Llama (SmolLM included: grouped-query attention, tied embeddings, rope theta, Llama
3.1 / 3.2's ``llama3`` rope scaling), Qwen2 / Qwen2.5 (biases on q/k/v; an embedding padded past
its tokenizer) and Qwen3 (per-head q/k RMSNorm; heads wider than hidden_size / heads). The
files are read directly (``config.json``, ``*.safetensors``, the tokenizer files);
``transformers`` is not needed at run time. A tensor the model has no place for is an error.

Two conventions differ and are converted here: transformers' rotary embedding pairs channel
j with j + hd/2 of each head ("rotate half"), this library pairs 2j with 2j + 1, so the rows
of the q and k projections (and their biases and norms) are permuted per head; and q, k, v
(and gate, up) are one fused projection here, so their weights are concatenated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open

from transfusion.config import fields_of, with_fields
from transfusion.hub import LM_FILES, local_folder
from transfusion.model.lora import base_name
from transfusion.model.transformer import head_size

FAMILIES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
# every name ``export_text_model`` may write: a folder holding only these is an earlier export, replaced
HF_EXPORT_NAMES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json"}


def read_config(folder: str | Path) -> dict:
    path = local_folder(folder, LM_FILES) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: give a Hugging Face transformers model folder")
    config = json.loads(path.read_text())
    arch = (config.get("architectures") or [None])[0]
    if arch not in FAMILIES:
        raise ValueError(f"{path}: architecture {arch!r} is not supported; expected one of {', '.join(FAMILIES)}")
    unsupported = {"hidden_act": config.get("hidden_act", "silu") != "silu", "mlp_bias": config.get("mlp_bias"),
                   "use_sliding_window": config.get("use_sliding_window")}
    if any(unsupported.values()):
        raise ValueError(f"{path}: {', '.join(f'{k}={config[k]}' for k, bad in unsupported.items() if bad)} "
                         f"is not supported (a SiLU MLP without biases, global attention only)")
    return config


def rope_fields(c: dict, where) -> dict:
    """The rotary ``model.*`` fields of a config.json: transformers 4 writes ``rope_theta`` and
    ``rope_scaling``, transformers 5 one ``rope_parameters`` (with ``rope_type``)."""
    params = {**(c.get("rope_scaling") or {}), **(c.get("rope_parameters") or {})}
    theta = float(c.get("rope_theta") or params.get("rope_theta") or 10000.0)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return {"rope_theta": theta, "rope_scaling": "none"}
    if kind != "llama3":
        raise ValueError(f"{where}: rotary scaling {kind!r} ({params}) is not supported; only llama3 is")
    return {"rope_theta": theta, "rope_scaling": "llama3", "rope_factor": float(params["factor"]),
            "rope_low_freq_factor": float(params["low_freq_factor"]),
            "rope_high_freq_factor": float(params["high_freq_factor"]),
            "rope_original_max_len": int(params["original_max_position_embeddings"])}


# the model.* fields model_fields sets: a run's architecture, read from the folder once
def model_fields(folder: str | Path) -> dict:
    """The ``model.*`` config fields that rebuild the folder's trunk."""
    c = read_config(folder)
    family = FAMILIES[c["architectures"][0]]
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    return {"dim": c["hidden_size"], "n_layers": c["num_hidden_layers"], "n_heads": heads,
            "n_kv_heads": c.get("num_key_value_heads") or heads,
            "head_dim": 0 if head_dim * heads == c["hidden_size"] else head_dim, "mlp_hidden": c["intermediate_size"],
            "norm_eps": float(c.get("rms_norm_eps", 1e-6)), **rope_fields(c, folder),
            "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
            "qkv_bias": family == "qwen2" or bool(c.get("attention_bias", False)), "qk_norm": family == "qwen3"}


def with_pretrained_fields(cfg, run: str | Path | None = None):
    """``cfg`` (a ``Config``) with the ``model.*`` fields of ``model.init_from``'s architecture (those
    marked ``lm=True`` in ``config.py``).

    The folder is read at a run's first start only: when the run folder ``run`` already holds a
    config.yaml started from the same folder, the architecture is that config's (a run is
    self-contained; the pretrained folder may be gone)."""
    if not cfg.model.init_from:
        return cfg
    saved = Path(run) / "config.yaml" if run is not None else None
    if saved is not None and saved.is_file():
        import yaml

        from transfusion.config import from_dict

        started = from_dict(yaml.safe_load(saved.read_text()))
        if started.model.init_from == cfg.model.init_from:
            return with_fields(cfg, fields_of(started, "architecture", lm=True))
    return with_fields(cfg, {"model": model_fields(cfg.model.init_from)})


def _json_file(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def special_tokens(folder: Path, hf_tokenizer) -> dict[str, str]:
    """The folder's own BOS, EOS and PAD tokens (role -> token) where it names them: the ids of
    config.json, else of generation_config.json (the first of a list), else the tokens of
    tokenizer_config.json. Only special tokens of its tokenizer count (transformers' default
    ids 1 and 2 in a toy config are ordinary text there)."""
    specials = {i: t.content for i, t in hf_tokenizer.get_added_tokens_decoder().items() if t.special}
    found: dict[str, str] = {}
    for name in ("config.json", "generation_config.json"):
        config = _json_file(folder / name)
        for role in ("bos", "eos", "pad"):
            i = config.get(f"{role}_token_id")
            i = (i or [None])[0] if isinstance(i, list) else i
            if role not in found and i in specials:
                found[role] = specials[i]
    config = _json_file(folder / "tokenizer_config.json")
    for role in ("bos", "eos", "pad"):
        token = config.get(f"{role}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if role not in found and token in specials.values():
            found[role] = token
    return found


def pretrained_tokenizer(folder: str | Path):
    """The folder's ``tokenizer.json`` with its own BOS / EOS / PAD (``special_tokens``) and this
    library's tokens for the roles it lacks (BOI, EOI, ...) added after its last token; the
    vocabulary holds all the rows of the folder's embedding (config.json's vocab_size)."""
    from tokenizers import Tokenizer as HFTokenizer

    from transfusion.tokenizer import BPETokenizer

    folder = local_folder(folder, LM_FILES)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no tokenizer.json")
    hf_tokenizer = HFTokenizer.from_file(str(path))
    rows = int(_json_file(folder / "config.json").get("vocab_size") or 0)
    return BPETokenizer.extended(hf_tokenizer, special_tokens(folder, hf_tokenizer), rows)


def _half_to_pairs(head_dim: int) -> torch.Tensor:
    """Row order that turns a head's "rotate half" channels into adjacent pairs: (0, hd/2, 1, hd/2 + 1, ...)."""
    half = torch.arange(head_dim // 2)
    return torch.stack([half, half + head_dim // 2], 1).flatten()


def _per_head(t: torch.Tensor, heads: int, order: torch.Tensor) -> torch.Tensor:
    """Permute the rows (dim 0) of each of ``heads`` consecutive blocks by ``order``."""
    return t.unflatten(0, (heads, -1))[:, order].flatten(0, 1)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no *.safetensors weights")
    out = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            out.update({k: f.get_tensor(k).float() for k in f.keys()})
    return out


def text_state_dict(folder: str | Path, n_heads: int, n_kv_heads: int, tied: bool = False) -> dict[str, torch.Tensor]:
    """The folder's weights under this library's names (text copies only, vocabulary as saved).
    A tensor that has no place here (an o_proj bias, an MLP bias, a key of another layout) is an
    error, not dropped: the model would compute something else than the folder's. With ``tied``
    an LM head is accepted only as a copy of the embedding (transformers ignores it)."""
    folder = local_folder(folder, LM_FILES)
    hf = {k.removeprefix("model."): v for k, v in _tensors(folder).items()
          if not k.endswith("rotary_emb.inv_freq")}  # old checkpoints saved the rotary table's buffer
    take = hf.pop
    order = _half_to_pairs(hf["layers.0.self_attn.q_proj.weight"].shape[0] // n_heads)
    out = {"token_embed.weight": take("embed_tokens.weight"), "trunk.norm.weight": take("norm.weight")}
    if "lm_head.weight" in hf:
        head = take("lm_head.weight")
        if tied and not torch.equal(head, out["token_embed.weight"]):
            raise ValueError(f"{folder}: lm_head.weight differs from the embedding though tie_word_embeddings is set")
        if not tied:
            out["lm_head.weight"] = head
    layer = 0
    while f"layers.{layer}.self_attn.q_proj.weight" in hf:
        a, ours = f"layers.{layer}.", f"trunk.blocks.{layer}."
        q, k, v = (take(f"{a}self_attn.{n}_proj.weight") for n in "qkv")
        out[f"{ours}attn.qkv.weight"] = torch.cat([_per_head(q, n_heads, order), _per_head(k, n_kv_heads, order), v])
        if f"{a}self_attn.q_proj.bias" in hf:
            qb, kb, vb = (take(f"{a}self_attn.{n}_proj.bias") for n in "qkv")
            out[f"{ours}attn.qkv.bias"] = torch.cat([_per_head(qb, n_heads, order), _per_head(kb, n_kv_heads, order), vb])
        if f"{a}self_attn.q_norm.weight" in hf:
            out[f"{ours}attn.q_norm.weight"] = take(f"{a}self_attn.q_norm.weight")[order]
            out[f"{ours}attn.k_norm.weight"] = take(f"{a}self_attn.k_norm.weight")[order]
        out[f"{ours}attn.out.weight"] = take(f"{a}self_attn.o_proj.weight")
        out[f"{ours}attn_norm.weight"] = take(f"{a}input_layernorm.weight")
        out[f"{ours}mlp_norm.weight"] = take(f"{a}post_attention_layernorm.weight")
        out[f"{ours}mlp.gate_up.weight"] = torch.cat([take(f"{a}mlp.gate_proj.weight"), take(f"{a}mlp.up_proj.weight")])
        out[f"{ours}mlp.down.weight"] = take(f"{a}mlp.down_proj.weight")
        layer += 1
    if hf:
        raise ValueError(f"{folder}: tensors this model has no place for: {', '.join(sorted(hf)[:8])}"
                         + (f" and {len(hf) - 8} more" if len(hf) > 8 else ""))
    return out


def _copy(param: torch.Tensor, value: torch.Tensor) -> None:
    param.copy_(value)


@torch.no_grad()
def load_text_weights(model, folder: str | Path, new_ids: Iterable[int] = (), assign=_copy) -> None:
    """Copy a folder's embedding, trunk and LM head into ``model`` (a ``Transfusion`` built with
    ``model_fields(folder)``). The rows of ``new_ids`` (tokens added to its tokenizer: BOI, EOI,
    ... placed in a padded embedding's spare rows or after them) and rows beyond the folder's
    (image codes) start at the mean of the rows of its own tokens; the other spare rows keep their
    values, so every logit but those of the added rows is transformers'. With ``model.mot`` both copies get the
    weights. ``assign(param, whole_value)`` writes each one (``distributed.assign_shard`` keeps a
    sharded weight's own shard)."""
    cfg = model.model_cfg
    weights = text_state_dict(folder, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads, cfg.tie_embeddings)
    params = dict(model.named_parameters(remove_duplicate=False))
    new_ids = sorted(new_ids)
    for name, value in weights.items():
        targets = [n for n in params if base_name(n).replace(".text.", ".").replace(".image.", ".") == name]
        if not targets:
            raise ValueError(f"{folder}: weight {name} has no place in this model (is it built with model_fields?)")
        for target in targets:
            param = params[target]
            whole = value
            if name in ("token_embed.weight", "lm_head.weight") and param.shape[1:] == value.shape[1:]:
                mean = value[: min([*new_ids, len(value)])].mean(0)  # added tokens come after the folder's own
                whole = torch.cat([value, mean.expand(max(0, param.shape[0] - value.shape[0]), -1)])
                whole[[i for i in new_ids if i < len(whole)]] = mean
            if param.shape != whole.shape:
                raise ValueError(f"{folder}: {name} is {tuple(value.shape)} there, {tuple(param.shape)} here")
            assign(param, whole.to(param.dtype))


def export_text_model(model, tokenizer, out: str | Path, overwrite: bool = False) -> Path:
    """Write the text part of ``model`` (embedding, trunk, LM head; the text copies of a MoT
    trunk) as a transformers folder: Llama, or Qwen2 with q/k/v biases, or Qwen3 with q/k norms.
    Images stay this library's own. ``out`` must be new, empty or an earlier export
    (``overwrite``: any folder but a run's; ``fileio.check_export_target``). Returns the folder."""
    from safetensors.torch import save_file

    from transfusion.fileio import atomic_folder, check_export_target

    cfg = model.model_cfg
    heads, kv = cfg.n_heads, cfg.n_kv_heads or cfg.n_heads
    head_dim, V = head_size(cfg), model.vocab_size
    back = torch.argsort(_half_to_pairs(head_dim))  # adjacent pairs -> "rotate half"
    family = "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"
    weights = {k.replace(".text.", "."): v.detach().float().cpu() for k, v in model.state_dict().items()
               if ".image." not in k}
    hf = {"model.embed_tokens.weight": weights["token_embed.weight"][:V], "model.norm.weight": weights["trunk.norm.weight"]}
    if not cfg.tie_embeddings:
        hf["lm_head.weight"] = weights["lm_head.weight"][:V]
    for i in range(cfg.n_layers):
        a, ours = f"model.layers.{i}.", f"trunk.blocks.{i}."
        q, k, v = weights[f"{ours}attn.qkv.weight"].split([heads * head_dim, kv * head_dim, kv * head_dim])
        hf[f"{a}self_attn.q_proj.weight"], hf[f"{a}self_attn.k_proj.weight"] = _per_head(q, heads, back), _per_head(k, kv, back)
        hf[f"{a}self_attn.v_proj.weight"] = v
        if cfg.qkv_bias:
            qb, kb, vb = weights[f"{ours}attn.qkv.bias"].split([heads * head_dim, kv * head_dim, kv * head_dim])
            hf[f"{a}self_attn.q_proj.bias"], hf[f"{a}self_attn.k_proj.bias"] = _per_head(qb, heads, back), _per_head(kb, kv, back)
            hf[f"{a}self_attn.v_proj.bias"] = vb
        if cfg.qk_norm:
            hf[f"{a}self_attn.q_norm.weight"] = weights[f"{ours}attn.q_norm.weight"][back]
            hf[f"{a}self_attn.k_norm.weight"] = weights[f"{ours}attn.k_norm.weight"][back]
        hf[f"{a}self_attn.o_proj.weight"] = weights[f"{ours}attn.out.weight"]
        hf[f"{a}input_layernorm.weight"] = weights[f"{ours}attn_norm.weight"]
        hf[f"{a}post_attention_layernorm.weight"] = weights[f"{ours}mlp_norm.weight"]
        gate, up = weights[f"{ours}mlp.gate_up.weight"].chunk(2)
        hf[f"{a}mlp.gate_proj.weight"], hf[f"{a}mlp.up_proj.weight"] = gate, up
        hf[f"{a}mlp.down_proj.weight"] = weights[f"{ours}mlp.down.weight"]
    config = {"architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                 "qwen3": "Qwen3ForCausalLM"}[family]], "model_type": family,
              "hidden_size": cfg.dim, "intermediate_size": weights["trunk.blocks.0.mlp.down.weight"].shape[1],
              "num_hidden_layers": cfg.n_layers, "num_attention_heads": heads, "num_key_value_heads": kv,
              "head_dim": head_dim, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
              "max_position_embeddings": cfg.max_seq_len, "vocab_size": V, "tie_word_embeddings": cfg.tie_embeddings,
              "hidden_act": "silu", "attention_bias": False, "torch_dtype": "float32"}
    if cfg.rope_scaling == "llama3":  # transformers 4's keys; 5 reads them into its rope_parameters
        config["rope_scaling"] = {"rope_type": "llama3", "factor": cfg.rope_factor,
                                  "low_freq_factor": cfg.rope_low_freq_factor,
                                  "high_freq_factor": cfg.rope_high_freq_factor,
                                  "original_max_position_embeddings": cfg.rope_original_max_len}
        config["max_position_embeddings"] = max(cfg.max_seq_len, int(cfg.rope_original_max_len * cfg.rope_factor))
    if tokenizer.vocab_size > V:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model's vocabulary {V}")
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    config.update(ids)
    files = tokenizer_files(tokenizer, cfg.max_seq_len)
    out = check_export_target(out, "export-hf", HF_EXPORT_NAMES, overwrite)
    with atomic_folder(out) as tmp:
        save_file({k: t.contiguous() for k, t in hf.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        files |= {"config.json": json.dumps(config, indent=2) + "\n",
                  "generation_config.json": json.dumps(ids, indent=2) + "\n"}
        for name, text in files.items():  # the folder itself is renamed into place whole
            (tmp / name).write_text(text)
    return out


def tokenizer_files(tokenizer, max_len: int) -> dict[str, str]:
    """What transformers' ``AutoTokenizer`` reads, for any of this library's tokenizers:
    tokenizer.json (a ``tokenizers`` file: a pretrained or trained BPE with its special tokens,
    or the byte tokenizer as a BPE without merges with the same ids), tokenizer_config.json and
    special_tokens_map.json (which token is BOS, EOS, PAD; BOI and EOI as extra special tokens).
    No BOS is prepended on encoding, and a control token typed in a text is text
    (``split_special_tokens``): ids are this library's ``encode``."""
    from transfusion.tokenizer import CONTROL_TOKENS, ROLES, BPETokenizer

    if isinstance(tokenizer, BPETokenizer):
        hf, names = tokenizer.hf, tokenizer.specials
    else:
        hf, names = tokenizer.to_hf(), dict(zip(ROLES, CONTROL_TOKENS))
    special = {f"{role}_token": names[role] for role in ("bos", "eos", "pad")}
    extra = [names["boi"], names["eoi"]]
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "additional_special_tokens": extra,
                "model_max_length": max_len, "split_special_tokens": True, "clean_up_tokenization_spaces": False}
    return {"tokenizer.json": hf.to_str(), "tokenizer_config.json": json.dumps(settings, indent=2) + "\n",
            "special_tokens_map.json": json.dumps({**special, "additional_special_tokens": extra}, indent=2) + "\n"}
