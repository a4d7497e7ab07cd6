"""Cost curves: how training and sampling cost grow with the work.

    python benchmarks/cost_curves.py            # about 15 minutes on 2 CPU cores; reruns skip measured points
    python benchmarks/cost_curves.py --plot     # only redraw docs/speed/cost_curves.png

Four curves, each point measured in a fresh process (so one point's allocations do not move
the next) and appended to docs/measurements/cost_curves.jsonl:

1. training tokens/s and MFU against model size: debug, tiny, small and the 0.16B shape of
   ``train_throughput.py`` (MFU as there: FLOPs counted by torch over the measured matmul peak);
2. the same against row length: ``tiny`` with rows of 128 .. 2048 tokens at equal tokens per step;
3. sampling seconds per image against prompt length (16 .. 1024 tokens), batch 1 and 8;
4. the same against batch size (1 .. 32) at a 16-token prompt.

Sampling is the ``small`` shape with random weights (``sampling.py``): DPM-Solver++ 25
steps, guidance 3, the prefix KV cache on; seconds for the whole ``Engine.generate`` call.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # train_throughput.py and sampling.py, measured as they measure
OUT = ROOT / "docs" / "measurements" / "cost_curves.jsonl"
PLOT = ROOT / "docs" / "speed" / "cost_curves.png"
SIZES = ["debug", "tiny", "small", "0.16B"]
ROWS = [128, 256, 512, 1024, 2048]
TOKENS_PER_STEP = 4096  # row-length curve: batch = this / row
PROMPTS = [16, 64, 256, 1024]
BATCHES = [1, 2, 4, 8, 16, 32]


def points() -> list[dict]:
    """Every point to measure: its curve and settings."""
    out = [{"curve": "size", "preset": p} for p in SIZES]
    out += [{"curve": "row", "preset": "tiny", "row": r} for r in ROWS]
    out += [{"curve": "prompt", "prompt": q, "batch": b} for b in (1, 8) for q in PROMPTS]
    out += [{"curve": "batch", "prompt": 16, "batch": b} for b in BATCHES]
    return out


def key(point: dict) -> str:
    return json.dumps({k: point[k] for k in sorted(point) if k in ("curve", "preset", "row", "prompt", "batch")})


def measure_training(point: dict, steps: int) -> dict:
    import torch
    from train_throughput import measure

    extra = []
    if point["curve"] == "row":
        row = point["row"]
        extra = [f"data.seq_len={row}", f"model.max_seq_len={row}", f"data.batch_size={TOKENS_PER_STEP // row}"]
    r = measure(point["preset"], steps, torch.device("cpu"), "fp32", extra)
    return {k: r[k] for k in ("params_m", "tokens_per_step", "tokens_per_s", "gflop_per_token", "mfu")}


def measure_sampling(point: dict, repeats: int) -> dict:
    import statistics

    import torch
    from sampling import build, timed

    from transfusion.data.document import Tokens
    from transfusion.engine import Engine, Request

    torch.set_num_threads(2)
    model, tok, ae, cfg = build(None, max(PROMPTS) + 64)
    engine = Engine(model, tok, ae, cfg)
    ids = torch.randint(0, 255, (point["prompt"] - 1,), generator=torch.Generator().manual_seed(0)).tolist()
    prompts = [[Tokens(tuple(ids))] for _ in range(point["batch"])]
    req = Request(max_new_tokens=1, sampler="dpm++", steps=25, guidance=3.0)
    with torch.inference_mode():
        timed(engine, prompts, Request(max_new_tokens=1, sampler="dpm++", steps=2, guidance=3.0))  # warm-up
        seconds = statistics.median(timed(engine, prompts, req) for _ in range(repeats))
    return {"seconds": seconds, "seconds_per_image": seconds / point["batch"]}


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    size = [r for p in SIZES for r in rows if r["curve"] == "size" and r["preset"] == p]
    ax = axes[0]
    ax.plot([r["params_m"] for r in size], [r["tokens_per_s"] for r in size], "o-", label="tokens/s")
    for r in size:
        ax.annotate(f"{r['preset']}: MFU {r['mfu']:.0%}", (r["params_m"], r["tokens_per_s"]), fontsize=8,
                    xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="parameters (M, log)", ylabel="training tokens/s (log)",
           title="training against model size")
    row = sorted((r for r in rows if r["curve"] == "row"), key=lambda r: r["row"])
    ax = axes[1]
    ax.plot([r["row"] for r in row], [r["tokens_per_s"] for r in row], "o-", color="C0")
    ax.set(xscale="log", xlabel="row length (tokens, log)", ylabel="training tokens/s", title="tiny: against row length")
    twin = ax.twinx()
    twin.plot([r["row"] for r in row], [100 * r["mfu"] for r in row], "s--", color="C1")
    twin.set_ylabel("MFU (%)", color="C1")
    for ax, curve, x, title in ((axes[2], "prompt", "prompt", "sampling against prompt length"),
                                (axes[3], "batch", "batch", "sampling against batch size")):
        for batch in ((1, 8) if curve == "prompt" else (None,)):
            pts = sorted((r for r in rows if r["curve"] == curve and (batch is None or r["batch"] == batch)),
                         key=lambda r: r[x])
            ax.plot([r[x] for r in pts], [r["seconds_per_image"] for r in pts], "o-",
                    label=f"batch {batch}" if batch else "16-token prompt")
        ax.set(xscale="log", yscale="log", xlabel=f"{x} (log)", ylabel="seconds per image (log)", title=title)
        ax.legend(fontsize=8)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax, ticks in zip(axes, (None, ROWS, PROMPTS, BATCHES)):
        if ticks:
            ax.set_xticks(ticks)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
    fig.suptitle("cost curves (2-core CPU, fp32; sampling: small shape, DPM-Solver++ 25, cfg 3, KV cache on)")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    print(f"wrote {PLOT}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plot", action="store_true", help="only redraw the plot from the measurements")
    p.add_argument("--steps", type=int, default=6, help="timed training steps per point (median)")
    p.add_argument("--repeats", type=int, default=3, help="timed generations per sampling point (median)")
    p.add_argument("--point", default=None, help=argparse.SUPPRESS)  # one point, in a child process
    args = p.parse_args()
    if args.point:
        point = json.loads(args.point)
        result = measure_sampling(point, args.repeats) if point["curve"] in ("prompt", "batch") else \
            measure_training(point, args.steps)
        print("RESULT " + json.dumps({**point, **result}))
        return
    done = {}
    if OUT.is_file():
        done = {key(r): r for r in map(json.loads, OUT.read_text().splitlines()) if r}
    if not args.plot:
        for point in points():
            if key(point) in done:
                continue
            proc = subprocess.run([sys.executable, __file__, "--point", json.dumps(point), "--steps", str(args.steps),
                                   "--repeats", str(args.repeats)], capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                raise SystemExit(f"point {point} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(line[len("RESULT "):])
            OUT.parent.mkdir(parents=True, exist_ok=True)
            with OUT.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[key(point)] = row
            print(json.dumps(row), flush=True)
    plot(list(done.values()))


if __name__ == "__main__":
    main()
