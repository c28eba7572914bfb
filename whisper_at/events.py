"""Sound events with onsets and offsets, read from a head's probabilities over time."""

from __future__ import annotations

from dataclasses import dataclass


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
