"""transfusion against PyPI's transfusion-pytorch (0.20.0) on one identical CPU workload.

    python benchmarks/peer_transfusion_pytorch.py --install     # once: the peer in its own venv
    python benchmarks/peer_transfusion_pytorch.py --rounds 5    # prints medians and ratios
    python benchmarks/peer_transfusion_pytorch.py --equal-flops # our width raised to the peer's FLOPs per token

The workload (the same for both): text vocabulary 256, model dim 256, depth 4, 4 heads of
64; one 8x8 latent image of 16 channels per sample; AdamW; 2 CPU threads.

    train     one training step (forward, backward, AdamW) on 8 samples of 64 text tokens
              followed by their image
    prompt16  one image from a 16-token prompt, 30 denoising evaluations, guidance 3
    prompt256 the same from a 256-token prompt
    batch8    8 images from 8 16-token prompts at once

``--equal-flops`` is the equal-work race: the peer's blocks do about 3x our FLOPs per token at
the same settings (time-conditioned norms on every layer, a 4x GEGLU), so our model width is
raised (heads of 64) until a training step's FLOPs per token, counted by ``FlopCounterMode``
on the real batch on each side, match the peer's; the tokens per step stay the same.

Each measurement runs in a fresh process (so peak memory is its own); the two programs'
processes alternate, round after round, and the report gives per-task medians, the
speed ratio peer / ours, and peak resident memory. Equal model evaluations: the peer
integrates its flow with the midpoint method (2 evaluations per step), so 16 time points
are 30 evaluations, each a conditional and an unconditional forward; ours runs DPM-Solver++ with
30 steps, each one forward of the conditional and unconditional rows together.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".peer-venv"
PEER = "transfusion-pytorch==0.20.0"
TASKS = ("train", "prompt16", "prompt256", "batch8")
WIDTHS = range(256, 1025, 64)  # our candidate widths for --equal-flops (heads of 64)
DIM, DEPTH, HEADS, VOCAB, CHANNELS, SIDE, TEXT, BATCH, EVALS, GUIDANCE = 256, 4, 4, 256, 16, 8, 64, 8, 30, 3.0


def install() -> None:
    """A virtual environment with the peer and the CPU build of this torch."""
    import torch

    version = torch.__version__.split("+")[0]
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={version}"], check=True)
    subprocess.run([*pip, PEER], check=True)
    print(f"installed {PEER} with torch {version} into {VENV}")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the two programs, each measured in its own process


def step_flops(step) -> float:
    """FLOPs of one call of ``step`` (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def ours(task: str, repeats: int, dim: int = DIM) -> dict:
    import torch

    from transfusion.autoencoders import IdentityAutoencoder
    from transfusion.config import load_config
    from transfusion.data.document import Image, Tokens
    from transfusion.data.packing import layout, pack
    from transfusion.diffusion import Diffusion
    from transfusion.engine import Engine, Request
    from transfusion.model.transfusion import Transfusion
    from transfusion.objective import compute_losses
    from transfusion.tokenizer import ByteTokenizer

    cfg = load_config(None, overrides=[
        f"model.dim={dim}", f"model.n_layers={DEPTH}", f"model.n_heads={dim // (DIM // HEADS)}", "model.max_seq_len=512",
        "image.adapter=linear", "image.patch_size=1", "data.seq_len=512"])
    tok = ByteTokenizer()  # 256 bytes + 5 special tokens
    model = Transfusion(cfg.model, cfg.image, tok.vocab_size, CHANNELS, seed=cfg.train.seed)
    g = torch.Generator().manual_seed(0)
    text = lambda n: Tokens(tuple(torch.randint(0, 256, (n,), generator=g).tolist()))  # noqa: E731

    if task in ("train", "flops", "profile"):
        docs = [[text(TEXT), Image(torch.randn(CHANNELS, SIDE, SIDE, generator=g))] for _ in range(BATCH)]
        lays = [layout(d, [s.pixels for s in d if isinstance(s, Image)], [cfg.diffusion.timesteps], tok,
                       model.num_patches) for d in docs]
        batch, _ = pack(lays, BATCH, max(len(lay.ids) for lay in lays), tok.pad_id, one_per_row=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        diffusion = Diffusion()

        def loss():  # a fresh diffusion draw every step
            batch.t, batch.noise = diffusion.draw(batch.latents, batch.max_t, g)
            return compute_losses(model, batch, diffusion, 5.0)["total"]

        def run():
            value = loss()
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()

        if task == "flops":
            return {"flops_per_token": step_flops(lambda: loss().backward()) / (BATCH * (TEXT + SIDE * SIDE)),
                    "dim": dim}
    else:
        engine = Engine(model.eval(), tok, IdentityAutoencoder(CHANNELS), cfg)  # the latents are the images
        n, length = (BATCH, 16) if task == "batch8" else (1, 16 if task == "prompt16" else 256)
        prompts = [[text(length)] for _ in range(n)]
        request = Request(max_new_tokens=1, sampler="dpm++", steps=EVALS, guidance=GUIDANCE, image_size=SIDE)

        def run():
            engine.generate(prompts, request, force_image=True)
    return profile(run) if task == "profile" else measure(run, repeats, f"{model.num_params() / 1e6:.2f}M")


def peer(task: str, repeats: int) -> dict:
    import torch
    from transfusion_pytorch import Transfusion

    model = Transfusion(num_text_tokens=VOCAB, dim_latent=CHANNELS, channel_first_latent=True,
                        modality_default_shape=(SIDE, SIDE),
                        transformer=dict(dim=DIM, depth=DEPTH, dim_head=DIM // HEADS, heads=HEADS))
    g = torch.Generator().manual_seed(0)
    text = lambda n: torch.randint(0, VOCAB, (n,), generator=g)  # noqa: E731
    steps = EVALS // 2 + 1  # midpoint: 2 evaluations per interval

    if task in ("train", "flops", "profile"):
        batch = [[text(TEXT), torch.randn(CHANNELS, SIDE, SIDE, generator=g)] for _ in range(BATCH)]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run():
            loss = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        if task == "flops":
            return {"flops_per_token": step_flops(lambda: model(batch).backward()) / (BATCH * (TEXT + SIDE * SIDE))}
    else:
        model.eval()
        n, length = (BATCH, 16) if task == "batch8" else (1, 16 if task == "prompt16" else 256)
        prompts = [text(length) for _ in range(n)]
        stop = SIDE * SIDE  # counts generated positions only: the image, then one text token (as ours)

        def run():
            with torch.no_grad():
                if n == 1:
                    model.sample_one(prompts[0], max_length=stop, cache_kv=True, force_modality_at_start=0,
                                     modality_steps=steps, cfg_scale=GUIDANCE)
                else:
                    model.sample_many(prompts, max_length=stop, force_modality_at_start=0,
                                      modality_steps=steps, cfg_scale=GUIDANCE)
    params = f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"
    return profile(run) if task == "profile" else measure(run, repeats, params)


def measure(run, repeats: int, params: str) -> dict:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_rss_mb": peak_rss_mb(), "params": params}


CATEGORIES = (  # (category, substrings of a torch op's name), first match wins
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention kernel", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    ("convolution", ("convolution",)),
    ("optimizer", ("adam", "foreach")),
    ("copies and layout", ("aten::copy_", "aten::cat", "aten::clone", "aten::index", "aten::stack", "aten::_to_copy",
                           "aten::contiguous", "aten::fill_", "aten::zero_", "aten::empty")),
)


def profile(run, steps: int = 3) -> dict:
    """Self CPU time of ``steps`` training steps by op category (ms per step; the rest: element-wise,
    normalisation, reductions), from torch.profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run()  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    out: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key.lower()
        category = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "element-wise and other")
        out[category] = out.get(category, 0.0) + event.self_cpu_time_total / 1e3 / steps
    return out


# ---- the driver


def worker_cmd(program: str, task: str, repeats: int, peer_python: str, dim: int) -> list[str]:
    python = sys.executable if program == "ours" else peer_python
    return [python, __file__, "--worker", program, "--task", task, "--repeats", str(repeats), "--dim", str(dim)]


def run_worker(program: str, task: str, repeats: int, peer_python: str, dim: int = DIM) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2", LOGURU_LEVEL="WARNING", TQDM_DISABLE="1")
    if program == "ours":  # the peer's venv must not see this checkout's package, and ours must
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(worker_cmd(program, task, repeats, peer_python, dim), capture_output=True, text=True,
                          env=env)
    if done.returncode:
        raise RuntimeError(f"{program} {task} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--install", action="store_true", help=f"install {PEER} into {VENV} and exit")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per task")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per process (median)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--peer-python", default=str(VENV / "bin" / "python"))
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--worker", choices=("ours", "peer"), help=argparse.SUPPRESS)
    p.add_argument("--equal-flops", action="store_true",
                   help="raise our width until a training step's FLOPs per token match the peer's")
    p.add_argument("--profile", action="store_true",
                   help="print where a training step's time goes on each side (torch.profiler, by op category)")
    p.add_argument("--task", choices=(*TASKS, "flops", "profile"), help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, default=DIM, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.install:
        return install()
    if args.worker:
        import torch

        torch.set_num_threads(2)
        result = ours(args.task, args.repeats, args.dim) if args.worker == "ours" else peer(args.task, args.repeats)
        print(json.dumps(result))
        return
    if not Path(args.peer_python).is_file():
        raise SystemExit(f"no peer environment at {args.peer_python}: run with --install first")

    peer_flops = run_worker("peer", "flops", 1, args.peer_python)["flops_per_token"]
    dim = DIM
    if args.equal_flops:  # the width whose training FLOPs per token are nearest the peer's
        counted = {w: run_worker("ours", "flops", 1, args.peer_python, w)["flops_per_token"] for w in WIDTHS}
        dim = min(counted, key=lambda w: abs(counted[w] / peer_flops - 1))
        print("our FLOPs per token by width: " + ", ".join(f"{w}: {f / 1e6:.1f}M" for w, f in counted.items())
              + f"; the peer's: {peer_flops / 1e6:.1f}M -> width {dim}", flush=True)
    flops = {"ours": run_worker("ours", "flops", 1, args.peer_python, dim)["flops_per_token"], "peer": peer_flops}
    if args.profile:
        spent = {k: run_worker(k, "profile", 1, args.peer_python, dim) for k in ("ours", "peer")}
        names = sorted({c for v in spent.values() for c in v}, key=lambda c: -spent["peer"].get(c, 0))
        print(f"\nms per training step by op category (width {dim}; self CPU time, torch.profiler, 3 steps)")
        print("| category | ours | peer |\n|---|---|---|")
        for c in [*names, "total"]:
            get = (lambda k: sum(spent[k].values())) if c == "total" else (lambda k: spent[k].get(c, 0.0))
            print(f"| {c} | {get('ours'):.0f} | {get('peer'):.0f} |")
        if args.out:
            Path(args.out).write_text(json.dumps({"width": dim, "flops_per_token": flops, "profile": spent}, indent=2))
        return

    results = {t: {"ours": [], "peer": []} for t in args.tasks}
    for r in range(args.rounds):
        for task in args.tasks:
            order = ("ours", "peer") if r % 2 == 0 else ("peer", "ours")  # alternate who goes first
            for program in order:
                results[task][program].append(run_worker(program, task, args.repeats, args.peer_python, dim))
            print(f"round {r + 1}/{args.rounds} {task}: ours {results[task]['ours'][-1]['seconds']:.3f}s, "
                  f"peer {results[task]['peer'][-1]['seconds']:.3f}s", flush=True)

    print(f"\n{'task':<10} {'ours s':>9} {'peer s':>9} {'speed-up':>9} {'ours MB':>9} {'peer MB':>9}")
    summary = {}
    for task, runs in results.items():
        s = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
        m = {k: statistics.median(x["peak_rss_mb"] for x in v) for k, v in runs.items()}
        summary[task] = {"ours_s": s["ours"], "peer_s": s["peer"], "speedup": s["peer"] / s["ours"],
                         "ours_peak_mb": m["ours"], "peer_peak_mb": m["peer"]}
        if task == "train":  # achieved FLOP/s of the training step
            tokens = BATCH * (TEXT + SIDE * SIDE)
            summary[task] |= {f"{k}_gflops": flops[k] * tokens / s[k] / 1e9 for k in ("ours", "peer")}
        print(f"{task:<10} {s['ours']:9.3f} {s['peer']:9.3f} {s['peer'] / s['ours']:8.2f}x {m['ours']:9.0f} {m['peer']:9.0f}")
    params = {k: results[args.tasks[0]][k][0]["params"] for k in ("ours", "peer")}
    print(f"parameters: ours {params['ours']} (width {dim}), peer {params['peer']}; training FLOPs per token: ours "
          f"{flops['ours'] / 1e6:.2f}M, peer {flops['peer'] / 1e6:.2f}M (ratio {flops['ours'] / flops['peer']:.3f}); "
          f"medians of {args.rounds} interleaved processes x {args.repeats} repeats")
    if "train" in summary:
        print(f"achieved training GFLOP/s: ours {summary['train']['ours_gflops']:.1f}, "
              f"peer {summary['train']['peer_gflops']:.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "params": params, "width": dim, "flops_per_token": flops,
                                              "runs": results}, indent=2))


if __name__ == "__main__":
    main()
