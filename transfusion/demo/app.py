"""The demo's web app: one HTML page and a small JSON API over one model.

    GET  /                 the page (page.html: no asset is fetched from elsewhere)
    GET  /api/info         the run (its name, not its path), its defaults, whether it edits, the limits
    POST /api/jobs         a JSON request (``jobs.parse_request``) -> {"id": ...}; 4xx with {"error": ...}
    GET  /api/jobs/{id}    status, queue position, the batch it joined, denoising progress, at the end the result
    DELETE /api/jobs/{id}  cancel a queued job (409 once it runs, 404 unknown)
    /v1/...                the OpenAI API's shape over the same queue, behind a bearer key (openai_api.py)

FastAPI rather than Gradio: the page is one self-contained HTML file with no fonts or scripts
from a CDN, so the demo works with no network, and the API it calls is the one scripts and the
load benchmark call too.

Other web pages the user visits must not drive it (docs/security.md): a POST must be
``application/json`` (415 otherwise), which a page can only send to another origin after a
CORS pre-flight this server never grants (a DELETE, never a "simple" request, needs one too),
and a request whose ``Host`` is not one of the server's names is refused (421), so a rebound
DNS name cannot reach it. A body is read with a size cap and a time limit, and an upload is
decoded off the event loop, so one slow or heavy request does not hold up the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import math
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from transfusion.checkpoint import Loaded
from transfusion.samplers import OBJECTIVE_SAMPLERS
from transfusion.demo.jobs import Job, JobQueue, Limits, RequestError, json_object, parse_request, png_data_url
from transfusion.demo.openai_api import add_openai_routes, content_type, require_api_key

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


MAX_WAIT_SECONDS = 60.0


def wait_seconds(text: str | None) -> float:
    """The ``wait`` query parameter of a job's status: seconds in [0, ``MAX_WAIT_SECONDS``], 0 if absent."""
    if text is None:
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_WAIT_SECONDS:  # NaN fails too
        raise RequestError(f"wait must be a number of seconds in [0, {MAX_WAIT_SECONDS:g}], got {text[:40]!r}")
    return seconds


def run_job(loaded: Loaded, job: Job, limits: Limits) -> dict:
    """Serve one job alone: ``run_jobs`` of a batch of one."""
    return run_jobs(loaded, [job], limits)[0]


def run_jobs(loaded: Loaded, jobs: list[Job], limits: Limits) -> list[dict]:
    """Serve compatible jobs (one ``Job.batch_key``) with one task call, all their rows one engine
    batch, row i of a job sampled with ``job.seed + i`` as it would be alone; one result per
    job: images (PNG data URLs, settings inside) and text."""
    from transfusion.data.document import Image, Text
    from transfusion.engine import Engine, Request, tasks

    cfg, job = loaded.config, jobs[0]  # the batch's settings: the same in every job
    # denoising passes: a batch's images are one pass; an interleaved row makes up to max_images in turn
    total_images = limits.max_images if job.task == "interleaved" else 1
    done_images = [0]

    def progress(done: int, total: int) -> None:
        steps = max(total_images, 1) * total  # batched interleaved rows may draw in more passes: capped
        for each in jobs:
            each.progress = (min(done_images[0] * total + done, steps), steps)
        if done == total:
            done_images[0] += 1

    engine = Engine(loaded.model, loaded.tokenizer, loaded.autoencoder, cfg, progress=progress)
    max_new_tokens = job.max_new_tokens or (min(32, limits.max_new_tokens) if job.task == "i2t" else limits.max_new_tokens)
    req = Request(sampler=job.sampler, steps=job.steps, guidance=job.guidance, image_guidance=job.image_guidance,
                  seed=job.seed, max_new_tokens=max_new_tokens, max_images=0 if job.text_only else limits.max_images,
                  temperature=job.temperature, top_p=job.top_p, stop=list(job.stop), strength=job.strength)
    rows = [each for each in jobs for _ in range(each.n)]
    prompts, images = [each.prompt for each in rows], [each.image for each in rows]
    batch = {"batch_size": len(rows), "seeds": [each.seed + i for each in jobs for i in range(each.n)]}
    if job.task == "i2t":
        done = tasks.caption(engine, [[Image(x)] for x in images], req, prompt=prompts, **batch)
    elif job.task == "interleaved":
        done = tasks.continue_documents(engine, [[Text(p)] if p else [] for p in prompts], req, interactive=True,
                                        **batch)
    elif job.task == "edit":
        done = tasks.edit(engine, images, prompts, req, interactive=True, **batch)
    else:
        done = tasks.text_to_image(engine, prompts, req, interactive=True, **batch)
    shared = {k: v for k, v in done.request.settings().items() if k != "stop"}
    results, samples = [], iter(done.samples)
    for each in jobs:
        settings = {"task": each.task, "prompt": each.prompt, "checkpoint": checkpoint_name(loaded.path),
                    "step": loaded.step, **shared, "seed": each.seed}  # "seed" keeps its place, the job's value
        results.append({"settings": settings, "samples": [
            {"seed": sample.seed, "text": sample.text,
             "images": [png_data_url(x, {**settings, "seed": sample.seed}) for x in sample.images]}
            for sample in itertools.islice(samples, each.n)]})
    return results


