"""Sound events with onsets and offsets, read from a head's probabilities over time.

The input is an *event track*: one probability per class for every 0.4 s bin of the
recording (``whisper_at.tagging`` says how it is computed). Per class the track is
median filtered, cut with two thresholds (hysteresis: an event is a run of bins at or
over the low threshold that reaches the high one somewhere, so a dip below the high
threshold does not split it), events of one label closer than ``max_gap`` are merged
and those shorter than ``min_duration`` are dropped. ``rollup_depth`` reports classes
as their ontology ancestors ("Bark" and "Dog" as "Animal").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .labels import LabelSet
from .ontology import ancestors_at_depth

if TYPE_CHECKING:
    from .tagging import Threshold


@dataclass(frozen=True)
class SoundEvent:
    """One occurrence of one class: ``[start, end)`` seconds on the recording's time line.

    ``probability`` is the highest probability the class reached inside the event;
    ``index`` is the class's position in the head's label set.
    """

    label: str
    index: int
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class EventOptions:
    """How a probability track becomes events (defaults measured in docs/events.md).

    threshold: the high threshold, "auto" (each class's calibrated threshold stored in
        the head) or one probability for every class.
    low_ratio: the low threshold as a fraction of the high one (1.0: no hysteresis).
    median_bins: length of the median filter in 0.4 s bins, odd (1: no filtering).
    min_duration: events shorter than this (seconds, after merging) are dropped.
    max_gap: events of one label separated by at most this (seconds) become one.
    rollup_depth: None reports each class itself; 0 reports it as its most general
        ancestors in the head's label set ("Animal"), 1 one level below those
        ("Domestic animals, pets"), ...; a class no deeper than that stays itself.
    classes: report only these labels (names or ids, after the roll-up); None: all the
        head reports.
    """

    threshold: Threshold = "auto"
    low_ratio: float = 0.5
    median_bins: int = 1
    min_duration: float = 0.4
    max_gap: float = 0.4
    rollup_depth: int | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.low_ratio <= 1.0:
            raise ValueError(f"low_ratio must be in (0, 1], got {self.low_ratio}")
        bins = self.median_bins
        if not isinstance(bins, int) or bins < 1 or bins % 2 == 0:
            raise ValueError(f"median_bins must be an odd whole number >= 1, got {bins}")
        for name in ("min_duration", "max_gap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value}")
        if self.rollup_depth is not None and (
            not isinstance(self.rollup_depth, int) or self.rollup_depth < 0
        ):
            raise ValueError(f"rollup_depth must be None or >= 0, got {self.rollup_depth}")
        if self.classes is not None and not isinstance(self.classes, tuple):
            object.__setattr__(self, "classes", tuple(self.classes))


def median_filter(track: torch.Tensor, length: int) -> torch.Tensor:
    """Running median over time of ``[n_bins, n_classes]``; the ends repeat the edge bins."""
    if length == 1 or track.shape[0] == 0:
        return track
    half = length // 2
    padded = torch.cat([track[:1].expand(half, -1), track, track[-1:].expand(half, -1)])
    return padded.unfold(0, length, 1).median(dim=-1).values


def hysteresis(track: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """Activity ``[n_bins, n_classes]`` (bool): runs of bins ``>= low`` that hold a bin
    ``>= high``."""
    above_low = track >= low
    above_high = track >= high
    n_bins = track.shape[0]
    # number each run of consecutive above-low bins (per class) and keep runs with a high bin
    starts = above_low & ~torch.cat([torch.zeros_like(above_low[:1]), above_low[:-1]])
    run = torch.cumsum(starts.long(), dim=0)  # run number of every bin (0 before the first)
    keep = torch.zeros(n_bins + 1, track.shape[1], dtype=torch.long)
    keep.scatter_reduce_(0, run, (above_high & above_low).long(), reduce="amax")
    return above_low & torch.gather(keep, 0, run).bool()


def runs(active: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` bin ranges where a 1-D boolean array is true."""
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()
    return list(zip(starts, ends, strict=True))


def detect_events(
    probabilities: torch.Tensor,
    labels: LabelSet,
    thresholds: torch.Tensor,
    options: EventOptions,
    *,
    candidates: Sequence[int],
    duration: float,
    bin_seconds: float,
) -> list[SoundEvent]:
    """Events from a probability track ``[n_bins, n_classes]`` (bin ``b`` covers
    ``[b * bin_seconds, (b + 1) * bin_seconds)``, the last one ends at ``duration``).

    ``thresholds``: each class's high threshold; ``candidates``: the classes the head
    may report. Returns events ordered by start, then label index.
    """
    probabilities = probabilities.float()
    candidates = sorted(candidates)
    smooth = median_filter(probabilities[:, candidates], options.median_bins)
    high = thresholds[candidates].float()
    active = hysteresis(smooth, high, high * options.low_ratio)
    raw = probabilities[:, candidates]

    # each reported label's activity: the OR of its members' (the class itself without roll-up)
    members: dict[int, list[int]] = {}
    for column, index in enumerate(candidates):
        reported = (
            [index]
            if options.rollup_depth is None
            else ancestors_at_depth(labels, index, options.rollup_depth)
        )
        for label in reported:
            members.setdefault(label, []).append(column)
    wanted = _wanted(labels, options.classes)
    gap_bins = options.max_gap / bin_seconds
    events = []
    for label in sorted(members):
        if wanted is not None and label not in wanted:
            continue
        columns = members[label]
        label_active = active[:, columns].any(dim=1).numpy()
        label_raw = raw[:, columns].max(dim=1).values.numpy()
        for first, last in _merge(runs(label_active), gap_bins):
            start = first * bin_seconds
            end = min(last * bin_seconds, duration)
            if end - start + 1e-9 < options.min_duration:
                continue
            probability = round(float(label_raw[first:last].max()), 4)
            events.append(
                SoundEvent(labels.names[label], label, round(start, 3), round(end, 3), probability)
            )
    events.sort(key=lambda e: (e.start, e.index))
    return events


def _merge(spans: list[tuple[int, int]], gap_bins: float) -> list[tuple[int, int]]:
    """Join spans whose gap is at most ``gap_bins`` bins."""
    merged: list[tuple[int, int]] = []
    for first, last in spans:
        if merged and first - merged[-1][1] <= gap_bins + 1e-9:
            merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def _wanted(labels: LabelSet, classes: tuple[str, ...] | None) -> set[int] | None:
    if classes is None:
        return None
    wanted = set()
    for name in classes:
        try:
            wanted.add(labels.index(name))
        except KeyError:
            raise ValueError(
                f"unknown class {name!r} in the event classes; see `whisper-at --list-labels`"
            ) from None
    return wanted
