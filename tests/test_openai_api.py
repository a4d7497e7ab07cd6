"""The demo's OpenAI API (/v1), driven by the official ``openai`` client: against a live
``transfusion serve`` on 127.0.0.1 (the debug run, not trained on edits; its key from
TRANSFUSION_API_KEY), and in-process for a run trained on edits."""

import base64
import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image as PILImage

pytest.importorskip("fastapi")
pytest.importorskip("multipart")  # python-multipart: the edits form
openai = pytest.importorskip("openai")

KEY = "test-key-" + "x" * 24


def png_bytes(size=(20, 12), colour="red") -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def parameters(b64_json: str) -> tuple[tuple[int, int], dict]:
    """A b64_json answer -> (its PNG's size, the settings in its ``parameters`` chunk)."""
    image = PILImage.open(io.BytesIO(base64.b64decode(b64_json)))
    assert image.format == "PNG"
    return image.size, json.loads(image.info["parameters"])


def http(url: str, data: bytes | None = None, headers=None, method=None):
    """(status, headers, JSON body) of a raw request, without the openai client."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.headers, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read() or b"null")


@pytest.fixture(scope="module")
def live(debug_run, tmp_path_factory):
    """``transfusion serve`` of the debug run on a free port of 127.0.0.1, its key from the environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "transfusion", "serve", str(debug_run), "--port", str(port)],
                                   env={**os.environ, "TRANSFUSION_API_KEY": KEY}, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while not (_listening(port) and http(f"{url}/api/info")[0] == 200):
            assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=f"{live}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def test_the_model_list_names_the_run_not_its_path(client, debug_run):
    models = client.models.list()
    assert models.object == "list" and len(models.data) == 1
    (card,) = models.data
    step = sorted((debug_run / "checkpoints").iterdir())[-1].name
    assert card.id == f"debug/{step}" and card.object == "model" and str(debug_run.parent) not in card.model_dump_json()
    assert client.models.retrieve(card.id).id == card.id
    with pytest.raises(openai.NotFoundError, match="serves debug/"):
        client.models.retrieve("dall-e-3")


def test_images_are_pngs_of_the_runs_size_with_seed_and_seed_plus_one(client, model):
    answer = client.images.generate(prompt="a red circle", n=2, model=model, size="16x16", response_format="b64_json",
                                    quality="auto", background="opaque", user="someone",  # change nothing here
                                    extra_body={"seed": 3, "steps": 2, "sampler": "dpm++", "guidance": 2.5})
    assert answer.created > 0 and len(answer.data) == 2
    read = [parameters(image.b64_json) for image in answer.data]
    assert [size for size, _ in read] == [(16, 16)] * 2
    assert [settings["seed"] for _, settings in read] == [3, 4]
    assert all(s["prompt"] == "a red circle" and s["steps"] == 2 and s["guidance"] == 2.5 for _, s in read)
    assert read[0][1]["checkpoint"] == model  # the run's name in the PNG, not its path


def test_chat_captions_an_image_sent_as_a_data_url(client, model):
    square = data_url(png_bytes((16, 16), "blue"))
    answer = client.chat.completions.create(model=model, max_tokens=6, temperature=0, seed=1, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": square}}]}])
    assert answer.object == "chat.completion" and answer.model == model and answer.id.startswith("chatcmpl-")
    (choice,) = answer.choices
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens == 0  # no text before the caption
    assert answer.usage.total_tokens == answer.usage.completion_tokens


def test_chat_continues_the_text_of_a_conversation(client, model, loaded):
    messages = [{"role": "system", "content": "shapes"}, {"role": "user", "content": "first a red circle"}]
    answer = client.chat.completions.create(model=model, messages=messages, n=2, max_completion_tokens=5,
                                            temperature=0, top_p=1, seed=7)
    assert [c.index for c in answer.choices] == [0, 1]
    assert answer.choices[0].message.content == answer.choices[1].message.content  # greedy: the same text
    assert answer.usage.prompt_tokens == len(loaded.tokenizer.encode("shapes\nfirst a red circle"))
    sampled = client.chat.completions.create(model=model, messages=messages, max_tokens=5, temperature=1.0, seed=7,
                                             stop=["zzz"], user="someone", stream=False, presence_penalty=0.0,
                                             tools=[])  # values that change nothing here
    assert sampled.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("call, kind, message", [
    (lambda c, m: c.images.generate(prompt="x", size="1024x1024"), "BadRequestError",
     r"size must be 16x16 \(this run draws 16x16 images\)"),
    (lambda c, m: c.images.generate(prompt="x", response_format="url"), "BadRequestError", "b64_json only"),
    (lambda c, m: c.images.generate(prompt="x", quality="hd"), "BadRequestError", "quality 'hd' is not supported"),
    (lambda c, m: c.images.generate(prompt="x", style="vivid"), "BadRequestError", "style is not supported"),
    (lambda c, m: c.images.generate(prompt="x", extra_body={"steps": 0}), "BadRequestError", r"steps must be in"),
    (lambda c, m: c.images.generate(prompt="x", model="dall-e-3"), "NotFoundError", "this server serves debug/"),
    (lambda c, m: c.images.edit(image=("a.png", png_bytes(), "image/png"), prompt="make it blue"),
     "BadRequestError", "not trained on edits"),
    (lambda c, m: c.chat.completions.create(model=m, messages=[{"role": "user", "content": "hi"}], stream=True),
     "BadRequestError", "stream True is not supported"),
    (lambda c, m: c.chat.completions.create(model=m, messages=[{"role": "user", "content": "hi"}], logprobs=True),
     "BadRequestError", "logprobs True is not supported"),
    (lambda c, m: c.chat.completions.create(model=m, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]),
     "BadRequestError", "never fetches anything"),
    (lambda c, m: c.chat.completions.create(model=m, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(b"not a png")}}]}]), "BadRequestError", "not an image"),
    (lambda c, m: c.chat.completions.create(model=m, messages=[{"role": "user", "content": "hi"}], max_tokens=10**6),
     "BadRequestError", r"max_tokens must be in \[1, 128\]"),
])
def test_what_is_not_supported_is_refused_in_the_apis_error_shape(client, model, call, kind, message):
    with pytest.raises(getattr(openai, kind), match=message) as err:
        call(client, model)
    assert set(err.value.body) == {"message", "type", "param", "code"}
    assert err.value.body["type"] == "invalid_request_error"


