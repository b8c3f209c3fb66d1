"""The page of `onnxlrp serve` in a real browser: Debian's chromium, headless, driven by Selenium with
Debian's chromedriver (nothing downloaded). Skips where they are not installed; .ci/run installs them.

The network is cut: the browser resolves no host name but 127.0.0.1, and every test checks from the
browser's own log that the page made no request elsewhere (a script from a CDN fails the test).

ONNXLRP_SCREENSHOT=docs/serve.png also saves the screenshot the README shows."""
from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from browser import CHROMIUM, DRIVER, chromium, requests_made  # noqa: E402

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not installed")]


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def _open(browser, address: str):
    browser.get_log("performance")        # forget the requests of earlier tests
    browser.get(address)


def _requests_elsewhere(browser, server: str) -> list[str]:
    """The addresses the browser asked for since the last look that are not the server's nor inline data."""
    urls = requests_made(browser)
    assert urls, "the browser's log shows no request at all"
    return [u for u in urls if not (u.startswith(server + "/") or u.split(":", 1)[0] in ("data", "blob"))]


def _picture(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def _digit_contrast(browser) -> float:
    """How much of the input's contrast (digit against background) the heatmap stack on screen keeps: the
    brightest channel of what is shown, on the digit's pixels against the background's, over the same
    difference in the input picture. 1: the digit shows as plainly as without the heatmap."""
    grey = _picture(browser.find_element(By.ID, "input").get_attribute("src")).mean(axis=2) / 255
    shown = np.asarray(Image.open(io.BytesIO(browser.find_element(By.ID, "stack").screenshot_as_png)).convert("RGB"))
    grey = np.asarray(Image.fromarray((grey * 255).astype(np.uint8)).resize(shown.shape[1::-1], Image.NEAREST)) / 255
    brightest = shown.max(axis=2) / 255
    digit, background = grey > 0.6, grey < 0.2
    return float((np.median(brightest[digit]) - np.median(brightest[background]))
                 / (np.median(grey[digit]) - np.median(grey[background])))


def _press(browser, wait, button_id: str):
    """Click a button once it is enabled: the page disables its buttons while a request is in flight (a
    composite chosen starts one), and a click on a disabled button does nothing."""
    wait.until(lambda d: d.find_element(By.ID, button_id).is_enabled())
    browser.find_element(By.ID, button_id).click()


def test_upload_a_digit_click_a_class_and_compare(browser, live_server):
    wait = WebDriverWait(browser, 60)
    _open(browser, live_server + "/")
    wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value") == "digits_cnn")
    browser.find_element(By.ID, "file").send_keys(str(DEMO / "digits" / "test_4.png"))
    wait.until(lambda d: d.find_element(By.ID, "explained").text == "class 4")   # the predicted class
    wait.until(lambda d: not d.find_element(By.ID, "progress").is_displayed())  # and gone when done
    heatmap = browser.find_element(By.ID, "heatmap").get_attribute("src")
    pixels = _picture(heatmap).astype(int)
    assert (pixels[..., 0] - pixels[..., 1] > 60).mean() > 0.01  # not blank: coloured where relevance is
    assert _digit_contrast(browser) > 0.6                        # and the digit shows through at the default
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
    browser.execute_script("const s = document.getElementById('opacity'); s.value = 1;"
                           "s.dispatchEvent(new Event('input'));")

    browser.find_element(By.ID, "composite").send_keys("epsilon gamma box")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#params input")) == 3)
    _press(browser, wait, "compare")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid figure")) == 5)
    assert browser.find_element(By.ID, "comparison-title").text.endswith(f"explaining class {other}")
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#grid figcaption")]
    assert all(f"class {other}" in c for c in captions), captions
    assert browser.find_element(By.ID, "download-png").get_attribute("href").startswith("data:image/png")
    assert not browser.find_element(By.ID, "error").text
    assert not _requests_elsewhere(browser, live_server)
    target = os.environ.get("ONNXLRP_SCREENSHOT")
    if target:
        wait.until(lambda d: not d.find_element(By.ID, "progress").is_displayed())
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(target)


def test_the_vit_and_a_bad_upload(browser, live_server, tmp_path):
    wait = WebDriverWait(browser, 60)
    _open(browser, live_server + "/")
    wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value") == "digits_cnn")
    browser.find_element(By.ID, "model").send_keys("digits_vit")
    wait.until(lambda d: d.find_element(By.ID, "composite").get_attribute("value") == "attn_lrp")
    # the README's composite for the ViT: AttnLRP with Gamma 0.25 on the linear layers
    gamma = browser.find_element(By.CSS_SELECTOR, "#params input[data-param=gamma]")
    assert gamma.get_attribute("value") == "0.25"
    browser.find_element(By.ID, "file").send_keys(str(DEMO / "digits" / "test_0.png"))
    wait.until(lambda d: d.find_element(By.ID, "explained").text.startswith("class "))
    wait.until(lambda d: not d.find_element(By.ID, "progress").is_displayed())
    _press(browser, wait, "compare")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid figure")) == 2)
    assert browser.find_element(By.ID, "heatmap").is_displayed()
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait.until(lambda d: "not an image" in d.find_element(By.ID, "error").text)
    # nothing of the digit before stays beside the error: no heatmap, scores or comparison, no broken thumbnail
    for shown in ("result", "stack", "heatmap", "scores", "comparison", "thumb"):
        assert not browser.find_element(By.ID, shown).is_displayed(), shown
    assert not browser.find_element(By.ID, "heatmap").get_attribute("src")
    assert not _requests_elsewhere(browser, live_server)


def test_a_text_model_takes_a_sentence(browser, live_server):
    pytest.importorskip("tokenizers")
    wait = WebDriverWait(browser, 60)
    _open(browser, live_server + "/")
    wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value") == "digits_cnn")
    browser.find_element(By.ID, "model").send_keys("sentiment")
    wait.until(lambda d: d.find_element(By.ID, "sentence").is_displayed())
    assert not browser.find_element(By.ID, "drop").is_displayed()
    browser.find_element(By.ID, "sentence").send_keys("the film was a delight")
    _press(browser, wait, "explain")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tokens span")) == 5)
    assert browser.find_element(By.CSS_SELECTOR, "#tokens span").text == "the"
    assert not browser.find_element(By.ID, "stack").is_displayed()
    assert not _requests_elsewhere(browser, live_server)


def _colours(spans) -> list[str]:
    return [span.value_of_css_property("background-color") for span in spans]


def test_a_language_model_answers_and_each_word_shows_what_it_rests_on(browser, live_server):
    """Pick the language model, type a prompt, generate: the answer is the API's; clicking a word colours the
    words before it by the API's matrix row (red for, blue against), the later ones not; keys move along."""
    pytest.importorskip("tokenizers")
    wait = WebDriverWait(browser, 60)
    _open(browser, live_server + "/")
    wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value") == "digits_cnn")
    browser.find_element(By.ID, "model").send_keys("tiny_lm")
    wait.until(lambda d: d.find_element(By.ID, "prompt").is_displayed())
    for hidden in ("drop", "text-input", "explain", "compare", "mode-label"):
        assert not browser.find_element(By.ID, hidden).is_displayed(), hidden
    browser.find_element(By.ID, "prompt").send_keys("the cat sat on the mat")
    count = browser.find_element(By.ID, "max-new-tokens")
    count.clear()
    count.send_keys("6")
    _press(browser, wait, "generate")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#answer-tokens .gen"))
    wait.until(lambda d: not d.find_element(By.ID, "progress").is_displayed())
    status, reply = _generate(live_server, {"model": "tiny_lm", "prompt": "the cat sat on the mat",
                                            "max_new_tokens": 6})
    words = browser.find_elements(By.CSS_SELECTOR, "#answer-tokens .gen")
    prompt = browser.find_elements(By.CSS_SELECTOR, "#answer-prompt .tok")
    P = reply["prompt_length"]
    assert [w.text.strip() for w in prompt] == ["the", "cat", "sat", "on", "the", "mat"] and len(prompt) == P
    assert [w.text.strip() for w in words] == [t["text"].strip() for t in reply["tokens"][P:]]
    t = min(2, len(words) - 1)
    words[t].click()
    wait.until(lambda d: words[t].get_attribute("aria-pressed") == "true")
    row = reply["relevance"][t]
    every = prompt + words
    for k, colour in enumerate(_colours(every)):
        if k < P + t and abs(row[k]) > 0.05 * max(map(abs, row)):
            red, _, blue = (int(v) for v in colour[colour.index("(") + 1:].split(",")[:3])
            assert (red > blue) == (row[k] > 0), (k, colour, row[k])
        elif k >= P + t:
            assert colour == "rgba(0, 0, 0, 0)", (k, colour)     # itself and the later words: not coloured
    top = max(range(P + t), key=lambda k: row[k])
    assert reply["tokens"][top]["text"].strip() in browser.find_element(By.ID, "answer-detail").text
    words[t].send_keys(Keys.ARROW_LEFT)                          # the keyboard moves along the answer
    wait.until(lambda d: words[t - 1].get_attribute("aria-pressed") == "true")
    assert browser.switch_to.active_element == words[t - 1]
    assert not browser.find_element(By.ID, "error").text
    assert not _requests_elsewhere(browser, live_server)
    browser.find_element(By.ID, "prompt").clear()
    browser.find_element(By.ID, "prompt").send_keys(" ")
    assert not browser.find_element(By.ID, "generate").is_enabled()     # nothing to continue


def _generate(server: str, body: dict):
    import urllib.request
    request = urllib.request.Request(f"{server}/v1/generate", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.load(response)


def test_one_model_served(browser, one_model_server):
    """With one model the page needs no choice: pick a digit, see it explained, compare."""
    wait = WebDriverWait(browser, 60)
    _open(browser, one_model_server + "/")
    wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value") == "digits_cnn")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#model option")) == 1
    browser.find_element(By.ID, "file").send_keys(str(DEMO / "digits" / "test_7.png"))
    wait.until(lambda d: d.find_element(By.ID, "explained").text.startswith("class "))
    wait.until(lambda d: not d.find_element(By.ID, "progress").is_displayed())
    predicted = browser.find_element(By.CSS_SELECTOR, "#scores button").get_attribute("data-class")
    assert browser.find_element(By.ID, "explained").text == f"class {predicted}"
    _press(browser, wait, "compare")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid figure")) == 5)
    assert browser.find_element(By.ID, "comparison-title").text.endswith(f"explaining class {predicted}")
    assert not browser.find_element(By.ID, "error").text
    assert not _requests_elsewhere(browser, one_model_server)


