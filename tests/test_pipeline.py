"""The one-pass pipeline on real weights and real speech.

Heads here are randomly initialised: these tests check the mechanics (one encoder
pass, window alignment, equal transcripts), never tag quality.
"""

import logging
import math

import jiwer
import numpy as np
import pytest
import torch
import whisper
from faster_whisper import WhisperModel
from helpers import random_head
from whisper.normalizers import EnglishTextNormalizer

import whisper_at
from whisper_at.audio import AudioError
from whisper_at.heads import HeadError
from whisper_at.weights import load_whisper


@pytest.fixture(scope="module")
def model():
    return whisper_at.load_model("tiny.en", device="cpu", head=random_head(), engine="torch")


@pytest.fixture(scope="module")
def plain_whisper():
    """The same weights in a model with no tap, counting its encoder runs."""
    loaded = load_whisper("tiny.en")
    loaded.model.encoder_runs = 0

    def count(*_):
        loaded.model.encoder_runs += 1

    loaded.model.encoder.register_forward_hook(count)
    return loaded


def segment_view(result, duration=math.inf):
    """Times and text; the pipeline keeps times within the audio, the libraries may not."""
    return [(s["start"], min(s["end"], duration), s["text"]) for s in result["segments"]]


@pytest.mark.parametrize("beam_size", [None, 5])
def test_transcripts_equal_openai_whisper_and_faster_whisper(
    model, plain_whisper, speech, beam_size
):
    options = {"temperature": 0.0} if beam_size is None else {"temperature": 0.0, "beam_size": 5}
    engine = WhisperModel(str(model.loaded.ct2_dir), device="cpu", compute_type="float32")
    for clip, audio in speech:
        ours = model.transcribe(audio, **options)
        reference = whisper.transcribe(plain_whisper.model, audio, fp16=False, **options)
        assert ours["text"] == reference["text"], clip.id
        assert segment_view(ours) == segment_view(reference, len(audio) / 16000), clip.id
        fw_segments, _ = engine.transcribe(
            audio, beam_size=beam_size or 1, temperature=0.0, language="en", vad_filter=False
        )
        assert ours["text"].strip() == "".join(s.text for s in fw_segments).strip(), clip.id


def test_word_error_rate_against_the_reference_text(model, speech):
    normalize = EnglishTextNormalizer()
    references = [normalize(clip.text) for clip, _ in speech]
    hypotheses = [
        normalize(model.transcribe(audio, temperature=0.0)["text"]) for _, audio in speech
    ]
    assert hypotheses[0] == references[0]  # "and mister john dashwood had then leisure ..."
    assert jiwer.wer(references, hypotheses) < 0.08  # measured 0.043 with tiny.en


def test_tagging_adds_no_encoder_pass_even_with_fallback(model, plain_whisper, long_speech):
    # A compression-ratio threshold of 0 makes every temperature fall back: openai-whisper
    # then encodes each window once per temperature; the tap encodes it once.
    options = {"temperature": (0.0, 0.5, 1.0), "compression_ratio_threshold": 0.0, "best_of": 1}
    plain_whisper.model.encoder_runs = 0
    torch.manual_seed(0)
    reference = whisper.transcribe(plain_whisper.model, long_speech, fp16=False, **options)
    windows = len({s["seek"] for s in reference["segments"]})
    assert plain_whisper.model.encoder_runs == 3 * windows

    model.tap.n_passes = 0
    torch.manual_seed(0)
    ours = model.transcribe(long_speech, at_time_res=10.0, **options)
    assert model.tap.n_passes == windows
    assert ours["text"] == reference["text"]


def test_tags_cover_long_audio_on_the_absolute_grid(model, long_speech, caplog):
    with caplog.at_level(logging.WARNING, logger="whisper_at"):
        result = model.transcribe(long_speech, at_time_res=2.0, temperature=0.0)
    duration = len(long_speech) / 16000
    assert result["audio_tag"].shape == (math.ceil(duration / 2.0), 527)
    assert result["at_time_res"] == 2.0
    assert not [
        r for r in caplog.records if "not tagged" in r.getMessage() or "gap" in r.getMessage()
    ]
    assert len({s["seek"] for s in result["segments"]}) > 1  # several, unaligned decode windows
    parsed = whisper_at.parse_at_label(result, top_k=3)
    assert len(parsed) == result["audio_tag"].shape[0]
    assert parsed[-1]["time"] == {"start": 98.0, "end": 100.0}  # the reference's grid
    last = whisper_at.TaggingResult.from_result(result).window_bounds(len(parsed) - 1)
    assert last == (98.0, pytest.approx(duration))  # the typed API keeps the true end
    # up to 5 per segment, those over their class's threshold (threshold "auto")
    assert all(len(s["audio_tags"]) <= 5 for s in result["segments"])
    assert any(s["audio_tags"] for s in result["segments"])


