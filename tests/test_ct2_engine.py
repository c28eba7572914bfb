"""The ct2 engine: faster-whisper decodes from the tapped PyTorch encoder's output.

Real tiny.en weights and real speech; the head is random (mechanics, not tag quality).
"""

import dataclasses
import logging
import math

import pytest
import torch
from faster_whisper import WhisperModel
from faster_whisper.feature_extractor import FeatureExtractor
from helpers import random_head

import whisper_at
from whisper_at.engines import WindowLocator, make_engine
from whisper_at.engines.ct2 import EngineError, faster_whisper_options
from whisper_at.precision import Precision
from whisper_at.weights import available_models

FLOAT32 = Precision("float32", "float32")

# the ct2 tags differ from the torch engine's only through the log-mel (faster-whisper's
# numpy STFT against openai-whisper's torch STFT): measured max |logit difference| 1.2e-6
# on the 9 clips (logits up to 2.2 in magnitude)
TAG_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model():
    # float32 decoding: transcripts exactly plain faster-whisper float32's ("auto" may pick
    # the int8 decoder where it measures faster)
    return whisper_at.load_model(
        "tiny.en", device="cpu", head=random_head(), engine="ct2", precision="float32"
    )


@pytest.fixture(scope="module")
def torch_model(model):
    """The same weights and head, decoded by openai-whisper."""
    return whisper_at.WhisperAT(model.loaded, model.head, engine="torch")


@pytest.fixture(scope="module")
def faster(model):
    """Plain faster-whisper on the original CTranslate2 folder, same compute type."""
    return WhisperModel(str(model.loaded.ct2_dir), device="cpu", compute_type="default")


def view(segments):
    return [(s["start"], s["end"], s["text"]) for s in segments]


def faster_view(faster, audio, **options):
    """Plain faster-whisper's segments, times within the audio as the pipeline keeps them."""
    segments, _ = faster.transcribe(audio, vad_filter=False, **options)
    duration = len(audio) / 16000
    return [(s.start, min(s.end, duration), s.text) for s in segments]


@pytest.mark.parametrize("beam_size", [1, 5])
def test_transcripts_equal_plain_faster_whisper(model, faster, speech, beam_size):
    for clip, audio in speech:
        ours = model.transcribe(audio, temperature=0.0, beam_size=beam_size)
        reference = faster_view(faster, audio, temperature=0.0, beam_size=beam_size)
        assert view(ours["segments"]) == reference, clip.id
        assert ours["text"] == "".join(text for _, _, text in reference)
        assert ours["language"] == "en"


def test_long_audio_one_encoder_pass_per_window_and_tags_on_the_grid(
    model, faster, long_speech, caplog
):
    model.tap.n_passes = 0
    with caplog.at_level(logging.WARNING, logger="whisper_at"):
        result = model.transcribe(long_speech, at_time_res=2.0, temperature=0.0, beam_size=1)
    windows = {s["seek"] for s in result["segments"]}
    assert len(windows) > 1
    assert model.tap.n_passes == len(windows)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    duration = len(long_speech) / 16000
    assert result["audio_tag"].shape == (math.ceil(duration / 2.0), 527)
    # up to 5 per segment, those over their class's threshold (threshold "auto")
    assert all(len(s["audio_tags"]) <= 5 for s in result["segments"])
    assert any(s["audio_tags"] for s in result["segments"])
    assert view(result["segments"]) == faster_view(
        faster, long_speech, temperature=0.0, beam_size=1
    )


def test_the_files_log_mel_is_computed_once_for_decoding_and_tagging(
    model, faster, long_speech, monkeypatch
):
    extractor = model.engine.model.feature_extractor
    calls = []
    stft = type(extractor).stft
    counted = staticmethod(lambda *a, **k: calls.append(1) or stft(*a, **k))
    monkeypatch.setattr(type(extractor), "stft", counted)
    result = model.transcribe(long_speech, temperature=0.0, beam_size=1)
    assert len(calls) == 1  # one STFT of the whole file, shared by faster-whisper and the tagger
    assert view(result["segments"]) == faster_view(
        faster, long_speech, temperature=0.0, beam_size=1
    )
    calls.clear()
    model.transcribe(long_speech[: 16000 * 20], temperature=0.0, beam_size=1)
    assert len(calls) == 1  # another file: computed afresh, not the previous file's


def test_windows_are_placed_alike_by_their_address_and_by_their_content(long_speech):
    # faster-whisper's full windows are slices of the shared log-mel (placed by address);
    # its padded last window and batches are copies (placed by comparing content)
    mel = torch.from_numpy(FeatureExtractor()(long_speech))
    by_address, by_content = (WindowLocator(mel, mel.shape[-1] - 1) for _ in range(2))
    seeks = range(0, mel.shape[-1] - 3000, 2900)
    assert len(seeks) >= 3
    for seek in seeks:
        window = mel[:, seek : seek + 3000]
        assert by_address._slice_start(window) == seek
        assert by_address._slice_start(window.clone()) is None
        assert by_address.locate(window) == seek
        assert by_content.locate(window.clone()) == seek
    assert by_content.locate(torch.zeros_like(window)) is None  # not from this file


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_full_windows_are_placed_by_address_whatever_the_encoder_computes_in(
    precision, long_speech, monkeypatch
):
    # the tap casts for the encoder, so a bf16 encoder's windows stay views of the log-mel
    model = whisper_at.load_model("tiny.en", device="cpu", precision=f"{precision}:float32")
    located, searched = [], []
    locate, search = WindowLocator.locate, WindowLocator._search
    monkeypatch.setattr(
        WindowLocator, "locate", lambda self, w: located.append(1) or locate(self, w)
    )
    monkeypatch.setattr(
        WindowLocator, "_search", lambda self, *a, **k: searched.append(1) or search(self, *a, **k)
    )
    model.transcribe(long_speech, temperature=0.0, beam_size=1)
    assert len(located) >= 4 and len(searched) <= 1, (located, searched)  # the padded last one


