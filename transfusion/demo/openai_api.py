"""The OpenAI API's shape beside the page's own, so that OpenAI clients (the official ``openai``
package among them) draw, edit and caption with the served run:

    GET  /v1/models               one model: the run's name (RUN/step_N), never its path
    GET  /v1/models/{id}          that model, or 404
    POST /v1/images/generations   prompt, n, size, response_format b64_json; seed, sampler, steps, guidance
    POST /v1/images/edits         a multipart form: image (a file), prompt, ...; a run trained on edits only
    POST /v1/chat/completions     an image in a user message -> its caption; text only -> its continuation

Each request becomes a ``Job`` on the page's own ``JobQueue``, so it waits in the same line and
is batched with the page's jobs; its handler waits for the job without blocking the event loop
(the worker wakes it, ``JobQueue.until_ended``) and takes a still-queued job out of the line if
the client goes away. Bodies are read with
the page's size and time caps, uploads decoded off the event loop with the page's checks
(``jobs.parse_request``, ``jobs.decode_image``), and nothing is ever fetched: an image comes
as a data URL or an uploaded file, never as an http(s) URL.

Every /v1 request must carry ``Authorization: Bearer KEY``: the server's key where it has one
(``transfusion serve --api-key`` or ``TRANSFUSION_API_KEY``, required beyond loopback), any
value where it has none. A page on another site cannot send that header without a CORS
pre-flight, which this server never grants, so it cannot post the edits form either
(docs/security.md). Errors have the API's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import re
import secrets
import time

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from transfusion.demo.jobs import Job, RequestError, _integer, _real, _shown, json_object, parse_request

API_KEY_ENV = "TRANSFUSION_API_KEY"
FIELDS_BYTES = 64 * 1024  # room for the fields around an upload, and the most one form field may hold
DISCONNECT_SECONDS = 1.0  # how often a request waiting for its job checks that its client is still there
MAX_STOPS = 4  # stop strings, as the API allows
# options of the API that change nothing here at these values (so a client that sends its
# defaults works); any other value is refused with 400 naming the option; null is "not given"
IMAGE_NEUTRAL = {"stream": (False,), "partial_images": (0,), "output_format": ("png",),
                 "background": ("auto", "opaque"), "quality": ("auto", "standard"), "moderation": ("auto", "low"),
                 "output_compression": (100,)}
CHAT_NEUTRAL = {"stream": (False,), "logprobs": (False,), "top_logprobs": (0,), "presence_penalty": (0,),
                "frequency_penalty": (0,), "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",),
                "functions": ([],), "function_call": ("none",), "response_format": ({"type": "text"},),
                "modalities": (["text"],), "parallel_tool_calls": (True, False)}
IGNORED = frozenset({"user", "safety_identifier", "metadata", "store", "service_tier", "prompt_cache_key",
                     "stream_options"})  # who asks, and what to keep: nothing here records or bills anything
WHY = {  # what to do instead, for the options clients send most
    "stream": "answers come whole (no server-sent events)",
    "quality": "for more denoising steps set steps (extra_body={'steps': N})",
    "style": "the run draws in the one style it learnt",
    "mask": "an edit follows its instruction over the whole image; masks are not read",
    "logprobs": "token log-probabilities are not returned",
    "tools": "the model calls no tools",
    "response_format": "the answer is plain text",
}
GENERATION = frozenset({"prompt", "model", "n", "size", "response_format", "seed", "sampler", "steps", "guidance"})
EDIT = GENERATION | {"image", "image[]", "image_guidance", "strength"}
CHAT = frozenset({"messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed",
                  "stop"})
FORM_TYPES = {"n": int, "steps": int, "seed": int, "partial_images": int, "output_compression": int,
              "guidance": float, "image_guidance": float, "strength": float, "stream": bool}
PARAMS = ("prompt", "image", "n", "seed", "sampler", "steps", "guidance", "image_guidance", "strength", "temperature",
          "top_p", "max_tokens", "max_completion_tokens", "stop", "messages", "size", "model", "response_format")
REMOTE_URL = re.compile(r"\s*https?:", re.IGNORECASE)
ROLES = ("system", "developer", "user", "assistant")


class APIError(RequestError):
    """A ``RequestError`` with the API's ``param`` (the field at fault) and ``code``."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message, status)
        self.param, self.code = param, code


