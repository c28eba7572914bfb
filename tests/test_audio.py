"""whisper_at.audio: decoding, resampling, mixing, streaming and error reporting."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from whisper_at.audio import SAMPLE_RATE, AudioError, audio_duration, load_audio, stream_audio

LOSSLESS = [".wav", ".flac"]
LOSSY = [".mp3", ".ogg", ".m4a"]


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(signal: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.argmax(spectrum)) * SAMPLE_RATE / len(signal)


def stereo_sine(rate: int = 44100, seconds: float = 3.0) -> np.ndarray:
    """1 kHz, left at 0.5 and right at 0.25: the mono mean has amplitude 0.375."""
    left = sine(1000, seconds, rate)
    return np.stack([left, left / 2])


@pytest.mark.parametrize("suffix", LOSSLESS + LOSSY)
def test_file_resampled_and_mixed(tmp_audio, suffix: str) -> None:
    path = tmp_audio(stereo_sine(), 44100, suffix)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # Lossless: exact length; lossy codecs may keep up to ~20 ms of encoder padding.
    assert abs(audio.size - 3 * SAMPLE_RATE) <= (1 if suffix in LOSSLESS else 320)
    assert abs(peak_hz(audio) - 1000) < 1
    middle = audio[SAMPLE_RATE : 2 * SAMPLE_RATE]
    assert np.abs(middle).max() == pytest.approx(0.375, abs=0.005 if suffix in LOSSLESS else 0.04)
    assert audio_duration(path) == pytest.approx(3.0, abs=0.05)


@pytest.mark.parametrize("suffix", LOSSLESS + LOSSY)
def test_stream_chunks_concatenate_to_load(tmp_audio, suffix: str) -> None:
    path = tmp_audio(stereo_sine(seconds=2.3), 44100, suffix)
    chunks = list(stream_audio(path, chunk_samples=7000))
    assert all(chunk.size == 7000 for chunk in chunks[:-1]) and 0 < chunks[-1].size <= 7000
    np.testing.assert_array_equal(np.concatenate(chunks), load_audio(path))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_length_is_exact(rate: int) -> None:
    samples = 2 * rate + 123
    audio = load_audio(sine(440, samples / rate, rate), sample_rate=rate)
    assert abs(audio.size - samples * SAMPLE_RATE / rate) <= 1
    assert abs(peak_hz(audio) - 440) < 1


def test_array_conventions() -> None:
    mono = sine(1000, 0.5, SAMPLE_RATE)
    both = np.stack([mono, np.zeros_like(mono)])
    np.testing.assert_array_equal(load_audio(mono), mono)
    np.testing.assert_allclose(load_audio(both), mono / 2, atol=1e-7)
    np.testing.assert_array_equal(load_audio(both.T), load_audio(both))  # channels-last
    np.testing.assert_array_equal(load_audio(torch.from_numpy(both)), load_audio(both))
    np.testing.assert_allclose(load_audio(torch.from_numpy(mono).half()), mono, atol=1e-3)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        (np.array([-32768, 0, 16384], np.int16), [-1.0, 0.0, 0.5]),
        (np.array([-(2**31), 2**30], np.int32), [-1.0, 0.5]),
        (np.array([0, 128, 192], np.uint8), [-1.0, 0.0, 0.5]),
        (np.array([-1.5, 0.25, 2.0]), [-1.0, 0.25, 1.0]),  # clipped to [-1, 1]
    ],
)
def test_dtypes_normalized(samples: np.ndarray, expected: list[float]) -> None:
    audio = load_audio(samples)
    assert audio.dtype == np.float32
    np.testing.assert_array_equal(audio, np.array(expected, np.float32))


def test_array_resampled_and_streamed() -> None:
    signal = stereo_sine(rate=22050, seconds=4.0).T  # channels-last
    audio = load_audio(signal, sample_rate=22050)
    assert audio.size == 4 * SAMPLE_RATE and abs(peak_hz(audio) - 1000) < 1
    chunks = list(stream_audio(signal, chunk_samples=SAMPLE_RATE, sample_rate=22050))
    assert [chunk.size for chunk in chunks] == [SAMPLE_RATE] * 4
    np.testing.assert_array_equal(np.concatenate(chunks), audio)
    assert audio_duration(signal, sample_rate=22050) == pytest.approx(4.0)


def test_video_file_uses_first_audio_stream(tmp_path: Path) -> None:
    path = tmp_path / "clip.mkv"
    write_video(path, audio=sine(1000, 2.0, 22050))
    audio = load_audio(path)
    assert abs(audio.size - 2 * SAMPLE_RATE) <= 1 and abs(peak_hz(audio) - 1000) < 1


def test_headerless_g722_needs_format(tmp_path: Path) -> None:
    path = tmp_path / "prompt.raw"
    with av.open(str(path), "w", format="g722") as container:
        stream = container.add_stream("g722", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(sine(1000, 1.0, SAMPLE_RATE)[None], "flt", "mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    audio = load_audio(path, format="g722")
    assert abs(audio.size - SAMPLE_RATE) <= 32 and abs(peak_hz(audio) - 1000) < 2
    assert audio_duration(path, format="g722") == pytest.approx(1.0, abs=0.01)
    with pytest.raises(AudioError, match="not an audio file FFmpeg can decode"):
        load_audio(path)


def test_long_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    path, minutes, rate = tmp_path / "long.wav", 20, 22050
    with sf.SoundFile(path, "w", rate, 1, "PCM_16") as out:
        minute = sine(440, 60, rate, amplitude=0.1)
        for _ in range(minutes):
            out.write(minute)
    chunk = 30 * SAMPLE_RATE
    tracemalloc.start()
    try:
        total = sum(piece.size for piece in stream_audio(path, chunk_samples=chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == minutes * 60 * SAMPLE_RATE
    chunk_bytes = chunk * 4
    assert peak < 5 * chunk_bytes  # the whole signal would be 40 chunks


def test_truncated_mp3_decodes_what_it_can(tmp_audio, tmp_path: Path, caplog) -> None:
    whole = tmp_audio(sine(1000, 4.0, 44100), 44100, ".mp3").read_bytes()
    half = tmp_path / "half.mp3"
    half.write_bytes(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING, logger="whisper_at"):
        audio = load_audio(half)
    assert 1.5 * SAMPLE_RATE < audio.size < 2.5 * SAMPLE_RATE
    assert "truncated" in caplog.text


def write_video(path: Path, audio: np.ndarray | None = None, rate: int = 22050) -> None:
    """A tiny black MPEG-4 video, with a mono FLAC audio track when ``audio`` is given."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        packets = []
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            packets += video.encode(frame)
        packets += video.encode(None)
        if audio is not None:
            sound = container.add_stream("flac", rate=rate, layout="mono")
            frame = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, 0
            packets += [*sound.encode(frame), *sound.encode(None)]
        for packet in packets:
            container.mux(packet)


