"""Training side: feature extraction, head training, evaluation, metrics and the CLI.

Real tiny.en weights and real speech (LibriVox, Asterisk prompts) mixed with generated
sine waves, white noise and ticks; every clip is exactly 10 s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_wav
from safetensors import safe_open

import whisper_at
from whisper_at.audio import load_audio, window_log_mel
from whisper_at.heads import (
    HEAD_TYPES,
    HeadConfig,
    HeadError,
    TaggingHead,
    load_head,
    rewrite_head_config,
)
from whisper_at.labels import audioset_labels
from whisper_at.pipeline import WhisperAT
from whisper_at.tagging import AUTO_THRESHOLD_FALLBACK, TagAccumulator, TrackOptions
from whisper_at.weights import load_whisper
from whisper_at_research.training import (
    FeatureStoreError,
    ManifestError,
    evaluate_head,
    extract_features,
    labels_from_manifest,
    load_features,
    read_manifest,
    tagging_metrics,
    train_head,
)
from whisper_at_research.training.calibrate import choose_thresholds
from whisper_at_research.training.cli import (
    calibrate_main,
    evaluate_main,
    features_main,
    train_main,
)
from whisper_at_research.training.evaluate import report_markdown, top_k_hits
from whisper_at_research.training.features import pack_window
from whisper_at_research.training.metrics import calibration, f1_optimal_threshold
from whisper_at_research.training.source_split import (
    choose_held_out_sources,
    source_splits,
    with_scheme,
)
from whisper_at_research.training.train import lr_factor, lr_schedule, sample_weights

SR = 16000
CLIP = 10 * SR
KINDS = {  # kind -> AudioSet labels
    "sine": ["Sine wave"],
    "noise": ["White noise"],
    "tick": ["Tick"],
    "speech": ["Speech"],
    "female": ["Speech", "Female speech, woman speaking"],
    "sine_speech": ["Sine wave", "Speech"],
}
CUSTOM = {  # the same audio under a 3-class custom label set ("tick" clips are negatives)
    "sine": ["beep"],
    "noise": ["hiss"],
    "tick": [],
    "speech": ["voice"],
    "female": ["voice"],
    "sine_speech": ["beep", "voice"],
}
SPLIT_SIZES = {"train": 3, "valid": 1, "test": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, librivox_clips, asterisk_prompts):
    """31 clips (6 kinds x 5, one extra test clip): wav files and their row data.

    Sources: the train clips of rank 0, 1, 2 come from packages lab-0..lab-2, valid from
    lab-3, test from lab-0, the extra test clip mixes lab-1 and lab-2.
    """
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    male = [load_audio(c.path) for c in librivox_clips]
    female = [load_audio(c.path, format=c.format) for c in asterisk_prompts[:12]]
    t = np.arange(CLIP) / SR

    def sine():
        return 0.3 * np.sin(2 * np.pi * rng.uniform(300, 2000) * t)

    def talk(pool):
        x, pos = np.zeros(CLIP), 0
        while pos < CLIP - SR:
            piece = pool[rng.integers(len(pool))][: CLIP - pos]
            x[pos : pos + piece.size] = piece
            pos += piece.size + SR // 4
        return x

    def ticks():
        x = np.zeros(CLIP)
        x[rng.integers(0, CLIP - 50, 40)] = 0.9
        return x

    make = {
        "sine": sine,
        "noise": lambda: 0.1 * rng.standard_normal(CLIP),
        "tick": ticks,
        "speech": lambda: talk(male),
        "female": lambda: talk(female),
        "sine_speech": lambda: 0.5 * sine() + talk(male),
    }
    rows = []
    for i, (split, k) in enumerate((s, k) for s, n in SPLIT_SIZES.items() for k in range(n)):
        for kind in KINDS:
            path = write_wav(folder / f"{split}-{kind}-{k}.wav", make[kind]())
            rows.append(
                {
                    "path": path.name,
                    "kind": kind,
                    "split": split,
                    "rec": path.stem,
                    "source": [f"lab-{i % 4}"],
                }  # fmt: skip
            )
    extra = write_wav(folder / "test-sine-extra.wav", make["sine"]())
    rows.append(  # a mix of two packages
        {
            "path": extra.name,
            "kind": "sine",
            "split": "test",
            "rec": extra.stem,
            "source": ["lab-1", "lab-2"],
        }  # fmt: skip
    )
    order = rng.permutation(len(rows) - 1).tolist() + [len(rows) - 1]  # extra clip stays last
    return folder, [rows[i] for i in order]


def manifest_rows(rows: list[dict], labels: dict[str, list[str]], splits=None) -> list[dict]:
    return [
        {
            "path": r["path"],
            "labels": labels[r["kind"]],
            "split": r["split"],
            "recording": r["rec"],
            "source": r["source"],
        }  # fmt: skip
        for r in rows
        if splits is None or r["split"] in splits
    ]


@pytest.fixture(scope="module")
def loaded():
    return load_whisper("tiny.en")


@pytest.fixture(scope="module")
def store(dataset, loaded, tmp_path_factory):
    folder, rows = dataset
    manifest = write_manifest(folder / "manifest.jsonl", manifest_rows(rows, KINDS))
    out = tmp_path_factory.mktemp("store") / "features"
    report = extract_features(loaded, manifest, out, batch_size=2, shard_size=6, progress=False)
    return manifest, out, report


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    _, features, _ = store
    out = tmp_path_factory.mktemp("head") / "head.safetensors"
    result = train_head(
        features, "tl_tr", out=out, epochs=20, lr=1e-3, batch_size=8, seed=0, progress=False
    )
    return result


# -- metrics ---------------------------------------------------------------------------------
def test_metrics_on_a_hand_computed_example():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.7, 0.1], [0.3, 0.6, 0.2], [0.1, 0.9, 0.3]])
    m = tagging_metrics(targets, scores)
    # class 0: ranking pos(.9) neg(.8) pos(.3) neg(.1): AP = (1 + 2/3) / 2; AUC = 3/4
    # class 1: ranking neg(.9) pos(.7) pos(.6) neg(.2): AP = (1/2 + 2/3) / 2; AUC = 2/4
    # class 2: no positive -> left out of the means
    assert m.per_class[0]["ap"] == pytest.approx(5 / 6)
    assert m.per_class[0]["auc"] == pytest.approx(0.75)
    assert m.per_class[1]["ap"] == pytest.approx(7 / 12)
    assert m.per_class[1]["auc"] == pytest.approx(0.5)
    assert m.per_class[2]["ap"] is None and m.per_class[2]["positives"] == 0
    assert m.n_classes == 2
    assert m.mAP == pytest.approx((5 / 6 + 7 / 12) / 2)
    assert m.mAUC == pytest.approx(0.625)
    # d' = sqrt(2) * Phi^-1(0.625); Phi^-1(0.625) = 0.31863936396437514
    assert m.d_prime == pytest.approx(math.sqrt(2) * 0.31863936396437514)


def test_metrics_perfect_and_restricted():
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.4]])
    m = tagging_metrics(targets, scores, classes=[1])
    assert [r["index"] for r in m.per_class] == [1]
    assert (m.mAP, m.mAUC) == (1.0, 1.0)
    assert m.d_prime == math.inf
    empty = tagging_metrics(np.zeros((2, 2)), np.ones((2, 2)))
    assert math.isnan(empty.mAP) and math.isnan(empty.d_prime)


# -- recipe pieces ---------------------------------------------------------------------------
def test_lr_schedule_follows_the_paper_and_scales_down():
    assert lr_schedule(30) == (15, 5)
    assert lr_schedule(60) == (15, 5)
    assert lr_schedule(12) == (6, 2)
    assert lr_schedule(1) == (1, 1)
    assert [lr_factor(e, 15, 5, 0.75) for e in (15, 16, 20, 21, 30)] == [
        1.0,
        0.75,
        0.75,
        0.75**2,
        0.75**3,
    ]


def test_class_balanced_weights():
    targets = torch.tensor([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=torch.uint8)
    w = sample_weights(targets)
    assert w[0] == pytest.approx(1000 / 3.01)
    assert w[2] == pytest.approx(1000 / 3.01 + 1000 / 1.01)
    assert w[3] == pytest.approx(1000 / 1.01)  # unlabeled clips count as one more class


def test_packing_uses_the_pipelineswindow_log_mel():
    rng = np.random.default_rng(1)
    clips = [rng.standard_normal(CLIP).astype(np.float32) * 0.1 for _ in range(3)]
    full = pack_window(clips, 80)
    assert torch.equal(full, window_log_mel(torch.from_numpy(np.concatenate(clips)), 80))
    last = pack_window(clips[:1], 80)  # a last group of one clip: the end of a file
    assert torch.equal(last, window_log_mel(torch.from_numpy(clips[0]), 80))
    assert last.shape == (80, 3000) and torch.all(last[:, 1000:] == 0)


# -- manifests -------------------------------------------------------------------------------
def test_manifest_errors_name_the_problem(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"path": "a.wav", "labels": ["Speech"]}\n{"labels": []}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: missing 'path'"):
        read_manifest(bad)
    unknown = write_manifest(tmp_path / "u.jsonl", [{"path": "a.wav", "labels": ["Beep boop"]}])
    with pytest.raises(ManifestError, match="Beep boop.*--custom-labels"):
        extract_features("tiny.en", unknown, tmp_path / "f", progress=False)
    assert not (tmp_path / "f").exists()
    rows = [{"path": "a.wav", "labels": ["b", "a"]}, {"path": "b.wav", "labels": ["c"]}]
    clips = read_manifest(write_manifest(tmp_path / "c.jsonl", rows))
    assert labels_from_manifest(clips).names == ("a", "b", "c")
    assert clips[0].path == str(tmp_path / "a.wav") and clips[0].split == "train"
    assert clips[0].sources == ()  # manifests without "source" read as before


def test_manifest_sources_are_a_package_or_a_list(tmp_path):
    rows = [
        {"path": "a.wav", "source": "debian:flite=2.2-5"},
        {"path": "b.wav", "source": ["pypi:b==1", "debian:a=1"]},
    ]
    clips = read_manifest(write_manifest(tmp_path / "s.jsonl", rows))
    assert [c.sources for c in clips] == [("debian:flite=2.2-5",), ("debian:a=1", "pypi:b==1")]
    bad = write_manifest(tmp_path / "bad.jsonl", [{"path": "a.wav", "source": 3}])
    with pytest.raises(ManifestError, match="bad.jsonl:1: 'source' must be"):
        read_manifest(bad)


def test_corpus_builder_rows_are_accepted(tmp_path):
    row = {"path": "x.wav", "labels": [0, 137], "label_names": ["Speech", "Music"]}
    row |= {"recording_id": "rec1", "split": "valid", "start": 0.0, "end": 10.0}
    (clip,) = read_manifest(write_manifest(tmp_path / "m.jsonl", [row]))
    assert clip.labels == ("Speech", "Music") and clip.recording == "rec1"
    assert clip.split == "valid" and clip.end == 10.0


# -- feature extraction ----------------------------------------------------------------------
def test_extraction_shapes_and_meta(store, loaded):
    _, out, report = store
    assert report.n_clips == 31 and report.shards_written == 6 and report.shards_skipped == 0
    assert report.encoder_passes == 6  # 11 windows of 3 clips, batches of 2 within 6-clip shards
    data = load_features(out)
    assert data.features.shape == (31, 4, 25, 384)
    assert data.features.dtype == torch.float16
    assert torch.isfinite(data.features.float()).all()
    assert data.targets.shape == (31, 527) and data.targets.dtype == torch.uint8
    meta = json.loads((out / "meta.json").read_text())
    assert meta["whisper_name"] == "tiny.en" and meta["whisper_sha256"] == loaded.sha256
    assert (meta["n_layer"], meta["d_model"], meta["window_seconds"]) == (4, 384, 10)
    assert meta["clips_per_window"] == 3 and meta["complete"]
    assert len(meta["label_names"]) == 527
    speech = data.labels.index("Speech")
    assert all(
        bool(data.targets[i, speech]) == ("speech" in cid or "female" in cid)
        for i, cid in enumerate(data.ids)
    )
    assert data.splits.count("train") == 18 and data.splits.count("test") == 7
    with safe_open(str(out / "shard-00000.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {"features", "targets"}


def test_resume_does_no_encoder_work(store, loaded):
    manifest, out, _ = store
    before = load_features(out).features
    again = extract_features(loaded, manifest, out, batch_size=2, shard_size=6, progress=False)
    assert again.encoder_passes == 0 and again.shards_skipped == 6 and again.shards_written == 0
    assert torch.equal(load_features(out).features, before)


def test_interrupted_extraction_resumes(store, loaded, tmp_path):
    manifest, out, _ = store
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "shard-00002.json").unlink()  # as if killed while writing shard 2
    (copy / "shard-00002.safetensors").unlink()
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(FeatureStoreError, match="did not finish"):
        load_features(copy)
    again = extract_features(loaded, manifest, copy, batch_size=2, shard_size=6, progress=False)
    assert again.shards_written == 1 and again.encoder_passes == 1
    assert torch.equal(load_features(copy).features, load_features(out).features)


def test_a_changed_manifest_is_refused(store, loaded, tmp_path):
    manifest, out, _ = store
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[0]["labels"] = ["Tick"]
    changed = write_manifest(manifest.parent / "changed.jsonl", rows)
    with pytest.raises(FeatureStoreError, match="manifest .* changed"):
        extract_features(loaded, changed, out, batch_size=2, shard_size=6, progress=False)
    code = features_main([str(changed), "--out", str(out), "--no-progress"])
    assert code == 1


def test_features_equal_the_bins_that_tag_pools(store, loaded, dataset):
    """Clips 0-2 form one 30 s window; the extra last clip is a lone 10 s window (file end)."""
    folder, rows = dataset
    _, out, _ = store
    data = load_features(out)

    class Capture(TaggingHead):
        def forward(self, features):
            self.seen.append(features.detach().clone())
            return super().forward(features)

    head = Capture(capture_config())
    head.seen = []
    model = WhisperAT(loaded, head)
    audio = [load_audio(folder / rows[i]["path"]) for i in (0, 1, 2, 30)]
    assert all(a.shape == (CLIP,) for a in audio)
    # the frames event track calls frame_logits, not forward: only the tags' windows are seen
    frames = TrackOptions("frames", 10.0)
    result = model.tag(np.concatenate(audio[:3]), batch_size=1, track_options=frames)
    assert result.logits.shape[0] == 3
    pooled = torch.cat(head.seen)
    assert pooled.shape == (3, 4, 25, 384)
    expected = data.features[:3].float()
    torch.testing.assert_close(pooled, expected, atol=1e-2, rtol=2e-3)
    head.seen = []
    model.tag(audio[3], track_options=frames)
    torch.testing.assert_close(head.seen[0][0], data.features[30].float(), atol=1e-2, rtol=2e-3)


def capture_config() -> HeadConfig:
    labels = audioset_labels()
    return HeadConfig("mean_linear", 4, 384, list(labels.names), list(labels.ids))


# -- training --------------------------------------------------------------------------------
def test_training_learns_the_easy_set(trained, store):
    _, features, _ = store
    curves = trained.curves
    assert len(curves) == 20
    assert curves[-1]["train_loss"] < 0.5 * curves[0]["train_loss"]
    assert curves[-1]["valid_loss"] < curves[0]["valid_loss"]
    assert trained.metrics["mAP"] > 0.7
    train_eval = evaluate_head(trained.path, features, split="train", progress=False)
    assert train_eval["mAP"] > 0.85
    record = json.loads(trained.path.with_name(trained.path.name + ".curves.json").read_text())
    assert record["epochs"] == curves and record["options"]["lr_decay_start"] == 10


def test_saved_head_reloads_identically_and_carries_its_config(trained, store, loaded):
    _, features, _ = store
    head = load_head(trained.path)
    x = load_features(features, splits=["test"]).features.float()
    with torch.no_grad():
        torch.testing.assert_close(head(x), trained.head(x), atol=0, rtol=0)
    cfg = head.config
    assert cfg.whisper_name == "tiny.en" and cfg.whisper_sha256 == loaded.sha256
    assert len(cfg.label_names) == 527 and cfg.label_ids[0] == "/m/09x0r"
    names = {cfg.label_names[c] for c in cfg.trained_classes}
    assert names == {"Sine wave", "White noise", "Tick", "Speech", "Female speech, woman speaking"}
    assert (cfg.window_seconds, cfg.encoder_input_seconds) == (10.0, 30.0)
    assert set(cfg.metrics) == {"mAP", "mAUC", "d_prime"}
    assert cfg.metrics["mAP"] == pytest.approx(trained.metrics["mAP"])


def test_training_is_reproducible(store, tmp_path):
    _, features, _ = store
    kwargs = {"epochs": 2, "batch_size": 8, "seed": 3, "progress": False}
    a = train_head(features, "tl_tr", out=tmp_path / "a.safetensors", **kwargs)
    b = train_head(features, "tl_tr", out=tmp_path / "b.safetensors", **kwargs)
    for (k, va), vb in zip(a.head.state_dict().items(), b.head.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert a.curves[-1]["train_loss"] == b.curves[-1]["train_loss"]


def test_a_head_records_its_recipe_and_train_recipe_makes_it_again(store, tmp_path, capsys):
    _, features, _ = store
    first = tmp_path / "first.safetensors"
    train_head(
        features,
        "tl_tr_low",
        out=first,
        epochs=2,
        batch_size=8,
        seed=3,
        proj_dim=32,
        mixup_alpha=4.0,
        progress=False,
    )
    recipe = load_head(first).config.training
    assert (recipe["seed"], recipe["epochs"], recipe["proj_dim"]) == (3, 2, 32)
    assert recipe["lr"] == 1e-4 and recipe["mixup_alpha"] == 4.0  # defaults resolved
    assert "device" not in recipe and "progress" not in recipe
    again = tmp_path / "again.safetensors"
    assert (
        train_main([str(features), "--recipe", str(first), "--out", str(again), "--no-progress"])
        == 0
    )
    capsys.readouterr()
    for (k, va), vb in zip(
        load_head(first).state_dict().items(), load_head(again).state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k
    other_seed = tmp_path / "seed4.safetensors"
    assert (
        train_main(
            [
                str(features),
                "--recipe",
                str(first),
                "--seed",
                "4",
                "--out",
                str(other_seed),
                "--no-progress",
            ]
        )
        == 0
    )
    assert load_head(other_seed).config.training == {**recipe, "seed": 4}
    unrecorded = tmp_path / "unrecorded.safetensors"
    rewrite_head_config(
        first, unrecorded, dataclasses.replace(load_head(first).config, training={})
    )
    with pytest.raises(SystemExit) as exit_info:
        train_main([str(features), "--recipe", str(unrecorded), "--out", str(again)])
    assert exit_info.value.code == 2
    assert "records no training options" in capsys.readouterr().err


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_every_head_type_trains(store, tmp_path, head_type):
    _, features, _ = store
    out = tmp_path / f"{head_type}.safetensors"
    result = train_head(
        features, head_type, out=out, epochs=1, batch_size=8, proj_dim=64, progress=False
    )
    head = load_head(out)
    assert head.config.head_type == head_type
    assert math.isfinite(result.curves[0]["train_loss"])
    if head_type == "tl_tr_low":
        assert head.config.proj_dim == 64


def test_evaluation_report(trained, store, tmp_path):
    _, features, _ = store
    out = tmp_path / "eval" / "report.json"
    report = evaluate_head(trained.path, features, split="test", out=out, progress=False)
    assert report["n_clips"] == 7 and report["n_classes_evaluated"] == 5
    saved = json.loads(out.read_text())
    assert saved["mAP"] == pytest.approx(report["mAP"])
    by_name = {row["name"]: row for row in report["per_class"]}
    assert by_name["Sine wave"]["positives"] == 3 and by_name["Speech"]["positives"] == 3
    assert {row["name"] for row in report["confusions"]} == set(by_name)
    text = out.with_suffix(".md").read_text()
    assert "| Sine wave | 3 |" in text and "mAP" in text


# -- custom labels, end to end through the CLI -----------------------------------------------
def test_custom_label_set_end_to_end(dataset, tmp_path):
    folder, rows = dataset
    manifest = write_manifest(
        folder / "custom.jsonl", manifest_rows(rows, CUSTOM, splits=("train", "valid"))
    )
    labels = tmp_path / "labels.txt"
    labels.write_text("beep\nhiss\nvoice\n")
    features = tmp_path / "features"
    head = tmp_path / "custom.safetensors"
    assert features_main([str(manifest), "--out", str(features), "--labels", str(labels),
                          "--batch-size", "4", "--no-progress"]) == 0  # fmt: skip
    assert train_main([str(features), "--out", str(head), "--epochs", "12", "--lr", "1e-3",
                       "--batch-size", "8", "--no-progress"]) == 0  # fmt: skip
    report_path = tmp_path / "custom-eval.json"
    assert evaluate_main([str(head), "--features", str(features), "--split", "valid",
                          "--out", str(report_path), "--no-progress"]) == 0  # fmt: skip
    report = json.loads(report_path.read_text())
    assert {row["name"] for row in report["per_class"]} == {"beep", "hiss", "voice"}

    model = whisper_at.load_model("tiny.en", device="cpu", head=head)
    assert model.labels.names == ("beep", "hiss", "voice")
    sine = next(r for r in rows if r["kind"] == "sine" and r["split"] == "test")
    result = model.tag(folder / sine["path"])
    tags = result.windows(top_k=5)[0].tags
    assert {t.label for t in tags} <= {"beep", "hiss", "voice"}
    assert tags[0].label == "beep"


def test_cli_usage_and_errors(tmp_path, capsys):
    assert features_main([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "f")]) == 1
    assert "manifest not found" in capsys.readouterr().err
    assert train_main([str(tmp_path), "--out", str(tmp_path / "h.safetensors")]) == 1
    assert "not a feature store" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([str(tmp_path / "h.safetensors")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        train_main([str(tmp_path), "--out", "h", "--head-type", "nope"])
    assert exit_info.value.code == 2


def test_evaluation_from_a_manifest(trained, dataset, tmp_path):
    """Features extracted on the fly with the head's Whisper and label set, then scored."""
    folder, rows = dataset
    manifest = write_manifest(
        folder / "test-only.jsonl", manifest_rows(rows, KINDS, splits=("test",))
    )
    out = tmp_path / "from-manifest.json"
    code = evaluate_main(
        [str(trained.path), "--manifest", str(manifest), "--out", str(out), "--no-progress"]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["n_clips"] == 7 and report["n_classes_evaluated"] == 5
    assert report["mAP"] is not None and report["mAP"] > 0.5


def test_a_head_on_the_first_blocks_stops_the_encoder_there(store, dataset, loaded, tmp_path):
    _, features, _ = store
    out = tmp_path / "first2.safetensors"
    options = {"epochs": 4, "batch_size": 8, "layers": 2, "progress": False}
    result = train_head(features, "tl_tr", out=out, **options)
    head = load_head(out)
    assert (head.config.n_layer, head.config.encoder_layers) == (2, 4)
    assert result.curves[-1]["train_loss"] < result.curves[0]["train_loss"]
    model = WhisperAT(loaded, head)
    ran: list[int] = []
    hooks = [block.register_forward_pre_hook(lambda *_, i=i: ran.append(i))
             for i, block in enumerate(model.tap.encoder.blocks)]  # fmt: skip
    folder, rows = dataset
    audio = load_audio(folder / rows[0]["path"])
    try:
        early = model.tag(audio, at_time_res=2.0)
        assert ran == [0, 1]  # blocks 2 and 3 never started
        ran.clear()
        # the reference: a full pass through all four blocks, of which the head reads two
        with torch.inference_mode():
            model.tap(window_log_mel(torch.from_numpy(audio), 80)[None])
        assert ran == [0, 1, 2, 3]
        accumulator = TagAccumulator(model.head, 2.0)
        accumulator.add_pass(model.tap.last_pass.layers[0], 0, len(audio) // 160)
        torch.testing.assert_close(early.logits, accumulator.finish(), atol=1e-5, rtol=1e-5)
    finally:
        for hook in hooks:
            hook.remove()
    with pytest.raises(ValueError, match="expected features"):
        head(torch.zeros(1, 1, 5, 384))
    with pytest.raises(HeadError, match="reads an encoder of 6 blocks"):
        WhisperAT(loaded, TaggingHead(dataclasses.replace(head.config, encoder_layers=6)))
    with pytest.raises(HeadError, match="cannot read 5 of 4 blocks"):
        dataclasses.replace(head.config, n_layer=5)


# -- the held-out-source split ---------------------------------------------------------------
def test_held_out_source_split_assigns_whole_packages(store):
    _, features, _ = store
    data = load_features(features)
    # lab-0 holds 12 of 31 clips (over 30%); lab-3 is the smallest package that gives every
    # class a held-out package
    assert choose_held_out_sources(data) == ("lab-3",)
    split = source_splits(data)
    assert Counter(split.splits) == {"train": 18, "valid": 7, "test": 6}
    sides = {"test": set(), "rest": set()}
    for packages, side in zip(data.sources, split.splits, strict=True):
        sides["test" if side == "test" else "rest"] |= set(packages)
    assert sides["test"] == {"lab-3"} and not sides["test"] & sides["rest"]
    names = [data.labels.names[c] for c in split.covered]
    assert set(names) == {name for kind in KINDS.values() for name in kind}
    # held out by hand: the clip that mixes lab-1 and lab-2 goes to neither side
    by_hand = source_splits(data, ["lab-2"])
    extra = data.ids.index(next(i for i in data.ids if "extra" in i))
    assert by_hand.splits[extra] is None
    assert Counter(by_hand.splits) == {"train": 12, "valid": 12, "test": 6, None: 1}
    for packages, side in zip(data.sources, by_hand.splits, strict=True):
        assert ("lab-2" in packages) == (side in ("test", None))
    with pytest.raises(FeatureStoreError, match="no clip of this store comes from"):
        source_splits(data, ["lab-9"])
    # another build's list: packages this store lacks are held out too (nothing to train on)
    other_build = source_splits(data, ["lab-2", "lab-9"], absent_ok=True)
    assert other_build.held_out == ("lab-2", "lab-9")
    assert other_build.splits == by_hand.splits
    with pytest.raises(FeatureStoreError, match="no clip of this store comes from any of"):
        source_splits(data, ["lab-9"], absent_ok=True)


def test_top_k_hits_count_a_true_label_among_the_best_reported_classes():
    targets = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 1]])
    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.9, 0.8, 0.7, 0.0], [0.1, 0.2, 0.9, 0.3]])
    # true label at rank 1, rank 3, and rank 2 (class 3 is not reported, so only class 1
    # counts, second after class 2)
    hits = top_k_hits(targets, scores, reported=[0, 1, 2], ks=(1, 2, 3))
    assert hits == {"1": 1 / 3, "2": 2 / 3, "3": 1.0}
    assert top_k_hits(targets[:0], scores[:0], [0, 1]) == {"1": None, "3": None, "5": None}


