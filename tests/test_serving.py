"""Serving many users: compatible queued jobs run as one engine batch (each with its own seeds,
progress and result), a queued job can be cancelled, an edit's strength is read and checked,
and the load benchmark reports the batches that formed."""

import base64
import contextlib
import dataclasses
import io
import json
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_demo import chromium, png_base64  # noqa: E402

from transfusion.demo.jobs import Job, JobQueue, Limits, RequestError, parse_request  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """A fake ``run`` for ``JobQueue``: records each batch's prompts, holds the batch of the prompt
    "hold" until ``release`` is set, and fails a batch holding the prompt "fail"."""

    def __init__(self):
        self.batches, self.holding, self.release = [], threading.Event(), threading.Event()

    def __call__(self, batch):
        self.batches.append([job.prompt for job in batch])
        if batch[0].prompt == "hold":
            self.holding.set()
            assert self.release.wait(10)
        if any(job.prompt == "fail" for job in batch):
            raise RuntimeError("boom")
        return [{"echo": job.prompt} for job in batch]


def held_queue(limits: Limits = Limits()) -> tuple[JobQueue, Recorder]:
    """A queue whose worker is busy with a first job until ``recorder.release`` is set."""
    recorder = Recorder()
    q = JobQueue(recorder, limits)
    q.submit(Job(task="t2i", prompt="hold"))
    assert recorder.holding.wait(10)
    return q, recorder


def test_an_idle_worker_waits_batch_wait_for_companions_and_a_full_batch_not_at_all():
    recorder = Recorder()
    q = JobQueue(recorder, Limits(max_batch=8, batch_wait=0.5))
    a, b = q.submit(Job(task="t2i", prompt="a")), q.submit(Job(task="t2i", prompt="b"))  # b well inside a's wait
    assert a.ended.wait(10) and b.ended.wait(10)
    assert recorder.batches == [["a", "b"]] and a.batch == {"jobs": 2, "rows": 2}
    recorder = Recorder()
    q = JobQueue(recorder, Limits(max_batch=2, batch_wait=60))  # full at once: no wait
    jobs = [q.submit(Job(task="t2i", prompt=p)) for p in ("c", "d")]
    assert all(job.ended.wait(10) for job in jobs) and recorder.batches == [["c", "d"]]
    recorder = Recorder()
    q = JobQueue(recorder, Limits(max_batch=8, batch_wait=0))  # no wait: a lone job starts at once
    e = q.submit(Job(task="t2i", prompt="e"))
    assert e.ended.wait(10) and recorder.batches == [["e"]]


def test_the_worker_runs_compatible_queued_jobs_as_one_batch_in_arrival_order():
    q, run = held_queue(Limits(max_batch=8))
    specs = [("a", 2, {}), ("b", 1, {"steps": 5}), ("c", 4, {}), ("d", 3, {}), ("e", 2, {}), ("f", 1, {"task": "i2t"})]
    jobs = {p: q.submit(Job(**{"task": "t2i", **extra}, prompt=p, n=n)) for p, n, extra in specs}
    assert [q.view(j.id)["position"] for j in jobs.values()] == list(range(6))
    assert "batch" not in q.view(jobs["a"].id)
    run.release.set()
    assert all(j.ended.wait(10) for j in jobs.values())
    # a, c and e share a task and settings and fill 8 rows; d (3 more rows) waits for the next
    # batch; b (other steps) and f (another task) are never batched with them
    assert run.batches == [["hold"], ["a", "c", "e"], ["b"], ["d"], ["f"]]
    views = {p: q.view(j.id) for p, j in jobs.items()}
    assert all(v["status"] == "done" and v["result"] == {"echo": p} for p, v in views.items())
    assert [views[p]["batch"] for p in "abcdef"] == [{"jobs": 3, "rows": 8}, {"jobs": 1, "rows": 1},
                                                    {"jobs": 3, "rows": 8}, {"jobs": 1, "rows": 3},
                                                    {"jobs": 3, "rows": 8}, {"jobs": 1, "rows": 1}]

    q, run = held_queue(Limits(max_batch=2))  # the first job runs even when it alone is over the limit
    big, small = q.submit(Job(task="t2i", prompt="big", n=4)), q.submit(Job(task="t2i", prompt="small"))
    run.release.set()
    assert big.ended.wait(10) and small.ended.wait(10)
    assert run.batches == [["hold"], ["big"], ["small"]] and big.batch == {"jobs": 1, "rows": 4}


