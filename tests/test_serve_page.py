"""The page of ``mobilenets serve`` in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium): it uploads a real image through the page, reads the
labels and probabilities the page shows, checks them against the API's answer for the same
file, and saves a screenshot beside the test's other output. Skips, saying why, where Chromium,
its driver or Selenium is missing (``make browser`` installs them; CI runs it)."""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from mobilenets.serve.load import ServerProcess  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "fmnist_v3s_minimal_025.safetensors"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1100,900")


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Chromium or chromedriver is not installed (make browser: apt-get install "
                    "chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed (the test extra)")
    return chromium, driver


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_shows_the_api_answer_for_an_uploaded_image(browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "ankle_boot.png"  # a Fashion-MNIST test image, 4x larger to be seen
    pixels = np.load(FIXTURES / "fmnist_sample.npz")["test_images"][0]
    Image.fromarray(pixels).resize((112, 112), Image.NEAREST).save(image)
    with ServerProcess(CHECKPOINT, "--log-level", "warning", log=tmp_path / "server.log") as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/v1/predict?top_k=5", body=image.read_bytes(), headers={"Content-Type": "image/png"})
        api = json.loads(conn.getresponse().read())["top"]
        conn.close()

        browser.get(f"http://127.0.0.1:{server.port}/")
        wait = WebDriverWait(browser, 60)
        wait.until(ec.text_to_be_present_in_element((By.ID, "card"), "params"))
        browser.find_element(By.ID, "file").send_keys(str(image))
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
        assert browser.find_element(By.ID, "error").text == ""
        names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .name")]
        probs = [float(e.get_attribute("data-value")) for e in browser.find_elements(By.CSS_SELECTOR, "#results .prob")]
        shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .prob")]
        latency = browser.find_element(By.ID, "latency").text
        card = browser.find_element(By.ID, "card").text
        browser.save_screenshot(str(tmp_path / "serve_page.png"))
    assert names == [t["class"] for t in api] and len(names) == 5
    assert probs == pytest.approx([t["probability"] for t in api], abs=1e-6)
    assert shown[0] == f"{api[0]['probability'] * 100:.1f} %"
    assert latency.startswith("server ") and "round trip" in latency
    assert "mobilenet_v3_small_minimal" in card and "76.7 k" in card  # params from /v1/model
    assert (tmp_path / "serve_page.png").stat().st_size > 10_000
    assert server.exit_code == 0
