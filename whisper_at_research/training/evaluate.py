"""Evaluate a trained head on a split of a feature store (or of a manifest).

Reports mAP, mAUC and d' over the classes the head reports (its trained classes)
that have positives in the split, per-class AP / AUC with names and positive
counts, and a confusion summary: for each class, which other classes were scored
above the threshold on its clips (and which outranked it), plus the most frequent
(true, predicted) pairs overall, and calibration (expected calibration error and a
reliability table). Written as JSON and as a Markdown table.

Two splits are reported: the store's split by recording (the top-level keys), and the
held-out-source split (``held_out_source``, see ``source_split.py``), whose number only
means "packages it never saw" for a head trained with ``split_scheme="source"``; the
report says whether the head was.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from whisper_at.heads import HeadError, TaggingHead, load_head
from whisper_at.tagging import AUTO_THRESHOLD_FALLBACK, Threshold

from .features import FeatureSet, FeatureStoreError, extract_features, load_features
from .metrics import calibration, tagging_metrics
from .source_split import held_out_sentence, with_scheme_for_head
from .train import predict


def align_targets(head: TaggingHead, store_ids: list[str], targets: torch.Tensor) -> np.ndarray:
    """Store targets re-indexed to the head's classes (by label id); absent classes are 0."""
    column = {ident: i for i, ident in enumerate(store_ids)}
    out = np.zeros((targets.shape[0], head.config.n_classes), dtype=np.uint8)
    shared = 0
    for c, ident in enumerate(head.config.label_ids):
        if ident in column:
            out[:, c] = targets[:, column[ident]].numpy()
            shared += 1
    if shared == 0:
        raise HeadError("the head and the feature store share no class (label ids differ)")
    return out


