"""The demo's work: requests checked against limits, and one queue served by one worker.

Nothing here knows about HTTP: ``parse_request`` turns a JSON body into a ``Job`` or raises
``RequestError`` (a message for the page and an HTTP status), and ``JobQueue`` runs jobs one at
a time on a worker thread, so any number of users wait in line instead of running the model
at once. A request names no file: images arrive as base64 data in the body, the checkpoint is
fixed when the server starts.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import json
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import PIL.Image
import torch

from transfusion.config import SAMPLER_STEPS

TASKS = ("t2i", "i2t", "interleaved", "edit")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; every bound is checked before any work starts."""

    max_images: int = 4  # images per request
    max_steps: int = 250  # denoising steps
    max_prompt_chars: int = 500
    max_upload_bytes: int = 4 * 1024 * 1024  # decoded image file size
    max_upload_pixels: int = 4096 * 4096  # width x height of an uploaded image, checked before decoding
    max_new_tokens: int = 128  # text tokens of a caption or an interleaved continuation
    max_queue: int = 32  # jobs waiting; more are refused with 503 (busy)
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
    id: str = ""
    status: str = "queued"  # queued | running | done | error
    progress: tuple[int, int] = (0, 0)  # denoising steps done, of all the job's steps
    result: dict | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)

    def view(self, position: int | None) -> dict:
        """What the page polls for."""
        out = {"id": self.id, "task": self.task, "status": self.status, "progress": list(self.progress)}
        if position is not None:
            out["position"] = position
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out


def decode_image(data: str, image_size: int, limits: Limits) -> torch.Tensor:
    """A base64 image (a data URL or bare base64) -> (3, image_size, image_size) in [-1, 1].

    Refuses, with a clear message, what is too large as bytes, what is not an image, and
    images whose header claims more than ``max_upload_pixels`` (decompression bombs), before
    decoding their pixels.
    """
    from transfusion.fileio import fit_image

    if not isinstance(data, str) or not data:
        raise RequestError("image must be a base64-encoded image file (a data URL)")
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    if len(payload) > limits.max_upload_bytes * 4 // 3 + 4:
        raise RequestError(f"the image is larger than {limits.max_upload_bytes // 1024} KiB", 413)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("image is not valid base64") from None
    if len(raw) > limits.max_upload_bytes:
        raise RequestError(f"the image is larger than {limits.max_upload_bytes // 1024} KiB", 413)
    try:
        with PIL.Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
            if width * height > limits.max_upload_pixels:
                raise RequestError(f"the image is {width}x{height} pixels; at most {limits.max_upload_pixels} "
                                   f"pixels are accepted", 413)
            return fit_image(img, image_size)
    except RequestError:
        raise
    except (PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise RequestError(f"the upload is not an image PIL can read ({type(err).__name__})") from None


def _number(body: dict, key: str, kind, low, high, default):
    value = body.get(key, default)
    if value is None or value == "":
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise RequestError(f"{key} must be a number, got {value!r}") from None
    if kind is float and number != number:  # NaN
        raise RequestError(f"{key} must be a number, got NaN")
    if not low <= number <= high:
        raise RequestError(f"{key} must be in [{low}, {high}], got {number}")
    return number


def parse_request(body, image_size: int, limits: Limits) -> Job:
    """A JSON request body -> a ``Job``, or ``RequestError``.

    Fields: task (t2i | i2t | interleaved | edit), prompt, image (base64; i2t and edit), n,
    sampler, steps, guidance, image_guidance, seed. Unknown fields are an error, so a typo is
    not silently ignored.
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    known = {"task", "prompt", "image", "n", "sampler", "steps", "guidance", "image_guidance", "seed"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
    task = body.get("task")
    if task not in TASKS:
        raise RequestError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    prompt = body.get("prompt", "") or ""
    if not isinstance(prompt, str):
        raise RequestError("prompt must be text")
    if len(prompt) > limits.max_prompt_chars:
        raise RequestError(f"the prompt has {len(prompt)} characters; at most {limits.max_prompt_chars} are accepted")
    if task in ("interleaved", "edit") and not prompt.strip():
        raise RequestError("this task needs a prompt" if task == "interleaved" else "editing needs an instruction")
    image = None
    if task in ("i2t", "edit"):
        if not body.get("image"):
            raise RequestError("this task needs an uploaded image")
        image = decode_image(body["image"], image_size, limits)
    sampler = body.get("sampler") or None
    if sampler is not None and sampler not in SAMPLER_STEPS:
        raise RequestError(f"sampler must be one of {', '.join(SAMPLER_STEPS)}, got {sampler!r}")
    return Job(task=task, prompt=prompt, image=image, sampler=sampler,
               n=_number(body, "n", int, 1, limits.max_images, 1),
               steps=_number(body, "steps", int, 1, limits.max_steps, None),
               guidance=_number(body, "guidance", float, 0.0, 20.0, None),
               image_guidance=_number(body, "image_guidance", float, 0.0, 20.0, None),
               seed=_number(body, "seed", int, 0, 2**31 - 1, 0))


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
    """Jobs in arrival order, run one at a time by one worker thread with ``run(job)``.

    ``run`` sets ``job.result`` (and may update ``job.progress``); an exception it raises
    becomes the job's error, and the worker goes on with the next job.
    """

    def __init__(self, run, limits: Limits):
        self.run, self.limits = run, limits
        self.waiting: queue.Queue[Job] = queue.Queue(maxsize=limits.max_queue)
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.worker = threading.Thread(target=self._work, name="transfusion-demo-worker", daemon=True)
        self.worker.start()

    def submit(self, job: Job) -> Job:
        with self.lock:
            job.id = f"{next(self.ids):06d}"
            try:
                self.waiting.put_nowait(job)
            except queue.Full:
                raise RequestError(f"the server is busy ({self.limits.max_queue} jobs waiting); try again shortly",
                                   503) from None
            self.jobs[job.id] = job
            while len(self.jobs) > self.limits.kept_results + self.limits.max_queue:
                oldest = next(iter(self.jobs))
                if self.jobs[oldest].status in ("queued", "running"):
                    break
                self.jobs.pop(oldest)
        return job

    def view(self, job_id: str) -> dict:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise RequestError(f"no job {job_id!r} (finished jobs are kept for a while only)", 404)
            ahead = sum(1 for j in self.jobs.values() if j.status == "queued" and j.id < job.id)
            return job.view(ahead if job.status == "queued" else None)

    def _work(self) -> None:
        while True:
            job = self.waiting.get()
            job.status = "running"
            try:
                job.result = self.run(job)
                job.status = "done"
            except Exception as err:  # a failed job must not stop the server
                job.error = str(err) or type(err).__name__
                job.status = "error"
            finally:
                job.image = None  # the upload is not kept once served
