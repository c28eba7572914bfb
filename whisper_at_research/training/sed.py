"""Evaluate sound-event detection (onsets and offsets) on the corpus's strongly labelled clips.

The corpus builder records where it placed every recording in a clip (the manifest's
``events``: start and end seconds and the recording's classes, ontology parents
included), so every clip has a strong reference. For each way of computing the per-bin
event track (:class:`whisper_at.tagging.TrackOptions`), the runtime's
:class:`~whisper_at.tagging.EventTrack` runs on each clip's stored pooled bins (the 25
bins of its 10 s, a stream of its own, as ``WhisperAT.tag`` gives them for a 10 s file),
then, with ``sed_scores_eval``:

- threshold-independent: PSDS on the raw track probabilities, DCASE's scenario 1
  (detection and ground-truth tolerance 0.7, no cross-trigger penalty) and scenario 2
  (tolerance 0.1, cross-trigger tolerance 0.3, alpha_ct 0.5), at most 100 false
  positives per hour, with alpha_st 0: DCASE's alpha_st 1 subtracts the spread of the
  per-class true-positive rates, which over 80-odd classes with a few events each
  leaves nothing (0.0 for every track);
- with the post-processing (:class:`whisper_at.events.EventOptions`, one or several),
  on the events ``TaggingResult.events`` returns: collar-based F1 (onset collar 200 ms,
  offset collar 200 ms or 20 % of the event) and segment-based F1 (1 s segments), macro
  and micro averaged.

A baseline, ``window``, gives every bin the clip's 10 s window probabilities (tags with
no localization). Only the classes the head reports that occur in the split's reference
are scored; detections of other classes are left out.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from whisper_at.events import EventOptions
from whisper_at.heads import TaggingHead, load_head
from whisper_at.labels import LabelSet
from whisper_at.pipeline import shipped_head_path
from whisper_at.tagging import BIN_SECONDS, EventTrack, TaggingResult, TrackOptions

from .features import FeatureStoreError, load_features, read_meta
from .manifest import placed_events
from .source_split import held_out_sentence, with_scheme_for_head

logger = logging.getLogger("whisper_at")

CLIP_SECONDS = 10.0
PSDS_SCENARIOS = {
    "psds1": {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None, "alpha_ct": 0.0},
    "psds2": {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3, "alpha_ct": 0.5},
}
PSDS_COMMON = {"alpha_st": 0.0, "unit_of_time": "hour", "max_efpr": 100.0}
COLLARS = {"onset_collar": 0.2, "offset_collar": 0.2, "offset_collar_rate": 0.2}
SEGMENT_SECONDS = 1.0

Reference = dict[str, list[tuple[float, float, str]]]


@dataclass(frozen=True)
class TrackChoice:
    """One way to get the per-bin track: a runtime ``TrackOptions``, or None for the
    ``window`` baseline."""

    options: TrackOptions | None

    @property
    def name(self) -> str:
        if self.options is None:
            return "window"
        return f"{self.options.method}:{self.options.context_seconds:g}"

    @classmethod
    def parse(cls, text: str) -> TrackChoice:
        """``window``, or ``METHOD:SECONDS`` such as ``frames:10`` or ``sliding:2``."""
        if text == "window":
            return cls(None)
        method, _, seconds = text.partition(":")
        try:
            return cls(TrackOptions(method, float(seconds or 10.0)))  # type: ignore[arg-type]
        except ValueError as e:
            raise ValueError(f"bad track {text!r}: {e} (give window or METHOD:SECONDS)") from e


def reference_events(
    manifest: str | os.PathLike, clip_ids: list[str], labels: LabelSet, classes: set[int]
) -> Reference:
    """Per clip, its placed events as ``(onset, offset, label)`` for the given classes;
    overlapping or touching events of one label are joined (a sound repeated over itself
    is one occurrence)."""
    names = dict(enumerate(labels.names))
    reference: Reference = {}
    for clip_id, events in placed_events(manifest, clip_ids).items():
        spans: dict[int, list[tuple[float, float]]] = {}
        for start, end, event_classes in events:
            for c in event_classes:
                if c in classes:
                    spans.setdefault(c, []).append((start, end))
        reference[clip_id] = [
            (onset, offset, names[c])
            for c, found in sorted(spans.items())
            for onset, offset in _join(sorted(found))
        ]
    return reference


def _join(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    joined: list[tuple[float, float]] = []
    for onset, offset in spans:
        if joined and onset <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], offset))
        else:
            joined.append((onset, offset))
    return joined


def clip_tracks(head: TaggingHead, features: torch.Tensor, choice: TrackChoice) -> torch.Tensor:
    """Per-bin logits ``[n_clips, bins, n_classes]`` of clips ``[n, n_layer, bins, d]``."""
    with torch.inference_mode():
        if choice.options is None:
            window = head(features.float())
            return window[:, None].expand(-1, features.shape[2], -1).clone()
        tracks = []
        for clip in features:
            track = EventTrack(head, choice.options)
            track.add(clip.transpose(0, 1).float())
            tracks.append(track.finish())
        return torch.stack(tracks)


def evaluate_events(
    features_dir: str | os.PathLike,
    head: str | os.PathLike | TaggingHead | None = None,
    *,
    split: str = "test",
    split_scheme: str = "recording",
    held_out_sources: Sequence[str] | None = None,
    tracks: list[TrackChoice] | None = None,
    event_options: list[EventOptions] | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Scores of every track choice (and, for its events, every set of ``event_options``)
    on ``split``; writes ``out`` (JSON) and ``.md`` next to it.

    ``head``: a checkpoint, or None for the head shipped for the store's Whisper;
    ``split_scheme``: "source" scores the held-out-source split (its ``test``: packages a
    head trained with that scheme never saw); ``held_out_sources``: those packages
    (default: the ones the head was trained without, else the store's rule).
    """
    import sed_scores_eval

    if head is None:
        whisper_name = read_meta(features_dir)["whisper_name"]
        head = shipped_head_path(whisper_name)
        if head is None:
            raise ValueError(f"no head ships for {whisper_name}: give one")
    head_name = "<in memory>" if isinstance(head, TaggingHead) else str(head)
    head = head if isinstance(head, TaggingHead) else load_head(head)
    cfg = head.config
    if split_scheme == "recording":
        data, source, origin = load_features(features_dir, splits=[split]), None, None
    else:
        data, source, origin = with_scheme_for_head(
            load_features(features_dir), split_scheme, cfg.held_out_sources, held_out_sources
        )
        data = data.split(split)
    if len(data) == 0:
        raise FeatureStoreError(f"{features_dir} has no {split} clips")
    meta = data.meta
    cfg.check_encoder(meta["n_layer"], meta["d_model"], f"the store {features_dir}")
    labels = cfg.labels
    reported = set(cfg.reported_classes)
    reference = reference_events(meta["manifest"], data.ids, labels, reported)
    present = sorted({labels.index(name) for events in reference.values() for *_, name in events})
    if not present:
        raise FeatureStoreError(
            f"the {split} clips hold no placed event of a class the head reports: nothing to score"
        )
    classes = [labels.names[c] for c in present]
    durations = {clip_id: CLIP_SECONDS for clip_id in data.ids}
    options_list = event_options or [EventOptions()]
    tracks = tracks or [TrackChoice(None), TrackChoice(TrackOptions())]
    seconds_of_audio = len(data) * CLIP_SECONDS

    rows = []
    for choice in tqdm(tracks, desc="tracks", disable=not progress):
        started = time.perf_counter()
        logits = clip_tracks(head, data.features, choice)
        cost = time.perf_counter() - started
        probabilities = torch.sigmoid(logits).numpy()
        scores = {
            clip_id: _score_frame(probabilities[i][:, present], classes)
            for i, clip_id in enumerate(data.ids)
        }
        track_row = {"track": choice.name, "seconds_per_hour": cost / seconds_of_audio * 3600}
        for name, scenario in PSDS_SCENARIOS.items():
            if len(classes) < 2:  # no other class to cross-trigger (sed_scores_eval needs one)
                scenario = {**scenario, "cttc_threshold": None, "alpha_ct": 0.0}
            psds, *_ = sed_scores_eval.intersection_based.psds(
                scores=scores,
                ground_truth=reference,
                audio_durations=durations,
                **PSDS_COMMON,
                **scenario,
            )
            track_row[name] = float(psds)
        for options in options_list:
            detected, n_events = _detections(head, data.ids, logits, present, classes, options)
            collar, *_ = sed_scores_eval.collar_based.fscore(
                detected, reference, threshold=0.5, **COLLARS
            )
            segment, *_ = sed_scores_eval.segment_based.fscore(
                detected, reference, durations, threshold=0.5, segment_length=SEGMENT_SECONDS
            )
            row = {
                **track_row,
                "event_options": asdict(options),
                "collar_f1_macro": float(collar["macro_average"]),
                "collar_f1_micro": float(collar["micro_average"]),
                "segment_f1_macro": float(segment["macro_average"]),
                "segment_f1_micro": float(segment["micro_average"]),
                "n_events": n_events,
            }
            logger.info("%s: %s", choice.name, row)
            rows.append(row)

    report = {
        "features": str(features_dir),
        "manifest": meta["manifest"],
        "head": head_name,
        "split": split,
        "split_scheme": split_scheme,
        "held_out_sources": None if source is None else list(source.held_out),
        "held_out_from": origin,
        "trained_without_them": None if source is None else source.unseen_by(cfg.held_out_sources),
        "n_clips": len(data),
        "n_reference_events": sum(len(events) for events in reference.values()),
        "classes": classes,
        "collars": COLLARS,
        "segment_seconds": SEGMENT_SECONDS,
        "psds_scenarios": {k: {**v, **PSDS_COMMON} for k, v in PSDS_SCENARIOS.items()},
        "rows": rows,
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(report_markdown(report), encoding="utf-8")
    return report


def _score_frame(probabilities: np.ndarray, classes: list[str]):
    from sed_scores_eval.base_modules.scores import create_score_dataframe

    bins = probabilities.shape[0]
    edges = np.minimum(np.arange(bins + 1) * BIN_SECONDS, CLIP_SECONDS)
    return create_score_dataframe(probabilities, edges, classes)


def _detections(
    head: TaggingHead,
    clip_ids: list[str],
    logits: torch.Tensor,
    present: list[int],
    classes: list[str],
    options: EventOptions,
) -> tuple[dict, int]:
    """The events the runtime detects, as 0/1 score frames on the bin grid (sed_scores_eval
    reads hard decisions this way: threshold 0.5), and how many there are."""
    cfg = head.config
    frames, n_events = {}, 0
    column = {c: j for j, c in enumerate(present)}
    for i, clip_id in enumerate(clip_ids):
        result = TaggingResult(
            logits=logits[i].mean(dim=0, keepdim=True),  # not read by events()
            at_time_res=CLIP_SECONDS,
            duration=CLIP_SECONDS,
            labels=cfg.labels,
            reported_classes=cfg.reported_classes,
            thresholds=cfg.thresholds,
            track=logits[i],
        )
        active = np.zeros((logits.shape[1], len(present)))
        for event in result.events(options):
            if event.index in column:
                n_events += 1
                first = round(event.start / BIN_SECONDS)
                last = round(event.end / BIN_SECONDS)
                active[first:last, column[event.index]] = 1.0
        frames[clip_id] = _score_frame(active, classes)
    return frames, n_events


def options_label(options: dict) -> str:
    """Post-processing in a table cell: threshold, low ratio, median bins, min dur, max gap."""
    return (
        f"{options['threshold']} / {options['low_ratio']:g} / {options['median_bins']} / "
        f"{options['min_duration']:g} / {options['max_gap']:g}"
    )


def report_markdown(report: dict) -> str:
    scheme = report.get("split_scheme", "recording")
    held_out = report.get("held_out_sources")
    header = [f"# Sound-event detection: {report['split']} split ({scheme} scheme)", ""]
    if held_out:
        origin = report["held_out_from"]
        header += [held_out_sentence(held_out, origin, report["trained_without_them"]), ""]
    lines = [
        *header,
        f"{report['n_clips']} clips, {report['n_reference_events']} reference events of "
        f"{len(report['classes'])} classes; head {report['head']}; store {report['features']}.",
        "Post-processing: high threshold / low ratio / median bins / min duration s / max gap s.",
        "",
        "| track | PSDS1 | PSDS2 | post-processing | collar F1 macro | collar F1 micro "
        "| segment F1 macro | segment F1 micro | events | track s per hour |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['track']} | {r['psds1']:.3f} | {r['psds2']:.3f} "
            f"| {options_label(r['event_options'])} | {r['collar_f1_macro']:.3f} "
            f"| {r['collar_f1_micro']:.3f} | {r['segment_f1_macro']:.3f} "
            f"| {r['segment_f1_micro']:.3f} | {r['n_events']} | {r['seconds_per_hour']:.1f} |"
        )
    return "\n".join(lines) + "\n"
