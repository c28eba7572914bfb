"""Code written for the reference Whisper-AT package (PyPI whisper-at 0.5) runs here unchanged.

``reference_client`` is such a client: the patterns of the reference README (quick start,
"Use as the Original Whisper", parse_at_label, the label utilities) and of openai-whisper's
lower-level API the reference re-exports. ``reference_parse`` computes what the reference's
``parse_at_label`` returns, from its documented behaviour: per ``audio_tag`` row the top
``top_k`` of all classes, then those above ``p_threshold`` and in ``include_class_list``,
timed ``i * at_time_res`` to ``(i + 1) * at_time_res``.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import whisper as openai_whisper

import whisper_at
from whisper_at import pipeline
from whisper_at.heads import HeadError
from whisper_at.pipeline import REFERENCE_NAMES, WhisperAT, load_model
from whisper_at.precision import PrecisionError
from whisper_at.weights import WeightsError

SPEECH = Path(__file__).parent.parent / "examples" / "librivox_sense_and_sensibility.wav"
SPEECH_SECONDS = 7.1
REFERENCE_MODELS = [  # the reference's available_models()
    "tiny.en", "tiny", "base.en", "base", "small.en", "small",
    "medium.en", "medium", "large-v1", "large-v2", "large",
]  # fmt: skip


def label_names(language: str) -> list[str]:
    path = resources.files("whisper_at") / "assets" / "label_name_dict.json"
    return json.loads(path.read_text(encoding="utf-8"))[language]


def reference_parse(
    result: dict[str, Any],
    language: str = "follow_asr",
    top_k: int = 5,
    p_threshold: float = -1,
    include_class_list: list[int] | None = None,
    classes: list[int] | None = None,
) -> list[dict[str, Any]]:
    """The reference's documented parse_at_label. ``classes``: the classes ranked ("all"
    of them in the reference; here those the head reports, docs/compatibility.md)."""
    code = result["language"] if language == "follow_asr" else language
    names = label_names(code)
    rows = result["audio_tag"].tolist()
    classes = classes if classes is not None else list(range(len(rows[0])))
    include = set(include_class_list if include_class_list is not None else range(527))
    res = result["at_time_res"]
    parsed = []
    for i, row in enumerate(rows):
        ranked = sorted(classes, key=lambda c: row[c], reverse=True)[:top_k]
        tags = [(names[c], row[c]) for c in ranked if row[c] > p_threshold and c in include]
        parsed.append({"time": {"start": i * res, "end": (i + 1) * res}, "audio tags": tags})
    return parsed


def reference_client(whisper: Any, model_name: str, audio_path: str) -> dict[str, Any]:
    """A user's script for the reference package, written from its README; run unchanged."""
    audio_tagging_time_resolution = 10
    model = whisper.load_model(model_name)
    result = model.transcribe(audio_path, at_time_res=audio_tagging_time_resolution)
    print(result["text"])
    audio_tag_result = whisper.parse_at_label(
        result, language="follow_asr", top_k=5, p_threshold=-1, include_class_list=list(range(527))
    )
    print(audio_tag_result)
    translated = model.transcribe(audio_path, task="translate", at_time_res=10)
    whisper.print_support_language()
    whisper.print_label_name(language="zh")
    # openai-whisper's lower-level API, which the reference re-exports
    audio = whisper.pad_or_trim(whisper.load_audio(audio_path))
    mel = whisper.log_mel_spectrogram(audio).to(model.device)
    if model.is_multilingual:
        _, probs = model.detect_language(mel)
        language = max(probs, key=probs.get)
    else:
        language = "en"
    options = whisper.DecodingOptions(language=language, fp16=False)
    decoded = whisper.decode(model, mel, options)
    return {
        "model": model,
        "result": result,
        "parsed": audio_tag_result,
        "translated": translated,
        "language": language,
        "decoded": decoded,
        "module_level": whisper.transcribe(model, audio_path, at_time_res=10),
    }


@pytest.fixture(scope="module")
def model() -> WhisperAT:
    return load_model("tiny.en", device="cpu")


@pytest.fixture(scope="module")
def tiny_result(model) -> dict[str, Any]:
    return model.transcribe(str(SPEECH), at_time_res=10, temperature=0.0)