def test_the_key_is_required_on_every_v1_request_and_the_page_needs_none(live):
    with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
        openai.OpenAI(base_url=f"{live}/v1", api_key="wrong", max_retries=0).models.list()
    status, headers, body = http(f"{live}/v1/models")  # no Authorization header
    assert status == 401 and body["error"]["code"] == "missing_api_key" and headers["WWW-Authenticate"] == "Bearer"
    # what another site's page can send without a pre-flight: a form, with no Authorization header
    form = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
            + png_bytes() + b'\r\n--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nblue\r\n--b--\r\n')
    for kind, data in (("multipart/form-data; boundary=b", form), ("application/x-www-form-urlencoded", b"prompt=x"),
                       ("text/plain", b'{"prompt": "x"}')):
        for path in ("/v1/images/edits", "/v1/images/generations", "/v1/chat/completions"):
            assert http(f"{live}{path}", data, {"Content-Type": kind})[0] == 401, (path, kind)
    # and the pre-flight that a page needs to send the header is never granted
    status, headers, _ = http(f"{live}/v1/images/edits", method="OPTIONS", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization"})
    assert status >= 400 and "Access-Control-Allow-Origin" not in headers
    # a JSON body with the key but sent as text/plain is still refused (415)
    assert http(f"{live}/v1/chat/completions", b"{}", {"Content-Type": "text/plain",
                                                        "Authorization": f"Bearer {KEY}"})[0] == 415
    # the page's own API answers without a key, as before
    assert http(f"{live}/api/info")[0] == 200
    status, _, job = http(f"{live}/api/jobs", json.dumps({"task": "t2i", "steps": 1, "sampler": "dpm++"}).encode(),
                          {"Content-Type": "application/json"})
    assert status == 200 and job["id"]


def test_with_no_key_on_loopback_any_bearer_passes_but_the_header_is_still_needed(loaded):
    from fastapi.testclient import TestClient

    from transfusion.demo.app import create_app

    local = TestClient(create_app(loaded), base_url="http://127.0.0.1:7860")
    assert local.get("/v1/models", headers={"Authorization": "Bearer anything"}).status_code == 200
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        response = local.get("/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key", headers


@pytest.fixture(scope="module")
def loaded(debug_run):
    from transfusion.checkpoint import load_checkpoint

    return load_checkpoint(debug_run)


def test_edits_are_served_by_a_run_trained_on_them(loaded):
    from fastapi.testclient import TestClient

    from transfusion.demo.app import create_app

    cfg = loaded.config
    edited = dataclasses.replace(loaded, config=dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, edit_fraction=0.5)))
    in_process = TestClient(create_app(edited, api_key=KEY), base_url="http://127.0.0.1:7860")
    client = openai.OpenAI(base_url="http://127.0.0.1:7860/v1", api_key=KEY, http_client=in_process, max_retries=0)
    answer = client.images.edit(image=("a.png", png_bytes(), "image/png"), prompt="make it blue", n=2, size="16x16",
                                extra_body={"seed": 5, "steps": 2, "sampler": "dpm++", "image_guidance": 1.5,
                                            "strength": 0.8})
    read = [parameters(image.b64_json) for image in answer.data]
    assert [size for size, _ in read] == [(16, 16)] * 2 and [s["seed"] for _, s in read] == [5, 6]
    assert all(s["task"] == "edit" and s["image_guidance"] == 1.5 and s["strength"] == 0.8 for _, s in read)
    with pytest.raises(openai.BadRequestError, match="only the image may be a file"):
        client.images.edit(image=("a.png", png_bytes(), "image/png"), mask=("m.png", png_bytes(), "image/png"),
                           prompt="make it blue")
    with pytest.raises(openai.BadRequestError, match="given more than once"):
        client.images.edit(image=[("a.png", png_bytes(), "image/png")] * 2, prompt="make it blue")
    with pytest.raises(openai.BadRequestError, match="steps must be an integer, got 'many'"):
        client.images.edit(image=("a.png", png_bytes(), "image/png"), prompt="x", extra_body={"steps": "many"})