def test_train_holds_out_the_packages_it_is_given(store, tmp_path, caplog):
    _, features, _ = store
    head = tmp_path / "given.safetensors"
    assert train_main([str(features), "--out", str(head), "--epochs", "1", "--batch-size", "8",
                       "--split-scheme", "source", "--held-out-sources", "lab-2,lab-9",
                       "--no-progress"]) == 0  # fmt: skip
    assert load_head(head).config.held_out_sources == ["lab-2", "lab-9"]
    assert "held out but not in this store: lab-9" in caplog.text
    curves = json.loads(head.with_name(head.name + ".curves.json").read_text())
    assert curves["n_train"] == 12  # as source_splits(data, ["lab-2"]) gives
    bad = tmp_path / "bad.safetensors"
    assert train_main([str(features), "--out", str(bad), "--held-out-sources", "lab-2"]) == 1
    assert not bad.exists()


def test_source_gain_trains_both_arms_without_h2_and_scores_them_on_it(store, tmp_path):
    """scripts/source_gain.py: H2 is the rule's choice once the added package is gone;
    one arm trains without both, the other with the added package, both score on H2."""
    import subprocess
    import sys

    _, features, _ = store
    script = Path(__file__).parents[1] / "scripts" / "source_gain.py"
    out = tmp_path / "gain"
    argv = [sys.executable, str(script), str(features), "--added", "lab-2", "--work",
            str(tmp_path / "heads"), "--head-type", "tl_tr", "--proj-dim", "0", "--epochs",
            "2", "--crop-seconds", "0", "--out", str(out), "--no-progress"]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, text=True)
    table = json.loads(out.with_suffix(".json").read_text())
    data = load_features(features)
    rest = data.subset([i for i, s in enumerate(data.sources) if "lab-2" not in s])
    assert table["h2"] == list(choose_held_out_sources(rest)) and "lab-2" not in table["h2"]
    arms = {row["arm"]: row for row in table["rows"]}
    for arm, held in (("without_added", ["lab-2", *table["h2"]]), ("with_added", table["h2"])):
        head = load_head(tmp_path / "heads" / arms[arm]["head"])
        assert head.config.held_out_sources == held
        assert arms[arm]["mAP"] is not None
    assert arms["with_added"]["n_train"] > arms["without_added"]["n_train"]
    assert "| with_added | 0 |" in out.with_suffix(".md").read_text()
    bad = [*argv[:3], "--added", "lab-9", *argv[5:]]
    failed = subprocess.run(bad, capture_output=True, text=True)
    assert failed.returncode != 0 and "no clip of" in failed.stderr and "lab-9" in failed.stderr
    # --scored-on: H2 given by hand (a new build's packages judged on build 4's eight)
    given = [*argv[:6], str(tmp_path / "given"), *argv[7:-3], "--out", str(out), "--scored-on"]
    subprocess.run([*given, "lab-3", "--no-progress"], check=True, capture_output=True)
    table = json.loads(out.with_suffix(".json").read_text())
    assert table["h2"] == ["lab-3"] != list(choose_held_out_sources(rest))
    arms = {row["arm"]: row["head"] for row in table["rows"]}
    assert load_head(tmp_path / "given" / arms["without_added"]).config.held_out_sources == [
        "lab-2",
        "lab-3",
    ]
    assert "given with --scored-on" in out.with_suffix(".md").read_text()
    failed = subprocess.run([*given, "lab-2"], capture_output=True, text=True)
    assert failed.returncode != 0 and "share ['lab-2']" in failed.stderr


