"""Find the same recording shipped twice (in one package or in several) and keep it once.

Many games and sound themes reuse the same free sound libraries, so a recording can sit in
two packages, re-encoded (Ogg vs WAV), resampled, re-levelled or trimmed differently. If
both copies stayed in the corpus, a "held-out" package would not be unseen. Chromaprint
(``fpcalc``) needs several seconds of audio and most effects here last under one second,
so the fingerprint is our own, computed on the decoded 16 kHz audio the builder already
holds:

- a *coarse* vector (32 time steps x 16 log-spaced bands of log energy, the recording
  resampled in time to a fixed length, centred and L2-normalised) that finds candidate
  pairs with one matrix product;
- a *fine* log spectrogram (32 bands, 16 ms hops, at most the first 10 s) with the band
  and frame means removed (so gain and the shared attack/decay of all impulsive sounds
  cancel out), compared frame by frame after stretching one copy to the other's length.

Two recordings are duplicates when their trimmed durations agree within 5 % (or 50 ms)
and both similarities pass their thresholds. Each group of duplicates keeps the member
whose source comes first in a fixed order (the order of ``SOURCES``), then the smallest
id; the others are dropped. Fingerprints are cached per recording in
``cache_dir()/corpus/fingerprints/`` keyed by the recording id and the file's size.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whisper_at_research.corpus.registry import cache_dir

__all__ = [
    "COARSE_THRESHOLD",
    "FINE_THRESHOLD",
    "Duplicate",
    "Fingerprint",
    "cache_key",
    "cached_fingerprints",
    "fingerprint",
    "find_duplicates",
    "fine_similarity",
]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
COARSE_THRESHOLD = 0.85
FINE_THRESHOLD = 0.95
_N_FFT, _HOP = 512, 256
_FINE_FRAMES = 625  # 10 s at 16 ms
_FORMAT = 1


@dataclass(frozen=True)
class Fingerprint:
    seconds: float
    coarse: np.ndarray  # float32 [512], unit norm (or zeros for a constant signal)
    fine: np.ndarray  # float16 [frames, 32], band and frame means removed


@dataclass(frozen=True)
class Duplicate:
    """``dropped`` is the same recording as ``kept``; both are recording ids."""

    dropped: str
    kept: str
    coarse: float
    fine: float


def _bands(n: int, low: float = 100.0, high: float = 5000.0) -> np.ndarray:
    freqs = np.fft.rfftfreq(_N_FFT, 1 / SAMPLE_RATE)
    edges = np.geomspace(low, high, n + 1)
    weights = np.zeros((n, freqs.size), np.float32)
    for i in range(n):
        inside = (freqs >= edges[i]) & (freqs < edges[i + 1])
        if not inside.any():  # narrow low bands: take the nearest bin
            inside[np.argmin(np.abs(freqs - np.sqrt(edges[i] * edges[i + 1])))] = True
        weights[i, inside] = 1.0
    return weights


_BANDS32 = _bands(32)
_BANDS16 = _bands(16)


def _power(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, np.float32)
    if audio.size < _N_FFT:
        audio = np.pad(audio, (0, _N_FFT - audio.size))
    frames = np.lib.stride_tricks.sliding_window_view(audio, _N_FFT)[::_HOP]
    return np.abs(np.fft.rfft(frames * np.hanning(_N_FFT).astype(np.float32), axis=1)) ** 2


def fingerprint(audio: np.ndarray) -> Fingerprint:
    """The fingerprint of trimmed 16 kHz mono audio."""
    power = _power(audio[: SAMPLE_RATE * 30])
    floor = 1e-10 + power.mean() * 1e-6
    log16 = np.log10(power @ _BANDS16.T + floor)
    steps = np.linspace(0, log16.shape[0] - 1, 32)
    coarse = np.stack([np.interp(steps, np.arange(log16.shape[0]), b) for b in log16.T], 1)
    coarse = coarse - coarse.mean()
    norm = float(np.linalg.norm(coarse))
    coarse = coarse / norm if norm > 1e-6 else np.zeros_like(coarse)
    log32 = np.log10(power[:_FINE_FRAMES] @ _BANDS32.T + floor)
    fine = log32 - log32.mean(0, keepdims=True)
    fine = fine - fine.mean(1, keepdims=True)
    return Fingerprint(
        round(audio.size / SAMPLE_RATE, 4),
        coarse.reshape(-1).astype(np.float32),
        fine.astype(np.float16),
    )


def fine_similarity(a: Fingerprint, b: Fingerprint) -> float:
    """Correlation of the fine spectrograms, ``b`` stretched to ``a``'s number of frames."""
    x, y = a.fine.astype(np.float32), b.fine.astype(np.float32)
    if y.shape[0] != x.shape[0]:
        steps = np.linspace(0, y.shape[0] - 1, x.shape[0])
        y = np.stack([np.interp(steps, np.arange(y.shape[0]), band) for band in y.T], 1)
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx < 1e-6 or ny < 1e-6:  # both constant: same when both are
        return 1.0 if nx < 1e-6 and ny < 1e-6 else 0.0
    return float((x * y).sum() / (nx * ny))


