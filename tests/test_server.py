"""`whisper-at serve` over a real socket, driven by the official `openai` client and httpx."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

import whisper_at
from whisper_at.audio import AudioError, audio_duration
from whisper_at.captions import result_cues, srt_text, vtt_text
from whisper_at.cli import main as cli_main
from whisper_at.server import BackgroundServer, ServerConfig, create_app
from whisper_at.tagging import TrackOptions

EXAMPLE = Path(__file__).parent.parent / "examples" / "librivox_sense_and_sensibility.wav"
KEY = "sk-test-4f9c2e7d1b"  # a key that must never show up in a log


@pytest.fixture(scope="module")
def model() -> whisper_at.WhisperAT:
    return whisper_at.load_model("tiny.en")


@pytest.fixture(scope="module")
def reference(model) -> dict:
    """What the library itself gives for the example: the server must answer the same."""
    return model.transcribe(str(EXAMPLE), at_time_res=2.0, track_options=TrackOptions())


@pytest.fixture(scope="module")
def reference_words(model) -> dict:
    """The same with word timestamps (what captions=true and word granularity use)."""
    return model.transcribe(
        str(EXAMPLE), at_time_res=2.0, word_timestamps=True, track_options=TrackOptions()
    )


@pytest.fixture(scope="module")
def temp_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def server(model, temp_dir):
    app = create_app(model, ServerConfig(api_key=KEY, temp_dir=str(temp_dir)))
    with BackgroundServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def long_wav(long_speech, tmp_path_factory) -> Path:
    """99 s of real speech as a 16-bit WAV (3.2 MB): long enough to still be running."""
    import soundfile

    path = tmp_path_factory.mktemp("long") / "long_speech.wav"
    soundfile.write(path, long_speech, 16000, subtype="PCM_16")
    return path


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def wait_idle(url: str, folder: Path, seconds: float = 60.0) -> None:
    """Every slot freed and every upload folder gone, within ``seconds``."""
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        if httpx.get(url + "/health").json()["jobs"] == 0 and not any(folder.iterdir()):
            return
        time.sleep(0.2)
    raise AssertionError(
        f"still busy: {httpx.get(url + '/health').json()}, {list(folder.iterdir())}"
    )


def test_json_and_text(client, reference, server, temp_dir):
    with open(EXAMPLE, "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert result.text == reference["text"]
    assert "Dashwood" in result.text
    with open(EXAMPLE, "rb") as f:
        text = client.audio.transcriptions.create(model="tiny.en", file=f, response_format="text")
    assert text == reference["text"]
    wait_idle(server.url, temp_dir)


def test_srt_and_vtt(client, reference, reference_words):
    with open(EXAMPLE, "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    (segment,) = reference["segments"]  # the example is one segment: 0.0 -> 7.0
    assert srt == f"1\n00:00:00,000 --> 00:00:07,000\n{segment['text'].strip()}\n\n"
    with open(EXAMPLE, "rb") as f:
        vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    assert vtt == f"WEBVTT\n\n00:00.000 --> 00:07.000\n{segment['text'].strip()}\n\n"
    # captions=true: captions with sound cues, as `whisper-at --captions` writes them
    for response_format, write, plain in (("srt", srt_text, srt), ("vtt", vtt_text, vtt)):
        with open(EXAMPLE, "rb") as f:
            captions = client.audio.transcriptions.create(
                model="whisper-1",
                file=f,
                response_format=response_format,
                extra_body={"captions": "true", "at_time_res": "2"},
            )
        assert captions == write(result_cues(reference_words))
        assert captions != plain  # caption layout: lines of at most 42 characters
        assert "[" not in captions  # plain reading: no cue (build 4's head cued [percussion])


def test_verbose_json_with_words_and_tags(client, model, reference_words):
    with open(EXAMPLE, "rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            extra_body={"at_time_res": "2"},
        )
    assert result.language == "english"
    assert result.text == reference_words["text"]
    assert result.duration == pytest.approx(7.1, abs=0.01)
    assert [s.text for s in result.segments] == [s["text"] for s in reference_words["segments"]]
    words = [w.word.strip(" .,") for w in result.words]
    assert "Dashwood" in words and words[-1] == "them"
    assert all(w.start <= w.end for w in result.words)
    # the sound fields, beyond OpenAI's: tag windows of 2 s, per-segment tags, class curves
    extra = result.model_extra
    assert extra["at_time_res"] == 2.0
    assert [(w["start"], w["end"]) for w in extra["tags"]] == [
        (0.0, 2.0),
        (2.0, 4.0),
        (4.0, 6.0),
        (6.0, 7.1),
    ]
    tagging = model.tag(str(EXAMPLE), at_time_res=2.0)
    expected = tagging.windows(top_k=5)
    assert [[t["label"] for t in w["tags"]] for w in extra["tags"]] == [
        [t.label for t in w.tags] for w in expected
    ]
    segment_tags = result.segments[0].model_extra["audio_tags"]
    assert segment_tags == reference_words["segments"][0]["audio_tags"]
    assert extra["sound_events"] == reference_words["sound_events"]  # onsets/offsets, 0.4 s grid
    assert {"label": "Speech", "index": 0, "start": 0.0, "end": 7.1} in [
        {k: e[k] for k in ("label", "index", "start", "end")} for e in extra["sound_events"]
    ]
    assert extra["caption_cues"] == [asdict(cue) for cue in result_cues(reference_words)]
    dialogue = " ".join(cue["dialogue"] for cue in extra["caption_cues"])
    assert dialogue.split() == result.text.split()  # every word, in cues of short lines
    curves = extra["class_curves"]
    assert len(curves) == 8 and all(len(c["probabilities"]) == 4 for c in curves)
    assert curves[0]["label"] in ("Speech", "Narration, monologue")
    peaks = [max(c["probabilities"]) for c in curves]
    assert peaks == sorted(peaks, reverse=True)


def test_streaming_segments(client, server, temp_dir, long_wav, model):
    with open(long_wav, "rb") as f:
        stream = client.audio.transcriptions.create(model="whisper-1", file=f, stream=True)
        events, arrived = [], []
        for event in stream:
            events.append(event)
            arrived.append(time.monotonic())
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    (done,) = [e for e in events if e.type == "transcript.text.done"]
    assert events[-1] is done and len(deltas) > 5
    assert "".join(e.delta for e in deltas) == done.text
    # the segments come as they are decoded, not all at the end
    assert arrived[-1] - arrived[0] > 1.0
    # each delta carries its segment, on the recording's time line, in order
    starts = [e.model_extra["segment"]["start"] for e in deltas]
    assert starts == sorted(starts) and starts[-1] > 80
    assert done.model_extra["segments"][-1]["end"] <= 99.01
    assert done.model_extra["tags"]
    wait_idle(server.url, temp_dir)


def test_tags_endpoint(server, model):
    with open(EXAMPLE, "rb") as f:
        response = httpx.post(
            server.url + "/v1/audio/tags",
            files={"file": ("talk.wav", f)},
            data={"at_time_res": "1.2", "top_k": "3", "threshold": "0.3"},
            headers=auth(),
        )
    assert response.status_code == 200, response.text
    body = response.json()
    tagging = model.tag(str(EXAMPLE), at_time_res=1.2, track_options=TrackOptions())
    assert body["at_time_res"] == 1.2 and body["duration"] == pytest.approx(7.1, abs=0.01)
    assert len(body["tags"]) == math.ceil(7.1 / 1.2)
    for window, expected in zip(body["tags"], tagging.windows(top_k=3, threshold=0.3), strict=True):
        assert [t["label"] for t in window["tags"]] == [t.label for t in expected.tags]
        for got, want in zip(window["tags"], expected.tags, strict=True):
            assert got["probability"] == pytest.approx(want.probability, abs=1e-6)
    assert body["sound_events"] == [asdict(e) for e in tagging.events()]
    assert body["sound_events"] and "event_track" not in body
    assert body["whisper_at"]["model"] == "tiny.en"


def test_models_health_and_page(server):
    models = httpx.get(server.url + "/v1/models", headers=auth()).json()
    assert [m["id"] for m in models["data"]] == ["tiny.en", "whisper-1"]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny.en"
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<title>whisper-at</title>" in page.text
    for asset in ("app.js", "style.css"):
        assert httpx.get(f"{server.url}/{asset}").status_code == 200
    missing = httpx.get(server.url + "/v1/nothing", headers=auth())
    assert missing.status_code == 404 and "error" in missing.json()


def test_api_key(server, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as failure:
        with open(EXAMPLE, "rb") as f:
            wrong.audio.transcriptions.create(model="whisper-1", file=f)
    assert failure.value.body["code"] == "invalid_api_key"
    for path in ("/v1/models",):
        assert httpx.get(server.url + path).status_code == 401
    response = httpx.post(server.url + "/v1/audio/tags", files={"file": ("a.wav", b"x")})
    assert response.status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # no key needed
    assert KEY not in caplog.text


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.wav", b"these are notes, not audio\n" * 20),
        ("empty.mp3", b""),
        ("broken.flac", b"fLaC\x00\x00\x00\x22" + bytes(range(256)) * 4),
    ],
)
def test_bad_uploads_get_the_cli_message(
    server, client, temp_dir, tmp_path, monkeypatch, name, content, capsys
):
    monkeypatch.chdir(tmp_path)
    Path(name).write_bytes(content)
    with pytest.raises(AudioError) as raised:
        audio_duration(name)
    with pytest.raises(openai.BadRequestError) as failure:
        with open(name, "rb") as f:
            client.audio.transcriptions.create(model="whisper-1", file=f)
    assert failure.value.status_code == 400
    assert failure.value.body["message"] == str(raised.value)
    assert failure.value.body["param"] == "file"
    # ... which is what `whisper-at FILE` prints
    assert cli_main([name, "--output-dir", str(tmp_path / "out")]) == 1
    assert f"whisper-at: error: {raised.value}" in capsys.readouterr().err
    wait_idle(server.url, temp_dir)


def test_bad_fields(server):
    def post(data: dict) -> httpx.Response:
        with open(EXAMPLE, "rb") as f:
            return httpx.post(
                server.url + "/v1/audio/transcriptions",
                files={"file": ("a.wav", f)},
                data=data,
                headers=auth(),
            )

    cases = {
        "response_format": ({"response_format": "xml"}, 400),
        "model": ({"model": "large-v9"}, 404),
        "at_time_res": ({"at_time_res": "0.5"}, 400),
        "temperature": ({"temperature": "hot"}, 400),
        "language": ({"language": "klingon"}, 400),
        "timestamp_granularities": ({"timestamp_granularities[]": "char"}, 400),
        "captions": ({"captions": "maybe"}, 400),
    }
    for param, (data, status) in cases.items():
        response = post(data)
        assert response.status_code == status, (param, response.text)
        error = response.json()["error"]
        assert error["param"] == param and error["message"]
    no_file = httpx.post(
        server.url + "/v1/audio/transcriptions", data={"model": "whisper-1"}, headers=auth()
    )
    assert no_file.status_code == 400


def test_client_leaving_frees_the_slot(server, temp_dir, long_wav):
    # mid-stream: read one segment, then hang up
    with open(long_wav, "rb") as f, httpx.Client(timeout=60) as http:
        with http.stream(
            "POST",
            server.url + "/v1/audio/transcriptions",
            files={"file": ("long.wav", f)},
            data={"stream": "true"},
            headers=auth(),
        ) as response:
            first = next(line for line in response.iter_lines() if line.startswith("data:"))
            assert json.loads(first[5:])["type"] == "transcript.text.delta"
    started = time.monotonic()
    wait_idle(server.url, temp_dir, seconds=30)
    stopped_after = time.monotonic() - started
    # while waiting for a plain answer: the client gives up after 1 s
    with open(long_wav, "rb") as f, pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.url + "/v1/audio/transcriptions",
            files={"file": ("long.wav", f)},
            headers=auth(),
            timeout=httpx.Timeout(30, read=1.0),
        )
    wait_idle(server.url, temp_dir, seconds=30)
    # mid-upload: half of a declared body, then the socket closes
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=b0undary\r\n"
            b"Content-Length: 3000000\r\n\r\n"
            b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n" + long_wav.read_bytes()[:1_000_000]
        )
        time.sleep(0.5)
    wait_idle(server.url, temp_dir, seconds=30)
    assert stopped_after < 30


@pytest.fixture(scope="module")
def limited(temp_dir):
    """A server with small limits (its own model: two servers must not share one)."""
    config = ServerConfig(
        max_upload_bytes=8 * 2**20,
        max_duration=120.0,
        max_queue=0,
        timeout=3.0,
        temp_dir=str(temp_dir),
        retry_after=7,
    )
    with BackgroundServer(create_app(whisper_at.load_model("tiny.en"), config)) as running:
        yield running


def test_upload_and_duration_limits(limited, temp_dir, tmp_path, long_speech):
    import soundfile

    big = tmp_path / "big.wav"
    soundfile.write(big, np.zeros(9 * 2**20 // 2), 16000, subtype="PCM_16")  # 9 MiB
    with open(big, "rb") as f:
        response = httpx.post(limited.url + "/v1/audio/transcriptions", files={"file": f})
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "the upload is larger than the limit of 8 MiB"

    # a chunked upload (no Content-Length) is cut off when it passes the limit
    def chunks():
        with open(big, "rb") as f:
            yield b'--xx\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
            while block := f.read(65536):
                yield block

    response = httpx.post(
        limited.url + "/v1/audio/transcriptions",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=xx"},
    )
    assert response.status_code == 413
    long = tmp_path / "long.wav"
    soundfile.write(long, np.tile(long_speech, 2), 16000, subtype="PCM_16")  # 6 MiB, 198 s
    with open(long, "rb") as f:
        response = httpx.post(limited.url + "/v1/audio/tags", files={"file": f})
    assert response.status_code == 413
    seconds = 2 * len(long_speech) / 16000
    assert response.json()["error"]["message"] == (
        f"long.wav: {seconds:.1f} s of audio is longer than the limit of 120 s"
    )
    wait_idle(limited.url, temp_dir)


def test_busy_and_timeout(limited, temp_dir, long_wav):
    path = long_wav  # 99 s: more than 3 s of work even for a fast machine
    answers: list[httpx.Response] = []

    def first() -> None:
        with open(path, "rb") as f:
            answers.append(
                httpx.post(limited.url + "/v1/audio/transcriptions", files={"file": f}, timeout=60)
            )

    thread = threading.Thread(target=first)
    thread.start()
    while httpx.get(limited.url + "/health").json()["jobs"] == 0:
        time.sleep(0.05)
    with open(EXAMPLE, "rb") as f:
        busy = httpx.post(limited.url + "/v1/audio/transcriptions", files={"file": f})
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "7"
    assert busy.json()["error"]["code"] == "busy"
    thread.join()
    (timed_out,) = answers
    assert timed_out.status_code == 504, timed_out.text
    assert timed_out.json()["error"]["message"] == "the request took longer than the limit of 3 s"
    wait_idle(limited.url, temp_dir, seconds=30)
    with open(EXAMPLE, "rb") as f:  # and it still answers (tags: quick, well within 3 s)
        after = httpx.post(limited.url + "/v1/audio/tags", files={"file": f}, timeout=60)
    assert after.status_code == 200
    assert "Speech" in [t["label"] for t in after.json()["tags"][0]["tags"]]


def test_serve_usage_errors_exit_2(capsys):
    for argv in (["--max-queue", "-1"], ["--timeout", "0"], ["--port", "70000"]):
        with pytest.raises(SystemExit) as exit_:
            cli_main(["serve", *argv])
        assert exit_.value.code == 2
        assert re.search(r"whisper-at serve: error: --", capsys.readouterr().err)


def test_load_with_faults(tmp_path):
    """benchmarks/serve_load.py, small: concurrent clients with faults mixed in."""
    root = Path(__file__).parent.parent
    out = tmp_path / "load.json"
    command = [sys.executable, str(root / "benchmarks" / "serve_load.py"), "--faults"]
    command += ["--clients", "3", "--requests", "6", "--max-queue", "4", "--max-seconds", "300"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(command + ["--json", str(out)], env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    summary = json.loads(out.read_text())
    assert summary["ok"] and summary["lost"] == 0 and summary["wrong"] == 0
    assert summary["answered"] + summary["busy"] == 6 and summary["answered"] >= 1
    assert set(summary["faults"]) == {
        "disconnect mid-upload",
        "disconnect while waiting",
        "oversized upload",
        "corrupt upload",
    }
    assert summary["faults"]["oversized upload"] == {"413": 1}
    assert summary["idle_after"] and summary["temp_empty_after"] and summary["answers_after"]