def test_a_failing_batch_errors_each_of_its_jobs_and_the_worker_goes_on():
    q, run = held_queue()
    jobs = [q.submit(Job(task="t2i", prompt=p)) for p in ("a", "fail", "b")]
    after = q.submit(Job(task="i2t", prompt="after"))
    run.release.set()
    assert all(j.ended.wait(10) for j in [*jobs, after])
    assert run.batches == [["hold"], ["a", "fail", "b"], ["after"]]
    views = [q.view(j.id) for j in jobs]
    assert [(v["status"], v["error"], v["batch"]) for v in views] == [("error", "boom", {"jobs": 3, "rows": 3})] * 3
    assert q.view(after.id)["status"] == "done" and q.worker.is_alive()


def test_a_queued_job_can_be_cancelled_and_never_runs():
    q, run = held_queue(Limits(max_queue=2))
    a, b = q.submit(Job(task="t2i", prompt="a")), q.submit(Job(task="t2i", prompt="b"))
    with pytest.raises(RequestError, match="busy"):
        q.submit(Job(task="t2i", prompt="c"))
    assert q.cancel(a.id) == {"id": a.id, "task": "t2i", "status": "cancelled", "progress": [0, 0]}
    assert a.ended.is_set() and q.view(b.id)["position"] == 0
    c = q.submit(Job(task="t2i", prompt="c"))  # the cancelled job's place is free
    hold = next(j for j in q.jobs.values() if j.prompt == "hold")
    for job_id, code, message in ((hold.id, 409, "is running"), (a.id, 409, "is cancelled"), ("nope", 404, "no job")):
        with pytest.raises(RequestError, match=message) as err:
            q.cancel(job_id)
        assert err.value.status == code
    run.release.set()
    assert b.ended.wait(10) and c.ended.wait(10)
    assert run.batches == [["hold"], ["b", "c"]] and q.view(a.id)["status"] == "cancelled"
    with pytest.raises(RequestError, match="is done: only a queued job can be cancelled"):
        q.cancel(b.id)


def test_until_ended_is_woken_by_the_worker_or_times_out_and_leaves_no_watcher():
    import asyncio

    q, run = held_queue()
    a = q.submit(Job(task="t2i", prompt="a"))

    async def scenario():
        assert not await q.until_ended(a.id, 0.05)  # still queued behind "hold": the wait times out
        assert a.watchers == []
        waiting = asyncio.ensure_future(q.until_ended(a.id, 30))
        await asyncio.sleep(0.05)
        assert not waiting.done() and len(a.watchers) == 1
        run.release.set()  # the worker ends "hold", then runs a and wakes the waiter
        assert await asyncio.wait_for(waiting, 10) and a.status == "done" and a.watchers == []
        assert await q.until_ended(a.id, 0)  # already ended: at once

    asyncio.run(scenario())
    with pytest.raises(RequestError, match="no job"):
        asyncio.run(q.until_ended("nope", 1))


def test_a_long_poll_answers_when_the_job_ends_and_refuses_a_bad_wait(loaded):
    app, entered, release = held_app(loaded)
    client = client_for(app)
    job_id = submit(client, {"task": "t2i", "prompt": "a red circle", "steps": 2})
    assert entered.wait(60)
    assert client.get(f"/api/jobs/{job_id}?wait=0.1").json()["status"] == "running"  # timed out: as it is
    threading.Timer(0.5, release.set).start()
    view = client.get(f"/api/jobs/{job_id}?wait=60").json()  # one request, answered when the job ends
    assert view["status"] == "done" and view["result"]["samples"][0]["images"]
    for wait in ("-1", "61", "nan", "soon"):
        response = client.get(f"/api/jobs/{job_id}?wait={wait}")
        assert response.status_code == 400 and "wait must be a number of seconds in [0, 60]" in response.json()["error"]
    assert client.get("/api/jobs/nope?wait=1").status_code == 404


@pytest.mark.parametrize("value, message", [
    (0, r"strength must be a number in \(0, 1\], got 0"), (1.5, "got 1.5"), (-0.25, "got -0.25"),
    ("0.5", "got '0.5'"), (True, "got True"), (float("nan"), "got nan"), (10**400, "got 1000"),
])
def test_strength_is_a_number_in_0_1_and_for_edits_only(value, message):
    edit = {"task": "edit", "prompt": "make it blue", "image": png_base64()}
    with pytest.raises(RequestError, match=message) as err:
        parse_request({**edit, "strength": value}, 16, Limits())
    assert err.value.status == 400
    with pytest.raises(RequestError, match="strength is only read by the edit task, not t2i"):
        parse_request({"task": "t2i", "strength": 0.5}, 16, Limits())
    assert parse_request(edit, 16, Limits()).strength == 1.0
    assert parse_request({**edit, "strength": 0.25}, 16, Limits()).strength == 0.25
    assert parse_request({**edit, "strength": 1}, 16, Limits()).strength == 1.0


# ---------------------------------------------------------------- with the model
@pytest.fixture(scope="module")
def loaded(debug_run):
    from transfusion.checkpoint import load_checkpoint

    return load_checkpoint(debug_run)