def test_serving_beyond_loopback_needs_a_key_before_the_model_loads(debug_run, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    from transfusion.cli import COMMANDS
    from transfusion.demo.app import serve
    from transfusion.demo.openai_api import is_loopback

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    monkeypatch.delenv("TRANSFUSION_API_KEY", raising=False)
    for argv in (["--host", "192.168.1.20"], ["--host", "0.0.0.0", "--allowed-hosts", "box.lan"],
                 ["--host", "box.lan"], ["--host", "10.0.0.1", "--api-key", " "]):
        with pytest.raises(ValueError, match="--api-key"):
            COMMANDS["serve"]([str(debug_run), *argv])
    assert not served
    with pytest.raises(ValueError, match="TRANSFUSION_API_KEY"):
        serve(None, host="0.0.0.0")  # the function refuses too, before it reads the model
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "", "192.168.1.20", "localhost.example"]))
    COMMANDS["serve"]([str(debug_run), "--host", "192.168.1.20", "--api-key", KEY])
    lan = TestClient(served["app"], base_url="http://192.168.1.20:7860")
    assert lan.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert lan.get("/v1/models", headers={"Authorization": "Bearer guess"}).status_code == 401
    monkeypatch.setenv("TRANSFUSION_API_KEY", "from-the-environment")
    COMMANDS["serve"]([str(debug_run), "--host", "192.168.1.20"])
    lan = TestClient(served["app"], base_url="http://192.168.1.20:7860")
    assert lan.get("/v1/models", headers={"Authorization": "Bearer from-the-environment"}).status_code == 200
    COMMANDS["serve"]([str(debug_run)])  # loopback: the environment's key still holds
    local = TestClient(served["app"], base_url="http://127.0.0.1:7860")
    assert local.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 401


def test_a_client_that_goes_away_takes_its_queued_job_out_of_the_line():
    import asyncio
    import threading
    from pathlib import Path
    from types import SimpleNamespace

    from transfusion.demo.jobs import Job, JobQueue, Limits
    from transfusion.demo.openai_api import APIError, OpenAIRoutes

    release = threading.Event()

    def run(batch):
        release.wait(10)
        return [{"samples": []} for _ in batch]

    line = JobQueue(run, Limits())
    run = SimpleNamespace(config=SimpleNamespace(image=SimpleNamespace(size=16)), path=Path("/no/such/run"))
    api = OpenAIRoutes(None, line, run, Limits(), [], False, "run/step_1", None, asyncio.Semaphore(1))
    try:
        busy = line.submit(Job(task="i2t"))  # holds the worker
        deadline = time.time() + 10
        while busy.status != "running" and time.time() < deadline:
            time.sleep(0.01)

        class Gone:
            async def is_disconnected(self):
                return True

        job = Job(task="t2i", prompt="never drawn")
        with pytest.raises(APIError) as err:
            asyncio.run(api.finished(Gone(), job))
        assert err.value.status == 499 and job.status == "cancelled"
    finally:
        release.set()


def test_conversations_stops_and_form_fields_read_as_documented():
    from transfusion.demo.openai_api import APIError, conversation, cut_at_stop, form_value

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
    assert conversation([{"role": "user", "content": [image, {"type": "text", "text": " a red "}]}]) == \
        ("i2t", "a red", "data:image/png;base64,AAAA")
    assert conversation([{"role": "developer", "content": "shapes"}, {"role": "assistant", "content": None},
                         {"role": "user", "content": [{"type": "text", "text": "a red circle"}], "name": "me"}]) == \
        ("interleaved", "shapes\na red circle", None)
    for messages, message in (([], "non-empty list"), ([{"role": "tool", "content": "x"}], "role must be one of"),
                              ([{"role": "system", "content": [image]}], "in a user message"),
                              ([{"role": "user", "content": [image, image]}], "one image"),
                              ([{"role": "system", "content": "s"}, {"role": "user", "content": [image]}], "one user"),
                              ([{"role": "user", "content": [{"type": "image_url", "image_url": "ftp://x"}]}],
                               "must be a data URL"),
                              ([{"role": "user", "content": ""}], "no text to continue")):
        with pytest.raises(APIError, match=message):
            conversation(messages)
    assert cut_at_stop("a red circle. then", [".", "then"]) == ("a red circle", True)
    assert cut_at_stop("a red circle", ["zz"]) == ("a red circle", False)
    assert [form_value("n", "2"), form_value("guidance", "1.5"), form_value("stream", "false"), form_value("seed", "")] \
        == [2, 1.5, False, None]
    assert form_value("prompt", "3") == "3"  # text stays text
    for key, text in (("n", "2.0"), ("guidance", "nan"), ("stream", "maybe")):
        with pytest.raises(APIError, match=f"{key} must be"):
            form_value(key, text)
