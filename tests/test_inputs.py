"""What users hand the pipeline: bad files inside batches, arrays at other sample rates,
long files (progress and segments as they are decoded), and what a result records.

Real tiny.en weights, real speech; the shipped head where tags are read.
"""

from pathlib import Path

import av
import numpy as np
import pytest
import torch

import whisper_at
from whisper_at.audio import load_audio
from whisper_at.engines import WindowLocator, WindowPlacementError
from whisper_at.spans import clamp_times

EXAMPLE = Path(__file__).parent.parent / "examples" / "librivox_sense_and_sensibility.wav"


@pytest.fixture(scope="module")
def model():
    return whisper_at.load_model("tiny.en", device="cpu")


@pytest.fixture
def bad_files(tmp_path: Path) -> list[Path]:
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n")
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    return [text, empty, tmp_path / "missing.flac"]


def test_a_bad_file_in_tag_many_yields_a_failure_in_its_place(model, speech, bad_files):
    good = [clip.path for clip, _ in speech[:3]]
    inputs = [good[0], bad_files[0], good[1], bad_files[1], bad_files[2], good[2]]
    results = list(model.tag_many(inputs, at_time_res=2.0, batch_size=4))
    assert len(results) == len(inputs)
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["TaggingResult", "FailedInput", "TaggingResult"] + ["FailedInput"] * 2 + [
        "TaggingResult"
    ]
    for index in (1, 3, 4):
        failure = results[index]
        assert failure.index == index and failure.source == str(inputs[index])
        assert isinstance(failure.error, whisper_at.AudioError)
        assert str(failure).startswith(str(inputs[index]))
    for path, result in zip(good, (results[0], results[2], results[5]), strict=True):
        alone = model.tag(path, at_time_res=2.0)
        np.testing.assert_allclose(result.logits, alone.logits, atol=1e-4)


def test_a_bad_file_in_transcribe_many_yields_a_failure_in_its_place(model, speech, bad_files):
    good = [clip.path for clip, _ in speech[:2]]
    inputs = [bad_files[0], good[0], bad_files[2], good[1]]
    results = list(model.transcribe_many(inputs, at_time_res=2.0, batch_size=4))
    assert [isinstance(r, whisper_at.FailedInput) for r in results] == [True, False, True, False]
    alone = list(model.transcribe_many(good, at_time_res=2.0, batch_size=4))
    assert [results[1]["text"], results[3]["text"]] == [r["text"] for r in alone]
    assert "no such file" in str(results[2])


def test_a_single_bad_file_raises_the_audio_error(model, bad_files):
    with pytest.raises(whisper_at.AudioError, match="notes.wav"):
        model.tag(bad_files[0])
    with pytest.raises(whisper_at.AudioError, match="missing.flac"):
        model.transcribe(bad_files[2], batch_size=2)


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz samples at another rate, with FFmpeg's resampler."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(
        samples[None].astype(np.float32), format="flt", layout="mono"
    )
    frame.sample_rate = 16000
    out = [f.to_ndarray()[0] for f in [*resampler.resample(frame), *resampler.resample(None)]]
    return np.concatenate(out)


def test_arrays_at_other_sample_rates(model, speech):
    clip, audio = speech[1]
    at_8k = resample(audio, 8000)
    result = model.transcribe(at_8k, sample_rate=8000, temperature=0.0)
    assert result["duration"] == pytest.approx(len(at_8k) / 8000, abs=1e-3)
    assert result["text"].strip() == model.transcribe(audio, temperature=0.0)["text"].strip()
    tagging = model.tag(at_8k, sample_rate=8000, at_time_res=2.0)
    assert tagging.duration == pytest.approx(len(audio) / 16000, abs=1e-3)
    # without the rate, an 8 kHz array is (as documented) read as 16 kHz: half as long
    assert model.tag(at_8k, at_time_res=2.0).duration == pytest.approx(len(at_8k) / 16000)
    many = list(model.tag_many([at_8k], at_time_res=2.0, sample_rate=8000))
    np.testing.assert_allclose(many[0].logits, tagging.logits)


