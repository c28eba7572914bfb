"""Batched transcription: many recordings' 30 s chunks decoded together (ct2 engine).

Real tiny.en weights and real speech; the head is random (mechanics, not tag quality).
"""

import logging

import numpy as np
import pytest
from faster_whisper import BatchedInferencePipeline, WhisperModel
from helpers import random_head

import whisper_at
from whisper_at.engines import EngineError
from whisper_at.spans import window_chunks

TAG_TOLERANCE = 1e-4  # faster-whisper's log-mel against openai-whisper's (see test_ct2_engine)


@pytest.fixture(scope="module")
def model():
    return whisper_at.load_model(
        "tiny.en", device="cpu", head=random_head(), engine="ct2", precision="float32"
    )


@pytest.fixture(scope="module")
def batched_faster(model):
    """Plain faster-whisper's batched pipeline on the original CTranslate2 folder."""
    faster = WhisperModel(str(model.loaded.ct2_dir), device="cpu", compute_type="default")
    return BatchedInferencePipeline(faster)


def test_many_recordings_equal_faster_whisper_batched_one_by_one(model, batched_faster, speech):
    audios = [audio for _, audio in speech]
    results = list(model.transcribe_many(audios, batch_size=4, at_time_res=2.0))
    assert len(results) == len(audios)
    for (clip, audio), result in zip(speech, results, strict=True):
        seconds = len(audio) / 16000
        segments, _ = batched_faster.transcribe(
            audio, clip_timestamps=[{"start": 0.0, "end": seconds}], batch_size=4, language="en"
        )
        reference = [(s.start, min(s.end, seconds), s.text) for s in segments]  # kept in the audio
        assert [(s["start"], s["end"], s["text"]) for s in result["segments"]] == reference, clip.id
        assert result["language"] == "en"
        # every recording is under 30 s: one window, the tags of tags-only
        tags_only = model.tag(audio, at_time_res=2.0)
        difference = (result["audio_tag"] - tags_only.logits).abs().max().item()
        assert difference < TAG_TOLERANCE, (clip.id, difference)
        assert result["segments"][0]["audio_tags"]


def test_groups_and_batch_sizes_do_not_change_results(model, speech):
    audios = [audio for _, audio in speech[:5]]
    one_group = list(model.transcribe_many(audios, batch_size=8))
    # a group holds about 15 s here: recordings are decoded in several engine calls
    small = list(model.transcribe_many(iter(audios), batch_size=1, group_seconds=15.0))
    assert [r["text"] for r in small] == [r["text"] for r in one_group]
    for a, b in zip(one_group, small, strict=True):
        np.testing.assert_allclose(a["audio_tag"], b["audio_tag"], atol=1e-3)


def test_long_recording_in_batched_chunks(model, long_speech, caplog):
    duration = len(long_speech) / 16000
    chunks = window_chunks(long_speech)
    assert len(chunks) == 4 and chunks[0][0] == 0 and chunks[-1][1] == len(long_speech)
    assert all(b - a <= 30 * 16000 and a % 320 == 0 for a, b in chunks)
    assert all(chunks[i][1] == chunks[i + 1][0] for i in range(len(chunks) - 1))
    with caplog.at_level(logging.WARNING, logger="whisper_at"):
        result = model.transcribe(long_speech, at_time_res=10.0, batch_size=4)
    assert not [r for r in caplog.records if "gap" in r.getMessage()]
    assert result["audio_tag"].shape == (10, 527)
    starts = [s["start"] for s in result["segments"]]
    assert len(starts) == len(chunks)  # faster-whisper's batched default: a segment per chunk
    assert starts == sorted(starts) and result["segments"][-1]["end"] <= duration + 0.5
    assert [s["seek"] for s in result["segments"]] == [a // 160 for a, _ in chunks]
    sequential = model.transcribe(long_speech, temperature=0.0)
    assert result["text"].split()[:12] == sequential["text"].split()[:12]
    # the same recording again, spans of 40 s: the chunks, and so the tags, move, the
    # text stays close
    spans = model.transcribe(long_speech, batch_size=4, span_seconds=40.0)
    assert spans["audio_tag"].shape == (10, 527)
    assert spans["segments"][-1]["end"] <= duration + 0.5


def test_batched_word_timestamps_are_on_the_recordings_time_line(model, speech):
    audios = [speech[0][1], speech[1][1]]
    results = list(
        model.transcribe_many(audios, batch_size=2, word_timestamps=True, without_timestamps=False)
    )
    for audio, result in zip(audios, results, strict=True):
        words = [w for s in result["segments"] for w in s["words"]]
        assert words and 0.0 <= words[0]["start"] < 2.0
        assert words[-1]["end"] <= len(audio) / 16000 + 0.5


def test_batched_transcription_needs_the_ct2_engine(model, speech):
    torch_model = whisper_at.WhisperAT(model.loaded, model.head, engine="torch")
    with pytest.raises(
        EngineError, match="batched transcription needs an engine with a batched pipeline"
    ):
        torch_model.transcribe(speech[0][1], batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be an integer of at least 1"):
        next(model.transcribe_many([speech[0][1]], batch_size=0))
    with pytest.raises(EngineError, match="no vad_filter"):
        model.transcribe(speech[0][1], batch_size=2, vad_filter=True)


def test_tags_only_many_recordings_share_batches(model, speech, long_speech):
    audios = [speech[0][1], long_speech, speech[1][1], speech[2][1]]
    one_by_one = [model.tag(audio, at_time_res=2.0, batch_size=1) for audio in audios]
    model.tap.n_passes = 0
    together = list(model.tag_many(iter(audios), at_time_res=2.0, batch_size=3))
    # 1 + 4 + 1 + 1 windows in batches of 3: three encoder passes instead of seven
    assert model.tap.n_passes == 3
    assert len(together) == len(audios)
    for alone, shared, audio in zip(one_by_one, together, audios, strict=True):
        assert shared.duration == pytest.approx(len(audio) / 16000)
        np.testing.assert_allclose(shared.logits, alone.logits, atol=1e-3)
    assert list(model.tag_many([])) == []
