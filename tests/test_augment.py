"""Recording-chain augmentation: each transform measured on real speech, views stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_wav

from whisper_at.audio import SAMPLE_RATE, load_audio
from whisper_at.weights import load_whisper
from whisper_at_research.training.augment import (
    CODECS,
    AugmentConfig,
    Augmenter,
    AugmentError,
    band_limit,
    codec_round_trip,
    compress,
    measure_rt60,
    mix_at_snr,
    reverberate,
    rms,
    shoebox_rir,
    tilt,
    view_base_id,
)
from whisper_at_research.training.features import extract_features, load_features
from whisper_at_research.training.train import add_views

EXAMPLE = Path(__file__).parent.parent / "examples" / "librivox_sense_and_sensibility.wav"


@pytest.fixture(scope="module")
def male() -> np.ndarray:
    """7.1 s of LibriVox speech (examples/)."""
    return load_audio(EXAMPLE)


@pytest.fixture(scope="module")
def female(asterisk_prompts) -> np.ndarray:
    clip = asterisk_prompts[0]
    return load_audio(clip.path, format=clip.format)


def band_energy_db(x: np.ndarray, low: float, high: float) -> float:
    """Energy between ``low`` and ``high`` Hz relative to the whole signal's, in dB."""
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    band = power[(freqs >= low) & (freqs < high)].sum()
    return float(10 * np.log10(band / power.sum()))


def test_telephone_band_has_no_energy_outside_300_3400_hz(male):
    assert band_energy_db(male, 4000, 8000) > -30  # the speech has energy up there
    out = band_limit(male, 300, 3400)
    assert len(out) == len(male)
    assert band_energy_db(out, 4000, 8000) < -60
    assert band_energy_db(out, 0, 200) < -50
    kept = band_energy_db(out, 500, 3000) + 20 * np.log10(rms(out) / rms(male))
    assert kept == pytest.approx(band_energy_db(male, 500, 3000), abs=0.5)  # pass band kept


def test_tilt_moves_energy_between_low_and_high_bands(male):
    up, down = tilt(male, 4.0), tilt(male, -4.0)
    ratio = band_energy_db(male, 3000, 8000) - band_energy_db(male, 50, 500)
    assert band_energy_db(up, 3000, 8000) - band_energy_db(up, 50, 500) > ratio + 10
    assert band_energy_db(down, 3000, 8000) - band_energy_db(down, 50, 500) < ratio - 10


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_codec_round_trip_changes_the_waveform_keeps_duration_and_alignment(male, codec):
    kbps = CODECS[codec][2][0]
    out = codec_round_trip(male, codec, kbps)
    assert out.shape == male.shape and out.dtype == np.float32
    error = rms(out - male) / rms(male)
    assert error > 0.01  # lossy: the waveform changed
    assert np.corrcoef(out, male)[0, 1] > 0.85  # and still lines up with the input
    assert np.array_equal(codec_round_trip(male, codec, kbps), out)  # deterministic