def test_segments_arrive_while_a_long_file_is_decoded(model, long_speech):
    passes_at_first_segment = []
    seen = []

    def on_segment(segment):
        passes_at_first_segment.append(model.tap.n_passes)
        seen.append(segment)

    model.tap.n_passes = 0
    result = model.transcribe(long_speech, temperature=0.0, on_segment=on_segment, progress=True)
    assert model.tap.n_passes >= 4  # 99 s: at least four 30 s windows
    assert passes_at_first_segment[0] < model.tap.n_passes  # before the last window ran
    assert [(s["id"], s["start"], s["end"], s["text"]) for s in seen] == [
        (s["id"], s["start"], s["end"], s["text"]) for s in result["segments"]
    ]


def test_segment_times_stay_within_the_audio(model, long_speech):
    duration = 65.0
    audio = long_speech[: int(duration * 16000)]
    result = model.transcribe(audio, word_timestamps=True, span_seconds=40.0)
    times = [
        t for s in result["segments"] for w in [s, *s["words"]] for t in (w["start"], w["end"])
    ]
    assert max(times) <= duration and min(times) >= 0.0
    overshoot = {
        "segments": [{"start": 88.0, "end": 91.88, "words": [{"start": 90.5, "end": 91.88}]}]
    }
    clamp_times(overshoot, 90.0)
    assert overshoot["segments"][0]["end"] == 90.0
    assert overshoot["segments"][0]["words"][0] == {"start": 90.0, "end": 90.0}


def test_results_record_what_made_them(model):
    result = model.transcribe(EXAMPLE)
    made_by = result["whisper_at"]
    assert made_by["version"] == whisper_at.__version__
    assert made_by["model"] == "tiny.en" and made_by["model_sha256"] == model.loaded.sha256
    assert made_by["engine"] == "ct2" and made_by["precision"] == str(model.precision)
    assert made_by["precision"].startswith("float32:")  # auto: exact float32 tags
    assert made_by["head"]["path"].endswith("tiny.en.tl_tr.safetensors")
    assert len(made_by["head"]["sha256"]) == 64
    tagging = model.tag(EXAMPLE)  # tags only: the same record, in its JSON fields too
    assert tagging.made_by == made_by
    assert tagging.to_result_fields()["whisper_at"] == made_by


def test_a_window_the_library_slices_differently_fails_loudly(model, speech):
    """If faster-whisper or openai-whisper changed how it slices or pads windows, the
    windows would match no place in the file: that must raise, not leave them untagged."""
    _, audio = speech[0]
    features = model.engine.model.feature_extractor(audio)
    locator = WindowLocator(torch.from_numpy(features).float(), features.shape[-1] - 1)
    listener = locator.listener(lambda *_: None, "faster-whisper (changed)")
    padded_otherwise = np.zeros((1, 80, 3000), dtype=np.float32)
    padded_otherwise[0, :, : features.shape[-1]] = features + 1e-3  # another log-mel
    model.tap.listener = listener
    try:
        with pytest.raises(WindowPlacementError, match="matches no place in the audio"):
            model.tap(torch.from_numpy(padded_otherwise))
    finally:
        model.tap.listener = None
        model.tap.forget()


def test_batch_size_is_checked(model):
    with pytest.raises(ValueError, match="batch_size must be an integer of at least 1"):
        next(model.tag_many([EXAMPLE], batch_size=0))
    with pytest.raises(ValueError, match="batch_size must be an integer of at least 1"):
        next(model.transcribe_many([EXAMPLE], batch_size=0))


def test_reading_an_8k_file_needs_no_rate(model, tmp_audio, speech):
    _, audio = speech[1]
    path = tmp_audio(resample(audio, 8000), 8000)
    assert model.tag(path).duration == pytest.approx(len(load_audio(path)) / 16000)


def test_the_progress_bar_reads_audio_seconds_per_second(model, capsys):
    """tqdm inverts a rate under 1 ("4.00s/s" meaning seconds per audio second); the bar
    always shows audio seconds per second. 50 ms of audio take longer than 50 ms to tag."""
    model.tag(np.zeros(800, dtype=np.float32) + 0.01, progress=True)
    last = capsys.readouterr().err.strip().split("\r")[-1]
    assert "0.1/0.1 s of audio" in last
    rate = float(last.rsplit(", ", 1)[1].removesuffix("s/s]"))
    assert 0 < rate < 1.0
