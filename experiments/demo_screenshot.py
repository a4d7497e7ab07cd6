"""Screenshots of the web demo, for the README and docs/demo.md: `transfusion serve RUN` driven by headless Chromium.

    python experiments/demo_screenshot.py runs/small_edit      # writes docs/demo_t2i.png and docs/demo_edit.png

Needs the demo extra, Selenium and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    run = sys.argv[1] if len(sys.argv) > 1 else "runs/small_edit"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "transfusion", "serve", run, "--port", str(port)])
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,760"):
        options.add_argument(flag)
    options.binary_location = "/usr/bin/chromium"
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"),
                               options=options)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 300)
        wait.until(lambda b: b.find_element(By.ID, "sampler").find_elements(By.TAG_NAME, "option"))

        def fill(field: str, value: str) -> None:
            element = browser.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)

        def generate_and_shoot(name: str) -> None:
            browser.find_element(By.ID, "results").click()
            browser.execute_script("document.getElementById('results').innerHTML = ''")
            browser.find_element(By.ID, "generate").click()
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#results img.result")))
            time.sleep(0.5)
            browser.save_screenshot(str(ROOT / "docs" / name))
            print(f"wrote docs/{name}")

        browser.execute_script("document.getElementById('sampler').value = 'dpm++'; "
                               "document.getElementById('sampler').dispatchEvent(new Event('change'))")
        fill("prompt", "a large red circle on the left")
        fill("n", "4")
        generate_and_shoot("demo_t2i.png")

        from transfusion.data.edits import EditsDataset
        from transfusion.data.shapes import render
        from transfusion.visualize import save_image

        edit = EditsDataset("test").edit(0)
        source = Path(tempfile.mkdtemp()) / "source.png"
        save_image(render(edit.source, 32), source)
        browser.find_element(By.ID, "task-edit").click()
        browser.find_element(By.ID, "upload").send_keys(str(source))
        wait.until(lambda b: b.execute_script("return document.getElementById('preview').src.startsWith('data:')"))
        fill("prompt", edit.instruction)
        fill("image_guidance", "1.5")
        fill("n", "4")
        generate_and_shoot("demo_edit.png")
    finally:
        browser.quit()
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
