"""The demo's work: requests checked against limits, and one queue served by one worker.

Nothing here knows about HTTP: ``parse_request`` turns a JSON body into a ``Job`` or raises
``RequestError`` (a message for the page and an HTTP status), and ``JobQueue`` runs jobs on one
worker thread, so any number of users wait in line instead of running the model at once;
queued jobs that can share a forward pass (``Job.batch_key``) run together as one batch of up
to ``Limits.max_batch`` rows, each keeping its own seeds, progress and result. A request names
no file: images arrive as base64 data in the body, the checkpoint is fixed when the server
starts. Every field's type and range is checked (an integer field takes a JSON integer, not a
bool, a float or a string), and a job's id is 128 random bits, so only the client that
submitted it can read it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import itertools
import json
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import PIL.Image
import torch

from transfusion.samplers import SAMPLER_STEPS

TASKS = ("t2i", "i2t", "interleaved", "edit")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; every bound is checked before any work starts."""

    max_images: int = 4  # images per request
    max_steps: int = 250  # denoising steps
    max_prompt_chars: int = 500
    max_upload_bytes: int = 4 * 1024 * 1024  # decoded image file size
    max_upload_pixels: int = 4096 * 4096  # width x height of an uploaded image, checked before decoding
    max_body_seconds: float = 30.0  # to send a request's body; a slower one is answered 408
    max_new_tokens: int = 128  # text tokens of a caption or an interleaved continuation
    max_queue: int = 32  # jobs waiting; more are refused with 503 (busy)
    max_batch: int = 8  # rows (images or texts) of compatible queued jobs run as one batch; 1: one job at a time
    # seconds after a job's arrival that the worker waits for companions while its batch has room: clients
    # answered by one batch come back at nearly the same time, and without a wait the first of them would
    # run alone while the others queue behind it
    batch_wait: float = 0.1
    kept_results: int = 256  # finished jobs kept for their pages to fetch


