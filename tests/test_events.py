"""Sound events: post-processing on known tracks, the event track, writers, CLI, transcribe."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_head

from whisper_at.audio import load_audio
from whisper_at.cli import main
from whisper_at.events import EventOptions, SoundEvent, detect_events, hysteresis, median_filter
from whisper_at.heads import HeadConfig, TaggingHead
from whisper_at.labels import audioset_labels
from whisper_at.ontology import ancestors_at_depth, label_paths, ontology_parents
from whisper_at.pipeline import WhisperAT, load_model
from whisper_at.tagging import EventTrack, TaggingResult, TrackOptions
from whisper_at.writers import EVENT_COLUMNS, write_outputs

SPEECH = Path(__file__).parent.parent / "examples" / "librivox_sense_and_sensibility.wav"
LABELS = audioset_labels()
SPEECH_AT = LABELS.index("Speech")
BARK, DOG = LABELS.index("Bark"), LABELS.index("Dog")
EXACT = EventOptions(threshold=0.5, low_ratio=1.0, median_bins=1, min_duration=0.0, max_gap=0.0)


def detect(track: dict[int, list[float]], options: EventOptions, duration: float | None = None):
    """Events of a track given per class (every other class at 0), all classes reported."""
    n_bins = len(next(iter(track.values())))
    probabilities = torch.zeros(n_bins, len(LABELS))
    for c, values in track.items():
        probabilities[:, c] = torch.tensor(values)
    thresholds = torch.full((len(LABELS),), 0.5)
    return detect_events(
        probabilities,
        LABELS,
        thresholds,
        options,
        candidates=range(len(LABELS)),
        duration=duration if duration is not None else n_bins * 0.4,
        bin_seconds=0.4,
    )


def spans(events: list[SoundEvent]) -> list[tuple[str, float, float]]:
    return [(e.label, e.start, e.end) for e in events]


# -- post-processing on known tracks -------------------------------------------------------
def test_a_threshold_alone_gives_the_runs_above_it():
    events = detect({SPEECH_AT: [0.2, 0.6, 0.4, 0.7, 0.9, 0.1]}, EXACT)
    assert spans(events) == [("Speech", 0.4, 0.8), ("Speech", 1.2, 2.0)]
    assert [e.probability for e in events] == [pytest.approx(0.6), pytest.approx(0.9)]
    assert events[0].index == SPEECH_AT


def test_hysteresis_bridges_a_dip_and_ignores_runs_that_never_reach_high():
    track = [0.2, 0.6, 0.4, 0.7, 0.2, 0.45, 0.45, 0.1]
    events = detect({SPEECH_AT: track}, EventOptions(**{**asdict(EXACT), "low_ratio": 0.6}))
    assert spans(events) == [("Speech", 0.4, 1.6)]  # 0.4 >= 0.3 joins; 0.45s never reach 0.5
    active = hysteresis(torch.tensor(track)[:, None], torch.tensor([0.5]), torch.tensor([0.3]))
    assert active[:, 0].tolist() == [False, True, True, True, False, False, False, False]


def test_median_filter_removes_a_spike_and_fills_a_dropout():
    spike = [0.0, 0.0, 0.9, 0.0, 0.0]
    dropout = [0.9, 0.9, 0.1, 0.9, 0.9]
    with_median = EventOptions(**{**asdict(EXACT), "median_bins": 3})
    assert detect({SPEECH_AT: spike}, with_median) == []
    assert spans(detect({SPEECH_AT: dropout}, with_median)) == [("Speech", 0.0, 2.0)]
    assert len(detect({SPEECH_AT: dropout}, EXACT)) == 2
    # the edges repeat the end bins, so a run that starts the file keeps its first bin
    assert median_filter(torch.tensor([[0.9], [0.9], [0.0]]), 3)[:, 0].tolist() == [
        pytest.approx(0.9),
        pytest.approx(0.9),
        0.0,
    ]


def test_gap_merging_then_minimum_duration():
    track = {SPEECH_AT: [0.9, 0.0, 0.9, 0.0, 0.0, 0.9, 0.0]}
    merged = EventOptions(**{**asdict(EXACT), "max_gap": 0.4})
    assert spans(detect(track, merged)) == [("Speech", 0.0, 1.2), ("Speech", 2.0, 2.4)]
    kept = EventOptions(**{**asdict(EXACT), "max_gap": 0.4, "min_duration": 0.8})
    assert spans(detect(track, kept)) == [("Speech", 0.0, 1.2)]
    assert spans(detect(track, EventOptions(**{**asdict(EXACT), "max_gap": 0.8}))) == [
        ("Speech", 0.0, 2.4)
    ]


def test_the_last_event_ends_with_the_audio():
    events = detect({SPEECH_AT: [0.0, 0.9, 0.9]}, EXACT, duration=1.03)
    assert spans(events) == [("Speech", 0.4, 1.03)]


def test_rollup_reports_ancestors_and_joins_their_members():
    track = {BARK: [0.9, 0.9, 0.0, 0.0, 0.0], DOG: [0.0, 0.0, 0.8, 0.0, 0.0]}
    assert spans(detect(track, EXACT)) == [("Bark", 0.0, 0.8), ("Dog", 0.8, 1.2)]
    animal = detect(track, EventOptions(**{**asdict(EXACT), "rollup_depth": 0}))
    assert spans(animal) == [("Animal", 0.0, 1.2)]
    assert animal[0].probability == pytest.approx(0.9)
    pets = detect(track, EventOptions(**{**asdict(EXACT), "rollup_depth": 1}))
    assert spans(pets) == [("Domestic animals, pets", 0.0, 1.2)]
    deep = detect(track, EventOptions(**{**asdict(EXACT), "rollup_depth": 3}))
    assert spans(deep) == [("Bark", 0.0, 0.8), ("Dog", 0.8, 1.2)]  # Dog has no depth 3


def test_classes_filter_and_unreported_classes():
    track = {SPEECH_AT: [0.9, 0.9], BARK: [0.9, 0.9]}
    only = EventOptions(**{**asdict(EXACT), "classes": ("speech",)})
    assert spans(detect(track, only)) == [("Speech", 0.0, 0.8)]
    with pytest.raises(ValueError, match="unknown class 'Barking'"):
        detect(track, EventOptions(classes=("Barking",)))
    probabilities = torch.zeros(2, len(LABELS))
    probabilities[:, [SPEECH_AT, BARK]] = 0.9
    thresholds = torch.full((len(LABELS),), 0.5)
    events = detect_events(
        probabilities, LABELS, thresholds, EXACT, candidates=[BARK], duration=0.8, bin_seconds=0.4
    )
    assert spans(events) == [("Bark", 0.0, 0.8)]


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"low_ratio": 0.0}, "low_ratio"),
        ({"low_ratio": 1.5}, "low_ratio"),
        ({"median_bins": 2}, "median_bins"),
        ({"median_bins": 0}, "median_bins"),
        ({"min_duration": -1.0}, "min_duration"),
        ({"max_gap": float("nan")}, "max_gap"),
        ({"rollup_depth": -1}, "rollup_depth"),
    ],
)
def test_bad_options_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        EventOptions(**bad)


def test_the_ontology_holds_every_class_and_known_relations():
    nodes = set(ontology_parents()) | {p for ps in ontology_parents().values() for p in ps}
    assert set(LABELS.ids) <= nodes and len(nodes) == 632
    names = LABELS.names
    assert [[names[i] for i in p] for p in label_paths(LABELS, BARK)] == [
        ["Animal", "Domestic animals, pets", "Dog", "Bark"]
    ]
    snare = LABELS.index("Snare drum")
    assert [names[i] for i in label_paths(LABELS, snare)[0]] == [
        "Music", "Musical instrument", "Percussion", "Drum", "Snare drum"
    ]  # fmt: skip
    # Speech's parents (Human voice, Human sounds) are not classes: it is a top class
    assert ancestors_at_depth(LABELS, SPEECH_AT, 0) == [SPEECH_AT]
    hiss = LABELS.index("Hiss")  # under Cat, Snake and Steam
    assert [names[i] for i in ancestors_at_depth(LABELS, hiss, 0)] == ["Animal", "Water"]


# -- the event track -----------------------------------------------------------------------
def features(n_bins: int, seed: int = 1) -> torch.Tensor:
    """Pooled bins ``[n_bins, n_layer, d]`` for a random head (mechanics, not quality)."""
    return torch.randn(n_bins, 4, 384, generator=torch.Generator().manual_seed(seed))


def test_sliding_track_is_the_head_on_a_window_around_each_bin_streamed_in_pieces():
    head = random_head()
    bins = features(12)
    track = EventTrack(head, TrackOptions("sliding", 2.0))  # 5 bins: 2 before, 2 after
    for piece in bins.split([3, 1, 5, 3]):
        track.add(piece)
    got = track.finish()
    with torch.inference_mode():
        expected = torch.cat(
            [head(bins[max(0, b - 2) : b + 3].transpose(0, 1)[None]) for b in range(12)]
        )
    assert got.shape == (12, 527)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_frames_track_is_the_heads_frame_logits_per_block():
    head = random_head()
    bins = features(30)
    track = EventTrack(head, TrackOptions("frames", 4.0))  # blocks of 10 bins
    for piece in bins.split([7, 13, 10]):
        track.add(piece)
    got = track.finish()
    with torch.inference_mode():
        blocks = [head.frame_logits(b.transpose(0, 1)[None])[0] for b in bins.split(10)]
    torch.testing.assert_close(got, torch.cat(blocks), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head_type", ["tl_tr", "mean_linear", "wa_tr"])
def test_a_one_bin_windows_frame_logits_are_its_window_logits(head_type):
    config = HeadConfig(head_type, 4, 384, list(LABELS.names), list(LABELS.ids))
    torch.manual_seed(0)
    head = TaggingHead(config).eval()
    one = features(1).transpose(0, 1)[None]
    with torch.inference_mode():
        torch.testing.assert_close(head.frame_logits(one)[:, 0], head(one))
        assert head.frame_logits(features(25).transpose(0, 1)[None]).shape == (1, 25, 527)


def test_track_options_are_checked():
    with pytest.raises(ValueError, match="track method"):
        TrackOptions("median")
    with pytest.raises(ValueError, match="multiple of 0.4"):
        TrackOptions("sliding", 1.0)


# -- on real audio ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> WhisperAT:
    return load_model("tiny.en", device="cpu")


@pytest.fixture(scope="module")
def padded_speech(tmp_path_factory) -> Path:
    """4 s of silence, the 7.1 s LibriVox sentence, 4 s of silence: speech at 4.0-11.1 s."""
    import soundfile

    speech = load_audio(str(SPEECH))
    silence = np.zeros(4 * 16000, dtype=np.float32)
    path = tmp_path_factory.mktemp("events") / "padded_speech.wav"
    soundfile.write(path, np.concatenate([silence, speech, silence]), 16000)
    return path


def test_tag_events_cli_finds_the_speech_where_it_is(padded_speech, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["tag", str(padded_speech), "--events", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sound events (onset -> offset):" in printed
    with open(out / "padded_speech.events.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == EVENT_COLUMNS
    speech = [r for r in rows[1:] if r[3] == "Speech"]
    assert len(speech) == 1 and speech[0][0] == "padded_speech.wav"
    onset, offset = float(speech[0][1]), float(speech[0][2])
    assert onset < 7.0 < offset <= 15.1  # one event over the sentence, inside the file
    saved = json.loads((out / "padded_speech.json").read_text())
    assert "event_track" not in saved
    assert ["Speech", onset, offset] in [
        [e["label"], e["start"], e["end"]] for e in saved["sound_events"]
    ]


def test_speech_events_start_and_end_near_the_speech(model, padded_speech):
    # speech is at 4.0-11.1 s; each bin's 2 s window reaches 1 s beyond it, and hysteresis
    # extends a run while it stays over half the threshold: at most 2 s early or late.
    # A head trained on 10 s labels alone hears speech in the silence around it (the
    # event ran from 0.0 s); the shipped head is trained on crops (train --crop-seconds)
    tagging = model.tag(padded_speech, track_options=TrackOptions())
    (speech,) = [e for e in tagging.events() if e.label == "Speech"]
    assert 2.0 <= speech.start <= 4.4 and 10.8 <= speech.end <= 13.2
    speech_track = tagging.track[:, tagging.labels.index("Speech")].sigmoid()
    assert speech_track[:5].max() < 0.2  # the first 2 s of silence


def test_writers_round_trip_the_events(model, padded_speech, tmp_path):
    tagging = model.tag(padded_speech, track_options=TrackOptions())
    options = EventOptions(rollup_depth=0)
    events = tagging.events(options)
    assert events and all(e.label in LABELS.names for e in events)
    written = write_outputs(
        tagging.to_result_fields(),
        padded_speech,
        tmp_path,
        ["json", "events"],
        event_options=options,
    )
    assert [p.name for p in written] == ["padded_speech.json", "padded_speech.events.tsv"]
    with open(written[1], encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(r["event_label"], float(r["onset"]), float(r["offset"])) for r in rows] == [
        (e.label, e.start, e.end) for e in events
    ]
    assert {r["filename"] for r in rows} == {"padded_speech.wav"}
    saved = json.loads(written[0].read_text())
    assert [SoundEvent(**e) for e in saved["sound_events"]] == events
    back = TaggingResult.from_result(tagging.to_result_fields())
    assert back.events(options) == events  # the track survives the result dict


def test_transcribe_results_carry_sound_events(model, padded_speech):
    result = model.transcribe(str(padded_speech), event_options=EventOptions())
    events = result["sound_events"]
    assert events == [asdict(e) for e in TaggingResult.from_result(result).events()]
    speech = [e for e in events if e["label"] == "Speech"]
    assert len(speech) == 1 and speech[0]["start"] < 7.0 < speech[0]["end"]
    assert set(speech[0]) == {"label", "index", "start", "end", "probability"}
    (batched,) = model.transcribe_many(
        [str(padded_speech)], batch_size=2, track_options=TrackOptions()
    )
    assert [e["label"] for e in batched["sound_events"]] == [e["label"] for e in events]


def test_no_event_track_unless_asked(model, padded_speech):
    """The track costs several times the tags' head work: only events ask for it."""
    result = model.transcribe(str(padded_speech))
    assert "sound_events" not in result and "event_track" not in result
    assert result["audio_tag"].shape[0] == 2  # the tags themselves are there
    tagging = model.tag(padded_speech)
    assert tagging.track is None
    with pytest.raises(ValueError, match="no event track: ask for one"):
        tagging.events()