def error_response(err: RequestError) -> JSONResponse:
    """The API's error shape; the param is the field a ``parse_request`` message begins with."""
    message = str(err)
    param = getattr(err, "param", None) or next((p for p in PARAMS if message.startswith(p + " ")), None)
    kind = "server_error" if err.status >= 500 else "invalid_request_error"
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
    if getattr(err, "code", None) == "generation_failed":
        headers["x-should-retry"] = "false"  # the same job would fail again: OpenAI clients honour this
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": getattr(err, "code", None)}}, err.status, headers)


def is_loopback(host: str) -> bool:
    """Whether a ``--host`` address serves this machine only (a name other than localhost: no)."""
    name = host.strip().strip("[]").lower()
    try:
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def require_api_key(host: str, api_key: str | None) -> None:
    """``ValueError`` where a server bound to ``host`` would serve /v1 beyond loopback with no key."""
    if api_key is not None and not api_key.strip():
        raise ValueError("--api-key (or TRANSFUSION_API_KEY) is empty")
    if not api_key and not is_loopback(host):
        raise ValueError(f"--host {host or '(all)'} serves other machines, so the OpenAI API (/v1) needs a key: "
                         f"--api-key KEY or the environment variable {API_KEY_ENV} (clients send it as "
                         f"'Authorization: Bearer KEY'; python -c \"import secrets; print(secrets.token_urlsafe(24))\" "
                         f"makes one)")


def check_options(data: dict, known: frozenset, neutral: dict) -> None:
    """Refuse, naming it, an option this server does not read (a neutral value or null passes)."""
    for key, value in data.items():
        if key in known or key in IGNORED or value is None:
            continue
        why = f"; {WHY[key]}" if key in WHY else ""
        if key in neutral:
            if any(value is ok if isinstance(value, bool) or isinstance(ok, bool) else value == ok
                   for ok in neutral[key]):  # 0.0 is 0, but a bool is only itself
                continue
            allowed = " or ".join(json.dumps(ok) for ok in neutral[key])
            raise APIError(f"{key} {_shown(value)} is not supported here (only {allowed}){why}", param=key)
        raise APIError(f"{key} is not supported here{why}; this endpoint reads {', '.join(sorted(known))}", param=key)


def form_value(key: str, text: str):
    """A multipart field (always text; the client writes numbers and booleans as text) -> its value."""
    kind = FORM_TYPES.get(key)
    if text == "" or kind is None:
        return text or None
    if kind is bool and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if kind is int and re.fullmatch(r"-?[0-9]{1,12}", text):
        return int(text)
    if kind is float and re.fullmatch(r"-?[0-9]{1,12}(\.[0-9]{0,12})?(e-?[0-9]{1,3})?", text, re.IGNORECASE):
        return float(text)
    raise APIError(f"{key} must be {'an integer' if kind is int else 'a number' if kind is float else 'true or false'}"
                   f", got {_shown(text)}", param=key)


