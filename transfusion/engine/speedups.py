"""Faster sampling on a CPU, applied to a loaded model from outside (the model code stays plain):

    model = quantized_trunk(model)      # int8 dynamic quantisation of the trunk's linear layers (--int8)
    model = compiled(model)             # torch.compile of the forward (prefill, text steps, image steps)

Both return a new model and leave the given one as it was. ``benchmarks/inference_speed.py``
measures them (and thread counts) against the fp32 eager model: time per image and per caption,
and the attribute reader's scores of the images and captions they make.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn

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


def compiled(model: Transfusion) -> Transfusion:
    """A copy of ``model`` whose forward is ``torch.compile``d with dynamic shapes (the number of
    new columns and the cache length change at every call), so shapes seen once are not recompiled."""
    out = copy.deepcopy(model).eval()
    out.forward = torch.compile(out.forward, dynamic=True)
    return out


def with_int8_trunk(loaded: Loaded) -> Loaded:
    """``loaded`` with ``quantized_trunk``'s model (``--int8``, ``Pipeline.from_pretrained(int8=True)``): CPU only."""
    device = next(loaded.model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"int8 dynamic quantisation runs on the CPU; this model is on {device}")
    return dataclasses.replace(loaded, model=quantized_trunk(loaded.model))
