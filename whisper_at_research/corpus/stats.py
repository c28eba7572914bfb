"""Per-class coverage of a built corpus: original recordings and the packages they come from.

A class learned from one package is a class learned from one recording setup; the
held-out-source evaluation (docs/training.md) needs a class in several packages. This
reads a corpus ``manifest.jsonl`` (each row's main recording, its own labels from the
row's events, and its package from the recording id's source) and counts, per class,
the distinct recordings and the distinct packages. ``WANTED_CLASSES`` are the classes
users most ask for in captions (issue 13), so the table says which are thin or missing.
Restricted to some sources (the held-out packages), it says which classes a held-out
evaluation can judge, and on how many packages.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from whisper_at.labels import audioset_labels

__all__ = ["WANTED_CLASSES", "ClassCoverage", "class_coverage", "coverage_markdown"]

# The caption classes issue 13 names, as AudioSet display names.
WANTED_CLASSES = (
    "Laughter",
    "Applause",
    "Clapping",
    "Cheering",
    "Crowd",
    "Gunshot, gunfire",
    "Explosion",
    "Walk, footsteps",
    "Door",
    "Knock",
    "Shatter",
    "Glass",
    "Water",
    "Rain",
    "Wind",
    "Thunder",
    "Fire",
    "Car",
    "Truck",
    "Motorcycle",
    "Engine",
    "Aircraft",
    "Helicopter",
    "Train",
    "Siren",
    "Alarm",
    "Bell",
    "Dog",
    "Cat",
    "Bird",
    "Screaming",
    "Crying, sobbing",
    "Cough",
    "Breathing",
    "Typing",
    "Speech",
    "Male speech, man speaking",
    "Female speech, woman speaking",
    "Music",
    "Musical instrument",
)


@dataclass(frozen=True)
class ClassCoverage:
    name: str
    recordings: int
    packages: tuple[str, ...]  # source names, sorted

    @property
    def n_packages(self) -> int:
        return len(self.packages)


def class_coverage(
    manifest: str | Path, sources: Sequence[str] | None = None
) -> dict[str, ClassCoverage]:
    """Coverage of every class that some recording in the manifest carries, by class name.

    Args:
        manifest: a corpus ``manifest.jsonl``.
        sources: count only the recordings of these source names (``whisper-at corpus
            sources``); a name no recording of the manifest comes from is an error.
    """
    names = audioset_labels().names
    labels_of: dict[str, set[int]] = {}
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            main = row["recording_id"]
            if main in labels_of:
                continue
            own = [e["labels"] for e in row["events"] if e["recording_id"] == main]
            if not own:
                raise ValueError(f"{manifest}: row {row['path']} has no event of its recording")
            labels_of[main] = set(own[0])
    if sources is not None:
        present = {rec_id.split(":", 1)[0] for rec_id in labels_of}
        absent = sorted(set(sources) - present)
        if absent:
            raise ValueError(f"{manifest}: no recording comes from {', '.join(absent)}")
        labels_of = {k: v for k, v in labels_of.items() if k.split(":", 1)[0] in sources}
    recordings: dict[str, set[str]] = defaultdict(set)
    for rec_id, indices in labels_of.items():
        for i in indices:
            recordings[names[i]].add(rec_id)
    return {
        name: ClassCoverage(
            name, len(ids), tuple(sorted({rec_id.split(":", 1)[0] for rec_id in ids}))
        )
        for name, ids in sorted(recordings.items())
    }


def coverage_markdown(coverage: dict[str, ClassCoverage], min_packages: int = 3) -> str:
    """The per-class table, then the wanted classes with fewer than ``min_packages``."""
    lines = [
        "| class | recordings | packages | sources |",
        "|---|---:|---:|---|",
    ]
    for c in coverage.values():
        lines.append(f"| {c.name} | {c.recordings} | {c.n_packages} | {', '.join(c.packages)} |")
    thin = [
        f"{name} ({coverage[name].n_packages})"
        for name in WANTED_CLASSES
        if name in coverage and coverage[name].n_packages < min_packages
    ]
    missing = [name for name in WANTED_CLASSES if name not in coverage]
    few = sum(1 for c in coverage.values() if c.n_packages < min_packages)
    lines += [
        "",
        f"{len(coverage)} classes; {few} from fewer than {min_packages} packages.",
        f"Wanted classes from fewer than {min_packages} packages: {', '.join(thin) or 'none'}.",
        f"Wanted classes with no recording: {', '.join(missing) or 'none'}.",
    ]
    return "\n".join(lines) + "\n"