def image_url(value, where: str) -> str:
    """An ``image_url`` part's URL: a data URL (checked when decoded); a remote URL is refused."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise APIError(f"{where}: image_url.url must be a data URL (data:image/png;base64,...)", param="messages")
    if REMOTE_URL.match(url):
        raise APIError(f"{where}: remote image URLs are refused: this server never fetches anything; send the image "
                       f"itself as a data URL (data:image/png;base64,...)", param="messages")
    if url[:5].lower() != "data:":
        raise APIError(f"{where}: image_url.url must be a data URL (data:image/png;base64,...)", param="messages")
    return url


def read_message(message, where: str, images: list[str]) -> tuple[str, str]:
    """(role, its text parts joined) of one message; its images (user messages only) go to ``images``."""
    if not isinstance(message, dict):
        raise APIError(f"{where} must be an object with a role and content", param="messages")
    role = message.get("role")
    if role not in ROLES:
        raise APIError(f"{where}.role must be one of {', '.join(ROLES)}, got {_shown(role)} (the model calls no "
                       f"tools)", param="messages")
    if any(message.get(key) for key in ("tool_calls", "function_call", "audio")):
        raise APIError(f"{where}: tool calls and audio are not supported (the model calls no tools)", param="messages")
    content = message.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else [] if content is None else content
    if not isinstance(parts, list):
        raise APIError(f"{where}.content must be text or a list of parts, got {_shown(content)}", param="messages")
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and role == "user":
            images.append(image_url(part.get("image_url"), f"{where}.content[{j}]"))
        else:
            raise APIError(f"{where}.content[{j}] must be {{'type': 'text', 'text': ...}} or, in a user message, "
                           f"{{'type': 'image_url', 'image_url': {{'url': 'data:image/png;base64,...'}}}}; got "
                           f"{_shown(part)}", param="messages")
    return role, " ".join(t.strip() for t in texts if t.strip())


def conversation(messages) -> tuple[str, str, str | None]:
    """(task, prompt, image data URL): a caption (i2t) of a user message's image, its text parts
    the caption's beginning; else the continuation (interleaved) of the conversation's text."""
    if not isinstance(messages, list) or not messages:
        raise APIError("messages must be a non-empty list of messages", param="messages")
    images: list[str] = []
    said = [read_message(message, f"messages[{i}]", images) for i, message in enumerate(messages)]
    if not images:
        text = "\n".join(text for _, text in said if text)
        if not text:
            raise APIError("messages hold no text to continue (and no image to caption)", param="messages")
        return "interleaved", text, None
    if len(images) > 1 or len(said) > 1:
        raise APIError("a conversation with an image must be one user message: one image, and optionally text the "
                       "caption begins with (the model captions one image; earlier turns cannot be placed before it)",
                       param="messages")
    return "i2t", said[0][1], images[0]


def stop_strings(data: dict, max_chars: int) -> list[str]:
    stop = data.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or \
            not all(isinstance(s, str) and 0 < len(s) <= max_chars for s in stops):
        raise APIError(f"stop must be a string or a list of at most {MAX_STOPS} non-empty strings", param="stop")
    return stops


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text before the first stop string (the API leaves it out), and whether one was found."""
    ends = [text.find(s) for s in stops if s in text]
    return (text[: min(ends)], True) if ends else (text, False)