def cached_fingerprints(keys: dict[str, str], compute) -> dict[str, Fingerprint]:
    """Fingerprints by recording id; ``keys`` maps id -> cache key, ``compute(id)`` makes one.

    One cache file per key in ``cache_dir()/corpus/fingerprints``.
    """
    folder = cache_dir() / "corpus" / "fingerprints"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for rec_id, key in keys.items():
        name = hashlib.sha1(f"{_FORMAT}|{key}".encode()).hexdigest()
        path = folder / name[:2] / f"{name}.npz"
        if path.exists():
            with np.load(path) as data:
                out[rec_id] = Fingerprint(float(data["seconds"]), data["coarse"], data["fine"])
            continue
        fp = compute(rec_id)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, seconds=fp.seconds, coarse=fp.coarse, fine=fp.fine)
        tmp.replace(path)
        out[rec_id] = fp
    return out


def cache_key(rec_id: str, file: Path) -> str:
    """A fingerprint cache key: the id and the size of the file it decodes."""
    return f"{rec_id}|{file.stat().st_size}"


def find_duplicates(fingerprints: dict[str, Fingerprint], rank: dict[str, int]) -> list[Duplicate]:
    """Duplicate recordings, each group keeping the id with the lowest (rank, id).

    ``rank`` gives each recording id its source's position in the fixed source order.
    """
    ids = sorted(fingerprints, key=lambda i: (rank[i], i))
    if len(ids) < 2:
        return []
    coarse = np.stack([fingerprints[i].coarse for i in ids])
    seconds = np.array([fingerprints[i].seconds for i in ids])
    parent = list(range(len(ids)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    scores: dict[tuple[int, int], tuple[float, float]] = {}
    for start in range(0, len(ids), 512):
        block = coarse[start : start + 512] @ coarse.T
        for a, b in zip(*np.nonzero(block >= COARSE_THRESHOLD), strict=True):
            i, j = start + int(a), int(b)
            if j <= i:
                continue
            longer, shorter = max(seconds[i], seconds[j]), min(seconds[i], seconds[j])
            if longer - shorter > max(0.05, 0.05 * longer):
                continue
            fine = fine_similarity(fingerprints[ids[i]], fingerprints[ids[j]])
            if fine >= FINE_THRESHOLD:
                scores[(i, j)] = (float(block[a, b]), fine)
                ri, rj = root(i), root(j)
                parent[max(ri, rj)] = min(ri, rj)  # the lower index (rank, id) is the root
    out = []
    for (i, j), (c, f) in sorted(scores.items()):
        r = root(j)
        if r != j:
            out.append((j, r, c, f))
        r = root(i)
        if r != i:
            out.append((i, r, c, f))
    best: dict[int, Duplicate] = {}
    for k, r, c, f in out:
        if k not in best or f > best[k].fine:
            best[k] = Duplicate(ids[k], ids[r], round(c, 4), round(f, 4))
    return sorted(best.values(), key=lambda d: d.dropped)
