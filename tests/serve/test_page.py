"""The page of `onnxlrp serve` in a real browser: Debian's chromium, headless, driven by Selenium with
Debian's chromedriver (nothing downloaded). Skips where they are not installed; .ci/run installs them.

ONNXLRP_SCREENSHOT=docs/serve.png also saves the screenshot the README shows."""
from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not installed")]


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1500,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def _picture(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def test_upload_a_digit_click_a_class_and_compare(browser, live_server):
    wait = WebDriverWait(browser, 60)
    browser.get(live_server + "/")
    wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value") == "digits_cnn")
    browser.find_element(By.ID, "file").send_keys(str(DEMO / "digits" / "test_4.png"))
    wait.until(lambda d: d.find_element(By.ID, "explained").text == "class 4")   # the predicted class
    wait.until(lambda d: not d.find_element(By.ID, "progress").is_displayed())  # and gone when done
    heatmap = browser.find_element(By.ID, "heatmap").get_attribute("src")
    pixels = _picture(heatmap)
    assert (pixels.min(axis=2) < 200).mean() > 0.01             # not blank: coloured where relevance is
    scores = browser.find_elements(By.CSS_SELECTOR, "#scores button")
    assert len(scores) == 5 and scores[0].text.startswith("class 4")
    assert "conservation" in browser.find_element(By.ID, "summary").text

    other = scores[1].get_attribute("data-class")
    scores[1].click()                                           # explain the runner-up
    wait.until(lambda d: d.find_element(By.ID, "explained").text == f"class {other}")
    assert browser.find_element(By.ID, "heatmap").get_attribute("src") != heatmap

    browser.execute_script("const s = document.getElementById('opacity'); s.value = 0.3;"
                           "s.dispatchEvent(new Event('input'));")
    assert browser.find_element(By.ID, "heatmap").value_of_css_property("opacity") == "0.3"

    browser.find_element(By.ID, "composite").send_keys("epsilon gamma box")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#params input")) == 3)
    browser.find_element(By.ID, "compare").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid figure")) == 5)
    assert browser.find_element(By.ID, "download-png").get_attribute("href").startswith("data:image/png")
    assert not browser.find_element(By.ID, "error").text
    target = os.environ.get("ONNXLRP_SCREENSHOT")
    if target:
        wait.until(lambda d: not d.find_element(By.ID, "progress").is_displayed())
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(target)


def test_the_vit_and_a_bad_upload(browser, live_server, tmp_path):
    wait = WebDriverWait(browser, 60)
    browser.get(live_server + "/")
    wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value") == "digits_cnn")
    browser.find_element(By.ID, "model").send_keys("digits_vit")
    wait.until(lambda d: d.find_element(By.ID, "composite").get_attribute("value") == "attn_lrp")
    browser.find_element(By.ID, "file").send_keys(str(DEMO / "digits" / "test_0.png"))
    wait.until(lambda d: d.find_element(By.ID, "explained").text.startswith("class "))
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait.until(lambda d: "not an image" in d.find_element(By.ID, "error").text)


def test_a_text_model_takes_a_sentence(browser, live_server):
    pytest.importorskip("tokenizers")
    wait = WebDriverWait(browser, 60)
    browser.get(live_server + "/")
    wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value") == "digits_cnn")
    browser.find_element(By.ID, "model").send_keys("sentiment")
    wait.until(lambda d: d.find_element(By.ID, "sentence").is_displayed())
    assert not browser.find_element(By.ID, "drop").is_displayed()
    browser.find_element(By.ID, "sentence").send_keys("the film was a delight")
    browser.find_element(By.ID, "explain").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tokens span")) == 5)
    assert browser.find_element(By.CSS_SELECTOR, "#tokens span").text == "the"
    assert not browser.find_element(By.ID, "stack").is_displayed()
