import math
import re
from pathlib import Path

import pytest
import torch

from whisper_at.audio import load_audio
from whisper_at.labels import LabelSet, audioset_labels
from whisper_at.pipeline import WhisperAT, load_model
from whisper_at.tagging import (
    AUTO_THRESHOLD_FALLBACK,
    HEAD_BATCH_BINS,
    AudioTooShortError,
    TagAccumulator,
    TaggingResult,
    bins_per_window,
)

SPEECH = Path(__file__).parent.parent / "examples" / "librivox_sense_and_sensibility.wav"


@pytest.fixture(scope="module")
def model() -> WhisperAT:
    """The bundled tiny.en with its shipped head."""
    return load_model("tiny.en", device="cpu")


class RecordingHead:
    """Stands in for a head to see exactly which pooled features it is given."""

    def __init__(self):
        self.windows: list[torch.Tensor] = []

    def __call__(self, features: torch.Tensor) -> torch.Tensor:  # [n, n_layer, time, d]
        self.windows.extend(features.clone())
        return torch.zeros(features.shape[0], 1)


def frame_index_layers(seek: int, n_layer: int = 2) -> torch.Tensor:
    """Layer outputs whose value is the absolute encoder frame index (layer l adds 1000 l)."""
    absolute = torch.arange(1500, dtype=torch.float32) + seek // 2
    return torch.stack([absolute + 1000 * layer for layer in range(n_layer)])[:, :, None]


def expected_bins(total_mel_frames: int) -> torch.Tensor:
    """Mean absolute frame index of each 0.4 s bin, the last one possibly partial."""
    n_frames = math.ceil(total_mel_frames / 2)
    frames = torch.arange(n_frames, dtype=torch.float32)
    return torch.stack([chunk.mean() for chunk in frames.split(20)])


@pytest.mark.parametrize("res,bins", [(0.4, 1), (2.0, 5), (10, 25), (30.0, 75)])
def test_resolution_must_be_a_multiple_of_0_4_s(res, bins):
    assert bins_per_window(res) == bins


@pytest.mark.parametrize("res", [0, 0.5, 1.0, 10.1, -0.4, math.nan, math.inf])
def test_bad_resolutions_are_refused(res):
    with pytest.raises(ValueError, match="multiple of 0.4"):
        bins_per_window(res)


@pytest.mark.parametrize(
    "passes",
    [
        [(0, 3000), (3000, 1234)],  # fixed grid, as in tags-only
        [(0, 3000), (2810, 2424), (5000, 234)],  # decoder seeks, overlapping
        [(0, 3000), (0, 3000), (2000, 2234)],  # a repeated window (temperature fallback)
    ],
)
def test_bins_sit_on_the_absolute_grid_whatever_the_windows(passes):
    total = passes[-1][0] + passes[-1][1]
    head = RecordingHead()
    acc = TagAccumulator(head, at_time_res=10.0)
    for seek, valid in passes:
        acc.add_pass(frame_index_layers(seek), seek, valid)
    logits = acc.finish()
    n_windows = math.ceil(total / 1000)
    assert logits.shape == (n_windows, 1)
    got = torch.cat([w[0, :, 0] for w in head.windows])  # layer 0, every bin in order
    torch.testing.assert_close(got, expected_bins(total))
    assert [w.shape[1] for w in head.windows][:-1] == [25] * (n_windows - 1)
    assert torch.equal(head.windows[0][1] - head.windows[0][0], torch.full((25, 1), 1000.0))


def test_windows_are_tagged_in_batches_and_memory_stays_bounded():
    head, calls = RecordingHead(), []
    acc = TagAccumulator(lambda x: calls.append(len(x)) or head(x), at_time_res=2.0)
    for k in range(2):  # 60 s = 150 bins: under HEAD_BATCH_BINS, nothing is run yet
        acc.add_pass(frame_index_layers(3000 * k), 3000 * k, 3000)
    assert HEAD_BATCH_BINS == 200 and calls == []
    acc.add_pass(frame_index_layers(6000), 6000, 3000)  # 225 bins: 45 windows at once
    assert calls == [45]
    for k in range(3, 8):  # 2.5 more minutes: a batch whenever 200 bins are complete
        acc.add_pass(frame_index_layers(3000 * k), 3000 * k, 3000)
    acc.add_pass(frame_index_layers(24000), 24000, 130)  # 1.3 s more: one partial window
    assert acc.finish().shape == (121, 1)  # 4 min in 2 s windows, and the partial one
    assert calls == [45, 45, 30, 1] and sum(calls) == 121
    assert head.windows[-1].shape == (2, 4, 1)  # 1.3 s -> 3 full bins + a 0.1 s bin
    torch.testing.assert_close(torch.cat([w[0, :, 0] for w in head.windows]), expected_bins(24130))


def make_result(logits, labels=None, res=2.0, duration=None, **extra):
    labels = labels or audioset_labels()
    tagging = TaggingResult(
        logits=torch.as_tensor(logits, dtype=torch.float32),
        at_time_res=res,
        duration=duration or res * len(logits),
        labels=labels,
        reported_classes=list(range(len(labels))),
    )
    return {**tagging.to_result_fields(), **extra}


