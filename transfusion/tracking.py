"""Experiment logging: ``metrics.jsonl`` always, and TensorBoard or Weights & Biases beside it.

    train.log=jsonl          RUN/metrics.jsonl only (the default)
    train.log=tensorboard    + event files in RUN/tensorboard/ (``tensorboard --logdir RUN``)
    train.log=wandb          + a W&B run in RUN/wandb/offline-run-*; offline (``wandb sync`` later) unless a login
                             or WANDB_MODE says otherwise, so it never stops a run for want of one

Every logged row (losses, learning rate, gradient norm, tokens/s, MFU, tokens seen, FLOPs)
goes to each backend as scalars; sample grids go as images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BACKENDS = ("jsonl", "tensorboard", "wandb")


class Tracker:
    """Writes rows to ``RUN/metrics.jsonl`` and to the optional backend; ``close()`` at the end."""

    def __init__(self, out: Path, backend: str = "jsonl", config: dict | None = None, resume_step: int = 0):
        if backend not in BACKENDS:
            raise ValueError(f"train.log must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.out, self.backend = Path(out), backend
        self.jsonl = open(self.out / "metrics.jsonl", "a")
        self.writer = self.wandb = None
        if backend == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ValueError(f"train.log=tensorboard needs the tensorboard package (pip install tensorboard): "
                                 f"{err}") from None
            # purge_step: a resumed run drops the events it wrote after its last checkpoint
            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=resume_step or None)
        elif backend == "wandb":
            try:
                import wandb
            except ImportError as err:
                raise ValueError(f"train.log=wandb needs the wandb package (pip install wandb): {err}") from None
            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "transfusion"), name=self.out.name,
                                    dir=str(self.out), config=config, mode=mode, resume="allow",
                                    id=_run_id(self.out))

    def log(self, row: dict) -> None:
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        step = int(row["step"])
        scalars = {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(f"train/{key}", value, step)
            self.writer.flush()
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=step)

    def image(self, name: str, image, step: int) -> None:
        """A PIL image (a sample grid) under ``name`` at ``step``."""
        if self.writer is not None:
            import numpy as np

            self.writer.add_image(name, np.asarray(image.convert("RGB")), step, dataformats="HWC")
            self.writer.flush()
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Image(image)}, step=step)

    def close(self) -> None:
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def _run_id(out: Path) -> str:
    """One W&B run per run folder, kept across resumes (RUN/wandb/run_id)."""
    import secrets

    path = out / "wandb" / "run_id"
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(4)
    path.write_text(run_id)
    return run_id