def test_the_api_docs_render_offline(browser, live_server):
    """Swagger UI comes from this server: with the network cut /docs still lists the endpoints, and its
    "Try it out" explains an uploaded digit with the fields as they come."""
    wait = WebDriverWait(browser, 30)
    _open(browser, live_server + "/docs")
    try:
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")) >= 2)
    except TimeoutException:
        pass                                # the requests below say why
    assert not _requests_elsewhere(browser, live_server)
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert paths == {"/v1/models", "/v1/explain", "/v1/generate"}
    browser.find_element(By.CSS_SELECTOR, ".opblock-post .opblock-summary").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-post .try-out__btn"))
    browser.find_element(By.CSS_SELECTOR, ".opblock-post .try-out__btn").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-post input[type=file]"))
    upload = browser.find_element(By.CSS_SELECTOR, ".opblock-post input[type=file]")
    upload.send_keys(str(DEMO / "digits" / "test_4.png"))
    browser.find_element(By.CSS_SELECTOR, ".opblock-post .execute").click()
    status = (By.CSS_SELECTOR, ".opblock-post .live-responses-table tbody .response-col_status")
    wait.until(lambda d: d.find_elements(*status))
    reply = browser.find_element(By.CSS_SELECTOR, ".opblock-post .live-responses-table tbody .response-col_description")
    assert browser.find_element(*status).text == "200", reply.text
    assert '"target": 4' in reply.text
    assert not _requests_elsewhere(browser, live_server)
