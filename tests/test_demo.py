"""The web demo: request limits, the job queue, the HTTP API on a live server, and the page in a
real browser (headless Chromium through Selenium; skipped, with the reason, where it is missing)."""

import base64
import io
import json
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image as PILImage

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from transfusion.demo.jobs import Job, JobQueue, Limits, RequestError, decode_image, parse_request  # noqa: E402


def png_base64(size=(20, 12), colour="red", fmt="PNG") -> str:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, format=fmt)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("body, message", [
    ({"task": "paint"}, "task must be one of"),
    ({"task": "t2i", "n": 9}, r"n must be in \[1, 4\]"),
    ({"task": "t2i", "steps": 5000}, r"steps must be in \[1, 250\]"),
    ({"task": "t2i", "steps": "many"}, "steps must be an integer"),
    ({"task": "t2i", "guidance": "nan"}, "guidance must be a number, got 'nan'"),
    ({"task": "t2i", "prompt": "x" * 501}, "at most 500 are accepted"),
    ({"task": "t2i", "sampler": "magic"}, "sampler must be one of"),
    ({"task": "t2i", "checkpoint": "/etc/passwd"}, "unknown field"),  # no parameter names a file
    ({"task": "edit", "prompt": "make it blue"}, "needs an uploaded image"),
    ({"task": "edit", "image": "x"}, "needs an instruction"),
    ({"task": "i2t", "image": "not base64!"}, "not valid base64"),
    ({"task": "i2t", "image": base64.b64encode(b"just some text").decode()}, "not an image"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_requests_get_a_clear_message(body, message):
    with pytest.raises(RequestError, match=message):
        parse_request(body, 16, Limits())


def image_base64(fmt: str) -> str:
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8), "red").save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("body, field, message", [
    ({"task": "t2i", "n": 1e999}, "n", "n must be an integer, got inf"),
    ({"task": "t2i", "n": True}, "n", "n must be an integer, got True"),
    ({"task": "t2i", "n": 2.0}, "n", "n must be an integer, got 2.0"),
    ({"task": "t2i", "seed": "7"}, "seed", "seed must be an integer, got '7'"),
    ({"task": "t2i", "steps": float("nan")}, "steps", "steps must be an integer, got nan"),
    ({"task": "t2i", "guidance": float("inf")}, "guidance", "guidance must be a finite number, got inf"),
    ({"task": "t2i", "guidance": 10**400}, "guidance", r"guidance must be in \[0.0, 20.0\], got 1000"),
    ({"task": "t2i", "image_guidance": False}, "image_guidance", "image_guidance must be a number, got False"),
    ({"task": "t2i", "sampler": {}}, "sampler", "sampler must be a sampler's name, got {}"),
    ({"task": "t2i", "sampler": ["dpm++"]}, "sampler", "sampler must be a sampler's name"),
    ({"task": "t2i", "prompt": {}}, "prompt", "prompt must be text, got {}"),
    ({"task": "t2i", "prompt": "a red \ud800"}, "prompt", "prompt is not valid Unicode"),
    ({"task": "t2i", "image": image_base64("PNG")}, "image", "image is only read by the i2t and edit tasks"),
    ({"task": "i2t", "image": "data:"}, "image", "image must be a base64 data URL"),
    ({"task": "i2t", "image": "data:image/png,iVBORw0KGgo="}, "image", "image must be a base64 data URL"),
    ({"task": "i2t", "image": "data:image/png;base64,"}, "image", "image is empty"),
    ({"task": "i2t", "image": {}}, "image", "image must be a base64-encoded image file"),
    ({"task": "i2t", "image": image_base64("TIFF")}, "image",
     r"image is not an image file of a supported format \(PNG, JPEG, WEBP, GIF, BMP\)"),
    ({"task": "i2t", "image": image_base64("PPM")}, "image", "image is not an image file of a supported format"),
])
def test_every_malformed_field_gets_a_4xx_naming_it(body, field, message):
    with pytest.raises(RequestError, match=message) as err:
        parse_request(body, 16, Limits())
    assert 400 <= err.value.status < 500 and field in str(err.value)


def test_a_sampler_must_be_one_the_run_offers_and_an_edit_needs_a_run_trained_on_edits():
    with pytest.raises(RequestError, match="sampler must be one of dpm\\+\\+, got 'ddpm'"):
        parse_request({"task": "t2i", "sampler": "ddpm"}, 16, Limits(), samplers=["dpm++"])
    with pytest.raises(RequestError, match="not trained on edits") as err:
        parse_request({"task": "edit", "prompt": "make it blue", "image": image_base64("PNG")}, 16, Limits(),
                      edits=False)
    assert err.value.status == 400
    job = parse_request({"task": "edit", "prompt": "make it blue", "image": image_base64("PNG"), "n": 2,
                         "guidance": 3, "seed": None}, 16, Limits())
    assert (job.n, job.guidance, job.seed) == (2, 3.0, 0) and job.image.shape == (3, 16, 16)


def test_uploads_are_bounded_in_bytes_and_in_pixels_before_decoding():
    small = Limits(max_upload_bytes=2048, max_upload_pixels=32 * 32)
    with pytest.raises(RequestError, match="is 64x64 pixels") as err:
        decode_image(png_base64((64, 64)), 16, small)
    assert err.value.status == 413
    noisy = io.BytesIO()
    PILImage.frombytes("RGB", (64, 64), bytes(range(256)) * 48).save(noisy, format="BMP")  # 12 KiB
    with pytest.raises(RequestError, match="larger than 2 KiB"):
        decode_image(base64.b64encode(noisy.getvalue()).decode(), 16, small)
    pixels = decode_image(png_base64((20, 12)), 16, Limits())
    assert pixels.shape == (3, 16, 16) and pixels.min() >= -1 and pixels.max() <= 1


def test_a_decompression_bomb_is_refused_without_decoding_it():
    bomb = io.BytesIO()
    PILImage.new("1", (12_000, 12_000)).save(bomb, format="PNG")  # 144M pixels in a few KiB
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(RequestError, match="12000x12000 pixels"):
        decode_image(base64.b64encode(bomb.getvalue()).decode(), 16, Limits())


def test_the_queue_runs_one_job_at_a_time_and_survives_a_failing_one():
    running, peak, lock = [0], [0], threading.Lock()

    def run(batch):
        (job,) = batch  # max_batch 1: one job at a time
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        if job.prompt == "fail":
            raise RuntimeError("boom")
        return [{"echo": job.prompt}]

    q = JobQueue(run, Limits(max_queue=16, max_batch=1))
    jobs = [q.submit(Job(task="t2i", prompt=p)) for p in ["a", "fail", "b", "c"]]
    deadline = time.time() + 10
    while any(j.status in ("queued", "running") for j in jobs) and time.time() < deadline:
        time.sleep(0.01)
    assert [q.view(j.id)["status"] for j in jobs] == ["done", "error", "done", "done"]
    assert q.view(jobs[1].id)["error"] == "boom" and q.view(jobs[3].id)["result"] == {"echo": "c"}
    assert peak[0] == 1
    with pytest.raises(RequestError, match="no job") as err:
        q.view("999999")
    assert err.value.status == 404


def test_job_ids_are_unguessable_and_the_line_follows_arrival():
    release = threading.Event()
    q = JobQueue(lambda batch: [release.wait(5)], Limits(max_queue=32, max_batch=1))
    jobs = [q.submit(Job(task="t2i", prompt=str(k))) for k in range(20)]
    try:
        ids = [j.id for j in jobs]
        assert len(set(ids)) == 20 and all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids)  # 128 random bits
        deadline = time.time() + 5
        while jobs[0].status != "running" and time.time() < deadline:
            time.sleep(0.01)
        assert [q.view(j.id)["position"] for j in jobs[1:]] == list(range(19))  # by arrival, not by id
        with pytest.raises(RequestError, match="no job") as err:
            q.view("000001")
        assert err.value.status == 404
    finally:
        release.set()


