"""The corpus's real-recording clips (``"kind": "real"``): one recording alone, no speech.

Each recording is labelled with its most specific class plus that class's ontology
ancestors (docs/corpus.md). A clip's *class* here is its most specific label: the
one carried by the fewest real clips of the corpus (an ancestor is carried by at
least as many clips as each of its descendants), ties broken by the higher AudioSet
index. A clip's *group* is its recording, except that the velocity layers of one
Hydrogen drum-kit instrument and the press/release of one Bucklespring key form one
group, so that near-identical recordings never sit on both sides of a fold.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SoundClip", "probe_clips", "real_clips", "sound_classes"]

_BUCKLE = re.compile(r"^(bucklespring:.*/[0-9a-fA-F]+)-[01]\.wav$")


@dataclass(frozen=True)
class SoundClip:
    id: str
    path: Path
    label: str  # most specific class name
    label_index: int  # its AudioSet index
    recording: str
    group: str
    split: str


def _group(recording: str) -> str:
    if recording.startswith("hydrogen:"):
        return recording.rsplit("/", 1)[0]
    m = _BUCKLE.match(recording)
    return m.group(1) if m else recording


def real_clips(manifest: str | os.PathLike) -> list[SoundClip]:
    """Every ``kind == "real"`` clip of a corpus manifest, with its most specific class."""
    manifest = Path(manifest)
    rows = []
    with manifest.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if row.get("kind") == "real" and not row.get("mixed", False):
                    rows.append(row)
    counts = Counter(i for r in rows for i in r["labels"])
    clips = []
    for r in rows:
        names = dict(zip(r["labels"], r["label_names"], strict=True))
        best = min(r["labels"], key=lambda i: (counts[i], -i))
        rec = r.get("recording_id") or r["path"]
        clips.append(
            SoundClip(
                id=r.get("id") or r["path"],
                path=(manifest.parent / r["path"]).resolve(),
                label=names[best],
                label_index=int(best),
                recording=rec,
                group=_group(rec),
                split=r.get("split", "train"),
            )
        )
    return clips


def sound_classes(clips: list[SoundClip], min_groups: int = 5) -> list[str]:
    """Classes with at least ``min_groups`` independent recordings (groups), sorted."""
    groups: dict[str, set[str]] = {}
    for c in clips:
        groups.setdefault(c.label, set()).add(c.group)
    return sorted(k for k, v in groups.items() if len(v) >= min_groups)


def probe_clips(
    clips: list[SoundClip],
    min_groups: int = 5,
    max_per_class: int | None = 30,
    classes: list[str] | None = None,
    seed: int = 0,
) -> list[SoundClip]:
    """The probe's clips: classes with ``min_groups`` groups, at most ``max_per_class``
    clips each (a seeded draw), in a seeded random order (so packed windows mix classes)."""
    keep = set(classes if classes is not None else sound_classes(clips, min_groups))
    rng = np.random.default_rng(seed)
    chosen: list[SoundClip] = []
    for label in sorted(keep):
        members = sorted((c for c in clips if c.label == label), key=lambda c: c.id)
        if max_per_class is not None and len(members) > max_per_class:
            idx = sorted(rng.choice(len(members), size=max_per_class, replace=False).tolist())
            members = [members[i] for i in idx]
        chosen += members
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order]
