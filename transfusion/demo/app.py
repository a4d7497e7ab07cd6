"""The demo's web app: one HTML page and a small JSON API over one model.

    GET  /                 the page (page.html: no asset is fetched from elsewhere)
    GET  /api/info         the run, its defaults and the request limits
    POST /api/jobs         a request (``jobs.parse_request``) -> {"id": ...}; 4xx with {"error": ...}
    GET  /api/jobs/{id}    status, queue position, denoising progress, and at the end the result

FastAPI rather than Gradio: the page is one self-contained HTML file with no fonts or scripts
from a CDN, so the demo works with no network, and the API it calls is the one scripts and the
load benchmark call too.
"""

from __future__ import annotations

import dataclasses
import json
from importlib.resources import files

import torch
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import HTMLResponse, JSONResponse

from transfusion.checkpoint import Loaded
from transfusion.config import OBJECTIVE_SAMPLERS
from transfusion.demo.jobs import Job, JobQueue, Limits, RequestError, parse_request, png_data_url

MAX_BODY_BYTES_OVER_UPLOAD = 64 * 1024  # room for the JSON fields around an upload


def run_job(loaded: Loaded, job: Job, limits: Limits) -> dict:
    """Serve one job with the model: images (PNG data URLs, settings inside) and text."""
    from transfusion.data.document import Image, Text
    from transfusion.engine import Engine, Request, interactive_sampler

    cfg = loaded.config
    # denoising passes: a request's n images are one batch; an interleaved row makes up to max_images in turn
    total_images = limits.max_images if job.task == "interleaved" else 1
    done_images = [0]

    def progress(done: int, total: int) -> None:
        job.progress = (done_images[0] * total + done, max(total_images, 1) * total)
        if done == total:
            done_images[0] += 1

    engine = Engine(loaded.model, loaded.tokenizer, loaded.autoencoder, cfg, progress=progress)
    req = Request(sampler=job.sampler or interactive_sampler(cfg), steps=job.steps, guidance=job.guidance,
                  image_guidance=job.image_guidance, seed=job.seed, max_new_tokens=limits.max_new_tokens)
    if job.task == "i2t":
        req = dataclasses.replace(req, max_images=0, min_new_tokens=1, max_new_tokens=min(32, limits.max_new_tokens))
    elif job.task == "interleaved":
        req = dataclasses.replace(req, max_images=limits.max_images)
    else:
        req = dataclasses.replace(req, max_new_tokens=1, max_images=1, edit=job.task == "edit")
    req = req.resolve(cfg, loaded.autoencoder)
    if job.task == "i2t":
        prompts = [[Image(job.image)] + ([Text(job.prompt)] if job.prompt else [])]
    elif job.task == "edit":
        prompts = [[Image(job.image), Text(job.prompt)] for _ in range(job.n)]
    else:
        prompts = [[Text(job.prompt)] if job.prompt else [] for _ in range(job.n if job.task == "t2i" else 1)]
    with torch.inference_mode():
        outputs = engine.generate(prompts, req, force_image=job.task in ("t2i", "edit"))
    settings = {"task": job.task, "prompt": job.prompt, "checkpoint": str(loaded.path), "step": loaded.step,
                **{k: v for k, v in req.settings().items() if k != "stop"}}
    samples = []
    for i, out in enumerate(outputs):
        seed = req.seed + i
        text = "".join(s.text for s in out if isinstance(s, Text))
        images = [s.pixels for s in out if isinstance(s, Image)]
        samples.append({"seed": seed, "text": text,
                        "images": [png_data_url(x, {**settings, "seed": seed}) for x in images]})
    return {"settings": settings, "samples": samples}


def create_app(loaded: Loaded, limits: Limits = Limits()):
    """The FastAPI app serving ``loaded`` (one model; requests queue for it)."""
    from transfusion.engine import Request, interactive_sampler

    app = FastAPI(title="transfusion demo", docs_url=None, redoc_url=None, openapi_url=None)
    jobs = JobQueue(lambda job: run_job(loaded, job, limits), limits)
    page = files("transfusion.demo").joinpath("page.html").read_text()
    cfg = loaded.config
    objective = cfg.diffusion.objective
    app.state.jobs = jobs

    def error(err: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict:
        samplers = [] if loaded.model.image_codes else list(OBJECTIVE_SAMPLERS[objective])
        first = interactive_sampler(cfg)  # the page's default: listed first
        samplers = sorted(samplers, key=lambda s: s != first)
        return {"checkpoint": str(loaded.path), "step": loaded.step, "image_size": cfg.image.size,
                "samplers": samplers,
                "default_steps": {s: Request(sampler=s).resolve(cfg, loaded.autoencoder).steps for s in samplers},
                "guidance": cfg.diffusion.guidance, "limits": dataclasses.asdict(limits)}

    @app.post("/api/jobs")
    async def submit(request: HTTPRequest):
        declared = request.headers.get("content-length")
        limit = limits.max_upload_bytes * 4 // 3 + MAX_BODY_BYTES_OVER_UPLOAD
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return error(RequestError(f"the request is larger than {limit // 1024} KiB", 413))
        body = b""
        async for chunk in request.stream():  # read no more than the limit, whatever the headers say
            body += chunk
            if len(body) > limit:
                return error(RequestError(f"the request is larger than {limit // 1024} KiB", 413))
        try:
            try:
                parsed = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RequestError("the request body is not JSON") from None
            job = jobs.submit(parse_request(parsed, cfg.image.size, limits))
        except RequestError as err:
            return error(err)
        return {"id": job.id}

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str):
        try:
            return jobs.view(job_id)
        except RequestError as err:
            return error(err)

    return app


def serve(loaded: Loaded, host: str = "127.0.0.1", port: int = 7860, limits: Limits = Limits()) -> None:
    """Run the demo until interrupted (uvicorn, one process: the model is loaded once)."""
    import uvicorn

    uvicorn.run(create_app(loaded, limits), host=host, port=port, log_level="warning")
