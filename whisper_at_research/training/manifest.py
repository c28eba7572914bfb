"""Training manifests: JSON lines, one clip per line, and the label set they use.

Each line holds ``path`` (relative paths are relative to the manifest's folder),
optional ``start``/``end`` seconds, ``labels`` (class display names or ids), optional
``split`` (train/valid/test, default train) and ``recording`` (the original
recording, which keeps splits apart), optional ``id`` and ``format`` (an FFmpeg
demuxer for headerless files). Other keys are ignored.

For manifests written by ``whisper-at corpus build``: ``labels`` given as AudioSet
indices are accepted (with ``label_names`` preferred when present), and
``recording_id`` stands in for ``recording``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from whisper_at.labels import LabelSet, audioset_labels

SPLITS = ("train", "valid", "test")


class ManifestError(ValueError):
    """A manifest line or label that cannot be used; the message names the line."""


@dataclass(frozen=True)
class Clip:
    id: str
    path: str  # as resolved (absolute, or relative to the working directory)
    start: float
    end: float | None
    labels: tuple[str, ...]  # as written in the manifest
    split: str
    recording: str
    format: str | None = None
    sources: tuple[str, ...] = ()  # packages the audio comes from (empty: not recorded)


def read_manifest(path: str | os.PathLike) -> list[Clip]:
    """Parse a manifest; raises :class:`ManifestError` naming the bad line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    base = path.parent
    clips: list[Clip] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: not JSON: {e}") from e
            clip = _clip(row, where, base)
            if clip.id in seen:
                raise ManifestError(f"{where}: duplicate clip id {clip.id!r}")
            seen.add(clip.id)
            clips.append(clip)
    if not clips:
        raise ManifestError(f"{path}: no clips")
    return clips


def _clip(row: object, where: str, base: Path) -> Clip:
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    if not isinstance(row.get("path"), str) or not row["path"]:
        raise ManifestError(f"{where}: missing 'path'")
    audio = Path(row["path"]).expanduser()
    if not audio.is_absolute():
        audio = base / audio
    labels = row.get("labels", [])
    if not isinstance(labels, list):
        raise ManifestError(f"{where}: 'labels' must be a list")
    if labels and all(isinstance(x, int) for x in labels):
        names = row.get("label_names")
        if isinstance(names, list) and len(names) == len(labels):
            labels = names
        else:  # AudioSet indices, as the corpus builder writes them
            audioset = audioset_labels()
            if any(not 0 <= i < len(audioset) for i in labels):
                raise ManifestError(f"{where}: label index out of range 0..{len(audioset) - 1}")
            labels = [audioset.names[i] for i in labels]
    if not all(isinstance(x, str) for x in labels):
        raise ManifestError(f"{where}: 'labels' must be class names")
    split = row.get("split", "train")
    if split not in SPLITS:
        raise ManifestError(f"{where}: split {split!r} is not one of {SPLITS}")
    try:
        start = float(row.get("start") or 0.0)
        end = None if row.get("end") is None else float(row["end"])
    except (TypeError, ValueError) as e:
        raise ManifestError(f"{where}: bad start/end: {e}") from e
    if start < 0 or (end is not None and end <= start):
        raise ManifestError(f"{where}: need 0 <= start < end, got {start}, {end}")
    clip_id = row.get("id") or f"{row['path']}@{start:g}-{'' if end is None else f'{end:g}'}"
    recording = row.get("recording") or row.get("recording_id") or row["path"]
    sources = row.get("source") or []
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
        raise ManifestError(f"{where}: 'source' must be a package name or a list of them")
    return Clip(
        id=str(clip_id),
        path=str(audio),
        start=start,
        end=end,
        labels=tuple(labels),
        split=split,
        recording=str(recording),
        format=row.get("format"),
        sources=tuple(sorted(set(sources))),
    )


PlacedEvent = tuple[float, float, tuple[int, ...]]  # start s, end s, class indices


def placed_events(path: str | os.PathLike, clip_ids: list[str]) -> dict[str, list[PlacedEvent]]:
    """Per clip, where ``whisper-at corpus build`` placed each recording in it (seconds
    from the clip's start) and the recording's classes (AudioSet indices, parents
    included): the clip's strong labels, for event evaluation and crop training."""
    clips = read_manifest(path)
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    by_id = {clip.id: row for clip, row in zip(clips, rows, strict=True)}
    missing = [i for i in clip_ids if i not in by_id]
    if missing:
        raise ManifestError(f"{len(missing)} clips are not in {path}: {missing[:3]}")
    placed: dict[str, list[PlacedEvent]] = {}
    for clip_id in clip_ids:
        if "events" not in by_id[clip_id]:
            raise ManifestError(
                f"{path}: clip {clip_id} records no event placement (manifests of "
                "`whisper-at corpus build` do)"
            )
        placed[clip_id] = [
            (float(e["start"]), float(e["end"]), tuple(e["labels"]))
            for e in by_id[clip_id]["events"]
        ]
    return placed


def manifest_hash(clips: list[Clip], labels: LabelSet) -> str:
    """Identifies what a feature store was made from: the clips and the label set."""
    data = {"clips": [asdict(c) for c in clips], "labels": list(labels.ids)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def read_label_file(path: str | os.PathLike) -> LabelSet:
    """A custom label set: one class name per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"label file not found: {path}")
    names = [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if not names:
        raise ManifestError(f"{path}: no label names")
    if len({n.lower() for n in names}) != len(names):
        raise ManifestError(f"{path}: duplicate label names")
    return LabelSet.custom(names)


def labels_from_manifest(clips: list[Clip]) -> LabelSet:
    """A custom label set made of every label name the manifest uses, sorted."""
    names = sorted({name for clip in clips for name in clip.labels})
    if not names:
        raise ManifestError("the manifest has no labels to make a custom label set of")
    return LabelSet.custom(names)


def label_indices(clips: list[Clip], labels: LabelSet) -> list[list[int]]:
    """Each clip's labels as class indices; unknown names are an error listing them."""
    lookup: dict[str, int] = {}
    for i, (name, ident) in enumerate(zip(labels.names, labels.ids, strict=True)):
        lookup.setdefault(name.lower(), i)
        lookup.setdefault(ident.lower(), i)
    unknown: dict[str, int] = {}
    out = []
    for clip in clips:
        indices = set()
        for name in clip.labels:
            index = lookup.get(name.lower())
            if index is None:
                unknown[name] = unknown.get(name, 0) + 1
            else:
                indices.add(index)
        out.append(sorted(indices))
    if unknown:
        shown = ", ".join(f"{n!r} ({k} clips)" for n, k in sorted(unknown.items())[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        kind = "AudioSet" if labels.is_audioset else "the label set"
        raise ManifestError(
            f"labels not in {kind}: {shown}{more}. Use --labels FILE or --custom-labels "
            "for a custom label set"
        )
    return out