def create_app(loaded: Loaded, limits: Limits = Limits(), allowed_hosts=LOOPBACK_HOSTS, api_key: str | None = None):
    """The FastAPI app serving ``loaded`` (one model; requests queue for it) to requests whose
    Host is one of ``allowed_hosts`` (names, any port); the OpenAI API's shape under /v1
    (``openai_api``: requests bear ``api_key``, or any key where it is None)."""
    from transfusion.engine import Request, interactive_sampler

    app = FastAPI(title="transfusion demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AllowedHosts, names=frozenset(allowed_hosts))
    jobs = JobQueue(lambda batch: run_jobs(loaded, batch, limits), limits)
    page = files("transfusion.demo").joinpath("page.html").read_text()
    cfg = loaded.config
    objective = cfg.diffusion.objective
    samplers = [] if loaded.model.image_codes else list(OBJECTIVE_SAMPLERS[objective])
    samplers = sorted(samplers, key=lambda s: s != interactive_sampler(cfg))  # the page's default first
    edits = trained_on_edits(loaded)
    decoding = asyncio.Semaphore(DECODING_AT_ONCE)
    app.state.jobs = jobs
    add_openai_routes(app, api_key, jobs=jobs, loaded=loaded, limits=limits, samplers=samplers, edits=edits,
                      model=checkpoint_name(loaded.path), read_body=read_body, decoding=decoding)

    def error(err: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    def parse(body: bytes) -> Job:
        return parse_request(json_object(body), cfg.image.size, limits, samplers, edits)

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
            kind = content_type(request)
            if kind != "application/json":
                raise RequestError(f"a request must be sent as application/json, not {kind[:80] or 'untyped'}", 415)
            body = await read_body(request, limits.max_upload_bytes * 4 // 3 + MAX_BODY_BYTES_OVER_UPLOAD,
                                   limits.max_body_seconds)
            async with decoding:  # JSON and upload are decoded on a worker thread, never on the event loop
                job = jobs.submit(await run_in_threadpool(parse, body))
        except RequestError as err:
            return error(err)
        return {"id": job.id}

    def on_job(act, job_id: str):
        """``act(job_id)`` (``JobQueue.view`` or ``cancel``): the job's view, or the error."""
        try:
            return act(job_id)
        except RequestError as err:
            return error(err)

    @app.get("/api/jobs/{job_id}")
    async def status(job_id: str, request: HTTPRequest):
        """The job's view; with ``?wait=S`` (up to 60 s), once it has ended or S seconds have passed
        (a long poll: a script waits for its result with one request, not many)."""
        try:
            wait = wait_seconds(request.query_params.get("wait"))
            if wait:
                await jobs.until_ended(job_id, wait)
            return jobs.view(job_id)
        except RequestError as err:
            return error(err)

    @app.delete("/api/jobs/{job_id}")
    def cancel(job_id: str):  # a queued job only: 409 once it runs
        return on_job(jobs.cancel, job_id)

    return app


def serve(loaded: Loaded, host: str = "127.0.0.1", port: int = 7860, limits: Limits = Limits(),
          allowed_hosts=(), api_key: str | None = None) -> None:
    """Run the demo until interrupted (uvicorn, one process: the model is loaded once).

    It answers requests whose Host is a loopback name or one of ``allowed_hosts`` (default: the
    bound ``host``; a wildcard bind must name them, ``allowed_host_names``); /v1 requests must
    bear ``api_key``, which a ``host`` beyond loopback needs (``require_api_key``).
    """
    import uvicorn

    require_api_key(host, api_key)
    app = create_app(loaded, limits, allowed_host_names(host, allowed_hosts), api_key)
    uvicorn.run(app, host=host, port=port, log_level="warning", **UVICORN_LIMITS)
