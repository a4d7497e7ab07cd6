"""Train a Transfusion model on text and images at once: ``train(cfg, out)``.

    transfusion train --preset tiny --out runs/tiny                  # the main job, 7-11 min on 2 cores
    transfusion train --preset debug --out runs/dbg train.steps=50   # seconds
    transfusion train --preset small --out runs/small configs/flow_mot.yaml model.dim=512
    transfusion train --preset tiny --out runs/chameleon image.objective=tokens autoencoder.name=train
                                                                     # the Chameleon baseline (VQ image tokens)
    transfusion train --preset small --out runs/edit train.init_from=runs/small data.edit_fraction=0.5
                                                                     # fine-tune a run for editing

On many processes (transfusion/distributed.py): the same arguments under torchrun.

    # one node, 8 GPUs: FSDP2-sharded weights, gradients and optimizer state, bf16 autocast
    torchrun --standalone --nproc_per_node=8 -m transfusion.cli train --preset 0.16B --out runs/a \
        train.device=cuda train.parallel=fsdp train.precision=bf16 data.tokens_per_step=524288
    # 4 nodes of 8 GPUs: run on every node, node0 being the rendezvous host
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=node0:29500 \
        -m transfusion.cli train --preset 7B --out /shared/runs/7b train.device=cuda train.parallel=fsdp \
        train.precision=bf16 train.activation_checkpointing=true model.attention=flex train.compile=true

The global batch (data.batch_size rows, or a data.tokens_per_step budget) is split over
processes and train.grad_accum micro-batches; the result is the single-process one.

The same command after an interruption (Ctrl-C, kill -9, a crash) resumes from the last
checkpoint and continues as if it had never stopped, on the same or another number of
processes: row r of the batch of step s depends only on (seed, s, r) (or, for a streamed
corpus, on the saved stream positions), and weights, optimizer state, EMA and step are
restored.

Writes into --out: config.yaml (resolved), tokenizer.json, metrics.jsonl, losses.png,
checkpoints/step_*/ (whole weights + sharded train_state/), samples/step_*.png (+ captions
of held-out images), report.json.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from transfusion.autoencoders import Autoencoder, load_autoencoder, new_autoencoder, save_autoencoder, train_autoencoder
from transfusion.checkpoint import Loaded, list_checkpoints, load_start_weights, with_start_fields
from transfusion.components import build_components, build_tokenizer
from transfusion.config import Config, config_yaml, from_dict, resumed, to_dict
from transfusion.data.sources import Source, build_source
from transfusion.data.stream import BatchBuilder
from transfusion.diffusion import noise_process
from transfusion.distributed import (EMA, World, assign_shard, build_model, close_world, full, init_world, rows_of,
                                     sampling_model)
from transfusion.fileio import RunLock, atomic_text
from transfusion.flops import count_step_flops, resident_mb, training_peak_flops
from transfusion.hf import load_text_weights, with_pretrained_fields
from transfusion.model.transfusion import Transfusion
from transfusion.optim import build_optimizer, lr_at
from transfusion.samplers import check_sampling
from transfusion.step import train_step
from transfusion.tokenizer import Tokenizer, load_tokenizer, save_tokenizer
from transfusion.tracking import Tracker
from transfusion.train_state import load_training_state, save_checkpoint


def with_images(data):
    """A dataset as is, or (the first documents of a sharded corpus, a list) those with an image."""
    return [d for d in data if d.images] if isinstance(data, list) else data


def prepare_autoencoder(cfg: Config, out: Path, source: Source) -> Autoencoder:
    """The run's frozen autoencoder: a corpus of precomputed latents brings its own (checked
    by fingerprint); ``autoencoder.name=train`` trains one into RUN/autoencoder once; else
    the named one."""
    folder = out / "autoencoder"
    if source.precomputed_latents:
        ae = source.autoencoder(cfg.autoencoder.name)
        if not (folder / "autoencoder.json").is_file():
            save_autoencoder(ae, folder)
        return ae
    if cfg.autoencoder.name != "train":
        return load_autoencoder(cfg.autoencoder.name)
    if (folder / "autoencoder.json").is_file():
        return load_autoencoder(folder)
    from transfusion.data.registry import load_dataset
    from transfusion.visualize import reconstruction_grid

    i, a = cfg.image, cfg.autoencoder
    torch.manual_seed(cfg.train.seed)
    data = with_images(load_dataset(cfg.data.dataset, "train", i.size))
    ae = new_autoencoder(a, codes=i.objective == "tokens")
    metrics = train_autoencoder(ae, data, a.steps, batch_size=16, seed=cfg.train.seed)
    if i.objective == "tokens":
        print(f"vq autoencoder: {metrics['usage']:.0%} of {a.codebook_size} codes used (perplexity "
              f"{metrics['perplexity']:.0f})")
    print(f"autoencoder: reconstruction mse {metrics['mse']:.4f} after {a.steps} steps ({metrics['seconds']:.0f}s)")
    save_autoencoder(ae, folder)
    test = with_images(load_dataset(cfg.data.dataset, "test", i.size))
    pixels = torch.stack([test[j].images[0].pixels for j in range(8)])
    reconstruction_grid(pixels, ae.decode(ae.encode(pixels))).save(folder / "reconstructions.png")
    return ae


def resolve_run_config(out: Path, cfg: Config) -> Config:
    """A run folder keeps its config: resuming with a different one is an error, except for the
    execution and sampling fields (steps, processes, devices, precision, logging, sample grids;
    their roles are marked in ``config.py``), which are taken from ``cfg``."""
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return cfg
    return resumed(from_dict(yaml.safe_load(saved_path.read_text())), cfg, str(out))


def truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines after ``step`` so a resumed run does not log a step twice."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    atomic_text(path, "".join(line + "\n" for line in kept))


def write_samples(loaded: Loaded, out: Path, step: int, n: int) -> dict:
    """Sample grid for held-out captions, captions for held-out images; returns the scores."""
    from transfusion.engine import Request
    from transfusion.evaluate import evaluate
    from transfusion.visualize import image_grid

    summary, samples = evaluate(loaded, ("t2i", "i2t"), n, Request(seed=loaded.config.train.seed), fid=False)
    t2i, i2t = samples["t2i"], samples["i2t"]
    folder = out / "samples"
    folder.mkdir(exist_ok=True)
    image_grid(t2i["images"][:32], t2i["captions"][:32]).save(folder / f"step_{step:06d}.png")
    image_grid(i2t["images"][:32], i2t["generated"][:32]).save(folder / f"step_{step:06d}_captions.png")
    with open(folder / f"step_{step:06d}_captions.txt", "w") as f:
        for ref, gen in zip(i2t["references"], i2t["generated"]):
            f.write(f"truth: {ref}\nmodel: {gen}\n\n")
    result = {"step": step, **summary}
    (folder / f"step_{step:06d}.json").write_text(json.dumps(result, indent=2) + "\n")  # how they were made
    return result


class StopRequest:
    """Ctrl-C (SIGINT) noted while a step runs and acted on between steps, so a saved
    checkpoint is always the state after a whole step: weights, optimizer, EMA and the data
    stream's position agree. A second Ctrl-C stops at once, saving nothing (the last
    checkpoint stays as it was)."""

    def __init__(self):
        self.asked = False
        self._previous = None

    def _note(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        print("\nstopping after this step (Ctrl-C again: stop now, without saving)", flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGINT, self._note)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def agreed(self, world: World) -> bool:
        """Whether any process was asked to stop (all processes then stop at the same step)."""
        return self.asked if world.size == 1 else world.sum([float(self.asked)])[0] > 0


def check_step(losses: dict[str, float], grad_norm: float, step: int, out: Path) -> None:
    """A step whose loss or gradient is not finite stops the run before the optimizer moves,
    so NaN weights are never written (and no good checkpoint is pruned for them)."""
    if math.isfinite(losses["total"]) and math.isfinite(grad_norm):
        return
    what = (f"loss is {losses['total']}" if not math.isfinite(losses["total"]) else
            f"gradient norm is {grad_norm} (loss {losses['total']:.4g})")
    raise FloatingPointError(
        f"{what} at step {step} (" + ", ".join(f"{k} {v:.4g}" for k, v in losses.items() if k != "total")
        + f"); the weights were not updated and the last checkpoint in {out / 'checkpoints'} is intact: "
        f"lower optim.lr or check the data, then rerun to resume")


def train(cfg: Config, out: str | Path) -> Path:
    """Train (or resume) the run in ``out`` with ``cfg``; returns ``out``.

    On many processes every process calls this (under torchrun); the first one holds the
    run folder's lock, so a second run started on the same folder stops with an error.
    """
    out = Path(out)
    cfg = resolve_run_config(out, with_start_fields(with_pretrained_fields(cfg, out)))
    check_sampling(cfg)
    world, device = init_world(cfg)
    if cfg.model.attention == "flex" and device.type == "cpu":
        raise ValueError("model.attention=flex trains on CUDA only (FlexAttention has no CPU backward); use sdpa")
    lock = RunLock(out).acquire() if world.main else None
    try:
        _train(cfg, out, world, device)
        world.barrier()  # every process done (the first writes the report last) before any leaves the group
        return out
    finally:
        if lock is not None:
            lock.release()
        close_world()


@dataclass
class Run:
    """What a training run holds once it is set up (``setup``): everything a step, a checkpoint
    and a sample grid use."""

    cfg: Config
    out: Path
    world: World
    device: torch.device
    rows: list[range]  # this process's rows of the global batch, one range per micro-batch
    tokenizer: Tokenizer
    autoencoder: Autoencoder
    model: torch.nn.Module  # what trains: the core itself, wrapped by DDP, or sharded by FSDP2
    core: Transfusion
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    source: Source
    builder: BatchBuilder
    metrics: Tracker | None = None  # the experiment log, on the first process

    def say(self, text: str) -> None:
        if self.world.main:
            print(text, flush=True)

    def autocast(self):
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.cfg.train.precision == "bf16")

    def micro_batches(self, step: int) -> list:
        return [self.builder.batch_at(step, self.cfg.train.seed, rows).to(self.device) for rows in self.rows]

    def save(self, step: int, tokens_seen: int) -> None:
        extra = {"tokens_seen": tokens_seen, "data": self.world.merge(self.source.state())}
        save_checkpoint(self.out / "checkpoints", step, self.model, self.cfg, self.tokenizer, self.autoencoder,
                        self.optimizer, extra_state=extra, keep=self.cfg.train.keep_checkpoints, ema=self.ema)

    def sample(self, step: int, n: int) -> dict | None:
        """Sample grids from the whole model, on the first process (and to the experiment log)."""
        whole = sampling_model(self.model, self.core, self.cfg, self.tokenizer, self.autoencoder, self.world,
                               self.device)
        result = None
        if self.world.main:
            whole.eval()
            result = write_samples(Loaded(whole, self.tokenizer, self.autoencoder, self.cfg, step, self.out),
                                   self.out, step, n)
            whole.train()
            if self.metrics is not None:
                from PIL import Image as PILImage

                for name, suffix in (("samples/text_to_image", ""), ("samples/captions", "_captions")):
                    with PILImage.open(self.out / "samples" / f"step_{step:06d}{suffix}.png") as grid:
                        self.metrics.image(name, grid, step)
        self.world.barrier()
        return result


def setup(cfg: Config, out: Path, world: World, device: torch.device) -> Run:
    """The run folder, data, tokenizer, autoencoder (made by the first process, read by the
    others), model (with its starting weights) and optimizer."""
    rows = [rows_of(world, cfg, k) for k in range(cfg.train.grad_accum)]  # fails early if the batch does not split
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_text(out / "config.yaml", config_yaml(cfg))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)

    source = build_source(cfg)
    if world.main and not (out / "tokenizer.json").is_file():
        save_tokenizer(build_tokenizer(cfg, source), out / "tokenizer.json")
    if world.main:
        prepare_autoencoder(cfg, out, source)
    world.barrier()
    tokenizer = load_tokenizer(out / "tokenizer.json")
    autoencoder = prepare_autoencoder(cfg, out, source).eval()

    model, core = build_model(cfg, tokenizer, autoencoder, world, device)
    if cfg.model.init_from and not cfg.train.init_from and not list_checkpoints(out / "checkpoints"):  # first start
        load_text_weights(core, cfg.model.init_from, tokenizer.new_ids, assign=assign_shard)
    if cfg.train.init_from:  # fine-tuning: a trained run's weights, a fresh optimizer and schedule
        load_start_weights(core, cfg.train.init_from, assign=assign_shard)
    optimizer = build_optimizer(model, cfg)
    ema = EMA(core, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay > 0 else None
    parts = build_components(cfg, source=source, tokenizer=tokenizer, autoencoder=autoencoder, model=core)
    # (data.mix_by=tokens reweights the source: the builder's is the one that trains)
    return Run(cfg, out, world, device, rows, tokenizer, autoencoder, model, core, optimizer, ema, parts.source,
               parts.batches)


def resume(run: Run) -> tuple[int, int]:
    """(first step, tokens seen so far): the last checkpoint's weights, optimizer, EMA and data
    positions restored when there is one; (0, 0) on a first start."""
    start, tokens_seen, state = 0, 0, {}
    checkpoints = list_checkpoints(run.out / "checkpoints")
    if checkpoints:
        state = load_training_state(checkpoints[-1], run.model, run.optimizer, run.ema)
        start, tokens_seen = state["step"], state.get("tokens_seen", 0)
        run.say(f"resuming from {checkpoints[-1]} (step {start})")
    run.source.open(range(run.rows[0].start, run.rows[-1].stop), state.get("data"))  # a streamed corpus resumes
    if run.world.main:
        truncate_metrics(run.out / "metrics.jsonl", start)
    return start, tokens_seen


class Throughput:
    """Tokens per second and MFU over the steps since the last log line, training time only."""

    def __init__(self, flops_per_token: float, peak: float, processes: int):
        self.flops_per_token, self.peak, self.processes = flops_per_token, peak, processes
        self.tokens, self.start = 0, time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        """Time inside (checkpoints, sample grids) is not training time."""
        pause = time.perf_counter()
        yield
        self.start += time.perf_counter() - pause

    def read(self) -> dict:
        """``tokens_per_s`` and ``mfu`` since the last read."""
        tokens_per_s = self.tokens / (time.perf_counter() - self.start)
        self.tokens, self.start = 0, time.perf_counter()
        return {"tokens_per_s": tokens_per_s, "mfu": tokens_per_s * self.flops_per_token / (self.peak * self.processes)}


def step_once(run: Run, step: int, batches: list, diffusion) -> tuple[dict, float, int]:
    """One optimizer step over this process's micro-batches -> (losses, gradient norm, tokens)."""
    lr = lr_at(step, run.cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    losses, tokens = train_step(run.model, batches, diffusion, run.cfg, run.world, run.autocast)
    # one scalar read back per step (train_step has already synchronised for the losses)
    grad_norm = float(full(torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.optim.grad_clip)))
    check_step(losses, grad_norm, step, run.out)
    run.optimizer.step()
    if run.ema is not None:
        run.ema.update(run.core, step)
    return {**losses, "lr": lr}, grad_norm, tokens