def test_package_folds_score_every_package_with_a_head_that_never_saw_it(store, tmp_path):
    """scripts/package_folds.py: the folds partition the packages, each fold's head is
    trained without exactly its packages, and a class's pooled positives are the
    single-fold clips that carry it."""
    import subprocess
    import sys

    _, features, _ = store
    script = Path(__file__).parents[1] / "scripts" / "package_folds.py"
    out, work = tmp_path / "folds", tmp_path / "heads"
    argv = [sys.executable, str(script), str(features), "--work", str(work), "--folds", "2",
            "--head-type", "tl_tr", "--proj-dim", "0", "--epochs", "2", "--crop-seconds", "0",
            "--out", str(out), "--no-progress"]  # fmt: skip
    subprocess.run([*argv, "--only-fold", "1"], check=True, capture_output=True, text=True)
    assert [p.name for p in work.glob("*.safetensors")] == ["fold1of2-tl_tr-e2-s0.safetensors"]
    subprocess.run(argv, check=True, capture_output=True, text=True)
    report = json.loads(out.with_suffix(".json").read_text())
    data = load_features(features)
    folds = [f["packages"] for f in report["folds"]]
    assert sorted(p for f in folds for p in f) == sorted({p for s in data.sources for p in s})
    trained = []
    for i, packages in enumerate(folds):
        head = load_head(work / f"fold{i}of2-tl_tr-e2-s0.safetensors")
        assert head.config.held_out_sources == packages
        assert report["folds"][i]["clips"] == sum(set(s) <= set(packages) for s in data.sources)
        trained.append({head.config.label_names[c] for c in head.config.reported_classes})
    labels = audioset_labels()
    for row in report["per_class"]:
        column = data.meta["label_ids"].index(labels.ids[labels.names.index(row["name"])])
        carried = [(f, s) for f, fold in enumerate(folds) for i, s in enumerate(data.sources)
                   if set(s) <= set(fold) and data.targets[i, column]]  # fmt: skip
        assert row["positives"] + row["positives_untrained"] == len(carried)
        seen = [s for f, s in carried if row["name"] in trained[f]]
        assert row["positives"] == len(seen) and row["packages"] == len(
            {p for s in seen for p in s}
        )
        assert 0 <= row["ap"] <= 1
        top3 = row["top3_on_its_clips"]
        assert set(top3) <= trained[0] | trained[1] and sum(top3.values()) <= 3 * len(seen)
        assert all(0 < n <= len(seen) for n in top3.values())
    assert 0 <= report["top1"] <= report["top3"] <= 1
    assert "Leave-packages-out cross-validation over 2 folds" in out.with_suffix(".md").read_text()
    failed = subprocess.run([*argv[:6], "9", *argv[7:]], capture_output=True, text=True)
    assert failed.returncode != 0 and "--folds must be between 2 and" in failed.stderr

    # --never-train: no head trains on the package, its own fold still scores it
    never = folds[1][0]
    argv[argv.index(str(work))] = str(tmp_path / "never")
    subprocess.run([*argv, "--never-train", never], check=True, capture_output=True, text=True)
    without = json.loads(out.with_suffix(".json").read_text())
    assert [f["packages"] for f in without["folds"]] == folds
    assert [f["clips"] for f in without["folds"]] == [f["clips"] for f in report["folds"]]
    for i, packages in enumerate(folds):
        head = load_head(tmp_path / "never" / f"fold{i}of2-tl_tr-e2-s0.safetensors")
        assert head.config.held_out_sources == sorted({*packages, never})
    assert f"no head trained on {never}" in out.with_suffix(".md").read_text()
    failed = subprocess.run([*argv, "--never-train", "lab-9"], capture_output=True, text=True)
    assert failed.returncode != 0 and "the store has no package lab-9" in failed.stderr

    # --ensemble: members must share the fold's held-out packages; a head averaged with
    # itself scores as it does alone
    argv[argv.index(str(tmp_path / "never"))] = str(work)
    itself = str(work / "fold{fold}of2-tl_tr-e2-s0.safetensors")
    subprocess.run([*argv, "--ensemble", itself], check=True, capture_output=True, text=True)
    averaged = json.loads(out.with_suffix(".json").read_text())
    assert averaged["per_class"] == report["per_class"] and averaged["mAP"] == report["mAP"]
    assert f"probabilities averaged with `{itself}`" in out.with_suffix(".md").read_text()
    other = str(tmp_path / "never" / "fold{fold}of2-tl_tr-e2-s0.safetensors")
    failed = subprocess.run([*argv, "--ensemble", other], capture_output=True, text=True)
    assert failed.returncode != 0 and "not trained without exactly" in failed.stderr
    failed = subprocess.run([*argv, "--ensemble", other + "x"], capture_output=True, text=True)
    assert failed.returncode != 0 and "--ensemble: no head" in failed.stderr