def make_bad_file(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / {"directory": "folder", "video only": "video.mp4"}.get(kind, "input.wav")
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.touch()
    elif kind == "text":
        path = path.with_suffix(".txt")
        path.write_text("not audio at all\n" * 50)
    elif kind == "png":
        path = path.with_suffix(".png")
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    elif kind == "garbage mp3":
        path = path.with_suffix(".mp3")
        path.write_bytes(np.random.default_rng(0).bytes(20000))
    elif kind == "zero samples":
        sf.write(path, np.zeros(0, np.float32), SAMPLE_RATE)
    elif kind == "video only":
        write_video(path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("empty", "is empty"),
        ("text", "not an audio file FFmpeg can decode"),
        ("png", "not an audio file FFmpeg can decode"),
        ("garbage mp3", "not an audio file FFmpeg can decode"),
        ("zero samples", "contains no audio"),
        ("video only", "no audio stream"),
    ],
)
def test_bad_files(kind: str, message: str, tmp_path: Path) -> None:
    path = make_bad_file(kind, tmp_path)
    with pytest.raises(AudioError, match=message) as raised:
        load_audio(path)
    assert str(path) in str(raised.value)
    with pytest.raises(AudioError, match=message):
        b"".join(chunk.tobytes() for chunk in stream_audio(path))


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros(0, np.float32), "is empty"),
        (np.zeros((2, 0), np.float32), "is empty"),
        (np.array([0.0, np.nan]), "NaN or infinite"),
        (np.array([0.0, np.inf], np.float32), "NaN or infinite"),
        (np.zeros((2, 3, 4), np.float32), "must be 1-D"),
        (np.array(["a", "b"]), "integers or floats"),
    ],
)
def test_bad_arrays(samples: np.ndarray, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        load_audio(samples)


def test_bad_arguments(tmp_audio) -> None:
    path = tmp_audio(sine(1000, 0.1, SAMPLE_RATE), SAMPLE_RATE)
    with pytest.raises(AudioError, match="sample_rate applies to arrays only"):
        load_audio(path, sample_rate=44100)
    with pytest.raises(AudioError, match="no demuxer"):
        load_audio(path, format="no-such-format")
    with pytest.raises(AudioError, match="sample_rate must be positive"):
        load_audio(np.zeros(10, np.float32), sample_rate=0)
    with pytest.raises(AudioError, match="path, numpy array or torch tensor"):
        load_audio([0.0, 0.1])  # type: ignore[arg-type]
