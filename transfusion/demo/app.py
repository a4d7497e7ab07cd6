"""The demo's web app: one HTML page and a small JSON API over one model.

    GET  /                 the page (page.html: no asset is fetched from elsewhere)
    GET  /api/info         the run (its name, not its path), its defaults, whether it edits, the limits
    POST /api/jobs         a JSON request (``jobs.parse_request``) -> {"id": ...}; 4xx with {"error": ...}
    GET  /api/jobs/{id}    status, queue position, denoising progress, and at the end the result

FastAPI rather than Gradio: the page is one self-contained HTML file with no fonts or scripts
from a CDN, so the demo works with no network, and the API it calls is the one scripts and the
load benchmark call too.

Other web pages the user visits must not drive it (docs/security.md): a POST must be
``application/json`` (415 otherwise), which a page can only send to another origin after a
CORS pre-flight this server never grants, and a request whose ``Host`` is not one of the
server's names is refused (421), so a rebound DNS name cannot reach it. A body is read with a
size cap and a time limit, and an upload is decoded off the event loop, so one slow or heavy
request does not hold up the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from transfusion.checkpoint import Loaded
from transfusion.samplers import OBJECTIVE_SAMPLERS
from transfusion.demo.jobs import Job, JobQueue, Limits, RequestError, parse_request, png_data_url

MAX_BODY_BYTES_OVER_UPLOAD = 64 * 1024  # room for the JSON fields around an upload
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
DECODING_AT_ONCE = 2  # uploads decoded at the same time (each may take ~50 MB while decoded)
# uvicorn's connection limits: idle keep-alive seconds, open connections (more get 503), bytes of
# an incomplete request line and headers
UVICORN_LIMITS = {"timeout_keep_alive": 5, "limit_concurrency": 64, "h11_max_incomplete_event_size": 16 * 1024}
HOST_HEADER = re.compile(r"(\[[0-9a-f:.]+\]|[^:\[\]]+)(:[0-9]{1,5})?")


def checkpoint_name(path: Path) -> str:
    """What clients see of the checkpoint: ``RUN/step_N`` (or the folder's name), never its path."""
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name


def trained_on_edits(loaded: Loaded) -> bool:
    """Whether the run saw editing triples in training; if not, an edit request gets noise back."""
    return loaded.config.data.edit_fraction > 0


def host_name(header: str) -> str | None:
    """A ``Host`` header -> its name, lower case, without the port ("[::1]:7860" -> "[::1]"); None if malformed."""
    match = HOST_HEADER.fullmatch(header.strip().lower())
    return match.group(1) if match else None


class AllowedHosts:
    """ASGI middleware: answer 421 to a request whose ``Host`` is not one of ``names``.

    A page on another site can point its own DNS name at 127.0.0.1 (DNS rebinding); the
    browser then sends that name as the Host, and only this check tells the request apart.
    """

    def __init__(self, app, names: frozenset[str]):
        self.app, self.names = app, names

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(header) not in self.names:
                refusal = JSONResponse({"error": f"this server answers to {', '.join(sorted(self.names))} only, not "
                                                 f"Host {header[:80]!r} (transfusion serve --allowed-hosts)"}, 421)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def allowed_host_names(host: str, allowed_hosts=()) -> frozenset[str]:
    """The Host names a server bound to ``host`` answers to: the loopback names, and
    ``allowed_hosts`` (default: the bound address itself, unless it is a wildcard)."""
    names = list(allowed_hosts)
    if not names and host in WILDCARD_BINDS:
        raise ValueError(f"--host {host or '(all)'} serves every network interface: name the host names clients "
                         f"will use with --allowed-hosts (e.g. --allowed-hosts mybox.local,192.168.1.20)")
    parsed = {name: host_name(name) or host_name(f"[{name}]") for name in names or [host]}  # "::1" -> "[::1]"
    bad = [name for name, parsed_name in parsed.items() if parsed_name is None]
    if bad:
        raise ValueError(f"--allowed-hosts: {', '.join(bad)} is not a host name or address")
    return frozenset(LOOPBACK_HOSTS) | set(parsed.values())


async def read_body(request: HTTPRequest, max_bytes: int, seconds: float) -> bytes:
    """The request body, or ``RequestError``: 413 past ``max_bytes`` (counted as it arrives,
    whatever Content-Length says), 408 if it takes longer than ``seconds`` to arrive."""
    too_large = RequestError(f"the request is larger than {max_bytes // 1024} KiB", 413)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()

    async def receive() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_bytes:
                raise too_large

    try:
        await asyncio.wait_for(receive(), seconds)
    except asyncio.TimeoutError:
        raise RequestError(f"the request body took longer than {seconds:g} s to arrive", 408) from None
    return bytes(body)


def run_job(loaded: Loaded, job: Job, limits: Limits) -> dict:
    """Serve one job with the model: images (PNG data URLs, settings inside) and text."""
    from transfusion.data.document import Image, Text
    from transfusion.engine import Engine, Request, tasks

    cfg = loaded.config
    # denoising passes: a request's n images are one batch; an interleaved row makes up to max_images in turn
    total_images = limits.max_images if job.task == "interleaved" else 1
    done_images = [0]

    def progress(done: int, total: int) -> None:
        job.progress = (done_images[0] * total + done, max(total_images, 1) * total)
        if done == total:
            done_images[0] += 1

    engine = Engine(loaded.model, loaded.tokenizer, loaded.autoencoder, cfg, progress=progress)
    req = Request(sampler=job.sampler, steps=job.steps, guidance=job.guidance, image_guidance=job.image_guidance,
                  seed=job.seed, max_new_tokens=limits.max_new_tokens, max_images=limits.max_images)
    one_batch = max(job.n, 1)
    if job.task == "i2t":
        req = dataclasses.replace(req, max_new_tokens=min(32, limits.max_new_tokens))
        done = tasks.caption(engine, [[Image(job.image)]], req, prompt=job.prompt)
    elif job.task == "interleaved":
        done = tasks.continue_documents(engine, [[Text(job.prompt)] if job.prompt else []], req, interactive=True)
    elif job.task == "edit":
        done = tasks.edit(engine, [job.image] * job.n, [job.prompt] * job.n, req, interactive=True,
                          batch_size=one_batch)
    else:
        done = tasks.text_to_image(engine, [job.prompt] * job.n, req, interactive=True, batch_size=one_batch)
    req = done.request
    settings = {"task": job.task, "prompt": job.prompt, "checkpoint": checkpoint_name(loaded.path), "step": loaded.step,
                **{k: v for k, v in req.settings().items() if k != "stop"}}
    samples = [{"seed": sample.seed, "text": sample.text,
                "images": [png_data_url(x, {**settings, "seed": sample.seed}) for x in sample.images]}
               for sample in done.samples]
    return {"settings": settings, "samples": samples}


def create_app(loaded: Loaded, limits: Limits = Limits(), allowed_hosts=LOOPBACK_HOSTS):
    """The FastAPI app serving ``loaded`` (one model; requests queue for it) to requests whose
    Host is one of ``allowed_hosts`` (names, any port)."""
    from transfusion.engine import Request, interactive_sampler

    app = FastAPI(title="transfusion demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AllowedHosts, names=frozenset(allowed_hosts))
    jobs = JobQueue(lambda job: run_job(loaded, job, limits), limits)
    page = files("transfusion.demo").joinpath("page.html").read_text()
    cfg = loaded.config
    objective = cfg.diffusion.objective
    samplers = [] if loaded.model.image_codes else list(OBJECTIVE_SAMPLERS[objective])
    samplers = sorted(samplers, key=lambda s: s != interactive_sampler(cfg))  # the page's default first
    edits = trained_on_edits(loaded)
    decoding = asyncio.Semaphore(DECODING_AT_ONCE)
    app.state.jobs = jobs

    def error(err: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    def parse(body: bytes) -> Job:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep, an integer too long
            raise RequestError("the request body is not JSON") from None
        return parse_request(parsed, cfg.image.size, limits, samplers, edits)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict:
        return {"checkpoint": checkpoint_name(loaded.path), "step": loaded.step, "image_size": cfg.image.size,
                "samplers": samplers, "edits": edits,
                "default_steps": {s: Request(sampler=s).resolve(cfg, loaded.autoencoder).steps for s in samplers},
                "guidance": cfg.sampling.guidance, "limits": dataclasses.asdict(limits)}

    @app.post("/api/jobs")
    async def submit(request: HTTPRequest):
        try:
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                raise RequestError(f"a request must be sent as application/json, not {kind[:80] or 'untyped'}", 415)
            body = await read_body(request, limits.max_upload_bytes * 4 // 3 + MAX_BODY_BYTES_OVER_UPLOAD,
                                   limits.max_body_seconds)
            async with decoding:  # JSON and upload are decoded on a worker thread, never on the event loop
                job = jobs.submit(await run_in_threadpool(parse, body))
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


def serve(loaded: Loaded, host: str = "127.0.0.1", port: int = 7860, limits: Limits = Limits(),
          allowed_hosts=()) -> None:
    """Run the demo until interrupted (uvicorn, one process: the model is loaded once).

    It answers requests whose Host is a loopback name or one of ``allowed_hosts`` (default: the
    bound ``host``; a wildcard bind must name them, ``allowed_host_names``).
    """
    import uvicorn

    app = create_app(loaded, limits, allowed_host_names(host, allowed_hosts))
    uvicorn.run(app, host=host, port=port, log_level="warning", **UVICORN_LIMITS)