def test_evaluate_reports_both_splits(trained, store, tmp_path, capsys):
    _, features, _ = store
    head = tmp_path / "held-out.safetensors"
    assert train_main([str(features), "--out", str(head), "--epochs", "12", "--lr", "1e-3",
                       "--batch-size", "8", "--split-scheme", "source",
                       "--no-progress"]) == 0  # fmt: skip
    assert load_head(head).config.held_out_sources == ["lab-3"]
    curves = json.loads(head.with_name(head.name + ".curves.json").read_text())
    assert curves["n_train"] == 18 and curves["n_valid"] == 7
    capsys.readouterr()
    out = tmp_path / "both.json"
    assert evaluate_main([str(head), "--features", str(features), "--out", str(out),
                          "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "test by recording: 7 clips" in printed
    assert "test held-out sources (trained without them): 6 clips" in printed
    report = json.loads(out.read_text())
    held = report["held_out_source"]
    assert held["available"] and held["held_out_sources"] == ["lab-3"]
    assert held["trained_without_them"] and held["n_clips"] == 6 and held["mAP"] is not None
    assert 0 <= held["calibration"]["ece"] <= 1
    hits = held["top_k_hit"]
    assert 0 <= hits["1"] <= hits["3"] <= hits["5"] <= 1
    assert sum(b["count"] for b in held["calibration"]["bins"]) == 6 * held["n_classes_evaluated"]
    text = out.with_suffix(".md").read_text()
    assert "| held-out sources | 6 |" in text and "trained without them" in text
    assert "| top-1 | top-3 |" in text
    # a head trained on every package is flagged: its number does not measure unseen sources
    recording = evaluate_head(trained.path, features, progress=False)
    assert recording["held_out_source"]["trained_without_them"] is False
    assert "do not measure unseen sources" in report_markdown(recording)


def test_a_store_without_sources_says_why_it_has_no_source_split(trained, store, tmp_path):
    """A format 1 store (before sources were recorded) still evaluates by recording."""
    _, features, _ = store
    old = tmp_path / "format1"
    shutil.copytree(features, old)
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    for sidecar in old.glob("shard-*.json"):
        side = json.loads(sidecar.read_text())
        del side["sources"]
        sidecar.write_text(json.dumps(side))
    data = load_features(old)
    assert data.sources is None
    with pytest.raises(FeatureStoreError, match="before feature format 2"):
        with_scheme(data, "source")
    report = evaluate_head(trained.path, old, progress=False)
    assert report["n_clips"] == 7
    assert not report["held_out_source"]["available"]
    assert "extract the features again" in report["held_out_source"]["reason"]


# -- decision thresholds and calibration -----------------------------------------------------
def test_f1_optimal_threshold_on_known_scores():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3])
    targets = np.array([1, 0, 1, 0, 0])
    # >= 0.9: F1 2/3; >= 0.8: 1/2; >= 0.7: 4/5; >= 0.6: 2/3; >= 0.3: 4/7
    threshold, f1 = f1_optimal_threshold(targets, scores)
    assert threshold == 0.7 and f1 == pytest.approx(0.8)
    # a tie (F1 2/3 at >= 0.9 and at >= 0.6) goes to the higher threshold
    tie = f1_optimal_threshold(np.array([1, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6]))
    assert tie == (0.9, pytest.approx(2 / 3))
    # with a tolerance: the highest threshold within it of the best (0.9, F1 2/3 of 4/5)
    assert f1_optimal_threshold(targets, scores, tolerance=0.15)[0] == 0.9
    # equal scores are one candidate
    assert f1_optimal_threshold(np.array([1, 1, 0]), np.array([0.4, 0.4, 0.4]))[0] == 0.4
    with pytest.raises(ValueError, match="positive"):
        f1_optimal_threshold(np.array([0, 0]), np.array([0.1, 0.2]))