class RequestError(ValueError):
    """A request that cannot be served: ``str(err)`` is shown on the page, ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    task: str
    prompt: str = ""
    image: torch.Tensor | None = None  # (3, H, W) in [-1, 1], the run's image size
    n: int = 1
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    image_guidance: float | None = None
    seed: int = 0
    strength: float = 1.0  # edit: < 1 starts from the source noised part of the way (image to image)
    # text generation (i2t and interleaved): the limits' max_new_tokens when None; greedy at temperature 0
    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    text_only: bool = False  # interleaved: text only, no image (a chat completion)
    id: str = ""
    order: int = 0  # arrival: the queue's position counts the queued jobs of lower order
    status: str = "queued"  # queued | running | done | error | cancelled
    batch: dict | None = None  # the batch it ran in: {"jobs": k, "rows": r}
    ended: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)  # done, error, cancelled
    watchers: list = field(default_factory=list, repr=False, compare=False)  # called once when it ends
    progress: tuple[int, int] = (0, 0)  # denoising steps done, of all the job's steps
    result: dict | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)

    def view(self, position: int | None) -> dict:
        """What the page polls for."""
        out = {"id": self.id, "task": self.task, "status": self.status, "progress": list(self.progress)}
        if position is not None:
            out["position"] = position
        if self.batch is not None:
            out["batch"] = dict(self.batch)
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out

    def batch_key(self) -> tuple:
        """Jobs with equal keys share a forward pass: the same task and sampling settings (their
        prompts, images, seeds and n may differ)."""
        return (self.task, self.sampler, self.steps, self.guidance, self.image_guidance, self.strength,
                self.max_new_tokens, self.temperature, self.top_p, tuple(self.stop), self.text_only)


DATA_URL = re.compile(r"data:[^,]*;base64,", re.IGNORECASE)


def decode_image(data, image_size: int, limits: Limits) -> torch.Tensor:
    """A base64 image (a data URL or bare base64) -> (3, image_size, image_size) in [-1, 1].

    Refuses, with a clear message, what is too large as bytes, what is not an image of
    ``fileio.IMAGE_FORMATS``, and images whose header claims more than ``max_upload_pixels``
    (decompression bombs), before decoding their pixels.
    """
    from transfusion.fileio import IMAGE_FORMATS, fit_image, open_image

    if not isinstance(data, str) or not data:
        raise RequestError("image must be a base64-encoded image file (a data URL)")
    if data[:5].lower() == "data:":
        header = DATA_URL.match(data)
        if header is None:
            raise RequestError("image must be a base64 data URL (data:image/png;base64,...)")
        data = data[header.end():]
    if len(data) > limits.max_upload_bytes * 4 // 3 + 4:
        raise RequestError(f"the image is larger than {limits.max_upload_bytes // 1024} KiB", 413)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("image is not valid base64") from None
    if not raw:
        raise RequestError("image is empty")
    if len(raw) > limits.max_upload_bytes:
        raise RequestError(f"the image is larger than {limits.max_upload_bytes // 1024} KiB", 413)
    try:
        with open_image(io.BytesIO(raw), limits.max_upload_pixels) as img:
            return fit_image(img, image_size)
    except PIL.Image.DecompressionBombError as err:
        raise RequestError(str(err), 413) from None
    except PIL.UnidentifiedImageError:
        raise RequestError(f"image is not an image file of a supported format ({', '.join(IMAGE_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise RequestError(f"image does not decode ({type(err).__name__}: {err})") from None


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(body: dict, key: str, low: int, high: int, default):
    """An integer field: a JSON integer (not a bool, a float or a string) in [low, high]; null is ``default``."""
    value = body.get(key)
    if value is None:
        return default
    if type(value) is not int:
        raise RequestError(f"{key} must be an integer, got {_shown(value)}")
    if not low <= value <= high:
        raise RequestError(f"{key} must be in [{low}, {high}], got {_shown(value)}")
    return value


def _real(body: dict, key: str, low: float, high: float, default):
    """A number field: a finite JSON number (not a bool or a string) in [low, high]; null is ``default``."""
    value = body.get(key)
    if value is None:
        return default
    if type(value) not in (int, float):
        raise RequestError(f"{key} must be a number, got {_shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"{key} must be a finite number, got {value}")
    if not low <= value <= high:
        raise RequestError(f"{key} must be in [{low}, {high}], got {_shown(value)}")
    return float(value)


def json_object(body: bytes) -> dict:
    """A request body -> the JSON object it holds, or ``RequestError``."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep, an integer too long
        raise RequestError("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    return data


def parse_request(body, image_size: int, limits: Limits, samplers=tuple(SAMPLER_STEPS), edits: bool = True) -> Job:
    """A JSON request body -> a ``Job``, or ``RequestError`` naming the field at fault.

    Fields: task (t2i | i2t | interleaved | edit), prompt, image (base64; i2t and edit only), n,
    sampler (one of ``samplers``), steps, guidance, image_guidance, seed, strength (edit only:
    in (0, 1], 1 by default); null means the default. Unknown fields are an error, so a typo is
    not silently ignored. ``edits``: whether the run was trained on edits; if not, an edit is
    refused (its outputs would be noise).
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    known = {"task", "prompt", "image", "n", "sampler", "steps", "guidance", "image_guidance", "seed", "strength"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
    task = body.get("task")
    if not isinstance(task, str) or task not in TASKS:
        raise RequestError(f"task must be one of {', '.join(TASKS)}, got {_shown(task)}")
    if task == "edit" and not edits:
        raise RequestError("task edit: this run was not trained on edits (its config has data.edit_fraction 0), "
                           "so it cannot edit images; fine-tune it on editing triples first")
    prompt = body.get("prompt")
    prompt = "" if prompt is None else prompt
    if not isinstance(prompt, str):
        raise RequestError(f"prompt must be text, got {_shown(prompt)}")
    if len(prompt) > limits.max_prompt_chars:
        raise RequestError(f"the prompt has {len(prompt)} characters; at most {limits.max_prompt_chars} are accepted")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError("prompt is not valid Unicode text (a lone surrogate)") from None
    if task in ("interleaved", "edit") and not prompt.strip():
        raise RequestError("this task needs a prompt" if task == "interleaved"
                           else "editing needs an instruction (prompt)")
    sampler = body.get("sampler")
    if sampler is not None and not isinstance(sampler, str):
        raise RequestError(f"sampler must be a sampler's name, got {_shown(sampler)}")
    sampler = sampler or None
    if sampler is not None and sampler not in samplers:
        raise RequestError(f"sampler must be one of {', '.join(samplers) or '(none: this run samples image tokens)'}"
                           f", got {_shown(sampler)}")
    n = _integer(body, "n", 1, limits.max_images, 1)
    steps = _integer(body, "steps", 1, limits.max_steps, None)
    guidance = _real(body, "guidance", 0.0, 20.0, None)
    image_guidance = _real(body, "image_guidance", 0.0, 20.0, None)
    seed = _integer(body, "seed", 0, 2**31 - 1, 0)
    strength = body.get("strength")
    if strength is not None and task != "edit":
        raise RequestError(f"strength is only read by the edit task, not {task}")
    if strength is not None and (type(strength) not in (int, float) or not 0 < strength <= 1):  # NaN fails too
        raise RequestError(f"strength must be a number in (0, 1], got {_shown(strength)}")
    image = None
    if task in ("i2t", "edit"):
        if body.get("image") is None or body.get("image") == "":
            raise RequestError("this task needs an uploaded image")
        image = decode_image(body["image"], image_size, limits)
    elif body.get("image") is not None:
        raise RequestError(f"image is only read by the i2t and edit tasks, not {task}")
    return Job(task=task, prompt=prompt, image=image, sampler=sampler, n=n, steps=steps, guidance=guidance,
               image_guidance=image_guidance, seed=seed, strength=1.0 if strength is None else float(strength))


def png_data_url(pixels: torch.Tensor, settings: dict) -> str:
    """(3, H, W) in [-1, 1] -> a PNG data URL whose text chunk ``parameters`` holds the settings."""
    from PIL.PngImagePlugin import PngInfo

    from transfusion.fileio import to_pil

    info = PngInfo()
    info.add_text("parameters", json.dumps(settings))
    buffer = io.BytesIO()
    to_pil(pixels).save(buffer, format="PNG", pnginfo=info)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class JobQueue:
    """Jobs in arrival order, run by one worker thread, a batch of compatible jobs at a time.

    The worker takes the first queued job, then the queued jobs behind it with the same
    ``Job.batch_key``, in arrival order, while their rows (``n`` each) fit in
    ``limits.max_batch``; one that does not fit stays queued for a later batch, and the first
    job always runs (alone if its own ``n`` is over the limit), so none waits for ever.
    ``run(jobs)`` serves a batch and returns one result per job, in order (and may update each
    ``job.progress``); an exception it raises becomes the error of every job of the batch, and
    the worker goes on with the next batch. A queued job can be cancelled; it never runs.

    A job's id is 128 random bits (``secrets``), so ids cannot be guessed or enumerated; its
    place in line comes from an arrival counter, never from the id.
    """

    def __init__(self, run, limits: Limits):
        self.run, self.limits = run, limits
        self.waiting: list[Job] = []  # queued, in arrival order
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.arrivals = itertools.count()
        self.worker = threading.Thread(target=self._work, name="transfusion-demo-worker", daemon=True)
        self.worker.start()

    def submit(self, job: Job) -> Job:
        with self.lock:
            if len(self.waiting) >= self.limits.max_queue:
                raise RequestError(f"the server is busy ({self.limits.max_queue} jobs waiting); try again shortly",
                                   503)
            job.id, job.order = secrets.token_urlsafe(16), next(self.arrivals)
            self.waiting.append(job)
            self.jobs[job.id] = job
            while len(self.jobs) > self.limits.kept_results + self.limits.max_queue:
                oldest = next(iter(self.jobs))
                if self.jobs[oldest].status in ("queued", "running"):
                    break
                self.jobs.pop(oldest)
            self.arrived.notify()
        return job

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise RequestError(f"no job {_shown(job_id)} (finished jobs are kept for a while only)", 404)
        return job

    def view(self, job_id: str) -> dict:
        with self.lock:
            job = self._job(job_id)
            return job.view(self.waiting.index(job) if job.status == "queued" else None)

    def cancel(self, job_id: str) -> dict:
        """Take a queued job out of the line (status ``cancelled``); 409 once it runs or has run."""
        with self.lock:
            job = self._job(job_id)
            if job.status != "queued":
                raise RequestError(f"job {_shown(job_id)} is {job.status}: only a queued job can be cancelled", 409)
            self.waiting.remove(job)
            job.status, job.image = "cancelled", None
            self._end(job)
            return job.view(None)

    @staticmethod
    def _end(job: Job) -> None:
        job.ended.set()
        for wake in job.watchers:
            wake()
        job.watchers.clear()

    async def until_ended(self, job_id: str, seconds: float) -> bool:
        """Wait, without blocking the event loop and without polling, up to ``seconds`` for the job
        to end (done, error or cancelled); whether it has. ``RequestError`` (404) for an unknown id."""
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()

        def wake() -> None:  # on the worker's thread
            try:
                loop.call_soon_threadsafe(ended.set)
            except RuntimeError:  # the event loop has closed: nobody is waiting
                pass

        with self.lock:
            job = self._job(job_id)
            if job.ended.is_set():
                return True
            job.watchers.append(wake)
        try:
            await asyncio.wait_for(ended.wait(), seconds)
            return True
        except TimeoutError:
            return False
        finally:
            with self.lock:
                if wake in job.watchers:
                    job.watchers.remove(wake)

    def _fitting(self) -> tuple[list[Job], int]:
        """The first queued job and the compatible queued jobs that fit behind it; their rows."""
        first = self.waiting[0]
        batch, rows = [first], first.n
        for job in self.waiting[1:]:
            if job.batch_key() == first.batch_key() and rows + job.n <= self.limits.max_batch:
                batch.append(job)
                rows += job.n
        return batch, rows

    def next_batch(self) -> list[Job]:
        """Wait for a queued job and, up to ``limits.batch_wait`` seconds after its arrival, for
        companions while its batch has room; then take it and the compatible jobs that fit behind it."""
        with self.lock:
            while True:
                while not self.waiting:
                    self.arrived.wait()
                batch, rows = self._fitting()
                left = batch[0].created + self.limits.batch_wait - time.time()
                if rows >= self.limits.max_batch or left <= 0:
                    break
                self.arrived.wait(left)  # (the first job may be cancelled meanwhile: chosen again)
            for job in batch:
                self.waiting.remove(job)
                job.status, job.batch = "running", {"jobs": len(batch), "rows": rows}
            return batch

    def _work(self) -> None:
        while True:
            batch = self.next_batch()
            try:
                results = self.run(batch)
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} jobs got {len(results)} results")
                for job, result in zip(batch, results):
                    job.result, job.status = result, "done"
            except Exception as err:  # a failed batch must not stop the server
                for job in batch:
                    job.error, job.status = str(err) or type(err).__name__, "error"
            finally:
                with self.lock:
                    for job in batch:
                        job.image = None  # the upload is not kept once served
                        self._end(job)