def test_a_full_queue_says_busy():
    started, release = threading.Event(), threading.Event()
    q = JobQueue(lambda batch: [started.set(), release.wait(5)][1:], Limits(max_queue=1, batch_wait=0))
    q.submit(Job(task="t2i"))  # taken by the worker
    assert started.wait(10)
    q.submit(Job(task="t2i"))  # waits
    with pytest.raises(RequestError, match="busy") as err:
        q.submit(Job(task="t2i"))
    assert err.value.status == 503
    release.set()


def test_the_page_fetches_nothing_from_elsewhere():
    import re
    from importlib.resources import files

    page = files("transfusion.demo").joinpath("page.html").read_text()
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.I)  # no CDN, font or script URL
    assert "<script src" not in page and "<link" not in page


# ---------------------------------------------------------------- a live server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def loaded(debug_run):
    from transfusion.checkpoint import load_checkpoint

    return load_checkpoint(debug_run)


@pytest.fixture(scope="module")
def server(loaded):
    """``create_app`` on the debug run (not trained on edits), served by uvicorn on 127.0.0.1 in a thread."""
    import uvicorn

    from transfusion.demo.app import create_app

    port = free_port()
    config = uvicorn.Config(create_app(loaded, Limits(max_upload_bytes=64 * 1024, max_body_seconds=2)),
                            host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def call(url, body=None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def finished(server, job_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        _, job = call(f"{server}/api/jobs/{job_id}")
        if job["status"] in ("done", "error"):
            return job
        time.sleep(0.1)
    raise TimeoutError(job_id)


def test_the_api_serves_every_task_with_its_settings(server, loaded):
    status, info = call(f"{server}/api/info")
    assert status == 200 and info["image_size"] == 16 and "dpm++" in info["samplers"]
    assert info["samplers"][0] == "dpm++sde" and info["default_steps"]["dpm++sde"] == 25  # the page's default
    ids = {}
    for task, extra in (("t2i", {"prompt": "a red circle", "n": 2}), ("i2t", {"image": png_base64()}),
                        ("interleaved", {"prompt": "first a red circle"})):
        status, answer = call(f"{server}/api/jobs", {"task": task, "steps": 2, "sampler": "dpm++", "seed": 3, **extra})
        assert status == 200, answer
        ids[task] = answer["id"]
    jobs = {task: finished(server, i) for task, i in ids.items()}
    assert all(j["status"] == "done" for j in jobs.values()), jobs
    t2i = jobs["t2i"]["result"]
    assert [s["seed"] for s in t2i["samples"]] == [3, 4] and t2i["settings"]["steps"] == 2
    png = base64.b64decode(t2i["samples"][0]["images"][0].split(",", 1)[1])
    image = PILImage.open(io.BytesIO(png))
    assert image.size == (16, 16) and json.loads(image.info["parameters"])["prompt"] == "a red circle"
    assert jobs["i2t"]["result"]["samples"][0]["images"] == [] and jobs["i2t"]["result"]["samples"][0]["text"]
    assert jobs["t2i"]["progress"][0] == jobs["t2i"]["progress"][1] > 0  # every denoising step reported
    # the run's name, never the server's path to it, in the info, the settings and the PNGs
    assert info["checkpoint"] == t2i["settings"]["checkpoint"] == f"debug/{loaded.path.name}"
    assert json.loads(image.info["parameters"])["checkpoint"] == info["checkpoint"]
    assert str(loaded.path.parent.parent.parent) not in json.dumps([info, jobs])
    # the debug run was not trained on edits: the page hides the tab and the API says why
    assert info["edits"] is False
    status, answer = call(f"{server}/api/jobs", {"task": "edit", "prompt": "make it blue", "image": png_base64()})
    assert status == 400 and "not trained on edits" in answer["error"]


def test_the_api_refuses_bad_input_and_stays_up(server):
    assert call(f"{server}/api/jobs", raw=b"{not json")[0] == 400
    status, answer = call(f"{server}/api/jobs", {"task": "i2t", "image": png_base64((300, 300), fmt="BMP")})
    assert status == 413 and "larger than" in answer["error"]
    status, answer = call(f"{server}/api/jobs", raw=b"x" * (200 * 1024))  # the body itself over the limit
    assert status == 413
    assert call(f"{server}/api/jobs/123456")[0] == 404
    assert call(f"{server}/api/info")[0] == 200


def test_concurrent_clients_all_get_their_answer(server):
    results = {}

    def client(k):
        _, answer = call(f"{server}/api/jobs", {"task": "t2i", "prompt": f"a blue square {k}", "steps": 2,
                                                "sampler": "dpm++", "seed": k})
        results[k] = finished(server, answer["id"])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(6))
    assert all(r["status"] == "done" and r["result"]["samples"][0]["seed"] == k for k, r in results.items())


def test_a_body_that_trickles_in_is_cut_off(server):
    host, port = server.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")  # then nothing more
        began = time.time()
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408") and time.time() - began < 8, answer[:200]
    assert call(f"{server}/api/info")[0] == 200


def test_an_upload_is_decoded_off_the_event_loop(server, monkeypatch):
    from transfusion.demo import jobs as jobs_module

    entered, release, decode = threading.Event(), threading.Event(), jobs_module.decode_image

    def slow_decode(*args):  # a heavy upload, still decoding
        entered.set()
        release.wait(10)
        return decode(*args)

    monkeypatch.setattr(jobs_module, "decode_image", slow_decode)
    answers = []
    upload = threading.Thread(target=lambda: answers.append(call(f"{server}/api/jobs", {"task": "i2t",
                                                                                       "image": png_base64()})))
    upload.start()
    try:
        assert entered.wait(10)
        began = time.time()
        request = urllib.request.Request(f"{server}/api/info")
        with urllib.request.urlopen(request, timeout=5) as r:  # other clients are answered meanwhile
            assert r.status == 200 and time.time() - began < 2
    finally:
        release.set()
        upload.join(30)
    assert answers[0][0] == 200


def client_for(app, host: str = "127.0.0.1:7860"):
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=f"http://{host}")


def test_posts_must_be_json_so_other_pages_cannot_submit_jobs(loaded):
    from transfusion.demo.app import create_app

    client = client_for(create_app(loaded))
    body = json.dumps({"task": "t2i", "steps": 1, "sampler": "dpm++"})
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        response = client.post("/api/jobs", content=body, headers={"Content-Type": kind} if kind else {})
        assert response.status_code == 415 and "application/json" in response.json()["error"], kind
    response = client.post("/api/jobs", content=body, headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert response.status_code == 200


def test_only_the_servers_own_host_names_are_answered(loaded):
    from transfusion.demo.app import create_app

    app = create_app(loaded)
    for host in ("localhost:7860", "127.0.0.1", "[::1]:7860", "LOCALHOST:80"):
        assert client_for(app, host).get("/api/info").status_code == 200, host
    for host in ("evil.example:7860", "localhost.evil.example", "127.0.0.1.nip.io:7860", "[::2]"):
        client = client_for(app, host)  # a page on that name, rebound to 127.0.0.1
        for response in (client.get("/"), client.get("/api/info"), client.get("/api/jobs/x"),
                         client.post("/api/jobs", json={"task": "t2i"})):
            assert response.status_code == 421 and "--allowed-hosts" in response.json()["error"], host


def test_serve_names_the_hosts_it_answers_to_and_bounds_connections(debug_run, monkeypatch):
    import uvicorn

    from transfusion.cli import COMMANDS

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    monkeypatch.setenv("TRANSFUSION_API_KEY", "a-key")  # beyond loopback the OpenAI API needs one (test_openai_api)
    with pytest.raises(ValueError, match="--allowed-hosts"):
        COMMANDS["serve"]([str(debug_run), "--host", "0.0.0.0"])  # every interface: which names, then?
    assert not served
    COMMANDS["serve"]([str(debug_run), "--host", "0.0.0.0", "--allowed-hosts", "box.lan, 192.168.1.20"])
    assert served["host"] == "0.0.0.0" and 0 < served["limit_concurrency"] <= 256
    assert 0 < served["timeout_keep_alive"] <= 5 and served["h11_max_incomplete_event_size"] <= 64 * 1024
    for host, code in (("box.lan:7860", 200), ("192.168.1.20", 200), ("localhost", 200), ("evil.example", 421)):
        assert client_for(served["app"], host).get("/api/info").status_code == code, host
    COMMANDS["serve"]([str(debug_run), "--host", "192.168.1.20"])  # by default, the bound address
    for host, code in (("192.168.1.20:7860", 200), ("box.lan", 421)):
        assert client_for(served["app"], host).get("/api/info").status_code == code, host


def test_malformed_bodies_get_a_4xx_not_a_500(loaded):
    from transfusion.demo.app import create_app

    client = client_for(create_app(loaded))  # raises what the app raises: a 500 fails here
    for raw in (b"[" * 100_000, b'{"task": "t2i", "seed": ' + b"9" * 5000 + b"}", b'{"task": "t2i", "n": 1e999}',
                b'{"task": "i2t", "image": "data:"}', b'{"task": "t2i", "sampler": ["dpm++"]}',
                b'{"task": "t2i", "guidance": NaN}', b"\xff\xfe{"):
        response = client.post("/api/jobs", content=raw, headers={"Content-Type": "application/json"})
        assert 400 <= response.status_code < 500 and response.json()["error"], raw[:40]


def test_edits_are_served_by_a_run_trained_on_them(loaded):
    import dataclasses

    from transfusion.demo.app import create_app

    cfg = loaded.config
    edited = dataclasses.replace(loaded, config=dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, edit_fraction=0.5)))
    client = client_for(create_app(edited))
    assert client.get("/api/info").json()["edits"] is True
    response = client.post("/api/jobs", json={"task": "edit", "prompt": "make it blue", "image": png_base64(),
                                              "image_guidance": 1.5, "steps": 2, "sampler": "dpm++"})
    assert response.status_code == 200, response.json()
    deadline = time.time() + 120
    while (job := client.get(f"/api/jobs/{response.json()['id']}").json())["status"] in ("queued", "running"):
        assert time.time() < deadline
        time.sleep(0.1)
    assert job["status"] == "done" and job["result"]["settings"]["image_guidance"] == 1.5
    png = base64.b64decode(job["result"]["samples"][0]["images"][0].split(",", 1)[1])
    assert PILImage.open(io.BytesIO(png)).size == (16, 16)