def test_calibration_error_on_known_scores():
    targets = np.array([[1, 0], [0, 0]])
    scores = np.array([[0.95, 0.05], [0.85, 0.15]])
    cal = calibration(targets, scores, n_bins=10)
    # bin 0.0-0.1: 0.05 vs 0; 0.1-0.2: 0.15 vs 0; 0.8-0.9: 0.85 vs 0; 0.9-1.0: 0.95 vs 1
    assert cal["ece"] == pytest.approx((0.05 + 0.15 + 0.85 + 0.05) / 4)
    assert [b["count"] for b in cal["bins"]] == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert cal["bins"][9]["observed"] == 1.0 and "observed" not in cal["bins"][5]


def test_thresholds_are_chosen_per_class_with_a_fallback():
    targets = np.zeros((10, 3), dtype=np.uint8)
    targets[:6, 0] = 1  # 6 positives: its own threshold
    targets[:2, 1] = 1  # 2 positives: the fallback
    scores = np.tile(np.linspace(0.95, 0.05, 10)[:, None], (1, 3))
    thresholds, rows = choose_thresholds(targets, scores, [0, 1], min_positives=5, floor=0.2)
    assert thresholds[0] == pytest.approx(scores[5, 0])  # the sixth-highest score, F1 1
    assert thresholds[1] == AUTO_THRESHOLD_FALLBACK and thresholds[2] == AUTO_THRESHOLD_FALLBACK
    assert [r["rule"] for r in rows] == ["f1", "fallback: few positives"]
    floored, _ = choose_thresholds(targets, scores * 0.1, [0], min_positives=5, floor=0.2)
    assert floored[0] == 0.2
    # a class the scores do not separate (best F1 1/3, "tag everything") gets the fallback
    noise = np.zeros((10, 1), dtype=np.uint8)
    noise[[5, 9], 0] = 1
    weak, rows = choose_thresholds(noise, scores[:, :1], [0], min_positives=2, min_f1=0.5)
    assert weak == [AUTO_THRESHOLD_FALLBACK] and rows[0]["rule"] == "fallback: low F1"
    # the tolerance takes the highest threshold within it of the best F1
    flat = np.array([1, 0, 1, 1, 1, 1, 0, 0, 0, 0], dtype=np.uint8)[:, None]
    exact, _ = choose_thresholds(flat, scores[:, :1], [0], min_positives=1, tolerance=0.0)
    near, rows = choose_thresholds(flat, scores[:, :1], [0], min_positives=1, tolerance=0.12)
    assert exact[0] == pytest.approx(scores[5, 0])  # F1 10/11
    assert near[0] == pytest.approx(scores[4, 0]) and rows[0]["f1"] == pytest.approx(0.8)


def test_calibrate_stores_thresholds_and_keeps_the_weights(trained, store, tmp_path, capsys):
    _, features, _ = store
    out = tmp_path / "calibrated.safetensors"
    assert calibrate_main([str(trained.path), "--features", str(features), "--out", str(out),
                           "--min-positives", "1"]) == 0  # fmt: skip
    assert "ECE" in capsys.readouterr().out
    before, after = load_head(trained.path), load_head(out)
    assert before.config.thresholds is None  # heads from before thresholds load with none
    thresholds = after.config.thresholds
    assert thresholds is not None and len(thresholds) == after.config.n_classes
    with safe_open(str(trained.path), "pt") as a, safe_open(str(out), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key))
    assert dataclasses.replace(after.config, thresholds=None) == before.config
    report = json.loads(out.with_name(out.name + ".thresholds.json").read_text())
    assert {r["rule"] for r in report["classes"]} == {"f1"}
    speech = audioset_labels().names.index("Speech")
    assert (
        thresholds[speech]
        == next(r for r in report["classes"] if r["index"] == speech)["threshold"]
    )
    # the model's tags use them by default
    model = whisper_at.load_model("tiny.en", device="cpu", head=out)
    assert model.head.config.thresholds == thresholds
