"""Hugging Face transformers folders of causal LMs, read into this library's model and written back.

    fields = model_fields("path/to/SmolLM-135M")      # ModelConfig fields of its trunk (dim, heads, GQA, ...)
    load_text_weights(model, "path/to/SmolLM-135M")   # embedding, trunk and LM head from its *.safetensors
    tokenizer = pretrained_tokenizer("path/to/SmolLM-135M")   # its tokenizer.json + BOS/EOS/BOI/EOI/PAD

A run names the folder as ``model.init_from``: ``with_pretrained_fields(cfg)`` takes its
architecture, training builds the model and loads the weights before the first step.

Families: Llama (SmolLM included: grouped-query attention, tied embeddings, rope theta),
Qwen2 / Qwen2.5 (biases on q/k/v) and Qwen3 (per-head q/k RMSNorm). The files are read
directly (``config.json``, ``*.safetensors``); ``transformers`` is not needed at run time.

Two conventions differ and are converted here: transformers' rotary embedding pairs channel
j with j + hd/2 of each head ("rotate half"), this library pairs 2j with 2j + 1, so the rows
of the q and k projections (and their biases and norms) are permuted per head; and q, k, v
(and gate, up) are one fused projection here, so their weights are concatenated.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open

from transfusion.config import validate
from transfusion.hub import LM_FILES, local_folder

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
    if config.get("rope_scaling"):
        raise ValueError(f"{path}: rope_scaling {config['rope_scaling']} is not supported")
    return config


def model_fields(folder: str | Path) -> dict:
    """The ``model.*`` config fields that rebuild the folder's trunk."""
    c = read_config(folder)
    family = FAMILIES[c["architectures"][0]]
    heads = c["num_attention_heads"]
    if c.get("head_dim", c["hidden_size"] // heads) * heads != c["hidden_size"]:
        raise ValueError(f"{folder}: head_dim x heads must equal hidden_size here")
    rope = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return {"dim": c["hidden_size"], "n_layers": c["num_hidden_layers"], "n_heads": heads,
            "n_kv_heads": c.get("num_key_value_heads") or heads, "mlp_hidden": c["intermediate_size"],
            "norm_eps": float(c.get("rms_norm_eps", 1e-6)), "rope_theta": float(rope),
            "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
            "qkv_bias": family == "qwen2" or bool(c.get("attention_bias", False)), "qk_norm": family == "qwen3"}


def with_pretrained_fields(cfg):
    """``cfg`` (a ``Config``) with the ``model.*`` fields of ``model.init_from``'s architecture."""
    if not cfg.model.init_from:
        return cfg
    out = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model_fields(cfg.model.init_from)))
    validate(out)
    return out


