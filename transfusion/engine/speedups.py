"""Faster sampling on a CPU, applied to a loaded model from outside (the model code stays plain):

    model = bf16_trunk(model)           # the trunk's products in bf16 (--precision bf16; auto where native)
    model = quantized_trunk(model)      # int8 dynamic quantisation of the trunk's linear layers (--precision int8)
    model = compiled(model)             # torch.compile of the forward (prefill, text steps, image steps)
    loaded = with_precision(loaded, "auto")   # what generate, caption, edit and Pipeline do

Each returns a new model and leaves the given one as it was. ``benchmarks/inference_speed.py``
measures them (and thread counts) against the fp32 eager model: time per image and per caption,
and the attribute reader's scores of the images and captions they make. The default, ``auto``,
is bf16 on a CPU that multiplies bf16 natively (AVX512-BF16 or AMX): 1.2x to 1.3x faster images
on this library's models with every attribute score within 1 point of fp32; int8 is faster
still but moves some scores by up to 1.7 points, so it is an option. ``eval`` and ``serve``
default to fp32 (scores of the model as trained; a served image that does not depend on its
batch companions, which bf16's rounding breaks by a few levels of 255). See docs/speed.md.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from transfusion.checkpoint import Loaded
from transfusion.model.transfusion import Transfusion


def quantized_trunk(model: Transfusion, per_channel: bool = True) -> Transfusion:
    """A copy of ``model`` whose trunk's ``nn.Linear`` layers (attention and MLP projections, both
    copies under Mixture-of-Transformers) compute in int8, with weights quantised per output
    channel (or per tensor) and activations quantised on the fly; embeddings, norms, the LM head
    and the image layers stay fp32."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    out = copy.deepcopy(model).eval()
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    out.trunk = quantize_dynamic(out.trunk, {nn.Linear: qconfig}, dtype=torch.qint8)
    return out


class Bf16Linear(nn.Module):
    """An ``nn.Linear`` whose matrix product runs in bf16 (weights stored in bf16, the input cast to
    bf16 on the way in, the output cast back to the input's dtype): on CPUs with AVX512-BF16 or AMX
    the product runs about twice as fast as fp32, with a relative error near 3e-3."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def _bf16_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Bf16Linear(child))
        else:
            _bf16_linears(child)


def bf16_trunk(model: Transfusion) -> Transfusion:
    """A copy of ``model`` whose trunk's ``nn.Linear`` layers run their products in bf16
    (``Bf16Linear``); the residual stream, norms, attention, embeddings, LM head and image layers
    stay fp32."""
    out = copy.deepcopy(model).eval()
    _bf16_linears(out.trunk)
    return out


def compiled(model: Transfusion) -> Transfusion:
    """A copy of ``model`` whose forward is ``torch.compile``d with dynamic shapes (the number of
    new columns and the cache length change at every call), so shapes seen once are not recompiled."""
    out = copy.deepcopy(model).eval()
    out.forward = torch.compile(out.forward, dynamic=True)
    return out


PRECISIONS = ("auto", "fp32", "bf16", "int8")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that multiply bf16 natively


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 in hardware (elsewhere bf16 is emulated and slower than fp32);
    False where it cannot tell (no /proc/cpuinfo: macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[-1].split()}
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolved_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on a CPU with native bf16, else fp32 (on a GPU too); the others as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cpu" and native_bf16() else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"int8 dynamic quantisation runs on the CPU; this model is on {device}")
    return precision


def with_precision(loaded: Loaded, precision: str = "auto") -> Loaded:
    """``loaded`` with the trunk's products in ``precision`` (``--precision``,
    ``Pipeline.from_pretrained(precision=)``): fp32 leaves it as it is."""
    device = next(loaded.model.parameters()).device
    chosen = resolved_precision(precision, device)
    if chosen == "fp32":
        return loaded
    return dataclasses.replace(loaded, model=(bf16_trunk if chosen == "bf16" else quantized_trunk)(loaded.model))
