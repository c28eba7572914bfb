"""Median voice pitch of a source's recordings: the listen-free check behind sex labels.

A voice is labelled "Male speech" or "Female speech" only where its folder or file name
says so *and* its pitch agrees (typical adult F0: men 85-155 Hz, women 165-255 Hz).
F0 is estimated per 40 ms frame by autocorrelation (60-400 Hz) on voiced frames (loud,
clearly periodic), and the median is taken per file and then over the files.
"""

from __future__ import annotations

import re

import numpy as np

from whisper_at_research.corpus.sources import find_recordings

__all__ = ["file_f0", "median_f0"]

SAMPLE_RATE = 16000


def file_f0(audio: np.ndarray) -> float:
    """Median F0 (Hz) over the voiced 40 ms frames of 16 kHz audio; NaN when none is voiced."""
    frame, hop = 640, 320
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
    found = []
    for start in range(0, audio.size - frame, hop):
        x = audio[start : start + frame].astype(np.float64)
        if np.sqrt(np.mean(x**2)) < 0.02 * peak:
            continue
        x = x - x.mean()
        corr = np.correlate(x, x, "full")[frame - 1 :]
        lag = lo + int(np.argmax(corr[lo:hi]))
        if corr[lag] > 0.5 * corr[0]:
            found.append(SAMPLE_RATE / lag)
    return float(np.median(found)) if found else float("nan")


def median_f0(source: str, pattern: str, max_files: int = 30) -> tuple[float, int]:
    """Median over files of the per-file F0, for the first ``max_files`` recordings of
    ``source`` whose path matches ``pattern`` (a regex, searched). Returns (Hz, files)."""
    regex = re.compile(pattern)
    recs = [r for r in find_recordings([source]) if regex.search(r.path)][:max_files]
    values = [file_f0(r.load()) for r in recs]
    voiced = [v for v in values if v == v]
    return (float(np.median(voiced)) if voiced else float("nan")), len(recs)