def pretrained_tokenizer(folder: str | Path):
    """The folder's ``tokenizer.json`` with this library's special tokens added at its end."""
    from tokenizers import Tokenizer as HFTokenizer

    from transfusion.tokenizer import BPETokenizer

    path = local_folder(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no tokenizer.json")
    return BPETokenizer.extended(HFTokenizer.from_file(str(path)))


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


def text_state_dict(folder: str | Path, n_heads: int, n_kv_heads: int) -> dict[str, torch.Tensor]:
    """The folder's weights under this library's names (text copies only, vocabulary as saved)."""
    folder = local_folder(folder, LM_FILES)
    hf = _tensors(folder)
    hf = {k.removeprefix("model."): v for k, v in hf.items()}
    order = _half_to_pairs(hf["layers.0.self_attn.q_proj.weight"].shape[0] // n_heads)
    out = {"token_embed.weight": hf["embed_tokens.weight"], "trunk.norm.weight": hf["norm.weight"]}
    if "lm_head.weight" in hf:
        out["lm_head.weight"] = hf["lm_head.weight"]
    layer = 0
    while f"layers.{layer}.self_attn.q_proj.weight" in hf:
        a, ours = f"layers.{layer}.", f"trunk.blocks.{layer}."
        q, k, v = (hf[f"{a}self_attn.{n}_proj.weight"] for n in "qkv")
        out[f"{ours}attn.qkv.weight"] = torch.cat([_per_head(q, n_heads, order), _per_head(k, n_kv_heads, order), v])
        if f"{a}self_attn.q_proj.bias" in hf:
            qb, kb, vb = (hf[f"{a}self_attn.{n}_proj.bias"] for n in "qkv")
            out[f"{ours}attn.qkv.bias"] = torch.cat([_per_head(qb, n_heads, order), _per_head(kb, n_kv_heads, order), vb])
        if f"{a}self_attn.q_norm.weight" in hf:
            out[f"{ours}attn.q_norm.weight"] = hf[f"{a}self_attn.q_norm.weight"][order]
            out[f"{ours}attn.k_norm.weight"] = hf[f"{a}self_attn.k_norm.weight"][order]
        out[f"{ours}attn.out.weight"] = hf[f"{a}self_attn.o_proj.weight"]
        out[f"{ours}attn_norm.weight"] = hf[f"{a}input_layernorm.weight"]
        out[f"{ours}mlp_norm.weight"] = hf[f"{a}post_attention_layernorm.weight"]
        out[f"{ours}mlp.gate_up.weight"] = torch.cat([hf[f"{a}mlp.gate_proj.weight"], hf[f"{a}mlp.up_proj.weight"]])
        out[f"{ours}mlp.down.weight"] = hf[f"{a}mlp.down_proj.weight"]
        layer += 1
    return out


def _copy(param: torch.Tensor, value: torch.Tensor) -> None:
    param.copy_(value)


@torch.no_grad()
def load_text_weights(model, folder: str | Path, assign=_copy) -> None:
    """Copy a folder's embedding, trunk and LM head into ``model`` (a ``Transfusion`` built with
    ``model_fields(folder)``). Rows beyond the folder's vocabulary (tokens added here, image
    codes) start at the mean of its rows; with ``model.mot`` both copies get the weights.
    ``assign(param, whole_value)`` writes each one (``distributed.assign_shard`` keeps a
    sharded weight's own shard)."""
    cfg = model.model_cfg
    weights = text_state_dict(folder, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads)
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, value in weights.items():
        targets = [n for n in params if n.replace(".text.", ".").replace(".image.", ".") == name]
        if not targets:
            raise ValueError(f"{folder}: weight {name} has no place in this model (is it built with model_fields?)")
        for target in targets:
            param = params[target]
            whole = value
            if param.shape[0] > value.shape[0] and name in ("token_embed.weight", "lm_head.weight"):
                whole = torch.cat([value, value.mean(0, keepdim=True).expand(param.shape[0] - value.shape[0], -1)])
            if param.shape != whole.shape:
                raise ValueError(f"{folder}: {name} is {tuple(value.shape)} there, {tuple(param.shape)} here")
            assign(param, whole.to(param.dtype))


def export_text_model(model, tokenizer, out: str | Path, overwrite: bool = False) -> Path:
    """Write the text part of ``model`` (embedding, trunk, LM head; the text copies of a MoT
    trunk) as a transformers folder: Llama, or Qwen2 with q/k/v biases, or Qwen3 with q/k norms.
    Images stay this library's own. ``out`` must be new, empty or an earlier export
    (``overwrite``: any folder but a run's; ``fileio.check_export_target``). Returns the folder."""
    from safetensors.torch import save_file

    from transfusion.fileio import atomic_folder, atomic_text, check_export_target
    from transfusion.tokenizer import BPETokenizer

    cfg = model.model_cfg
    heads, kv = cfg.n_heads, cfg.n_kv_heads or cfg.n_heads
    head_dim, V = cfg.dim // heads, model.vocab_size
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
    config.update({f"{name}_token_id": i for name, i in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id),
                                                         ("pad", tokenizer.pad_id)) if i < V})
    out = check_export_target(out, "export-hf", HF_EXPORT_NAMES, overwrite)
    with atomic_folder(out) as tmp:
        save_file({k: t.contiguous() for k, t in hf.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
        if isinstance(tokenizer, BPETokenizer):
            atomic_text(tmp / "tokenizer.json", tokenizer.to_json())
    return out