def test_custom_labels_and_trained_classes_limit_what_is_reported():
    labels = LabelSet.custom(["siren", "horn", "engine"])
    tagging = TaggingResult(
        logits=torch.tensor([[4.0, 3.0, 2.0]]),
        at_time_res=10.0,
        duration=10.0,
        labels=labels,
        reported_classes=[1, 2],  # "siren" had no training data
    )
    (window,) = tagging.windows(top_k=5)
    assert [t.label for t in window.tags] == ["horn", "engine"]
    assert window.tags[0].probability == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert tagging.windows(threshold=0.9)[0].tags[0].label == "horn"
    assert tagging.windows(threshold=0.99)[0].tags == []
    roundtrip = TaggingResult.from_result(tagging.to_result_fields())
    assert roundtrip.labels == labels and roundtrip.reported_classes == [1, 2]


def test_span_tags_take_the_max_over_overlapping_windows():
    logits = torch.full((3, 527), -5.0)
    logits[0, 0] = 1.0
    logits[1, 0] = 2.0
    logits[2, 74] = 4.0
    tagging = TaggingResult.from_result(make_result(logits, res=2.0))
    assert [t.label for t in tagging.span_tags(0.5, 3.0, top_k=1)] == ["Speech"]
    assert tagging.span_tags(0.5, 3.0, top_k=1)[0].logit == 2.0
    assert [t.label for t in tagging.span_tags(4.2, 5.0, top_k=1)] == ["Dog"]


def test_a_result_reprs_as_a_short_summary(model):
    tagging = model.tag(SPEECH, at_time_res=2.0)
    text = repr(tagging)
    assert re.fullmatch(
        r"TaggingResult\(windows=4, duration=7\.10, at_time_res=2, classes=527 "
        r"\(230 reported\), top='Speech' 0\.\d\d\)",
        text,
    ), text
    window = tagging.windows(top_k=1, threshold=0.0)[0]  # records keep their dataclass repr
    (tag,) = window.tags
    assert repr(window) == f"TagWindow(start=0.0, end=2.0, tags=[{tag!r}])"
    assert repr(tag) == (
        f"Tag(label={tag.label!r}, index={tag.index}, probability={tag.probability!r}, "
        f"logit={tag.logit!r})"
    )


@pytest.mark.parametrize("n_samples", [1, 159])
def test_audio_shorter_than_one_mel_frame_is_too_short_to_tag(model, tmp_audio, n_samples, capsys):
    clip = tmp_audio(load_audio(SPEECH)[8000 : 8000 + n_samples], 16000)
    message = r"too short to tag: it needs at least 10 ms \(160 samples at 16 kHz"
    with pytest.raises(AudioTooShortError, match=message):
        model.tag(clip)
    with pytest.raises(AudioTooShortError, match=message):
        model.transcribe(clip, temperature=0.0)
    assert issubclass(AudioTooShortError, ValueError)  # a user error for the CLI


def test_one_mel_frame_is_enough_to_tag(model, tmp_audio):
    clip = tmp_audio(load_audio(SPEECH)[8000:8160], 16000)
    tagging = model.tag(clip)
    assert tagging.logits.shape == (1, 527) and tagging.duration == 0.01


def test_auto_threshold_filters_each_class_by_its_own_threshold():
    labels = LabelSet.custom(["siren", "horn", "engine"])
    probabilities = torch.tensor([[0.9, 0.6, 0.3], [0.15, 0.05, 0.35]])
    tagging = TaggingResult(
        logits=torch.logit(probabilities),
        at_time_res=10.0,
        duration=20.0,
        labels=labels,
        reported_classes=[0, 1, 2],
        thresholds=[0.95, 0.5, 0.25],
    )
    # siren 0.9 is under its 0.95, engine 0.3 over its 0.25: the order stays by probability
    shown = [[t.label for t in w.tags] for w in tagging.windows()]
    assert shown == [["horn", "engine"], ["engine"]]
    assert [t.label for t in tagging.windows(top_k=1)[0].tags] == ["horn"]  # not hidden by siren
    assert [t.label for t in tagging.span_tags(0.0, 20.0)] == ["horn", "engine"]
    # a number still applies to every class
    assert [t.label for t in tagging.windows(threshold=0.1)[1].tags] == ["engine", "siren"]
    # the thresholds travel through a transcription result
    roundtrip = TaggingResult.from_result(tagging.to_result_fields())
    assert roundtrip.thresholds == [0.95, 0.5, 0.25]
    assert roundtrip.windows() == tagging.windows()
    with pytest.raises(ValueError, match="auto"):
        tagging.windows(threshold=1.5)


def test_auto_threshold_without_head_thresholds_is_the_documented_fallback():
    labels = LabelSet.custom(["siren", "horn"])
    tagging = TaggingResult(
        logits=torch.logit(torch.tensor([[AUTO_THRESHOLD_FALLBACK + 0.01, 0.13]])),
        at_time_res=10.0,
        duration=10.0,
        labels=labels,
        reported_classes=[0, 1],
    )
    assert [t.label for t in tagging.windows()[0].tags] == ["siren"]
    assert len(tagging.windows(threshold=0.0)[0].tags) == 2