def evaluate_head(
    head_path: str | os.PathLike | TaggingHead,
    features_dir: str | os.PathLike | None = None,
    *,
    manifest: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    split: str = "test",
    out: str | os.PathLike | None = None,
    threshold: Threshold = "auto",
    held_out_sources: Sequence[str] | None = None,
    batch_size: int = 8,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Metrics of a head on ``split``; writes ``out`` (JSON) and ``out`` with ``.md``.

    Give ``features_dir`` (a feature store), or ``manifest`` (and optionally ``model``,
    default the head's Whisper) to extract features first: into ``features_dir`` when
    both are given (resumable), else into a temporary folder. ``threshold`` decides
    what counts as predicted (precision/recall, confusions): "auto" is the head's
    per-class thresholds (``AUTO_THRESHOLD_FALLBACK`` without them), or one probability.
    ``held_out_sources``: the packages of the held-out-source report (default: see
    :func:`with_scheme_for_head`).
    """
    head = head_path if isinstance(head_path, TaggingHead) else load_head(head_path)
    cfg = head.config
    if features_dir is None and manifest is None:
        raise ValueError("give a feature store (features_dir) or a manifest")
    tmp = None
    try:
        if manifest is not None:
            model = model or cfg.whisper_name
            if not model:
                raise ValueError("the head does not name its Whisper model: give model")
            if features_dir is None:
                tmp = tempfile.TemporaryDirectory(prefix="whisper-at-features-")
                features_dir = tmp.name
            extract_features(
                model,
                manifest,
                features_dir,
                batch_size=batch_size,
                device=device,
                labels=cfg.labels,
                progress=progress,
            )
        data = load_features(features_dir)
        report = _evaluate(head, data.split(split), split, threshold)
        report["held_out_source"] = _held_out_source_report(
            head, data, split, threshold, held_out_sources
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    report["head"] = str(head_path) if not isinstance(head_path, TaggingHead) else "<in memory>"
    report["features"] = str(features_dir) if tmp is None else f"(extracted from {manifest})"
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(report_markdown(report), encoding="utf-8")
    return report


def _held_out_source_report(
    head: TaggingHead,
    data: FeatureSet,
    split: str,
    threshold: Threshold,
    given: Sequence[str] | None,
) -> dict:
    """The report on the held-out-source split, or why there is none."""
    try:
        relabelled, source, origin = with_scheme_for_head(
            data, "source", head.config.held_out_sources, given
        )
        report = _evaluate(head, relabelled.split(split), split, threshold)
    except FeatureStoreError as e:
        return {"available": False, "reason": str(e)}
    assert source is not None
    names = head.config.label_names
    return {
        "available": True,
        "held_out_sources": list(source.held_out),
        "held_out_from": origin,
        "trained_without_them": source.unseen_by(head.config.held_out_sources),
        "covered_classes": [names[c] for c in source.covered],
        "untrained_classes": [names[c] for c in source.untrained],
        **report,
    }


def _class_thresholds(head: TaggingHead, threshold: Threshold) -> np.ndarray:
    n = head.config.n_classes
    if threshold != "auto":
        return np.full(n, float(threshold))
    if head.config.thresholds is None:
        return np.full(n, AUTO_THRESHOLD_FALLBACK)
    return np.asarray(head.config.thresholds, dtype=np.float64)


def _evaluate(head: TaggingHead, data: FeatureSet, split: str, threshold: Threshold) -> dict:
    cfg = head.config
    meta = data.meta
    if len(data) == 0:
        raise FeatureStoreError(f"the feature store has no clips in split {split!r}")
    cfg.check_encoder(
        meta["n_layer"], meta["d_model"], f"the feature store ({meta['whisper_name']})"
    )
    if cfg.whisper_sha256 and cfg.whisper_sha256 != meta["whisper_sha256"]:
        raise HeadError(
            f"the head was trained on features of other Whisper weights ({cfg.whisper_name}, "
            f"{cfg.whisper_sha256[:12]}) than these ({meta['whisper_name']}, "
            f"{meta['whisper_sha256'][:12]})"
        )
    targets = align_targets(head, meta["label_ids"], data.targets)
    scores = torch.sigmoid(predict(head, data.features)).numpy()
    reported = cfg.reported_classes
    positives = targets.sum(axis=0)
    evaluated = [c for c in reported if positives[c] > 0]
    untrained = [c for c in range(cfg.n_classes) if positives[c] > 0 and c not in set(reported)]
    m = tagging_metrics(targets, scores, evaluated)
    names, ids = cfg.label_names, cfg.label_ids
    thresholds = _class_thresholds(head, threshold)
    predicted = scores >= thresholds[None, :]
    per_class = []
    for row in m.per_class:
        c = row["index"]
        hits = int((predicted[:, c] & (targets[:, c] > 0)).sum())
        n_pred = int(predicted[:, c].sum())
        per_class.append(
            {
                **row,
                "name": names[c],
                "id": ids[c],
                "threshold": float(thresholds[c]),
                "precision_at_threshold": hits / n_pred if n_pred else None,
                "recall_at_threshold": hits / row["positives"],
                "f1_at_threshold": 2 * hits / (n_pred + row["positives"]),
            }
        )
    confusions, pairs = _confusions(targets, scores, predicted, evaluated, reported, names)
    f1s = [row["f1_at_threshold"] for row in per_class]
    labelled = targets.sum(axis=1) > 0
    return {
        "split": split,
        "n_clips": len(data),
        "threshold": threshold,
        "head_has_thresholds": cfg.thresholds is not None,
        "mAP": _num(m.mAP),
        "mAUC": _num(m.mAUC),
        "d_prime": _num(m.d_prime),
        "macro_f1_at_threshold": float(np.mean(f1s)) if f1s else None,
        "top_k_hit": top_k_hits(targets[labelled], scores[labelled], reported),
        "n_classes_evaluated": m.n_classes,
        "calibration": calibration(targets[:, evaluated], scores[:, evaluated])
        if evaluated
        else None,
        "per_class": per_class,
        "confusions": confusions,
        "top_confusions": pairs,
        "untrained_classes_with_positives": [
            {"index": c, "name": names[c], "positives": int(positives[c])} for c in untrained
        ],
        "whisper_name": meta["whisper_name"],
    }


def top_k_hits(
    targets: np.ndarray, scores: np.ndarray, reported: list[int], ks: tuple[int, ...] = (1, 3, 5)
) -> dict[str, float | None]:
    """Share of clips with a true label among their k best-scored reported classes.

    What a user reading the first tags sees; the independent evaluation of issue 13
    reports top-1 and top-5 hits the same way. Clips without a label are not counted.
    """
    if len(targets) == 0 or not reported:
        return {str(k): None for k in ks}
    ranked = np.asarray(reported)[np.argsort(-scores[:, reported], axis=1)]
    truth = targets > 0
    out: dict[str, float | None] = {}
    for k in ks:
        hit = np.take_along_axis(truth, ranked[:, :k], axis=1).any(axis=1)
        out[str(k)] = float(hit.mean())
    return out


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def _confusions(targets, scores, predicted, evaluated, reported, names, top: int = 3):
    reported_arr = np.asarray(reported)
    per_class = []
    pairs: Counter = Counter()
    for c in evaluated:
        rows = np.nonzero(targets[:, c] > 0)[0]
        above: Counter = Counter()
        outranked: Counter = Counter()
        for r in rows:
            true = targets[r] > 0
            for k in reported_arr[predicted[r, reported_arr] & ~true[reported_arr]]:
                above[int(k)] += 1
                pairs[(c, int(k))] += 1
            order = reported_arr[np.argsort(-scores[r, reported_arr], kind="stable")]
            best_false = next((int(k) for k in order if not true[k]), None)
            if best_false is not None and scores[r, best_false] > scores[r, c]:
                outranked[best_false] += 1
        per_class.append(
            {
                "index": c,
                "name": names[c],
                "positives": len(rows),
                "predicted_above_threshold": [
                    {"name": names[k], "clips": n} for k, n in above.most_common(top)
                ],
                "outranked_by": [
                    {"name": names[k], "clips": n} for k, n in outranked.most_common(top)
                ],
            }
        )
    top_pairs = [
        {"true": names[c], "predicted": names[k], "clips": n} for (c, k), n in pairs.most_common(20)
    ]
    return per_class, top_pairs


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def report_markdown(report: dict) -> str:
    """A readable summary of :func:`evaluate_head`'s report: both splits, then details."""
    held = report.get("held_out_source") or {"available": False, "reason": "not computed"}
    lines = [
        f"# Evaluation of {report.get('head', 'head')} on split {report['split']!r}",
        "",
        "| split | clips | classes | mAP | mAUC | d' | macro F1@t | ECE | top-1 | top-3 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        _summary_row("by recording", report),
    ]
    if held["available"]:
        lines.append(_summary_row("held-out sources", held))
        lines += [
            "",
            held_out_sentence(
                held["held_out_sources"], held["held_out_from"], held["trained_without_them"]
            ),
            f"Classes only the held-out sources carry (untrained there): "
            f"{', '.join(held['untrained_classes']) or '-'}.",
        ]
    else:
        lines += ["", f"No held-out-source split: {held['reason']}"]
    lines += ["", "## Split by recording", ""] + _details_markdown(report)
    if held["available"]:
        lines += ["", "## Held-out sources", ""] + _details_markdown(held)
    return "\n".join(lines) + "\n"


def _summary_row(name: str, report: dict) -> str:
    ece = report["calibration"]["ece"] if report.get("calibration") else None
    hits = report.get("top_k_hit") or {}
    return (
        f"| {name} | {report['n_clips']} | {report['n_classes_evaluated']} | "
        f"{_fmt(report['mAP'])} | {_fmt(report['mAUC'])} | {_fmt(report['d_prime'])} | "
        f"{_fmt(report['macro_f1_at_threshold'])} | {_fmt(ece)} | "
        f"{_fmt(hits.get('1'))} | {_fmt(hits.get('3'))} |"
    )


def _details_markdown(report: dict) -> list[str]:
    threshold = report["threshold"]
    if threshold == "auto":
        threshold = "auto (" + (
            "the head's per-class thresholds)"
            if report["head_has_thresholds"]
            else f"the head has none: {AUTO_THRESHOLD_FALLBACK} for every class)"
        )
    lines = [
        f"- clips: {report['n_clips']}; classes evaluated: {report['n_classes_evaluated']}",
        f"- mAP {_fmt(report['mAP'])}, mAUC {_fmt(report['mAUC'])}, d' {_fmt(report['d_prime'])}",
        f"- threshold: {threshold}",
    ]
    if report.get("calibration"):
        cal = report["calibration"]
        lines += [
            "",
            f"Calibration over {cal['n_scores']} (clip, class) scores: expected calibration "
            f"error {cal['ece']:.4f}.",
            "",
            "| probability | scores | mean probability | observed positives |",
            "|---|---:|---:|---:|",
        ]
        for row in cal["bins"]:
            lines.append(
                f"| {row['low']:.1f}-{row['high']:.1f} | {row['count']} | "
                f"{_fmt(row.get('mean_probability'))} | {_fmt(row.get('observed'))} |"
            )
    lines += [
        "",
        "### Per class (by AP)",
        "",
        "| class | positives | AP | AUC | threshold | precision@t | recall@t |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(report["per_class"], key=lambda r: -(r["ap"] or 0)):
        lines.append(
            f"| {row['name']} | {row['positives']} | {_fmt(row['ap'])} | {_fmt(row['auc'])} | "
            f"{row['threshold']:.3f} | {_fmt(row['precision_at_threshold'])} | "
            f"{_fmt(row['recall_at_threshold'])} |"
        )
    lines += [
        "",
        "### Confusions",
        "",
        "| true class | also predicted (clips) | outranked by (clips) |",
        "|---|---|---|",
    ]
    for row in report["confusions"]:
        above = ", ".join(f"{x['name']} ({x['clips']})" for x in row["predicted_above_threshold"])
        worse = ", ".join(f"{x['name']} ({x['clips']})" for x in row["outranked_by"])
        lines.append(f"| {row['name']} | {above or '-'} | {worse or '-'} |")
    untrained = report["untrained_classes_with_positives"]
    if untrained:
        lines += [
            "",
            "Classes with positives here but no training data (not reported by the head, "
            "not in the means): " + ", ".join(f"{u['name']} ({u['positives']})" for u in untrained),
        ]
    return lines