# ---------------------------------------------------------------- the page, in a real browser
def chromium():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver; .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    options.binary_location = browser
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


def test_the_page_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium()
    try:
        browser.get(server)
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: b.find_element(By.ID, "sampler").find_elements(By.TAG_NAME, "option"))
        # the debug run was not trained on edits: the Edit tab is off, and a note says why
        assert browser.find_element(By.ID, "task-edit").get_property("disabled") is True
        assert "not trained on edits" in browser.find_element(By.ID, "edit-note").text
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("a small blue square at the top")
        steps = browser.find_element(By.ID, "steps")
        steps.clear()
        steps.send_keys("3")
        browser.find_element(By.ID, "generate").click()
        image = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#results img.result")))
        wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image) == [16, 16]
        assert '"prompt": "a small blue square at the top"' in browser.find_element(By.CSS_SELECTOR, "#results pre").text
        browser.save_screenshot(str(tmp_path / "text_to_image.png"))

        browser.find_element(By.ID, "task-i2t").click()
        stripes = PILImage.new("RGB", (60, 20), "green")  # red | green | blue: the center square is green
        stripes.paste((255, 0, 0), (0, 0, 20, 20))
        stripes.paste((0, 0, 255), (40, 0, 60, 20))
        stripes.save(tmp_path / "upload.png")
        browser.find_element(By.ID, "upload").send_keys(str(tmp_path / "upload.png"))
        wait.until(lambda b: b.execute_script("const p = document.getElementById('preview'); "
                                              "return p.src.startsWith('data:') && p.complete && p.naturalWidth"))
        preview = PILImage.open(io.BytesIO(browser.find_element(By.ID, "preview").screenshot_as_png)).convert("RGB")
        across = [preview.getpixel((x * preview.width // 8, preview.height // 2)) for x in (1, 4, 7)]
        assert all(g > 100 and r < 80 and b < 80 for r, g, b in across), across  # shown as it will be cropped
        browser.find_element(By.ID, "generate").click()
        caption = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#results .result-text")))
        assert caption.text.strip()

        (tmp_path / "notes.txt").write_text("not an image")
        browser.find_element(By.ID, "upload").send_keys(str(tmp_path / "notes.txt"))
        wait.until(lambda b: b.execute_script("return document.getElementById('preview').src.startsWith('data:text')"))
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: b.find_element(By.ID, "error").text)
        assert "not an image" in browser.find_element(By.ID, "error").text
        browser.save_screenshot(str(tmp_path / "error.png"))
        assert PILImage.open(tmp_path / "error.png").size[0] > 0
    finally:
        browser.quit()
