"""Per-class decision thresholds for a head, chosen on validation data.

A head's probabilities are not decisions: with label smoothing and class-balanced
sampling, silence still gets Music 0.13 and a fixed threshold either lists noise or
hides rare classes. ``calibrate_head`` picks for every reported class the highest
threshold within ``tolerance`` F1 of the best F1 on a split
(``metrics.f1_optimal_threshold``), and stores them in the head's config (the tensors
are copied as they are), so "auto" at inference uses them. Classes with fewer than
``min_positives`` positive clips in that split (their optimum is one clip's score), or
whose best F1 is under ``min_f1`` (not detected reliably; their optimum is often "tag
everything"), get ``fallback``; no threshold goes below ``floor``. docs/results.md has
the measurements behind these defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from whisper_at.heads import TaggingHead, load_head, rewrite_head_config
from whisper_at.tagging import AUTO_THRESHOLD_FALLBACK

from .evaluate import align_targets
from .features import FeatureStoreError, load_features
from .metrics import calibration, f1_optimal_threshold
from .source_split import with_scheme_for_head
from .train import predict

MIN_POSITIVES = 5  # positive clips in the split for a class to get its own threshold
MIN_F1 = 0.5  # a class whose best F1 is lower is not detected reliably: the fallback
F1_TOLERANCE = 0.02  # the highest threshold within this F1 of the best
THRESHOLD_FLOOR = 0.2  # no class threshold below this


def choose_thresholds(
    targets: np.ndarray,
    scores: np.ndarray,
    classes: list[int],
    min_positives: int = MIN_POSITIVES,
    fallback: float = AUTO_THRESHOLD_FALLBACK,
    floor: float = THRESHOLD_FLOOR,
    min_f1: float = MIN_F1,
    tolerance: float = F1_TOLERANCE,
) -> tuple[list[float], list[dict]]:
    """Thresholds for every column of ``scores`` and, per class in ``classes``, how chosen."""
    thresholds = np.full(scores.shape[1], fallback)
    rows = []
    for c in classes:
        positives = int((targets[:, c] > 0).sum())
        row: dict = {"index": c, "positives": positives, "rule": "fallback: few positives"}
        if positives >= min_positives:
            best, f1 = f1_optimal_threshold(targets[:, c], scores[:, c], tolerance)
            row.update(f1_optimal=best, f1=f1)
            if f1 >= min_f1:
                thresholds[c] = max(best, floor)
                row["rule"] = "f1"
            else:
                row["rule"] = "fallback: low F1"
        row["threshold"] = float(thresholds[c])
        rows.append(row)
    return thresholds.tolist(), rows


def calibrate_head(
    head_path: str | os.PathLike,
    features_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "valid",
    split_scheme: str = "recording",
    held_out_sources: Sequence[str] | None = None,
    min_positives: int = MIN_POSITIVES,
    fallback: float = AUTO_THRESHOLD_FALLBACK,
    floor: float = THRESHOLD_FLOOR,
    min_f1: float = MIN_F1,
    tolerance: float = F1_TOLERANCE,
) -> dict:
    """Write ``out``: the head with per-class thresholds from ``split``; returns a report.

    The report holds each class's threshold and rule, and the calibration of the head's
    probabilities on that split (expected calibration error, reliability table).
    ``held_out_sources`` (with ``split_scheme="source"``): packages kept out of the split
    (default: those the head was trained without, else the store's rule).
    """
    head: TaggingHead = load_head(head_path)
    cfg = head.config
    data, source, origin = with_scheme_for_head(
        load_features(features_dir), split_scheme, cfg.held_out_sources, held_out_sources
    )
    data = data.split(split)
    if len(data) == 0:
        raise FeatureStoreError(f"the feature store has no clips in split {split!r}")
    cfg.check_encoder(data.meta["n_layer"], data.meta["d_model"], "the feature store")
    targets = align_targets(head, data.meta["label_ids"], data.targets)
    scores = torch.sigmoid(predict(head, data.features)).numpy()
    classes = cfg.reported_classes
    thresholds, rows = choose_thresholds(
        targets, scores, classes, min_positives, fallback, floor, min_f1, tolerance
    )
    for row in rows:
        row["name"] = cfg.label_names[row["index"]]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rewrite_head_config(head_path, out, dataclasses.replace(cfg, thresholds=thresholds))
    evaluated = [c for c in classes if targets[:, c].any()]
    report = {
        "head": str(head_path),
        "out": str(out),
        "split": split,
        "split_scheme": split_scheme,
        "held_out_sources": None if source is None else list(source.held_out),
        "held_out_from": origin,
        "n_clips": len(data),
        "rules": {
            "min_positives": min_positives,
            "fallback": fallback,
            "floor": floor,
            "min_f1": min_f1,
            "tolerance": tolerance,
        },
        "calibration": calibration(targets[:, evaluated], scores[:, evaluated]),
        "classes": rows,
    }
    out.with_name(out.name + ".thresholds.json").write_text(
        json.dumps(report, indent=1) + "\n", encoding="utf-8"
    )
    return report
