"""Word error rate as Whisper reports it: ``EnglishTextNormalizer`` on both sides, then jiwer.

Corpus-level WER = (substitutions + deletions + insertions) / reference words, summed
over utterances; confidence intervals bootstrap the utterances.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import jiwer
import numpy as np

__all__ = ["WordErrors", "bootstrap_wer", "normalize", "word_errors", "wer"]


@lru_cache(maxsize=1)
def _normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return _normalizer()(text)


@dataclass(frozen=True)
class WordErrors:
    errors: int  # substitutions + deletions + insertions
    ref_words: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def wer(self) -> float:
        return self.errors / self.ref_words if self.ref_words else float("nan")


def word_errors(reference: str, hypothesis: str, normalized: bool = False) -> WordErrors:
    """Edit counts of one utterance (texts normalized first unless ``normalized``)."""
    ref = reference if normalized else normalize(reference)
    hyp = hypothesis if normalized else normalize(hypothesis)
    n_ref = len(ref.split())
    if n_ref == 0:
        raise ValueError(f"empty reference after normalization: {reference!r}")
    if not hyp.strip():
        return WordErrors(n_ref, n_ref, 0, n_ref, 0)
    out = jiwer.process_words(ref, hyp)
    s, d, i = out.substitutions, out.deletions, out.insertions
    return WordErrors(s + d + i, n_ref, s, d, i)


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus-level WER (errors over reference words), texts normalized."""
    counts = [word_errors(r, h) for r, h in zip(references, hypotheses, strict=True)]
    return sum(c.errors for c in counts) / sum(c.ref_words for c in counts)


def bootstrap_wer(
    errors: np.ndarray, ref_words: np.ndarray, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> tuple[float, float, float]:
    """Corpus WER and its percentile bootstrap interval (utterances resampled)."""
    errors = np.asarray(errors, dtype=np.float64)
    ref_words = np.asarray(ref_words, dtype=np.float64)
    point = float(errors.sum() / ref_words.sum())
    if len(errors) < 2:
        return point, point, point
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(errors), size=(n_boot, len(errors)))
    samples = errors[idx].sum(1) / ref_words[idx].sum(1)
    lo, hi = np.quantile(samples, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return point, float(lo), float(hi)
