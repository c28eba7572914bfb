"""Multi-label tagging metrics as AudioSet papers report them: mAP, mAUC and d'.

Per-class average precision and ROC AUC come from scikit-learn; classes without a
positive clip have no AP and are left out of the means (so are classes without a
negative clip for the AUC). d' is computed from the mean AUC, as in AST and
Whisper-AT: ``d' = sqrt(2) * Phi^-1(mAUC)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score


@dataclass
class Metrics:
    mAP: float  # noqa: N815 (the customary name)
    mAUC: float  # noqa: N815
    d_prime: float
    n_classes: int  # classes in the means (with >= 1 positive)
    per_class: list[dict] = field(default_factory=list)  # index, positives, ap, auc

    def summary(self) -> dict[str, float]:
        return {"mAP": self.mAP, "mAUC": self.mAUC, "d_prime": self.d_prime}


def d_prime(auc: float) -> float:
    """Sensitivity index of a binary classifier with this ROC AUC."""
    if math.isnan(auc):
        return float("nan")
    return float(math.sqrt(2.0) * norm.ppf(auc))


def tagging_metrics(
    targets: np.ndarray, scores: np.ndarray, classes: list[int] | None = None
) -> Metrics:
    """targets ``[n, n_classes]`` (multi-hot, > 0.5 is positive), scores ``[n, n_classes]``.

    ``classes`` restricts the evaluation to those class indices (default: all). NaN
    means are returned when no class qualifies.
    """
    y = np.asarray(targets) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"targets {y.shape} and scores {s.shape} must be equal 2-D shapes")
    classes = list(range(y.shape[1])) if classes is None else list(classes)
    per_class = []
    aps, aucs = [], []
    for c in classes:
        positives = int(y[:, c].sum())
        row = {"index": c, "positives": positives, "ap": None, "auc": None}
        if positives > 0:
            row["ap"] = float(average_precision_score(y[:, c], s[:, c]))
            aps.append(row["ap"])
            if positives < y.shape[0]:
                row["auc"] = float(roc_auc_score(y[:, c], s[:, c]))
                aucs.append(row["auc"])
        per_class.append(row)
    m_ap = float(np.mean(aps)) if aps else float("nan")
    m_auc = float(np.mean(aucs)) if aucs else float("nan")
    return Metrics(
        mAP=m_ap, mAUC=m_auc, d_prime=d_prime(m_auc), n_classes=len(aps), per_class=per_class
    )


def f1_optimal_threshold(
    targets: np.ndarray, scores: np.ndarray, tolerance: float = 0.0
) -> tuple[float, float]:
    """(threshold, F1) of the score threshold with the best F1 for one class.

    A clip is predicted positive when its score is >= the threshold; the candidates are
    the scores themselves, and among equal F1 the highest threshold wins (fewer false
    alarms). With ``tolerance`` the highest threshold whose F1 is within it of the best
    wins: on a flat F1 curve that costs little F1 and saves many false alarms. Needs at
    least one positive.
    """
    y = np.asarray(targets) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("an F1-optimal threshold needs at least one positive")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # last index of each distinct score
    tp = np.cumsum(y_sorted)[last]
    predicted = (np.flatnonzero(last) + 1).astype(np.float64)
    f1 = 2 * tp / (predicted + n_pos)
    best = int(np.flatnonzero(f1 >= f1.max() - tolerance)[0])  # the highest such threshold
    return float(s_sorted[last][best]), float(f1[best])


def calibration(targets: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> dict:
    """Expected calibration error and a reliability table over every (clip, class) score.

    Equal-width probability bins; ECE is the count-weighted mean of |observed frequency -
    mean probability| over the bins. Each row: bin edges, count, mean probability,
    observed frequency of positives.
    """
    y = (np.asarray(targets) > 0.5).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if y.size == 0:
        raise ValueError("calibration needs at least one score")
    which = np.minimum((p * n_bins).astype(int), n_bins - 1)
    rows, ece = [], 0.0
    for b in range(n_bins):
        inside = which == b
        count = int(inside.sum())
        row = {"low": b / n_bins, "high": (b + 1) / n_bins, "count": count}
        if count:
            mean_p, observed = float(p[inside].mean()), float(y[inside].mean())
            row.update(mean_probability=mean_p, observed=observed)
            ece += count / y.size * abs(observed - mean_p)
        rows.append(row)
    return {"ece": ece, "n_scores": int(y.size), "bins": rows}
