"""Load on the web demo: 32 requests from 8 concurrent clients against `transfusion serve` on 127.0.0.1.

    python benchmarks/serve_load.py RUN [--requests 32] [--clients 8] [--steps 25] [--sampler dpm++] [--max-batch 8] [--batch-wait 0.1]
        [--client poll|wait|openai]

Starts the server as its own process (the command a user runs, with ``--max-batch``), sends
text-to-image requests from concurrent clients and checks every answer. A client waits for its
job the page's way (``poll``: ``GET /api/jobs/ID`` every 50 ms), with one long poll
(``wait``: ``GET /api/jobs/ID?wait=60``, answered when the job ends), or through the OpenAI API
with the official client (``openai``: ``images.generate``, one request answered with the image). Every answer must be a PNG of the run's image size whose embedded settings carry the request's
caption and seed. Prints the latency (submit -> result) median and 95th percentile, the
throughput, the batches the server formed (from each job's view: the jobs it ran with), and
whether the server is still up; exits 1 if any request was lost or wrong.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from collections import Counter
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from PIL import Image


def call(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as r:
        return json.loads(r.read())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run or checkpoint folder")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sampler", default="dpm++")
    p.add_argument("--max-batch", type=int, default=8, help="passed to transfusion serve (1: one job at a time)")
    p.add_argument("--batch-wait", type=float, default=0.1, help="passed to transfusion serve (seconds)")
    p.add_argument("--client", choices=("poll", "wait", "openai"), default="poll",
                   help="how a client waits for its job: polling, one long poll, or the OpenAI API")
    args = p.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "transfusion", "serve", args.run, "--port", str(port),
                               "--max-queue", str(args.requests), "--max-batch", str(args.max_batch),
                               "--batch-wait", str(args.batch_wait)],
                              stdout=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                info = call(f"{base}/api/info")
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("the server did not start")
        size = info["image_size"]
        wait = "?wait=60" if args.client == "wait" else ""
        if args.client == "openai":
            from openai import OpenAI

            openai_client = OpenAI(base_url=f"{base}/v1", api_key="local", timeout=600, max_retries=0)
        latencies: list[float] = []
        batched_with: list[int] = []  # per answered request: the jobs of the batch it ran in
        failures: list[str] = []
        lock = threading.Lock()
        per_client = [list(range(k, args.requests, args.clients)) for k in range(args.clients)]

        def client(indices: list[int]) -> None:
            for i in indices:
                caption, start = f"a large red circle on the left {i}", time.perf_counter()
                try:
                    if args.client == "openai":
                        answer = openai_client.images.generate(
                            prompt=caption, n=1, size=f"{size}x{size}", response_format="b64_json",
                            extra_body={"seed": i, "steps": args.steps, "sampler": args.sampler})
                        job, b64 = {"status": "done"}, answer.data[0].b64_json
                    else:
                        job_id = call(f"{base}/api/jobs", {"task": "t2i", "prompt": caption, "seed": i,
                                                           "steps": args.steps, "sampler": args.sampler})["id"]
                        while (job := call(f"{base}/api/jobs/{job_id}{wait}"))["status"] in ("queued", "running"):
                            time.sleep(0.05 if not wait else 0)
                        b64 = job["result"]["samples"][0]["images"][0].split(",", 1)[1]
                    png = Image.open(io.BytesIO(base64.b64decode(b64)))
                    settings = json.loads(png.info["parameters"])
                    ok = (job["status"] == "done" and png.size == (size, size) and settings["prompt"] == caption
                          and settings["seed"] == i)
                except Exception as err:  # any error is a lost request
                    ok, job = False, {"error": repr(err)}
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - start)
                        if "batch" in job:  # the OpenAI API's answer does not say
                            batched_with.append(job["batch"]["jobs"])
                    else:
                        failures.append(f"request {i}: {job.get('error', job.get('status'))}")

        began = time.perf_counter()
        threads = [threading.Thread(target=client, args=(ix,)) for ix in per_client]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
        alive = server.poll() is None and call(f"{base}/api/info")["step"] == info["step"]
    finally:
        server.terminate()
        server.wait(30)

    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))] if latencies else float("nan")
    print(f"{args.requests} requests from {args.clients} clients ({args.client}), {args.sampler} {args.steps} steps, "
          f"{size}px, checkpoint {info['checkpoint']}")
    print(f"answered correctly: {len(latencies)}/{args.requests}; lost or wrong: {len(failures)}; "
          f"server still up: {alive}")
    if latencies:
        print(f"latency: median {statistics.median(latencies):.2f} s, p95 {p95:.2f} s; "
              f"{args.requests / wall:.2f} requests/s over {wall:.1f} s")
    if batched_with:  # k requests ran in a batch of k jobs: one batch
        sizes = sorted(Counter(batched_with).items())
        batches = sum(count / k for k, count in sizes)
        print(f"batches (--max-batch {args.max_batch}): {batches:.0f}, mean {len(batched_with) / batches:.2f} jobs; "
              f"jobs per batch: {', '.join(f'{k} x{count / k:.0f}' for k, count in sizes)}")
    for failure in failures[:5]:
        print("  " + failure)
    if failures or not alive:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
