"""Crop training with strong targets: the manifest's placed events label short crops.

Real tiny.en features of real speech (LibriVox) placed in the first seconds of a clip
and silence after it, beside generated sine clips: a head trained on the 10 s labels
alone calls the silence speech (the encoder spreads what it heard over its window);
crops of 2 s labelled from the placements teach it which bins hold the speech.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_wav

from whisper_at.audio import load_audio
from whisper_at.labels import audioset_labels
from whisper_at.tagging import EventTrack, TrackOptions
from whisper_at.weights import load_whisper
from whisper_at_research.training import FeatureStoreError, extract_features, train_head
from whisper_at_research.training.cli import train_main
from whisper_at_research.training.train import bin_targets, crop, strong_targets

SR = 16000
LABELS = audioset_labels()
SPEECH, SINE = LABELS.index("Speech"), LABELS.index("Sine wave")
SPEECH_SECONDS = 3.0  # speech in [0, 3) s of every speech clip, silence after


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bin_targets_mark_the_bins_an_event_covers():
    events = [(0.5, 1.7, (SPEECH,)), (3.05, 3.15, (SINE,)), (3.7, 3.9, (SINE,))]
    targets = bin_targets(events, n_bins=25, n_classes=len(LABELS))
    # 0.5-1.7 s covers bin 1 (0.4-0.8) by 0.3 s, bins 2-3 whole, bin 4 (1.6-2.0) by 0.1 s
    assert torch.nonzero(targets[:, SPEECH]).flatten().tolist() == [1, 2, 3]
    # a 0.1 s click counts in the bin holding it; 3.7-3.9 s lies in bin 9 alone
    assert torch.nonzero(targets[:, SINE]).flatten().tolist() == [7, 9]
    assert targets.sum() == 5


def test_a_crop_carries_the_classes_heard_in_it():
    x = torch.arange(2 * 1 * 25 * 1, dtype=torch.float32).reshape(2, 1, 25, 1)
    strong = torch.zeros(2, 25, 3, dtype=torch.bool)
    strong[0, 0:3, 0] = True  # class 0 in the first 1.2 s of clip 0
    strong[1, 20:25, 1] = True  # class 1 in the last 2 s of clip 1
    xs, ys = crop(x, strong, bins=5, rng=np.random.default_rng(0))
    starts = [int(xs[i, 0, 0, 0] - x[i, 0, 0, 0]) for i in range(2)]
    assert xs.shape == (2, 1, 5, 1)
    for i, start in enumerate(starts):
        torch.testing.assert_close(xs[i], x[i, :, start : start + 5])
    assert ys[0].tolist() == [float(starts[0] < 3), 0.0, 0.0]
    assert ys[1].tolist() == [0.0, float(starts[1] + 5 > 20), 0.0]


@pytest.fixture(scope="module")
def store(tmp_path_factory, librivox_clips):
    """24 train clips (12 speech-then-silence, 12 sine), 4 valid, 3 test speech clips;
    from three packages (speech from two readers, every sine from one synthesizer)."""
    folder = tmp_path_factory.mktemp("crop-clips")
    rng = np.random.default_rng(1)
    voices = np.concatenate([load_audio(c.path) for c in librivox_clips])
    n_speech = int(SPEECH_SECONDS * SR)
    rows = []
    for split, n in (("train", 12), ("valid", 2), ("test", 3)):
        for k in range(n):
            start = int(rng.integers(0, voices.size - n_speech))
            speech = np.zeros(10 * SR)
            speech[:n_speech] = voices[start : start + n_speech]
            t = np.arange(10 * SR) / SR
            sine = 0.3 * np.sin(2 * np.pi * rng.uniform(300, 2000) * t)
            for kind, audio, label, end in (
                ("speech", speech, SPEECH, SPEECH_SECONDS),
                ("sine", sine, SINE, 10.0),
            ):
                if split == "test" and kind == "sine":
                    continue
                path = write_wav(folder / f"{split}-{kind}-{k}.wav", audio)
                event = {"start": 0.0, "end": end, "labels": [label]}
                rows.append(
                    {
                        "path": path.name,
                        "labels": [label],
                        "split": split,
                        "events": [event],
                        "recording": path.stem,
                        "source": [f"reader-{'ab'[k % 2]}" if kind == "speech" else "synth"],
                    }  # fmt: skip
                )
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path_factory.mktemp("crop-store") / "features"
    extract_features(load_whisper("tiny.en"), manifest, out, batch_size=3, progress=False)
    return manifest, out


def speech_track(head, features: Path) -> torch.Tensor:
    """Speech probability per 0.4 s bin of every test clip, as the runtime's default
    event track (2 s sliding windows) computes it: ``[clips, 25]``."""
    from whisper_at_research.training import load_features

    tracks = []
    for clip in load_features(features, splits=["test"]).features:
        track = EventTrack(head, TrackOptions("sliding", 2.0))
        track.add(clip.transpose(0, 1).float())
        tracks.append(torch.sigmoid(track.finish()[:, SPEECH]))
    return torch.stack(tracks)


def test_crops_keep_speech_out_of_the_silence_after_it(store, tmp_path):
    _, features = store
    # a linear head: on 24 clips it learns in a few hundred steps (TL-TR needs thousands)
    common = {"epochs": 60, "lr": 1e-3, "batch_size": 8, "mixup": 0.0, "progress": False}
    clip_level = train_head(features, "mean_linear", out=tmp_path / "clip.safetensors", **common)
    cropped = train_head(
        features, "mean_linear", out=tmp_path / "crop.safetensors", crop_seconds=2.0, **common
    )
    speech_bins = slice(1, 6)  # 0.4-2.4 s: inside the speech
    # 4.8-8 s: 1.8 s and more after the speech ended, and 2 s and more before the clip's end
    # (the store packs three clips per encoder window: the next clip's speech is near)
    silent_bins = slice(12, 20)
    before = speech_track(clip_level.head, features)
    after = speech_track(cropped.head, features)
    # trained on 10 s labels, the head hears speech in that silence (measured 0.78-0.95)
    assert before[:, silent_bins].min() > 0.7
    # trained on crops labelled from the placements, it does not (measured 0.35-0.44)
    assert after[:, silent_bins].max() < 0.5
    assert after[:, speech_bins].min() > 0.8  # and still hears the speech (0.85-0.93)
    curves = json.loads((tmp_path / "crop.safetensors.curves.json").read_text())
    assert curves["options"]["crop_seconds"] == 2.0


def test_strong_targets_follow_the_placements_and_spread_unplaced_classes(store):
    from whisper_at_research.training import load_features

    _, features = store
    data = load_features(features, splits=["train"])
    speech_clip = next(i for i, x in enumerate(data.ids) if "-speech-" in x)
    data.targets[speech_clip, LABELS.index("Music")] = 1  # a class no event carries
    strong = strong_targets(data)
    assert strong.shape == (len(data), 25, len(LABELS))
    # speech placed in [0, 3) s: bins 0-6 (bin 7, 2.8-3.2 s, is covered by 0.2 s: half)
    assert torch.nonzero(strong[speech_clip, :, SPEECH]).flatten().tolist() == list(range(8))
    assert strong[speech_clip, :, LABELS.index("Music")].all()
    sine_clip = next(i for i, x in enumerate(data.ids) if "-sine-" in x)
    assert strong[sine_clip, :, SINE].all() and strong[sine_clip].sum() == 25


def test_crop_training_needs_the_placed_events(store, tmp_path, capsys):
    manifest, features = store
    moved = tmp_path / "features"
    moved.mkdir()
    for f in features.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    meta = json.loads((moved / "meta.json").read_text())
    meta["manifest"] = str(tmp_path / "gone.jsonl")
    (moved / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FeatureStoreError, match="placed events of the store's manifest"):
        train_head(moved, out=tmp_path / "x.safetensors", epochs=1, crop_seconds=2.0)
    out = tmp_path / "bad.safetensors"
    assert train_main([str(features), "--out", str(out), "--crop-seconds", "1.0"]) == 1
    assert "crop_seconds must be a multiple of 0.4 s" in capsys.readouterr().err
    assert not out.exists()


def test_events_are_scored_on_the_held_out_packages(store, tmp_path):
    """``evaluate-events --split-scheme source`` scores the clips of packages held out."""
    from whisper_at_research.training.calibrate import calibrate_head
    from whisper_at_research.training.cli import evaluate_events_main
    from whisper_at_research.training.evaluate import evaluate_head
    from whisper_at_research.training.sed import TrackChoice, evaluate_events

    _, features = store
    window = [TrackChoice(None)]
    by_recording = evaluate_events(features, split="test", tracks=window, progress=False)
    assert by_recording["held_out_sources"] is None
    assert by_recording["n_clips"] == 3 and by_recording["classes"] == ["Speech"]
    # the rule holds out a reader (Speech is the one class two packages carry), the one with
    # fewer clips (reader-b: 8); its clips of every split are the held-out test
    out = tmp_path / "events.json"
    argv = [str(features), "--split-scheme", "source", "--track", "window", "--out", str(out)]
    assert evaluate_events_main([*argv, "--no-progress"]) == 0
    held_out = json.loads(out.read_text())
    assert held_out["held_out_sources"] == ["reader-b"] and held_out["split_scheme"] == "source"
    assert held_out["n_clips"] == 8 and held_out["n_reference_events"] == 8
    assert held_out["classes"] == ["Speech"]
    # the shipped head was trained on other packages: the report says these were seen
    assert held_out["trained_without_them"] is False
    assert "trained on these sources too" in out.with_suffix(".md").read_text()
    # a head trained without the other reader is scored on that reader's 9 clips by default
    path = tmp_path / "h.safetensors"
    trained = train_head(
        features, "mean_linear", out=path, epochs=1, progress=False,
        split_scheme="source", held_out_sources=("reader-a",),
    )  # fmt: skip
    report = evaluate_events(
        features, trained.head, split_scheme="source", tracks=window, progress=False
    )
    assert report["held_out_sources"] == ["reader-a"] and report["held_out_from"] == "the head's"
    assert report["trained_without_them"] is True and report["n_clips"] == 9
    given = evaluate_events(
        features, path, split_scheme="source", held_out_sources=["reader-b"], tracks=window,
        progress=False,
    )  # fmt: skip
    assert given["held_out_from"] == "given" and given["trained_without_them"] is False
    assert given["n_clips"] == 8
    # evaluate and calibrate take the same default
    held = evaluate_head(path, features, progress=False)["held_out_source"]
    assert held["held_out_sources"] == ["reader-a"] and held["trained_without_them"] is True
    calibrated = calibrate_head(path, features, tmp_path / "c.safetensors", split_scheme="source")
    assert calibrated["held_out_sources"] == ["reader-a"]
    # valid: the valid clips of reader-b (1) and the sine (2), and reader-b's test clip (1)
    assert calibrated["n_clips"] == 4