# -- the evaluation's reference and options --------------------------------------------------
def test_reference_events_come_from_the_placements_and_join_repeats(tmp_path):
    from whisper_at_research.training.sed import TrackChoice, reference_events

    row = {
        "path": "clips/test/a.flac",
        "start": 0.0,
        "end": 10.0,
        "labels": [BARK, DOG, SPEECH_AT],
        "split": "test",
        "recording_id": "x:bark",
        "events": [
            {"start": 1.0, "end": 2.0, "labels": [BARK, DOG]},
            {"start": 1.5, "end": 3.0, "labels": [BARK, DOG]},  # overlaps the first
            {"start": 6.0, "end": 7.0, "labels": [BARK, DOG]},
            {"start": 0.0, "end": 10.0, "labels": [SPEECH_AT]},
        ],
    }
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps(row) + "\n")
    clip_id = "clips/test/a.flac@0-10"
    reference = reference_events(manifest, [clip_id], LABELS, {BARK, SPEECH_AT})
    assert reference == {
        clip_id: [(0.0, 10.0, "Speech"), (1.0, 3.0, "Bark"), (6.0, 7.0, "Bark")]
    }  # Dog is not among the scored classes
    assert TrackChoice.parse("window").options is None
    assert TrackChoice.parse("sliding:2").options == TrackOptions("sliding", 2.0)
    assert TrackChoice.parse("frames:10").name == "frames:10"
    with pytest.raises(ValueError, match="bad track 'sliding:1'"):
        TrackChoice.parse("sliding:1")


def test_bad_event_options_are_usage_errors(tmp_path, capsys):
    argv = ["tag", str(SPEECH), "--events", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--event-median-bins", "2", "--model", "no-such-model"])
    assert stop.value.code == 2  # before any model loads
    assert "median_bins must be an odd whole number" in capsys.readouterr().err
    assert main([*argv, "--event-class", "Barking"]) == 2
    assert "argument --event-class: unknown label(s) ['Barking']" in capsys.readouterr().err
    assert not (tmp_path / "out" / "librivox_sense_and_sensibility.events.tsv").exists()
