"""Train a Transfusion model on text and images at once: ``train(cfg, out)``.

    transfusion train --preset tiny --out runs/tiny                  # the main job, ~15 min on 2 cores
    transfusion train --preset debug --out runs/dbg train.steps=50   # seconds
    transfusion train --preset small --out runs/small configs/flow_mot.yaml model.dim=512
    transfusion train --preset tiny --out runs/chameleon image.objective=tokens image.autoencoder=train
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

import json
import math
import signal
import threading
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from transfusion.autoencoders import (Autoencoder, KLAutoencoder, VQAutoencoder, load_autoencoder, save_autoencoder,
                                      train_autoencoder)
from transfusion.checkpoint import Loaded, list_checkpoints, load_start_weights, with_start_fields
from transfusion.config import Config, config_yaml, from_dict, to_dict
from transfusion.data.stream import BatchBuilder, build_mixture
from transfusion.diffusion import noise_process
from transfusion.distributed import (EMA, World, assign_shard, build_model, close_world, full, init_world, rows_of,
                                     sampling_model)
from transfusion.fileio import RunLock, atomic_text
from transfusion.flops import count_step_flops, resident_mb, training_peak_flops
from transfusion.hf import load_text_weights, pretrained_tokenizer, with_pretrained_fields
from transfusion.optim import build_optimizer, lr_at
from transfusion.step import train_step
from transfusion.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer, save_tokenizer
from transfusion.tracking import Tracker
from transfusion.train_state import load_training_state, save_checkpoint


def build_tokenizer(cfg: Config, mixture) -> Tokenizer:
    spec = cfg.data.tokenizer
    if cfg.model.init_from and not cfg.train.init_from:  # a pretrained model reads with its own tokenizer
        return pretrained_tokenizer(cfg.model.init_from)
    if spec == "bytes":
        return ByteTokenizer()
    if spec == "bpe":
        import random

        rng = random.Random(cfg.train.seed)
        if hasattr(mixture, "texts"):  # a sharded corpus: its first documents
            texts = mixture.texts(20_000)
        else:
            texts = [mixture.draw(rng).caption for _ in range(20_000)]
        return BPETokenizer.train(texts, cfg.data.bpe_vocab_size)
    return load_tokenizer(spec)


def with_images(data):
    """A dataset as is, or (the first documents of a sharded corpus, a list) those with an image."""
    return [d for d in data if d.images] if isinstance(data, list) else data


def prepare_autoencoder(cfg: Config, out: Path, mixture=None) -> Autoencoder:
    """The run's frozen autoencoder: a corpus of precomputed latents brings its own (checked
    by fingerprint); ``image.autoencoder=train`` trains one into RUN/autoencoder once; else
    the named one."""
    folder = out / "autoencoder"
    if getattr(mixture, "latents", False):
        from transfusion.data.precompute import corpus_autoencoder

        ae = corpus_autoencoder(mixture, cfg.image.autoencoder)
        if not (folder / "autoencoder.json").is_file():
            save_autoencoder(ae, folder)
        return ae
    if cfg.image.autoencoder != "train":
        return load_autoencoder(cfg.image.autoencoder)
    if (folder / "autoencoder.json").is_file():
        return load_autoencoder(folder)
    from transfusion.data.registry import load_dataset
    from transfusion.visualize import reconstruction_grid

    i = cfg.image
    torch.manual_seed(cfg.train.seed)
    data = with_images(load_dataset(cfg.data.dataset, "train", i.size))
    if i.objective == "tokens":
        ae: Autoencoder = VQAutoencoder(codebook_size=i.ae_codebook_size, code_dim=i.ae_latent_channels,
                                        downsample=i.ae_downsample, width=i.ae_width)
    else:
        ae = KLAutoencoder(latent_channels=i.ae_latent_channels, downsample=i.ae_downsample, width=i.ae_width)
    metrics = train_autoencoder(ae, data, i.ae_steps, batch_size=16, seed=cfg.train.seed)
    if i.objective == "tokens":
        print(f"vq autoencoder: {metrics['usage']:.0%} of {i.ae_codebook_size} codes used (perplexity "
              f"{metrics['perplexity']:.0f})")
    print(f"autoencoder: reconstruction mse {metrics['mse']:.4f} after {i.ae_steps} steps ({metrics['seconds']:.0f}s)")
    save_autoencoder(ae, folder)
    test = with_images(load_dataset(cfg.data.dataset, "test", i.size))
    pixels = torch.stack([test[j].images[0].pixels for j in range(8)])
    reconstruction_grid(pixels, ae.decode(ae.encode(pixels))).save(folder / "reconstructions.png")
    return ae


# settings that change how a run is executed, not what it computes: a resumed run may change them
EXECUTION = {"train": ("steps", "device", "threads", "parallel", "grad_accum", "compile", "precision",
                       "activation_checkpointing", "log_every", "log", "checkpoint_every", "sample_every",
                       "keep_checkpoints", "eval_samples"),
             "model": ("attention",)}


def resolve_run_config(out: Path, cfg: Config) -> Config:
    """A run folder keeps its config: resuming with a different one is an error, except for
    execution settings (``EXECUTION``: steps, processes, devices, precision, logging), which
    are taken from ``cfg``."""
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return cfg
    saved = from_dict(yaml.safe_load(saved_path.read_text()))
    a, b = to_dict(saved), to_dict(cfg)
    for section, keys in EXECUTION.items():
        for key in keys:
            a[section].pop(key), b[section].pop(key)
    if a != b:
        diff = [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k]]
        raise ValueError(
            f"{out} holds a run with another config (differs in {', '.join(diff)}); "
            f"use a new --out or the same settings to resume"
        )
    for section, keys in EXECUTION.items():
        for key in keys:
            setattr(getattr(saved, section), key, getattr(getattr(cfg, section), key))
    return saved


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
    world, device = init_world(cfg)
    if cfg.model.attention == "flex" and device.type == "cpu":
        raise ValueError("model.attention=flex trains on CUDA only (FlexAttention has no CPU backward); use sdpa")
    lock = RunLock(out).acquire() if world.main else None
    try:
        return _train(cfg, out, world, device)
    finally:
        if lock is not None:
            lock.release()
        close_world()


def _train(cfg: Config, out: Path, world: World, device: torch.device) -> Path:
    mine = [rows_of(world, cfg, k) for k in range(cfg.train.grad_accum)]  # fails early if the batch does not split
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_text(out / "config.yaml", config_yaml(cfg))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    say = print if world.main else (lambda *a, **k: None)

    # ---- data, tokenizer, autoencoder: made by the first process, read by the others
    mixture = build_mixture(cfg)
    if world.main and not (out / "tokenizer.json").is_file():
        save_tokenizer(build_tokenizer(cfg, mixture), out / "tokenizer.json")
    if world.main:
        prepare_autoencoder(cfg, out, mixture)
    world.barrier()
    tokenizer = load_tokenizer(out / "tokenizer.json")
    autoencoder = prepare_autoencoder(cfg, out, mixture).eval()

    # ---- model and optimizer
    model, core = build_model(cfg, tokenizer, autoencoder, world, device)
    if cfg.model.init_from and not cfg.train.init_from and not list_checkpoints(out / "checkpoints"):  # first start
        load_text_weights(core, cfg.model.init_from, tokenizer.new_ids, assign=assign_shard)
    if cfg.train.init_from:  # fine-tuning: a trained run's weights, a fresh optimizer and schedule
        load_start_weights(core, cfg.train.init_from, assign=assign_shard)
    optimizer = build_optimizer(model, cfg)
    ema = EMA(core, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    diffusion = noise_process(cfg.diffusion)
    builder = BatchBuilder(cfg, mixture, tokenizer, autoencoder, core.num_patches)
    autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=cfg.train.precision == "bf16")  # noqa: E731

    start, tokens_seen, state = 0, 0, {}
    checkpoints = list_checkpoints(out / "checkpoints")
    if checkpoints:
        state = load_training_state(checkpoints[-1], model, optimizer, ema)
        start, tokens_seen = state["step"], state.get("tokens_seen", 0)
        say(f"resuming from {checkpoints[-1]} (step {start})")
    builder.open_streams(range(mine[0].start, mine[-1].stop), state.get("data"))  # a streamed corpus resumes in place
    if world.main:
        truncate_metrics(out / "metrics.jsonl", start)
    say(f"model: {core.num_params() / 1e6:.2f}M parameters ({core.num_params(True) / 1e6:.2f}M in the trunk, "
        f"{core.num_params(active=True) / 1e6:.2f}M active per token), "
        f"vocab {tokenizer.vocab_size}, {core.patch_reduction}x patch reduction; {world.size} process(es)"
        + (f" ({cfg.train.parallel})" if world.size > 1 else ""))

    def micro_batches(step: int) -> list:
        return [builder.batch_at(step, cfg.train.seed, rows).to(device) for rows in mine]

    def checkpoint(step: int) -> None:
        extra = {"tokens_seen": tokens_seen, "data": world.merge(builder.stream_state())}
        save_checkpoint(out / "checkpoints", step, model, cfg, tokenizer, autoencoder, optimizer,
                        extra_state=extra, keep=cfg.train.keep_checkpoints, ema=ema)

    def sample(step: int, n: int) -> dict | None:
        """Sample grids from the whole model, on the first process (and to the experiment log)."""
        whole = sampling_model(model, core, cfg, tokenizer, autoencoder, world, device)
        result = None
        if world.main:
            whole.eval()
            result = write_samples(Loaded(whole, tokenizer, autoencoder, cfg, step, out), out, step, n)
            whole.train()
            if metrics is not None:
                from PIL import Image as PILImage

                for name, suffix in (("samples/text_to_image", ""), ("samples/captions", "_captions")):
                    with PILImage.open(out / "samples" / f"step_{step:06d}{suffix}.png") as grid:
                        metrics.image(name, grid, step)
        world.barrier()
        return result

    # ---- loop
    peak = training_peak_flops(device, cfg.train.precision)
    first = micro_batches(start)  # (also the first step's: a streamed corpus is read once)
    with autocast():
        flops_per_token = count_step_flops(model, first[0], diffusion, cfg) / max(first[0].num_tokens, 1)
    # train_flops = 6 N D: N the parameters a token uses (all of them, but one copy of each Mixture-of-Transformers
    # layer), D real tokens seen (as the paper counts)
    n_params = core.num_params(active=True)
    metrics = Tracker(out, cfg.train.log, to_dict(cfg), start) if world.main else None
    model.train()
    bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc="train",
               disable=not world.main)
    window_tokens, window_start = 0, time.perf_counter()
    completed = start
    try:
        with StopRequest() as stop:
            for step in bar:
                lr = lr_at(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batches = first if step == start else micro_batches(step)
                optimizer.zero_grad(set_to_none=True)
                losses, step_tokens = train_step(model, batches, diffusion, cfg, world, autocast)
                # one scalar read back per step (train_step has already synchronised for the losses)
                grad_norm = float(full(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)))
                check_step(losses, grad_norm, step, out)
                optimizer.step()
                if ema is not None:
                    ema.update(core)
                completed = done = step + 1
                window_tokens += step_tokens
                tokens_seen += step_tokens

                if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                    elapsed = time.perf_counter() - window_start
                    tokens_per_s = window_tokens / elapsed
                    row = {"step": done, **losses, "lr": lr, "grad_norm": grad_norm,
                           "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * flops_per_token / (peak * world.size),
                           "tokens_seen": tokens_seen, "train_flops": 6 * n_params * tokens_seen}
                    if (rss := resident_mb()) is not None:
                        row["rss_mb"] = rss
                    if builder.feed is not None:
                        row["skipped_records"] = int(world.sum([builder.skipped])[0])
                    if metrics is not None:
                        metrics.log(row)
                    bar.set_postfix({k: f"{row[k]:.4f}" for k in losses if k != "total"}
                                    | {"tok_s": f"{tokens_per_s:.0f}"})
                    window_tokens, window_start = 0, time.perf_counter()
                pause = time.perf_counter()
                saved = done % cfg.train.checkpoint_every == 0 and done < cfg.train.steps
                if saved:
                    checkpoint(done)
                if cfg.train.sample_every and done % cfg.train.sample_every == 0 and done < cfg.train.steps:
                    sample(done, min(16, cfg.train.eval_samples))
                window_start += time.perf_counter() - pause  # tokens/s measures training alone
                if done < cfg.train.steps and stop.agreed(world):
                    if not saved:
                        checkpoint(done)
                    say(f"\ninterrupted: saved step {done}; rerun the same command to resume")
                    raise SystemExit(130)
    except KeyboardInterrupt:  # a second Ctrl-C: perhaps mid-step, so nothing is saved
        say(f"\nstopped at once at step {completed}, without saving; rerun the same command to resume from the "
            f"last checkpoint in {out / 'checkpoints'}")
        raise SystemExit(130)
    finally:
        if metrics is not None and completed < cfg.train.steps:  # stopped early: the end below never comes
            metrics.close()

    # ---- end of run: checkpoint, samples, report, plot
    final = cfg.train.steps
    try:
        checkpoint(final)
        report = sample(final, cfg.train.eval_samples)
    finally:
        if metrics is not None:
            metrics.close()
    if world.main:
        from transfusion.visualize import plot_losses

        plot_losses(out / "metrics.jsonl", out / "losses.png")
        report["model_parameters"] = core.num_params()
        report["active_parameters"] = n_params
        report["matmul_peak_gflops"] = peak / 1e9
        (out / "report.json").write_text(json.dumps(report, indent=2))
        print(json.dumps({k: report[k] for k in ("t2i", "i2t")}, indent=1))
    return out
