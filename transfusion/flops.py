"""What a training run costs and uses: FLOPs per step (counted by torch), the machine's
measured matmul peak (the MFU denominator) and the process's resident memory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from transfusion.distributed import unwrap
from transfusion.objective import compute_losses


def resident_mb() -> float | None:
    """This process's resident memory now, in MiB (Linux: /proc/self/statm); None where that is not there."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):  # no /proc (macOS), no sysconf (Windows)
        return None



def matmul_peak_flops(seconds: float = 0.5, n: int = 1024, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, trials: int = 1) -> float:
    """Measured matmul FLOP/s of this machine (n x n, back to back; the best of ``trials``
    timings of ``seconds`` each): the MFU denominator."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(trials):
        sync()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
        sync()
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def training_peak_flops(device: torch.device, precision: str) -> float:
    """The MFU denominator: the matmul peak measured on the training device, in the dtype the
    run's matmuls use (bf16 under ``train.precision=bf16``, else fp32)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 4096 if device.type == "cuda" else 1024  # big enough to reach a GPU's peak
    return matmul_peak_flops(device=device, dtype=dtype, n=n, trials=3 if device.type == "cuda" else 1)


def count_step_flops(model, batch, diffusion, cfg) -> float:
    """FLOPs of one training step (forward + backward), counted by torch on a real batch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        compute_losses(model, batch, diffusion, cfg.diffusion.loss_weight, core=unwrap(model))["total"].backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())
