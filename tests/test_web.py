"""The page at / in a real headless Chromium (Debian's chromium + chromium-driver, selenium).

Upload a real recording, wait for the streamed transcript and the timeline, click a segment
on the timeline (the player jumps there), download the captions; record from Chromium's
fake microphone (a real microphone cannot be used headless). A screenshot of the page is
saved under build/test-artifacts/ (the path is printed).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import whisper_at
from whisper_at.server import BackgroundServer, ServerConfig, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).parent.parent / "build" / "test-artifacts"

if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI") == "true":  # .ci/run installs them: missing is a failure there
        raise RuntimeError("chromium and chromedriver are missing; .ci/run installs them")
    pytest.skip(
        "no chromium/chromedriver (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (after the check above)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    temp = tmp_path_factory.mktemp("uploads")
    app = create_app(whisper_at.load_model("tiny.en"), ServerConfig(temp_dir=str(temp)))
    with BackgroundServer(app) as running:
        running.temp_dir = temp
        yield running


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, downloads):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1400",
        # a fake microphone (a beep) and no permission prompt: the recording path headless
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def speech_wav(long_speech, tmp_path_factory) -> Path:
    """25 s: 12 s of real speech (LibriVox), a C major chord struck three times (3 s), 10 s
    more speech: several segments, a music event and sound cue between two speech events."""
    import soundfile

    t = np.arange(3 * 16000) / 16000
    chord = sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) * np.exp(-(t % 1.0))
    between = (0.1 * chord).astype(np.float32)
    audio = np.concatenate(
        [long_speech[: 12 * 16000], between, long_speech[12 * 16000 : 22 * 16000]]
    )
    path = tmp_path_factory.mktemp("audio") / "reading.wav"
    soundfile.write(path, audio, 16000, subtype="PCM_16")
    return path


def wait_for(browser, condition, seconds: float = 120):
    return WebDriverWait(browser, seconds, poll_frequency=0.2).until(lambda _: condition())


def test_upload_transcript_timeline_click_download(browser, server, speech_wav, downloads):
    browser.get(server.url + "/")
    wait_for(browser, lambda: "tiny.en" in browser.find_element(By.ID, "model-info").text, 30)
    browser.find_element(By.ID, "at-time-res").clear()
    browser.find_element(By.ID, "at-time-res").send_keys("2")
    browser.find_element(By.ID, "file").send_keys(str(speech_wav))
    browser.find_element(By.ID, "run").click()
    wait_for(browser, lambda: browser.find_element(By.ID, "status").text.startswith("Done"))

    items = browser.find_elements(By.CSS_SELECTOR, "#transcript li")
    text = " ".join(item.text for item in items)
    assert len(items) >= 2 and "Dashwood" in text, text
    curves = browser.find_elements(By.CSS_SELECTOR, "#timeline polyline.curve")
    legend = [span.text for span in browser.find_elements(By.CSS_SELECTOR, "#legend span")]
    assert len(curves) == len(legend) == 8 and "Speech" in legend
    bars = browser.find_elements(By.CSS_SELECTOR, "#timeline rect.segment")
    assert len(bars) == len(items)

    # a click on the second segment's bar moves the player to where it starts
    start = float(bars[1].get_attribute("data-start"))
    assert start > 1
    bars[1].click()
    position = wait_for(
        browser,
        lambda: (
            (t := browser.execute_script("return document.getElementById('audio').currentTime"))
            >= start - 0.05
            and t
        ),
        10,
    )
    assert position == pytest.approx(start, abs=0.5)
    # ... a click on a sound event's bar too (its class is named on the event row)
    events = browser.find_elements(By.CSS_SELECTOR, "#timeline rect.event")
    assert events, "no sound events drawn"
    later = max(events, key=lambda bar: float(bar.get_attribute("data-start")))
    event_start = float(later.get_attribute("data-start"))
    assert event_start > 0
    browser.execute_script("document.getElementById('audio').currentTime = 0")
    later.click()
    wait_for(
        browser,
        lambda: (
            abs(
                browser.execute_script("return document.getElementById('audio').currentTime")
                - event_start
            )
            < 0.5
        ),
        10,
    )
    # ... and a click on a transcript line does the same
    items[0].click()
    wait_for(
        browser,
        lambda: (
            browser.execute_script("return document.getElementById('audio').currentTime") < start
        ),
        10,
    )

    # the downloads are the text the API gives for the same file and options (the page asks
    # for the caption cues, which turns word timestamps on, as `whisper-at --captions` does)
    words = {"timestamp_granularities[]": "word"}
    for link, name, form in (
        ("dl-srt", "reading.srt", {"response_format": "srt", **words}),
        ("dl-vtt", "reading.vtt", {"response_format": "vtt", **words}),
        ("dl-srt-sounds", "reading.captions.srt", {"response_format": "srt", "captions": "true"}),
        ("dl-vtt-sounds", "reading.captions.vtt", {"response_format": "vtt", "captions": "true"}),
    ):
        browser.find_element(By.ID, link).click()
        path = downloads / name
        wait_for(browser, path.exists, 10)
        with open(speech_wav, "rb") as f:
            api = httpx.post(
                server.url + "/v1/audio/transcriptions",
                files={"file": f},
                data={**form, "at_time_res": "2"},
                timeout=120,
            )
        assert path.read_text(encoding="utf-8") == api.text, name
    captions = (downloads / "reading.srt").read_text()
    assert captions.startswith("1\n00:00:00,000 --> ") and "Dashwood" in captions
    assert captions.count(" --> ") == len(items)
    assert "[" in (downloads / "reading.captions.srt").read_text()  # sound cues

    browser.execute_script("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web-page.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot of the page: {shot}")
    assert shot.stat().st_size > 10_000
    time.sleep(0.5)
    assert not any(server.temp_dir.iterdir())


def test_microphone_recording(browser, server):
    """Chromium's fake device stands in for the microphone (a real one cannot be tested)."""
    browser.get(server.url + "/")
    wait_for(browser, lambda: "tiny.en" in browser.find_element(By.ID, "model-info").text, 30)
    record = browser.find_element(By.ID, "record")
    record.click()
    wait_for(browser, lambda: record.text == "Stop recording", 10)
    time.sleep(3)
    record.click()
    wait_for(browser, lambda: "recording." in browser.find_element(By.ID, "chosen").text, 10)
    browser.find_element(By.ID, "run").click()
    wait_for(browser, lambda: browser.find_element(By.ID, "status").text.startswith("Done"))
    status = browser.find_element(By.ID, "status").text
    duration = float(status.split(" s,")[0].split()[-1])
    assert 2.0 <= duration <= 4.5, status
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline polyline.curve")


def test_api_key_field(browser, tmp_path):
    """A server with a key: the page asks for it, shows the 401, then works with it."""
    key = "sk-page-test-51d2"
    app = create_app(whisper_at.load_model("tiny.en"), ServerConfig(api_key=key))
    with BackgroundServer(app) as keyed:
        browser.get(keyed.url + "/")
        field = browser.find_element(By.ID, "api-key")
        wait_for(browser, field.is_displayed, 30)
        example = Path(__file__).parent.parent / "examples" / "librivox_sense_and_sensibility.wav"
        browser.find_element(By.ID, "file").send_keys(str(example))
        browser.find_element(By.ID, "run").click()
        status = browser.find_element(By.ID, "status")
        wait_for(browser, lambda: status.text.startswith("Error"), 30)
        assert "API key" in status.text
        field.send_keys(key)
        browser.find_element(By.ID, "run").click()
        wait_for(browser, lambda: status.text.startswith("Done"))
        assert "Dashwood" in browser.find_element(By.ID, "transcript").text