@pytest.mark.parametrize("model_name", ["tiny.en", "base"])
def test_a_reference_client_runs_unchanged(model_name, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # at_time_res=10: the reference warns not
        out = reference_client(whisper_at, model_name, str(SPEECH))
    result, printed = out["result"], capsys.readouterr().out
    assert {"text", "segments", "language", "at_time_res", "audio_tag"} <= result.keys()
    assert isinstance(result["text"], str) and "Dashwood" in result["text"]
    assert result["language"] == "en" and out["language"] == "en"
    assert isinstance(result["at_time_res"], int) and result["at_time_res"] == 10
    tags = result["audio_tag"]
    assert isinstance(tags, torch.Tensor) and tags.dtype == torch.float32
    assert tags.device.type == "cpu" and tags.shape == (math.ceil(SPEECH_SECONDS / 10), 527)
    assert out["parsed"] == reference_parse(result, include_class_list=list(range(527)))
    assert out["parsed"][0]["time"] == {"start": 0, "end": 10}
    top_two = {name for name, _ in out["parsed"][0]["audio tags"][:2]}
    assert top_two == {"Narration, monologue", "Speech"}
    assert out["translated"]["audio_tag"].shape == tags.shape
    assert isinstance(out["decoded"], openai_whisper.DecodingResult)
    assert out["decoded"].text.strip() == result["text"].strip()
    torch.testing.assert_close(out["module_level"]["audio_tag"], tags)
    assert "language code: zh : chinese" in printed and "index: 0 : 说话的声音" in printed


@pytest.mark.parametrize("at_time_res", [0.4, 2, 4.8, 30])
def test_the_window_count_is_the_reference_s_and_other_resolutions_warn(model, at_time_res):
    samples = whisper_at.load_audio(str(SPEECH))
    with pytest.warns(UserWarning, match="trained on 10 s windows"):
        result = model.transcribe(samples, at_time_res=at_time_res, temperature=0.0)
    content_frames = len(samples) // 160  # the reference's mel frames of the audio
    n = math.ceil(content_frames / round(at_time_res * 100))
    assert result["audio_tag"].shape == (n, 527)
    parsed = whisper_at.parse_at_label(result, top_k=3)
    assert parsed == reference_parse(result, top_k=3, classes=result["audio_tag_classes"])
    assert parsed[-1]["time"] == {"start": (n - 1) * at_time_res, "end": n * at_time_res}


def test_parse_at_label_takes_the_top_k_of_all_classes_then_filters(tiny_result):
    result = tiny_result
    # the case: the reading's best class is Speech (0), so top 1 over all classes,
    # then kept only when in the list, keeps nothing for a list without it
    assert whisper_at.parse_at_label(result, top_k=1)[0]["audio tags"][0][0] == "Speech"
    assert whisper_at.parse_at_label(
        result, top_k=1, p_threshold=-5, include_class_list=[1, 2, 3]
    ) == [{"time": {"start": 0, "end": 10}, "audio tags": []}]
    for top_k, threshold, include in [(2, -5, [0, 1, 2]), (5, 0.0, None), (10, -3, [137, 0])]:
        expected = reference_parse(result, "follow_asr", top_k, threshold, include)
        assert whisper_at.parse_at_label(result, "follow_asr", top_k, threshold, include) == (
            expected
        )
    # a very low threshold has no exp() to overflow; untrained classes are never named
    everything = whisper_at.parse_at_label(result, top_k=527, p_threshold=-1000)
    reported = result["audio_tag_classes"]
    assert everything == reference_parse(result, top_k=527, p_threshold=-1000, classes=reported)
    assert len(everything[0]["audio tags"]) == len(reported) < 527


def test_parse_at_label_on_the_reference_grid_with_the_typed_api_keeping_true_times():
    logits = torch.full((2, 527), -5.0)
    logits[0, 0], logits[0, 137], logits[0, 74] = 3.0, 1.0, -0.5  # Speech, Music, Dog
    logits[1, 74] = 2.0
    labels = whisper_at.audioset_labels()
    tagging = whisper_at.TaggingResult(logits, 2.0, 3.5, labels, list(range(527)))
    result = {**tagging.to_result_fields(), "language": "en"}
    assert whisper_at.parse_at_label(result, top_k=2, p_threshold=-1) == [
        {"time": {"start": 0.0, "end": 2.0}, "audio tags": [("Speech", 3.0), ("Music", 1.0)]},
        {"time": {"start": 2.0, "end": 4.0}, "audio tags": [("Dog", 2.0)]},
    ]
    only_dog = whisper_at.parse_at_label(result, include_class_list=[74])
    assert [t for w in only_dog for t in w["audio tags"]] == [("Dog", -0.5), ("Dog", 2.0)]
    assert tagging.window_bounds(1) == (2.0, 3.5)


def test_label_languages_follow_the_reference(tiny_result):
    chinese = whisper_at.parse_at_label(tiny_result, language="zh", top_k=1)
    assert chinese == reference_parse(tiny_result, language="zh", top_k=1)
    best = label_names("en").index(
        whisper_at.parse_at_label(tiny_result, top_k=1)[0]["audio tags"][0][0]
    )
    assert chinese[0]["audio tags"][0][0] == label_names("zh")[best]
    with pytest.warns(UserWarning, match="xx language not supported"):
        english = whisper_at.parse_at_label({**tiny_result, "language": "xx"}, top_k=2)
    assert english == reference_parse(tiny_result, language="en", top_k=2)


def test_results_without_tags_say_so():
    with pytest.raises(ValueError, match="no audio tags"):
        whisper_at.parse_at_label({"text": "hi", "segments": [], "language": "en"})


def test_the_label_utilities_print_as_the_reference(capsys):
    whisper_at.print_label_name()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 527 and lines[0] == "index: 0 : Speech"
    assert lines[137] == "index: 137 : Music"
    whisper_at.print_support_language()
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["language code: en : english", "language code: zh : chinese"]
    assert len(lines) == 85
    with pytest.raises(ValueError, match="print_support_language"):
        whisper_at.print_label_name("xx")


def test_the_model_has_whisper_s_attributes(model):
    whisper = model.whisper
    assert model.dims == whisper.dims and model.dims.n_audio_layer == 4
    assert model.is_multilingual is False and model.num_languages == whisper.num_languages
    assert model.device == torch.device("cpu")
    n_whisper = sum(p.numel() for p in whisper.parameters())
    n_head = sum(p.numel() for p in model.head.parameters())
    assert sum(p.numel() for p in model.parameters()) == n_whisper + n_head
    assert model.eval() is model and model.to("cpu") is model
    with pytest.raises(PrecisionError, match="float16 needs a GPU"):
        model.half()
    audio = whisper_at.pad_or_trim(whisper_at.load_audio(SPEECH))
    mel = whisper_at.log_mel_spectrogram(audio)
    features = model.embed_audio(mel[None])
    assert features.shape == (1, 1500, 384)
    tokens = torch.tensor([[50257]])  # <|startoftranscript|> of the English-only vocabulary
    assert model.logits(tokens, features).shape == (1, 1, 51864)
    with pytest.raises(ValueError, match="can't perform lang id"):  # as openai-whisper's
        model.detect_language(mel)
    decoded = model.decode(mel, whisper_at.DecodingOptions(language="en", fp16=False))
    assert isinstance(decoded, openai_whisper.DecodingResult)
    assert "Dashwood" in decoded.text


def test_the_module_level_audio_names_are_openai_whisper_s():
    samples = whisper_at.load_audio(str(SPEECH))
    assert samples.dtype == np.float32 and len(samples) == round(SPEECH_SECONDS * 16000)
    with pytest.raises(ValueError, match="16000 Hz only"):
        whisper_at.load_audio(str(SPEECH), sr=8000)
    torch.testing.assert_close(
        whisper_at.log_mel_spectrogram(str(SPEECH)), openai_whisper.log_mel_spectrogram(samples)
    )
    assert whisper_at.pad_or_trim is openai_whisper.pad_or_trim
    assert whisper_at.DecodingOptions is openai_whisper.DecodingOptions
    assert set(REFERENCE_MODELS) <= set(whisper_at.known_models())
    assert set(REFERENCE_MODELS) == set(REFERENCE_NAMES)
    assert {"tiny.en", "base"} <= set(whisper_at.available_models())


def test_load_model_takes_the_reference_s_arguments(model):
    parameters = inspect.signature(load_model).parameters
    positional = [p.name for p in parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == ["name", "device", "download_root", "in_memory", "at_low_compute"]
    keyword_only = [p.name for p in parameters.values() if p.kind == p.KEYWORD_ONLY]
    assert keyword_only == ["head", "engine", "precision"]
    low = load_model("tiny.en", "cpu", None, True, True)
    assert low.head.config.head_type == "tl_tr_low"
    keywords = load_model("tiny.en", device="cpu", download_root=None, in_memory=True)
    assert keywords.head.config.head_type == "tl_tr"
    with pytest.raises(TypeError):
        load_model("tiny.en", "cpu", None, False, False, None)


def test_a_reference_head_next_to_the_weights_is_found_without_head(model, tmp_path, monkeypatch):
    # tiny.en as if it shipped no head: the reference's tiny.en_ori.pth is looked for
    monkeypatch.setattr(pipeline, "shipped_head_path", lambda name, low=False: None)
    monkeypatch.setenv("WHISPER_AT_CACHE", str(tmp_path / "cache"))
    state = {f"at_model.{k}": v for k, v in model.head.state_dict().items()}
    with pytest.raises(HeadError, match=r"tiny\.en_ori\.pth.*head=None"):
        load_model("tiny.en", "cpu", str(tmp_path))
    for folder in (tmp_path, tmp_path / "cache" / "heads"):  # next to the .pt, or documented
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(state, folder / "tiny.en_ori.pth")
        found = load_model("tiny.en", "cpu", str(tmp_path))
        assert Path(found.head.source.path) == (folder / "tiny.en_ori.pth").resolve()
        (folder / "tiny.en_ori.pth").unlink()
        samples = whisper_at.load_audio(SPEECH)
        torch.testing.assert_close(found.tag(samples).logits, model.tag(samples).logits)
    assert load_model("tiny.en", "cpu", str(tmp_path), head=None).head is None


def test_a_reference_name_without_weights_says_what_to_put_where(tmp_path):
    with pytest.raises(WeightsError) as error:
        load_model("tiny", "cpu", str(tmp_path))
    message = str(error.value)
    assert "tiny.pt" in message and "tiny_ori.pth" in message and str(tmp_path) in message
    with pytest.raises(WeightsError, match="'large' is large-v2"):
        load_model("large", "cpu", str(tmp_path), False, True)
