"""Speech + noise at a target SNR: noise looped or cropped to the speech, power-scaled.

The SNR is ``10 log10(P_speech / P_noise)`` with the mean power of the speech
samples and of the noise samples that lie under them (same length). The noise is
scaled, never the speech; if the mixture would clip, the whole mixture is scaled
down (which leaves the SNR unchanged).
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit_noise", "mix_at_snr", "power", "snr_db"]

_EPS = 1e-12


def power(x: np.ndarray) -> float:
    """Mean power (float64) of a signal."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x * x)) if x.size else 0.0


def snr_db(speech: np.ndarray, noise: np.ndarray) -> float:
    """SNR in dB of ``speech`` over ``noise`` (equal lengths)."""
    if len(speech) != len(noise):
        raise ValueError(f"lengths differ: {len(speech)} vs {len(noise)}")
    return 10.0 * np.log10(max(power(speech), _EPS) / max(power(noise), _EPS))


def fit_noise(noise: np.ndarray, length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``length`` samples of ``noise``: a crop at a random offset when it is long enough,
    else the noise looped (repeated end to end, from a random start) until it is."""
    noise = np.asarray(noise, dtype=np.float32)
    if noise.size == 0:
        raise ValueError("empty noise")
    rng = rng or np.random.default_rng(0)
    if len(noise) >= length:
        start = int(rng.integers(0, len(noise) - length + 1))
        return noise[start : start + length].copy()
    start = int(rng.integers(0, len(noise)))
    reps = -(-(length + start) // len(noise))
    return np.tile(noise, reps)[start : start + length].copy()


def mix_at_snr(
    speech: np.ndarray,
    noise: np.ndarray,
    snr: float,
    rng: np.random.Generator | None = None,
    peak: float = 0.99,
) -> tuple[np.ndarray, np.ndarray]:
    """Mix ``noise`` (looped or cropped to the speech) under ``speech`` at ``snr`` dB.

    Returns ``(mixture, scaled_noise)``, both float32 of the speech's length, where
    ``mixture = g * (speech + scaled_noise)`` with ``g <= 1`` chosen so that
    ``|mixture| <= peak`` (``snr_db(g * speech, g * scaled_noise) == snr``).
    """
    speech = np.asarray(speech, dtype=np.float32)
    fitted = fit_noise(noise, len(speech), rng).astype(np.float64)
    p_noise = power(fitted)
    if p_noise <= _EPS:
        raise ValueError("the noise is silent where the speech is")
    gain = np.sqrt(power(speech) / (p_noise * 10.0 ** (snr / 10.0)))
    scaled = fitted * gain
    mixture = speech.astype(np.float64) + scaled
    top = float(np.max(np.abs(mixture))) if mixture.size else 0.0
    g = min(1.0, peak / top) if top > 0 else 1.0
    return (mixture * g).astype(np.float32), (scaled * g).astype(np.float32)
