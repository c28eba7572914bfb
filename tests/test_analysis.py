"""The paper-analysis commands: mixing math, WER, and quick runs on real audio and weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from whisper_at_research.analysis import (
    RobustnessGrid,
    best_layer_figure,
    bootstrap_wer,
    classwise,
    figure1,
    fit_noise,
    mix_at_snr,
    run_probe,
    run_robustness,
    snr_db,
    wer,
    word_errors,
)
from whisper_at_research.analysis.cli import main as analyze_main

SNRS = [-20, -15, -10, -5, 0, 5, 10, 15, 20]


# -- mixing -------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_seconds", [0.7, 12.0])  # looped, cropped
@pytest.mark.parametrize("snr", SNRS)
def test_mixture_snr_is_the_target(snr, noise_seconds):
    rng = np.random.default_rng(1)
    t = np.arange(int(3.3 * 16000)) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )
    noise = rng.normal(0, 0.05, int(noise_seconds * 16000)).astype(np.float32)
    mixture, scaled = mix_at_snr(speech, noise, snr, np.random.default_rng(7))
    assert mixture.shape == speech.shape == scaled.shape
    assert np.max(np.abs(mixture)) <= 0.99 + 1e-6
    gain_speech = mixture.astype(np.float64) - scaled  # the (possibly rescaled) speech
    assert abs(snr_db(gain_speech, scaled) - snr) < 0.1


def test_noise_is_looped_or_cropped():
    noise = np.arange(10, dtype=np.float32)
    looped = fit_noise(noise, 25, np.random.default_rng(0))
    assert len(looped) == 25
    assert np.all(np.diff(looped)[np.diff(looped) != 1] == -9)  # wraps 9 -> 0
    cropped = fit_noise(noise, 4, np.random.default_rng(0))
    assert len(cropped) == 4 and np.all(np.diff(cropped) == 1)


def test_mixing_real_recordings(asterisk_prompts):
    from whisper_at.audio import load_audio

    speech = load_audio(asterisk_prompts[0].path, format="g722")
    noise = load_audio(asterisk_prompts[1].path, format="g722")[:8000]  # shorter: looped
    for snr in (-20, 0, 20):
        mixture, scaled = mix_at_snr(speech, noise, snr)
        assert abs(snr_db(mixture - scaled, scaled) - snr) < 0.1


# -- WER ----------------------------------------------------------------------------------


def test_word_errors_known_pairs():
    e = word_errors("the cat sat on the mat", "the cat sat on a mat")
    assert (e.errors, e.ref_words, e.substitutions) == (1, 6, 1)
    assert e.wer == pytest.approx(1 / 6)
    # Whisper's normalizer: case, punctuation, spelled-out numbers
    assert word_errors("Hello, World!", "hello world").errors == 0
    assert word_errors("I have twenty dollars.", "I have $20").errors == 0
    e = word_errors("the dog barked", "the dog barked at night")
    assert (e.insertions, e.wer) == (2, pytest.approx(2 / 3))
    e = word_errors("please hold the line", "")
    assert (e.deletions, e.wer) == (4, 1.0)
    # corpus-level: (1 + 2) errors / (6 + 3) words
    refs = ["the cat sat on the mat", "the dog barked"]
    hyps = ["the cat sat on a mat", "the dog barked at night"]
    assert wer(refs, hyps) == pytest.approx(3 / 9)


def test_bootstrap_interval_holds_the_point():
    errors, words = np.array([0, 1, 2, 5]), np.array([5, 5, 5, 5])
    point, lo, hi = bootstrap_wer(errors, words, n_boot=500, seed=0)
    assert point == pytest.approx(8 / 20)
    assert lo <= point <= hi and lo < hi
    assert bootstrap_wer(errors, words, n_boot=500, seed=0) == (point, lo, hi)


# -- quick runs on real audio and tiny.en -------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A tiny corpus of real recordings (small packages: key clicks, farts, ringtones)."""
    from whisper_at_research.corpus import build_corpus

    out = tmp_path_factory.mktemp("analysis_corpus")
    build_corpus(
        out,
        max_recordings=10,
        sources=["fart", "bucklespring", "freedesktop"],
        clips_per_recording=1,
        mix=False,
        progress=False,
    )
    return out / "manifest.jsonl"


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("analysis_out")
    cache = tmp_path_factory.mktemp("analysis_cache")
    grid = RobustnessGrid(n_prompts=3, n_classes=3, snrs=(-20, 0, 20), min_groups=1)
    rob = run_robustness(
        "tiny.en", corpus, out, grid, batch_size=12, cache_dir=cache, n_boot=200, progress=False
    )
    probe = run_probe(
        "tiny.en",
        corpus,
        out,
        max_per_class=8,
        min_groups=2,
        n_folds=3,
        cache_dir=cache,
        progress=False,
    )
    return out, cache, rob, probe


def test_quick_robustness(quick_out):
    out, _, rob, _ = quick_out
    wer_at = {p["snr"]: p["wer"] for p in rob.per_snr}
    assert wer_at[20] < wer_at[-20]
    assert wer_at[20] < 0.25  # clean-ish speech is transcribed well
    assert all(p["lo"] <= p["wer"] <= p["hi"] for p in rob.per_snr)
    assert len(rob.per_class) == 3 and rob.n_transcriptions == 3 * 3 * 3
    saved = json.loads((out / "robustness_tiny.en.json").read_text())
    assert saved["per_snr"] == rob.per_snr
    assert (out / "robustness_tiny.en_items.csv").read_text().count("\n") == 28


def test_quick_probe_and_figures(quick_out):
    out, _, _, probe = quick_out
    assert len(probe.accuracy) == 5  # conv stem + 4 blocks
    assert max(probe.accuracy) > probe.chance + 0.1
    assert set(probe.best_layer.values()) <= set(range(5))
    assert probe.mixture is not None and set(probe.mixture["accuracy"]) == {"-20", "0", "20"}
    assert analyze_main(["best-layer", "--out", str(out)]) == 0
    assert figure1(out) == [str(out / "figure1.png")]
    summary = classwise(out, high_snr=20, low_snr=-20)
    assert summary["models"]["tiny.en"]["n_classes"] >= 1
    for name in ("figure1.png", "figure2.png", "figure3.png"):
        assert (out / name).stat().st_size > 1000
    assert best_layer_figure(out)["tiny.en"]["histogram"]


def test_cli_quick_reuses_the_cache(quick_out, corpus, capsys):
    out, cache, rob, _ = quick_out
    # same grid via the CLI: every transcript comes from the cache (no decoding)
    rc = analyze_main(
        [
            "robustness",
            "--prompts",
            "3",
            "--classes",
            "3",
            "--snrs",
            "-20",
            "0",
            "20",
            "--models",
            "tiny.en",
            "--manifest",
            str(corpus),
            "--out",
            str(out),
            "--cache-dir",
            str(cache),
            "--no-progress",
            "--min-recordings",
            "1",
            "--batch-size",
            "12",
            "--bootstrap",
            "200",
        ]
    )
    assert rc == 0
    assert "tiny.en:" in capsys.readouterr().out
    again = json.loads((out / "robustness_tiny.en.json").read_text())
    assert again["per_snr"] == rob.per_snr
    assert again["seconds"] < 30  # transcripts and features came from the cache
    assert analyze_main(["family", "--out", str(out)]) == 2  # no heads: says so