@pytest.fixture(scope="module")
def edited(loaded):
    """The debug run, as if trained on edits (its outputs are untrained either way)."""
    cfg = loaded.config
    return dataclasses.replace(loaded, config=dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, edit_fraction=0.5)))


def held_app(loaded, limits: Limits = Limits()):
    """``create_app`` whose worker waits, before its first batch, until ``release`` is set:
    (app, entered, release)."""
    from transfusion.demo.app import create_app

    app = create_app(loaded, limits)
    jobs, run, entered, release = app.state.jobs, app.state.jobs.run, threading.Event(), threading.Event()

    def held(batch):
        entered.set()
        assert release.wait(60)
        return run(batch)

    jobs.run = held
    return app, entered, release


def client_for(app, host: str = "127.0.0.1:7860"):
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=f"http://{host}")


def submit(client, body: dict) -> str:
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 200, response.json()
    return response.json()["id"]


def ended(client, job_id: str) -> dict:
    """The job's view once it is done, failed or cancelled."""
    assert client.app.state.jobs.jobs[job_id].ended.wait(120)
    return client.get(f"/api/jobs/{job_id}").json()


def png_pixels(job: dict) -> list[np.ndarray]:
    return [np.asarray(PILImage.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"), np.int16)
            for sample in job["result"]["samples"] for url in sample["images"]]


def test_a_request_gets_the_same_images_alone_or_batched_with_others(loaded):
    app, entered, release = held_app(loaded)  # fp32, the server's default (at bf16 a batch moves pixels more)
    client = client_for(app)
    common = {"task": "t2i", "sampler": "dpm++sde", "steps": 3}  # stochastic: every step draws the row's noise
    requests = [{"prompt": "a red circle", "seed": 3},
                {"prompt": "a much longer caption: a small blue square at the top left", "n": 2, "seed": 7},
                {"prompt": "", "seed": 11}, {"prompt": "green", "n": 3, "seed": 0}]
    first = submit(client, {**common, "prompt": "first"})  # the worker holds it while the others queue
    assert entered.wait(60)
    ids = [submit(client, {**common, **r}) for r in requests]
    other = submit(client, {**common, "steps": 2, "prompt": "a red circle", "seed": 3})  # other settings
    assert client.get(f"/api/jobs/{ids[2]}").json()["position"] == 2
    release.set()
    batched = [ended(client, i) for i in ids]
    assert ended(client, first)["batch"] == ended(client, other)["batch"] == {"jobs": 1, "rows": 1}
    assert all(v["status"] == "done" and v["batch"] == {"jobs": 4, "rows": 7} for v in batched)
    assert all(v["progress"][0] == v["progress"][1] == batched[0]["progress"][1] > 0 for v in batched)
    alone = []
    for r in requests:  # the same requests, one at a time
        alone.append(ended(client, submit(client, {**common, **r})))
        assert alone[-1]["batch"] == {"jobs": 1, "rows": r.get("n", 1)}
    for b, a, r in zip(batched, alone, requests):
        assert b["result"]["settings"] == a["result"]["settings"] and a["result"]["settings"]["seed"] == r["seed"]
        assert [s["seed"] for s in b["result"]["samples"]] == [r["seed"] + i for i in range(r.get("n", 1))]
        # Not bit-identical as floats: batch size and the left padding of shorter prompts change
        # float rounding, by at most 3.4e-6 on pixels in [-1, 1] (measured on the debug run for
        # dpm++, dpm++sde and ddim). The PNGs came out identical there, but a value on a rounding
        # edge may move by one level of 255, so that is what is asserted.
        assert all(np.abs(x - y).max() <= 1 for x, y in zip(png_pixels(b), png_pixels(a), strict=True))


def test_rows_sample_with_the_seeds_given(loaded):
    from transfusion.engine import Engine, Request, tasks

    engine = Engine(loaded.model, loaded.tokenizer, loaded.autoencoder, loaded.config)
    req = Request(sampler="dpm++sde", steps=2, seed=5)
    default, given = (tasks.text_to_image(engine, ["a", "b"], req, **extra) for extra in ({}, {"seeds": [5, 6]}))
    assert [s.seed for s in given.samples] == [5, 6] and all(map(torch.equal, default.images, given.images))
    swapped = tasks.text_to_image(engine, ["b", "a"], req, seeds=[6, 5])
    assert [s.seed for s in swapped.samples] == [6, 5] and torch.allclose(swapped.images[0], given.images[1], atol=1e-3)
    with pytest.raises(ValueError, match="one seed per prompt: 1 seeds for 2 prompts"):
        tasks.text_to_image(engine, ["a", "b"], req, seeds=[1])


def test_a_queued_job_is_cancelled_over_http_and_no_other_page_can(loaded):
    app, entered, release = held_app(loaded)
    client = client_for(app)
    body = {"task": "t2i", "steps": 1, "sampler": "dpm++"}
    running = submit(client, body)
    assert entered.wait(60)
    queued, kept = submit(client, body), submit(client, body)
    # a page on a rebound DNS name is refused; a page on another origin must pre-flight a DELETE,
    # which is never granted
    assert client_for(app, "evil.example:7860").delete(f"/api/jobs/{queued}").status_code == 421
    preflight = client.options(f"/api/jobs/{queued}", headers={"Origin": "http://evil.example",
                                                               "Access-Control-Request-Method": "DELETE"})
    assert preflight.status_code >= 400 and not any(h.startswith("access-control-allow") for h in preflight.headers)
    response = client.delete(f"/api/jobs/{queued}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert client.get(f"/api/jobs/{kept}").json()["position"] == 0
    for job_id, code, words in ((running, 409, "is running"), (queued, 409, "is cancelled"), ("nope", 404, "no job")):
        response = client.delete(f"/api/jobs/{job_id}")
        assert response.status_code == code and words in response.json()["error"], response.json()
    release.set()
    assert ended(client, kept)["status"] == ended(client, running)["status"] == "done"
    assert ended(client, kept)["batch"] == {"jobs": 1, "rows": 1}  # the cancelled job did not run with it
    assert "result" not in client.get(f"/api/jobs/{queued}").json()
    assert client.delete(f"/api/jobs/{kept}").status_code == 409


def test_an_edit_runs_at_the_strength_asked_for(edited):
    from transfusion.demo.app import create_app

    client = client_for(create_app(edited))
    body = {"task": "edit", "prompt": "make it blue", "image": png_base64(), "steps": 4, "sampler": "dpm++", "seed": 1}
    full, half = (ended(client, submit(client, {**body, "strength": s})) for s in (None, 0.5))
    assert full["result"]["settings"]["strength"] == 1.0 and half["result"]["settings"]["strength"] == 0.5
    assert full["progress"] == [4, 4] and half["progress"] == [2, 2]  # from the source noised halfway: half the steps
    assert np.abs(png_pixels(full)[0] - png_pixels(half)[0]).max() > 0


@contextlib.contextmanager
def live(app):
    """``app`` served by uvicorn in a thread on a socket that listens before it starts -> its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def post(url: str, body: dict) -> str:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())["id"]


def test_the_page_shows_the_line_cancels_shows_the_batch_and_sends_the_strength(edited, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app, entered, release = held_app(edited)
    with live(app) as url:
        browser = chromium()
        try:
            browser.get(url)
            wait, find = WebDriverWait(browser, 120), lambda i: browser.find_element(By.ID, i)
            wait.until(lambda b: find("sampler").find_elements(By.TAG_NAME, "option"))
            post(f"{url}/api/jobs", {"task": "t2i", "steps": 1})  # the worker holds it
            assert entered.wait(60)
            find("steps").clear()
            find("steps").send_keys("2")
            find("generate").click()
            wait.until(lambda b: find("cancel").is_displayed() and "waiting: 0 job(s) ahead" in find("status").text)
            find("cancel").click()
            wait.until(lambda b: find("status").text == "cancelled" and not find("cancel").is_displayed())
            info = json.loads(urllib.request.urlopen(f"{url}/api/info").read())
            post(f"{url}/api/jobs", {"task": "t2i", "prompt": "another user", "sampler": info["samplers"][0],
                                     "steps": 2, "guidance": info["guidance"]})  # what the page sends, but n
            find("generate").click()
            wait.until(lambda b: "waiting: 1 job(s) ahead" in find("status").text)
            release.set()
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#results img.result"))
            assert find("status").text == "done · batched with 1 other job(s): 2 rows at once"

            find("task-edit").click()
            assert find("strength").is_displayed() and find("strength").get_attribute("value") == "1"
            (tmp_path / "source.png").write_bytes(base64.b64decode(png_base64().split(",", 1)[1]))
            find("upload").send_keys(str(tmp_path / "source.png"))
            wait.until(lambda b: find("preview").get_attribute("src").startswith("data:image"))
            find("strength").clear()
            find("strength").send_keys("0.5")
            find("generate").click()
            wait.until(lambda b: '"strength": 0.5' in find("results").text and '"edit": true' in find("results").text)
        finally:
            browser.quit()


@pytest.mark.parametrize("client", ["poll", "wait", "openai"])
def test_the_load_benchmark_reports_the_batches_that_formed(debug_run, client):
    if client == "openai":
        pytest.importorskip("openai")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), str(debug_run), "--requests",
                             "6", "--clients", "3", "--steps", "2", "--max-batch", "4", "--client", client],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answered correctly: 6/6" in result.stdout
    assert ("batches (--max-batch 4): " in result.stdout) == (client != "openai")  # the OpenAI answer does not say
