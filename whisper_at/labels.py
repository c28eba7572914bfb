"""Label sets: the 527 AudioSet classes, their translations, and custom sets.

A head checkpoint stores its own label list, so a head trained on custom labels
carries them with it; the AudioSet list here is the default and the source of
translated display names for ``whisper_at.compat.parse_at_label(language=...)``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

AUDIOSET_SIZE = 527


@dataclass(frozen=True)
class LabelSet:
    """An ordered list of class names; ``ids`` are stable identifiers (AudioSet mids)."""

    names: tuple[str, ...]
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.ids):
            raise ValueError("a label set needs one id per name")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("label ids must be unique")

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name_or_id: str) -> int:
        """Position of a class given by display name or id (case-insensitive name match)."""
        if name_or_id in self.ids:
            return self.ids.index(name_or_id)
        lowered = [n.lower() for n in self.names]
        if name_or_id.lower() in lowered:
            return lowered.index(name_or_id.lower())
        raise KeyError(f"unknown class {name_or_id!r}")

    @property
    def is_audioset(self) -> bool:
        return self.ids == audioset_labels().ids

    @classmethod
    def custom(cls, names: list[str]) -> LabelSet:
        """A user label set; names double as ids."""
        return cls(names=tuple(names), ids=tuple(names))


@lru_cache(maxsize=1)
def audioset_labels() -> LabelSet:
    """The 527 AudioSet classes in the standard index order (class_labels_indices.csv)."""
    path = resources.files("whisper_at") / "assets" / "class_labels_indices.csv"
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: int(r["index"]))
    return LabelSet(names=tuple(r["display_name"] for r in rows), ids=tuple(r["mid"] for r in rows))


@lru_cache(maxsize=1)
def _translations() -> dict[str, list[str]]:
    path = resources.files("whisper_at") / "assets" / "label_name_dict.json"
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def translation_languages() -> list[str]:
    """Language codes with translated AudioSet display names."""
    return sorted(_translations())


def translated_names(language: str) -> tuple[str, ...] | None:
    """AudioSet display names in ``language``, or None when no translation exists."""
    names = _translations().get(language)
    return tuple(names) if names is not None else None
