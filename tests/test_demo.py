"""The web demo: request limits, the job queue, the HTTP API on a live server, and the page in a
real browser (headless Chromium through Selenium; skipped, with the reason, where it is missing)."""

import base64
import io
import json
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
    ({"task": "t2i", "steps": "many"}, "steps must be a number"),
    ({"task": "t2i", "guidance": "nan"}, "guidance must be a number, got NaN"),
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

    def run(job):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        if job.prompt == "fail":
            raise RuntimeError("boom")
        return {"echo": job.prompt}

    q = JobQueue(run, Limits(max_queue=16))
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


def test_a_full_queue_says_busy():
    release = threading.Event()
    q = JobQueue(lambda job: release.wait(5), Limits(max_queue=1))
    q.submit(Job(task="t2i"))  # taken by the worker
    time.sleep(0.05)
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
def server(debug_run):
    """``create_app`` on the debug run, served by uvicorn on 127.0.0.1 in a thread."""
    import uvicorn

    from transfusion.checkpoint import load_checkpoint
    from transfusion.demo.app import create_app

    port = free_port()
    config = uvicorn.Config(create_app(load_checkpoint(debug_run), Limits(max_upload_bytes=64 * 1024)),
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


def test_the_api_serves_every_task_with_its_settings(server):
    status, info = call(f"{server}/api/info")
    assert status == 200 and info["image_size"] == 16 and "dpm++" in info["samplers"]
    assert info["samplers"][0] == "dpm++sde" and info["default_steps"]["dpm++sde"] == 25  # the page's default
    ids = {}
    for task, extra in (("t2i", {"prompt": "a red circle", "n": 2}), ("i2t", {"image": png_base64()}),
                        ("interleaved", {"prompt": "first a red circle"}),
                        ("edit", {"prompt": "make it blue", "image": png_base64(), "image_guidance": 1.5})):
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
    assert jobs["edit"]["result"]["settings"]["image_guidance"] == 1.5
    assert jobs["t2i"]["progress"][0] == jobs["t2i"]["progress"][1] > 0  # every denoising step reported


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
        PILImage.new("RGB", (40, 40), "green").save(tmp_path / "upload.png")
        browser.find_element(By.ID, "upload").send_keys(str(tmp_path / "upload.png"))
        wait.until(lambda b: b.execute_script("return document.getElementById('preview').src.startsWith('data:')"))
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