def test_temperature_fallback_does_not_encode_again(model, speech):
    # a compression-ratio threshold of 0 makes every temperature fail and fall back
    _, audio = speech[0]
    model.tap.n_passes = 0
    result = model.transcribe(
        audio, temperature=(0.0, 0.5, 1.0), compression_ratio_threshold=0.0, best_of=1
    )
    assert model.tap.n_passes == 1
    assert result["segments"][0]["temperature"] == 1.0


def test_tags_equal_the_torch_engines_on_one_window(model, torch_model, speech):
    _, audio = speech[0]  # 7 s: one window, the same encoder input up to the log-mel
    ours = model.transcribe(audio, at_time_res=2.0, temperature=0.0, beam_size=1)
    theirs = torch_model.transcribe(audio, at_time_res=2.0, temperature=0.0)
    assert ours["audio_tag"].shape == theirs["audio_tag"].shape == (4, 527)
    difference = (ours["audio_tag"] - theirs["audio_tag"]).abs().max().item()
    assert difference < TAG_TOLERANCE, difference


def test_word_timestamps(model, faster, speech):
    _, audio = speech[0]
    result = model.transcribe(audio, temperature=0.0, word_timestamps=True)
    words = [w for s in result["segments"] for w in s["words"]]
    assert len(words) > 10
    assert all(0.0 <= w["start"] <= w["end"] for w in words)
    segments, _ = faster.transcribe(audio, temperature=0.0, word_timestamps=True)
    duration = len(audio) / 16000  # the pipeline keeps times within the audio
    reference = [
        (w.word, min(w.start, duration), min(w.end, duration)) for s in segments for w in s.words
    ]
    assert [(w["word"], w["start"], w["end"]) for w in words] == reference
    plain = model.transcribe(audio, temperature=0.0)
    assert "words" not in plain["segments"][0]


def test_options_map_to_faster_whisper():
    assert faster_whisper_options(
        {
            "language": "English",
            "temperature": (0.0, 0.2),
            "logprob_threshold": -0.5,
            "beam_size": None,
            "suppress_tokens": "-1",
            "verbose": False,
            "fp16": True,
            "sample_len": 100,
        }
    ) == {
        "vad_filter": False,
        "language": "en",
        "temperature": [0.0, 0.2],
        "log_prob_threshold": -0.5,
        "suppress_tokens": [-1],
        "max_new_tokens": 100,
    }
    assert faster_whisper_options({"vad_filter": True})["vad_filter"] is True


def test_bad_options_are_refused(model, speech):
    _, audio = speech[1]
    with pytest.raises(TypeError, match="unknown transcription option 'beam_width'"):
        model.transcribe(audio, beam_width=3)
    with pytest.raises(ValueError, match="'carry_initial_prompt' is not supported"):
        model.transcribe(audio, carry_initial_prompt=True)
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        model.transcribe(audio, language="klingon")
    with pytest.raises(ValueError, match="vad_filter removes non-speech audio"):
        model.transcribe(audio, vad_filter=True)


def test_engine_needs_a_ctranslate2_folder(model):
    from_pt = dataclasses.replace(model.loaded, ct2_dir=None, source="/models/tiny.en.pt")
    with pytest.raises(EngineError, match="needs a CTranslate2 model folder; tiny.en was loaded"):
        make_engine("ct2", from_pt, model.tap, FLOAT32)
    with pytest.raises(EngineError, match="unknown engine 'onnx'"):
        make_engine("onnx", model.loaded, model.tap, FLOAT32)
    assert make_engine("auto", from_pt, model.tap, FLOAT32).name == "torch"  # no folder: torch


def test_ct2_is_the_default_engine_on_the_cpu():
    assert whisper_at.load_model("tiny.en", device="cpu", head=None).engine.name == "ct2"
    torch_model = whisper_at.load_model("tiny.en", device="cpu", head=None, engine="torch")
    assert torch_model.engine.name == "torch"


def test_compute_type_is_passed_to_ctranslate2(model, speech):
    engine = make_engine("ct2", model.loaded, model.tap, Precision("float32", "int8"))
    assert engine.model.model.compute_type == "int8_float32"
    _, audio = speech[1]
    result = engine.transcribe(audio, None, temperature=0.0, beam_size=1)
    assert "old" in result["text"]  # "He was not an old-sposed young man." (int8 decoder)


@pytest.mark.skipif("base" not in available_models(), reason="multilingual base not installed")
def test_language_detection_pass_is_tagged_once(speech, long_speech, caplog):
    # faster-whisper encodes the first window for language detection: under 30 s with one
    # more mel frame than decoding (so twice, as faster-whisper does), else the same window
    model = whisper_at.load_model(
        "base", device="cpu", head=random_head(6, 512), engine="ct2", precision="float32"
    )
    faster = WhisperModel(str(model.loaded.ct2_dir), device="cpu", compute_type="default")
    for audio, passes in ((speech[0][1], 2), (long_speech[: 45 * 16000], 2)):
        model.tap.n_passes = 0
        with caplog.at_level(logging.WARNING, logger="whisper_at"):
            result = model.transcribe(audio, at_time_res=10.0, temperature=0.0, beam_size=1)
        assert result["language"] == "en"
        assert model.tap.n_passes == passes
        assert result["audio_tag"].shape[0] == math.ceil(len(audio) / 16000 / 10.0)
        assert view(result["segments"]) == faster_view(faster, audio, temperature=0.0, beam_size=1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
