"""The playground page and /docs in a real browser: headless Debian Chromium driven by selenium.

A person's path: open /, pick a shapes image, type labels, press Run; the streamed caption
and the zero-shot ranking shown must be the pipelines' own answers, with no console errors;
then ask questions about the image (the conversation) and see the VQA pipeline's answers.
/docs must render Swagger UI from the server's own files (no CDN: these machines are offline).
Screenshots land in $MMDEPLOY_TEST_ARTIFACTS (default .test-artifacts/).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("selenium")

from mmdeploy.common.datasets import shapes  # noqa: E402
from mmdeploy.runtimes import load  # noqa: E402
from mmdeploy.runtimes.serve import create_app  # noqa: E402

from .test_serve import running  # noqa: E402

ARTIFACTS = Path(os.environ.get("MMDEPLOY_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / ".test-artifacts"))
LABELS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]


pytestmark = pytest.mark.chromium  # every test drives the browser


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    return browser, shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium-manager would try to download one
    d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def site(clip_bundle, shapes_bundle, vqa_shapes_bundle):
    app = create_app(
        {"clip": clip_bundle, "cap": shapes_bundle, "vqa": vqa_shapes_bundle},
        backend="onnxruntime",
        precision="fp32",
        threads=1,
    )
    with running(app) as (url, _):
        yield url


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_playground_shows_the_pipelines_caption_and_ranking(browser, site, clip_bundle, shapes_bundle, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    sample = shapes.generate("test", 3)[2]
    path = tmp_path / "shape.png"
    sample.image.save(path)
    want_caption = load(shapes_bundle, backend="onnxruntime", precision="fp32").caption([sample.image])[0]
    clip = load(clip_bundle, backend="onnxruntime", precision="fp32")
    want_rank = clip.classify(sample.image, LABELS)  # [(label, prob)], best first

    by_id = lambda tid: browser.find_element(By.CSS_SELECTOR, f'[data-testid="{tid}"]')  # noqa: E731
    browser.get(site + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "clip" in by_id("models-line").text and "cap" in by_id("models-line").text)
    by_id("file-input").send_keys(str(path))
    by_id("labels-input").send_keys(", ".join(LABELS))
    wait.until(lambda d: by_id("run-button").is_enabled())
    by_id("run-button").click()
    wait.until(lambda d: by_id("caption-meta").text.endswith("pieces") or "ms" in by_id("caption-meta").text)
    wait.until(lambda d: len(by_id("classify-output").find_elements(By.CLASS_NAME, "row")) == len(LABELS))
    wait.until(lambda d: by_id("run-button").is_enabled())  # every call finished

    assert by_id("caption-output").text == want_caption
    assert "cap · " in by_id("caption-meta").text and "onnxruntime/fp32" in by_id("caption-meta").text
    lines = by_id("classify-output").text.splitlines()
    assert [ln.rsplit(" ", 1)[0] for ln in lines] == [label for label, _ in want_rank]
    for ln, (_, p) in zip(lines, want_rank):
        assert abs(float(ln.rsplit(" ", 1)[1]) - p) < 1e-3, (ln, p)
    assert by_id("error-output").text == ""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "playground.png"))
    assert _console_errors(browser) == []


def test_playground_holds_a_conversation_about_the_image(browser, site, vqa_shapes_bundle, tmp_path):
    """Two questions about one image: each streamed answer is the VQA pipeline's own."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    sample = shapes.generate("test", 5)[4]
    path = tmp_path / "ask.png"
    sample.image.save(path)
    pipe = load(vqa_shapes_bundle, backend="onnxruntime", precision="fp32")
    questions = ["what color is the shape?", "which shape is in the picture?"]
    want = pipe.answer(sample.image, questions)

    by_id = lambda tid: browser.find_element(By.CSS_SELECTOR, f'[data-testid="{tid}"]')  # noqa: E731
    browser.get(site + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "vqa" in by_id("models-line").text)
    by_id("file-input").send_keys(str(path))
    for k, q in enumerate(questions):
        wait.until(lambda d: by_id("chat-send").is_enabled())
        by_id("chat-input").send_keys(q)
        by_id("chat-send").click()
        wait.until(
            lambda d: (
                "finish:" in by_id("chat-meta").text
                and len(d.find_elements(By.CSS_SELECTOR, '[data-testid="chat-answer"]')) == k + 1
            )
        )
    answers = [e.text for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="chat-answer"]')]
    assert answers == want
    assert want == [sample.color, sample.shape]  # the trained fixture knows this one
    assert "vqa · vqa · onnxruntime/fp32" in by_id("chat-meta").text
    assert by_id("error-output").text == ""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "playground-chat.png"))
    assert _console_errors(browser) == []


def test_playground_shows_server_errors_as_messages(browser, site, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    by_id = lambda tid: browser.find_element(By.CSS_SELECTOR, f'[data-testid="{tid}"]')  # noqa: E731
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))  # an image/png the server cannot decode
    browser.get(site + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "clip" in by_id("models-line").text)
    by_id("file-input").send_keys(str(bad))
    by_id("labels-input").send_keys("a red circle, a blue square")
    wait.until(lambda d: by_id("run-button").is_enabled())
    by_id("run-button").click()
    wait.until(lambda d: "400" in by_id("error-output").text and "caption" in by_id("error-output").text)
    assert "image" in by_id("error-output").text and "Traceback" not in by_id("error-output").text
    browser.get_log("browser")  # the failed fetches log 400s: expected here


def test_docs_render_offline(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(site + "/docs")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {e.text.replace("\u200b", "") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/embeddings", "/v1/classify", "/v1/caption", "/v1/chat/completions", "/v1/models"} <= paths
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "docs.png"))
    assert _console_errors(browser) == []