class OpenAIRoutes:
    """The /v1 handlers over the page's queue, run and limits (``add_openai_routes`` builds it)."""

    def __init__(self, api_key, jobs, loaded, limits, samplers, edits, model, read_body, decoding):
        self.api_key = api_key.encode() if api_key else None
        self.jobs, self.loaded, self.limits, self.samplers, self.edits = jobs, loaded, limits, samplers, edits
        self.model, self.read_body, self.decoding = model, read_body, decoding
        self.size = loaded.config.image.size
        try:
            self.created = int(loaded.path.stat().st_mtime)  # when the checkpoint was written
        except OSError:
            self.created = int(time.time())

    def endpoint(self, handler):
        """``handler`` behind the Authorization check, its ``RequestError`` in the API's shape."""
        async def answer(request: HTTPRequest):
            try:
                self.authorize(request)
                return await handler(request)
            except RequestError as err:
                return error_response(err)
        return answer

    def authorize(self, request: HTTPRequest) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise APIError("this API needs an 'Authorization: Bearer KEY' header (the server's --api-key; any value "
                           "where it has none)", 401, code="missing_api_key")
        if self.api_key is not None and not secrets.compare_digest(token.encode("latin-1"), self.api_key):
            raise APIError("incorrect API key (the one given to transfusion serve --api-key or TRANSFUSION_API_KEY)",
                           401, code="invalid_api_key")

    def card(self) -> dict:
        return {"id": self.model, "object": "model", "created": self.created, "owned_by": "transfusion"}

    async def models(self, request: HTTPRequest) -> dict:
        return {"object": "list", "data": [self.card()]}

    async def model_info(self, request: HTTPRequest) -> dict:
        name = request.path_params["name"]
        if name != self.model:
            raise APIError(f"no model {_shown(name)}: this server serves {self.model}", 404, "model", "model_not_found")
        return self.card()

    def check_model(self, model) -> None:
        if model is not None and model != self.model:
            raise APIError(f"model {_shown(model)} is not served here: this server serves {self.model} (or leave "
                           f"model out)", 404, "model", "model_not_found")

    def check_image_request(self, data: dict, known: frozenset) -> None:
        check_options(data, known, IMAGE_NEUTRAL)
        self.check_model(data.get("model"))
        size, shape = data.get("size"), f"{self.size}x{self.size}"
        if size not in (None, "auto", shape):
            raise APIError(f"size must be {shape} (this run draws {shape} images) or auto, got {_shown(size)}",
                           param="size")
        if data.get("response_format") not in (None, "b64_json"):
            raise APIError(f"response_format {_shown(data['response_format'])} is not supported: images come as "
                           f"b64_json only (this server keeps no files to link to)", param="response_format")
        if not isinstance(data.get("prompt"), str):
            raise APIError("prompt is required: the text to draw, or the edit's instruction", param="prompt")

    def job(self, body: dict, **fields) -> Job:
        """``parse_request`` of a page request (a random seed where none is given), then ``fields``."""
        if body.get("seed") is None:
            body["seed"] = secrets.randbelow(2**31 - self.limits.max_images)
        job = parse_request({k: v for k, v in body.items() if v is not None}, self.size, self.limits, self.samplers,
                            self.edits)
        for key, value in fields.items():
            setattr(job, key, value)
        return job

    async def off_loop(self, build, *args) -> Job:
        async with self.decoding:  # JSON and uploads are decoded on a worker thread, never on the event loop
            return await run_in_threadpool(build, *args)

    async def json_body(self, request: HTTPRequest) -> bytes:
        kind = content_type(request)
        if kind != "application/json":
            raise APIError(f"a request must be sent as application/json, not {kind[:80] or 'untyped'}", 415)
        return await self.read_body(request, self.limits.max_upload_bytes * 4 // 3 + FIELDS_BYTES,
                                    self.limits.max_body_seconds)

    async def finished(self, request: HTTPRequest, job: Job) -> dict:
        """Queue ``job`` and wait for it; a client that goes away takes its queued job out of the line."""
        self.jobs.submit(job)
        while not await self.jobs.until_ended(job.id, DISCONNECT_SECONDS):  # woken by the worker, not polled
            if await request.is_disconnected():
                try:
                    self.jobs.cancel(job.id)
                except RequestError:
                    pass  # already running: its result is dropped
                raise APIError("the client closed the connection", 499)
        if job.status != "done":
            raise APIError(f"the job {job.status}: {job.error or 'no result'}", 500, code="generation_failed")
        return job.result

    def images_answer(self, result: dict) -> dict:
        data = [{"b64_json": url.split(",", 1)[1]} for sample in result["samples"] for url in sample["images"]]
        return {"created": int(time.time()), "data": data, "output_format": "png", "size": f"{self.size}x{self.size}"}

    # ------------------------------------------------------------ the endpoints
    async def generations(self, request: HTTPRequest) -> dict:
        def build(body: bytes) -> Job:
            data = json_object(body)
            self.check_image_request(data, GENERATION)
            return self.job({"task": "t2i", **{k: data.get(k) for k in GENERATION - {"model", "size",
                                                                                      "response_format"}}})

        job = await self.off_loop(build, await self.json_body(request))
        return self.images_answer(await self.finished(request, job))

    async def edit_images(self, request: HTTPRequest) -> dict:
        kind = content_type(request)
        if kind != "multipart/form-data":
            raise APIError(f"an edit must be sent as multipart/form-data (an image file and fields), not "
                           f"{kind[:80] or 'untyped'}", 415)
        if not self.edits:  # refused before the upload is read
            raise APIError("this run was not trained on edits (its config has data.edit_fraction 0), so it cannot "
                           "edit images; fine-tune it on editing triples first", code="edits_not_trained")
        body = await self.read_body(request, self.limits.max_upload_bytes + FIELDS_BYTES, self.limits.max_body_seconds)
        data, upload = await self.form(request, body)

        def build() -> Job:
            self.check_image_request(data, EDIT)
            page = {k: data.get(k) for k in EDIT - {"model", "size", "response_format", "image", "image[]"}}
            return self.job({"task": "edit", **page, "image": base64.b64encode(upload).decode()})

        job = await self.off_loop(build)
        return self.images_answer(await self.finished(request, job))

    async def form(self, request: HTTPRequest, body: bytes) -> tuple[dict, bytes]:
        """The fields of a multipart body already read (typed: ``form_value``) and its one image file."""
        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            async with HTTPRequest(request.scope, replay).form(max_files=2, max_fields=64,
                                                                max_part_size=FIELDS_BYTES) as form:
                items = form.multi_items()
                names = [k for k, _ in items]
                twice = sorted({k for k in names if names.count(k) > 1})
                if twice:
                    raise APIError(f"{', '.join(twice)} given more than once (an edit reads one image)", param=twice[0])
                files = {k: v for k, v in items if isinstance(v, UploadFile)}
                if set(files) - {"image", "image[]"}:
                    raise APIError("only the image may be a file (masks are not read)", param="mask")
                if len(files) != 1:
                    raise APIError("an edit needs one image file (the image field)", param="image")
                fields = {k: form_value(k, v) for k, v in items if isinstance(v, str)}
                return fields, await next(iter(files.values())).read()
        except HTTPException as err:  # a malformed form
            raise APIError(f"the form does not parse: {err.detail}") from None

    async def chat(self, request: HTTPRequest) -> dict:
        job = await self.off_loop(lambda body: self.chat_job(json_object(body)), await self.json_body(request))
        return self.chat_answer(job, await self.finished(request, job))

    def chat_job(self, data: dict) -> Job:
        check_options(data, CHAT, CHAT_NEUTRAL)
        self.check_model(data.get("model"))
        task, prompt, image = conversation(data.get("messages"))
        tokens = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
        most, stop = self.limits.max_new_tokens, stop_strings(data, self.limits.max_prompt_chars)
        fields = dict(max_new_tokens=_integer(data, tokens, 1, most, most), text_only=task == "interleaved",
                      temperature=_real(data, "temperature", 0.0, 2.0, 1.0), top_p=_real(data, "top_p", 0.0, 1.0, 1.0),
                      stop=stop)
        if fields["top_p"] == 0:
            raise APIError("top_p must be in (0, 1], got 0", param="top_p")
        try:
            return self.job({"task": task, "prompt": prompt, "image": image, "n": data.get("n"),
                             "seed": data.get("seed")}, **fields)
        except RequestError as err:  # the page's words for the conversation's text and image
            param = "messages" if re.match(r"(the )?(prompt|image|this task)", str(err)) else None
            raise APIError(f"{'messages: ' if param else ''}{err}", err.status, param) from None

    def chat_answer(self, job: Job, result: dict) -> dict:
        encode = self.loaded.tokenizer.encode
        choices, completion = [], 0
        for i, sample in enumerate(result["samples"]):
            text, stopped = cut_at_stop(sample["text"], job.stop)
            made = len(encode(sample["text"]))
            completion += made
            choices.append({"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                            "finish_reason": "length" if made >= job.max_new_tokens and not stopped else "stop",
                            "logprobs": None})
        prompt = len(encode(job.prompt))
        return {"id": f"chatcmpl-{secrets.token_urlsafe(18)}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model, "choices": choices, "system_fingerprint": None,
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}}


def content_type(request: HTTPRequest) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def add_openai_routes(app: FastAPI, api_key: str | None, *, jobs, loaded, limits, samplers, edits: bool, model: str,
                      read_body, decoding: asyncio.Semaphore) -> None:
    """Add the /v1 routes to the page's ``app``: jobs on its queue ``jobs``, checked against
    ``limits``, ``samplers`` and ``edits`` as the page's are; ``model`` the run's name;
    ``read_body`` and ``decoding`` its bounded body reader and its decoding semaphore."""
    api = OpenAIRoutes(api_key, jobs, loaded, limits, samplers, edits, model, read_body, decoding)
    app.add_api_route("/v1/models", api.endpoint(api.models), methods=["GET"])
    app.add_api_route("/v1/models/{name:path}", api.endpoint(api.model_info), methods=["GET"])
    app.add_api_route("/v1/images/generations", api.endpoint(api.generations), methods=["POST"])
    app.add_api_route("/v1/images/edits", api.endpoint(api.edit_images), methods=["POST"])
    app.add_api_route("/v1/chat/completions", api.endpoint(api.chat), methods=["POST"])