def test_tags_only_equals_the_tags_of_transcription(model, speech):
    _, audio = speech[0]  # 7 s: one window, so both paths give the encoder the same input
    result = model.transcribe(audio, at_time_res=2.0, temperature=0.0)
    tagging = model.tag(audio, at_time_res=2.0)
    torch.testing.assert_close(tagging.logits, result["audio_tag"], atol=1e-4, rtol=1e-4)


def test_tags_only_batches_agree(model, long_speech):
    one = model.tag(long_speech, at_time_res=10.0, batch_size=1)
    four = model.tag(long_speech, at_time_res=10.0, batch_size=4)
    assert one.logits.shape == (10, 527)
    torch.testing.assert_close(one.logits, four.logits, atol=1e-3, rtol=1e-3)
    assert one.duration == pytest.approx(len(long_speech) / 16000)


def test_without_a_head_it_transcribes_and_says_it_cannot_tag(model, speech, caplog):
    # a Whisper given by path (here tiny.en's CTranslate2 folder) has no shipped head
    with caplog.at_level(logging.WARNING, logger="whisper_at"):
        plain = whisper_at.load_model(str(model.loaded.ct2_dir), device="cpu")
    assert plain.head is None
    assert any("no tagging head is installed" in r.getMessage() for r in caplog.records)
    result = plain.transcribe(speech[1][1], temperature=0.0)
    assert "audio_tag" not in result
    assert result["text"].strip() == "He was not an old-sposed young man."
    with pytest.raises(ValueError, match="no audio tags"):
        whisper_at.parse_at_label(result)
    with pytest.raises(HeadError, match="no tagging head is installed"):
        plain.tag(speech[1][1])


def test_a_head_for_another_whisper_is_refused():
    with pytest.raises(HeadError, match="reads an encoder of 6 blocks of width 512"):
        whisper_at.load_model("tiny.en", device="cpu", head=random_head(6, 512))


def test_bad_audio_is_named(model, tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        model.transcribe(tmp_path / "missing.wav")
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    with pytest.raises(AudioError, match="not an audio file"):
        model.tag(text)
    with pytest.raises(ValueError, match="multiple of 0.4"):
        model.tag(np.zeros(16000, dtype=np.float32), at_time_res=1.0)


def test_long_recordings_are_transcribed_span_by_span(model, long_speech, librivox_clips, caplog):
    with caplog.at_level(logging.WARNING, logger="whisper_at"):
        result = model.transcribe(long_speech, at_time_res=2.0, temperature=0.0, span_seconds=40)
    duration = len(long_speech) / 16000
    assert result["audio_tag"].shape == (math.ceil(duration / 2.0), 527)
    assert not [
        r for r in caplog.records if "not tagged" in r.getMessage() or "gap" in r.getMessage()
    ]
    starts = [s["start"] for s in result["segments"]]
    assert starts == sorted(starts) and result["segments"][-1]["end"] <= duration + 0.5
    assert [s["id"] for s in result["segments"]] == list(range(len(starts)))
    assert max(s["seek"] for s in result["segments"]) > 40 * 100  # seeks on the recording's line
    normalize = EnglishTextNormalizer()
    reference = normalize(" ".join([c.text for c in librivox_clips] * 4))
    assert jiwer.wer(reference, normalize(result["text"])) < 0.1


def test_an_original_whisper_at_checkpoint_loads_by_path(model, tmp_path, speech):
    state = {f"at_model.{k}": v for k, v in random_head().state_dict().items()}
    path = tmp_path / "tiny_ori.pth"
    torch.save(state, path)
    reference = whisper_at.load_model("tiny.en", device="cpu", head=str(path))
    assert reference.head.config.encoder_input_seconds == 10.0  # trimmed input, as trained
    ours = model.tag(speech[0][1], at_time_res=10.0)  # the same head weights, ours
    theirs = reference.tag(speech[0][1], at_time_res=10.0)
    torch.testing.assert_close(theirs.logits, ours.logits)