def log_row(run: Run, done: int, losses: dict, grad_norm: float, speed: Throughput, tokens_seen: int) -> dict:
    """The metrics.jsonl line of step ``done`` (and the experiment log's)."""
    row = {"step": done, **losses, "grad_norm": grad_norm, **speed.read(), "tokens_seen": tokens_seen,
           # 6 N D: N the parameters a token uses (all, but one copy of each Mixture-of-Transformers layer), D the
           # real tokens seen (as the paper counts)
           "train_flops": 6 * run.core.num_params(active=True) * tokens_seen}
    if (rss := resident_mb()) is not None:
        row["rss_mb"] = rss
    if run.source.skipped is not None:  # a source that reads records (a streamed corpus)
        row["skipped_records"] = int(run.world.sum([run.source.skipped])[0])
    if run.metrics is not None:
        run.metrics.log(row)
    return row


def loop(run: Run, start: int, tokens_seen: int, first: list, diffusion, speed: Throughput) -> int:
    """Steps ``start`` to ``train.steps``, with log lines, checkpoints and sample grids when due;
    returns the tokens seen. Ctrl-C saves after the running step and exits (130)."""
    cfg, steps = run.cfg, run.cfg.train.steps
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train", disable=not run.world.main)
    completed = start
    try:
        with StopRequest() as stop:
            for step in bar:
                batches = first if step == start else run.micro_batches(step)
                losses, grad_norm, step_tokens = step_once(run, step, batches, diffusion)
                completed = done = step + 1
                speed.tokens += step_tokens
                tokens_seen += step_tokens
                if done % cfg.train.log_every == 0 or done == steps:
                    row = log_row(run, done, losses, grad_norm, speed, tokens_seen)
                    bar.set_postfix({k: f"{row[k]:.4f}" for k in losses if k not in ("total", "lr")}
                                    | {"tok_s": f"{row['tokens_per_s']:.0f}"})
                saved = done % cfg.train.checkpoint_every == 0 and done < steps
                with speed.paused():
                    if saved:
                        run.save(done, tokens_seen)
                    if cfg.train.sample_every and done % cfg.train.sample_every == 0 and done < steps:
                        run.sample(done, min(16, cfg.train.eval_samples))
                if done < steps and stop.agreed(run.world):
                    if not saved:
                        run.save(done, tokens_seen)
                    run.say(f"\ninterrupted: saved step {done}; rerun the same command to resume")
                    raise SystemExit(130)
    except KeyboardInterrupt:  # a second Ctrl-C: perhaps mid-step, so nothing is saved
        run.say(f"\nstopped at once at step {completed}, without saving; rerun the same command to resume from "
                f"the last checkpoint in {run.out / 'checkpoints'}")
        raise SystemExit(130)
    finally:
        if run.metrics is not None and completed < steps:  # stopped early: the end (finish) never comes
            run.metrics.close()
    return tokens_seen