def test_shoebox_rir_has_the_configured_rt60_and_reverb_lengthens_the_decay(male):
    room, source, mic = [6.0, 5.0, 3.0], [2.0, 2.0, 1.5], [4.0, 3.0, 1.2]
    for rt60 in (0.3, 0.6):
        assert measure_rt60(shoebox_rir(room, rt60, source, mic)) == pytest.approx(rt60, rel=0.2)
    padded = np.concatenate([male, np.zeros(SAMPLE_RATE, np.float32)])  # 1 s of silence
    wet = reverberate(padded, shoebox_rir(room, 0.6, source, mic))
    assert wet.shape == padded.shape
    assert rms(wet) == pytest.approx(rms(padded), rel=1e-4)
    tail = slice(len(male) + SAMPLE_RATE // 10, len(male) + SAMPLE_RATE // 5)  # 0.1-0.2 s after
    assert rms(padded[tail]) == 0
    assert 20 * np.log10(rms(wet[tail]) / rms(wet)) > -60  # the room rings on (dry: silence)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 12.5])
def test_mix_at_snr_hits_the_target_within_0_1_db(male, female, snr_db):
    mixed = mix_at_snr(male, female, snr_db)
    added = mixed - male
    measured = 10 * np.log10(np.mean(male.astype(np.float64) ** 2) / np.mean(added**2))
    assert measured == pytest.approx(snr_db, abs=0.1)
    assert len(mixed) == len(male)


def test_compression_reduces_the_crest_factor_and_applies_gain(male):
    out = compress(male, threshold_db=-35, ratio=8, gain_db=0)
    crest = np.abs(male).max() / rms(male)
    assert np.abs(out).max() / rms(out) < crest
    quiet = compress(male, threshold_db=0, ratio=2, gain_db=-20)  # nothing over threshold
    assert rms(quiet) == pytest.approx(rms(male) / 10, rel=1e-3)


def test_config_parse_and_errors():
    assert AugmentConfig.parse("all").families == ("reverb", "eq", "codec", "gain", "bed", "speech")
    assert AugmentConfig.parse("codec, reverb").families == ("codec", "reverb")
    with pytest.raises(AugmentError, match="unknown augmentation"):
        AugmentConfig.parse("reverb,echo")
    assert view_base_id("a/b.flac@0-10~aug3") == "a/b.flac@0-10"


def test_plans_are_seeded_and_rendering_is_deterministic(male, female):
    clips = {0: male[: 5 * SAMPLE_RATE], 1: female, 2: male[SAMPLE_RATE:]}
    labels = [["Speech"], ["Speech"], ["White noise"]]

    def augmenter(seed):
        config = AugmentConfig(seed=seed, probability=1.0, n_rooms=2, rt60=(0.2, 0.3))
        return Augmenter(config, labels, ["a", "b", "c"], [0, 1, 2], clips.__getitem__)

    a, b, other = augmenter(0), augmenter(0), augmenter(1)
    assert a.plan(0, 0) == b.plan(0, 0)
    assert a.plan(0, 0) != a.plan(0, 1)
    assert [a.plan(0, k) for k in range(4)] != [other.plan(0, k) for k in range(4)]
    plan = a.plan(0, 0)
    assert set(plan.steps) == {"reverb", "eq", "codec", "gain", "bed", "speech"}
    assert plan.steps["bed"]["clip"] == 2 and plan.steps["speech"]["clip"] == 1  # not itself
    x = clips[0]
    assert np.array_equal(a.render(x, plan), b.render(x, plan))
    assert not np.array_equal(a.render(x, plan), x)


def test_speech_over_views_carry_the_speech_label_and_only_train_clips_get_views(
    tmp_path, male, female
):
    rng = np.random.default_rng(0)
    noise = [0.05 * rng.standard_normal(10 * SAMPLE_RATE) for _ in range(3)]
    rows = [
        {"path": write_wav(tmp_path / "m.wav", male).name, "labels": ["Speech"], "source": "p1"},
        {"path": write_wav(tmp_path / "f.wav", female).name, "labels": ["Speech"], "source": "p2"},
    ]
    for i, x in enumerate(noise):
        rows.append({"path": write_wav(tmp_path / f"n{i}.wav", x).name, "labels": ["White noise"]})
        rows[-1]["source"] = f"n{i}"
    rows[-1]["split"] = "test"  # no views of this one
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = AugmentConfig(families=("speech",), copies=2, probability=1.0)
    torch.set_num_threads(1)
    out = tmp_path / "views"
    report = extract_features(load_whisper("tiny.en"), manifest, out, augment=config)
    assert report.n_clips == 8  # 4 train clips x 2 copies
    views = load_features(out)
    assert views.meta["augment"] == config.to_dict()
    names = views.labels.names
    for vid, target, sources in zip(views.ids, views.targets, views.sources, strict=True):
        got = {names[i] for i in torch.nonzero(target).flatten().tolist()}
        assert "Speech" in got
        if vid.startswith("n"):
            assert got == {"Speech", "White noise"}
            assert {"p1", "p2"} & set(sources)  # the speech partner's package
    side = json.loads((out / "shard-00000.json").read_text())
    assert all("speech" in steps for steps in side["augment"])

    # add_views: views of training clips only, none touching a held-out package
    base = load_features(out)  # stands in for a base store (same ids up to the suffix)
    base_ids = [view_base_id(i) for i in base.ids]
    train = base.subset([i for i, v in enumerate(base.ids) if v.endswith("~aug0")])
    train.ids = [view_base_id(i) for i in train.ids]
    joined, configs = add_views(train, [str(out)], held_out=("p2",))
    kept = joined.ids[len(train) :]
    assert kept and all(view_base_id(v) in base_ids for v in kept)
    assert all("p2" not in s for s in joined.sources[len(train) :])
    assert configs[0]["augment"] == config.to_dict()


def test_cli_rejects_an_unknown_family_before_loading_a_model(tmp_path, capsys):
    from whisper_at_research.training.cli import features_main

    with pytest.raises(SystemExit) as exit_info:
        features_main(
            [str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "v"), "--augment", "echo"]
        )
    assert exit_info.value.code == 2
    assert "unknown augmentation ['echo']" in capsys.readouterr().err