def finish(run: Run, tokens_seen: int, peak: float) -> None:
    """The last checkpoint, the sample grids and scores of held-out data, report.json, losses.png."""
    try:
        run.save(run.cfg.train.steps, tokens_seen)
        report = run.sample(run.cfg.train.steps, run.cfg.train.eval_samples)
    finally:
        if run.metrics is not None:
            run.metrics.close()
    if run.world.main:
        from transfusion.visualize import plot_losses

        plot_losses(run.out / "metrics.jsonl", run.out / "losses.png")
        report["model_parameters"] = run.core.num_params()
        report["active_parameters"] = run.core.num_params(active=True)
        report["matmul_peak_gflops"] = peak / 1e9
        (run.out / "report.json").write_text(json.dumps(report, indent=2))
        print(json.dumps({k: report[k] for k in ("t2i", "i2t")}, indent=1))


def _train(cfg: Config, out: Path, world: World, device: torch.device) -> Path:
    run = setup(cfg, out, world, device)
    start, tokens_seen = resume(run)
    core = run.core
    run.say(f"model: {core.num_params() / 1e6:.2f}M parameters ({core.num_params(True) / 1e6:.2f}M in the trunk, "
            f"{core.num_params(active=True) / 1e6:.2f}M active per token), vocab {run.tokenizer.vocab_size}, "
            f"{core.patch_reduction}x patch reduction; {world.size} process(es)"
            + (f" ({cfg.train.parallel})" if world.size > 1 else ""))
    diffusion = noise_process(cfg.diffusion)
    peak = training_peak_flops(device, cfg.train.precision)
    first = run.micro_batches(start)  # (also the first step's: a streamed corpus is read once)
    with run.autocast():
        flops_per_token = count_step_flops(run.model, first[0], diffusion, cfg) / max(first[0].num_tokens, 1)
    run.metrics = Tracker(out, cfg.train.log, to_dict(cfg), start) if world.main else None
    run.model.train()
    tokens_seen = loop(run, start, tokens_seen, first, diffusion, Throughput(flops_per_token, peak, world.size))
    finish(run, tokens_seen, peak)
    return out
