"""Output files: openai-whisper's own writers for the transcript, ours for the tags."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from whisper.utils import get_writer

from .events import EventOptions, SoundEvent
from .tagging import TaggingResult, Threshold

TRANSCRIPT_FORMATS = ("txt", "srt", "vtt", "tsv")
OUTPUT_FORMATS = (*TRANSCRIPT_FORMATS, "json", "tags", "events")
EVENT_COLUMNS = ["filename", "onset", "offset", "event_label"]  # DCASE's TSV header


def tag_windows_json(
    tagging: TaggingResult, top_k: int, threshold: Threshold
) -> list[dict[str, Any]]:
    return [asdict(window) for window in tagging.windows(top_k=top_k, threshold=threshold)]


def json_ready(
    result: dict[str, Any],
    top_k: int = 5,
    threshold: Threshold = "auto",
    event_options: EventOptions | None = None,
) -> dict[str, Any]:
    """A transcription result with tensors turned into lists and readable tag windows added.

    ``sound_events`` are detected with ``event_options``; the per-bin ``event_track`` they
    come from is left out (25 numbers per class for every 10 s: too big for a JSON file).
    """
    ready = {
        k: v.tolist() if isinstance(v, torch.Tensor) else v
        for k, v in result.items()
        if k != "event_track"
    }
    if result.get("audio_tag") is not None:
        tagging = TaggingResult.from_result(result)
        ready["audio_tag"] = [[round(x, 4) for x in row] for row in tagging.logits.tolist()]
        ready["tags"] = tag_windows_json(tagging, top_k, threshold)
        if tagging.track is not None:
            ready["sound_events"] = [asdict(e) for e in tagging.events(event_options)]
    return ready


def event_rows(filename: str, events: list[SoundEvent]) -> list[list[str]]:
    """DCASE rows: file name, onset and offset in seconds, label."""
    return [[filename, f"{e.start:.3f}", f"{e.end:.3f}", e.label] for e in events]


def write_events_tsv(path: Path, rows: list[list[str]]) -> None:
    """A DCASE-style event list (``filename onset offset event_label``), as sed_eval and
    sed_scores_eval read it."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(EVENT_COLUMNS)
        writer.writerows(rows)


TAG_COLUMNS = ["start", "end", "label", "probability", "logit"]


def _tag_rows(tagging: TaggingResult, top_k: int, threshold: Threshold) -> list[list[str]]:
    return [
        [
            f"{window.start:.1f}",
            f"{window.end:.1f}",
            tag.label,
            f"{tag.probability:.4f}",
            f"{tag.logit:.4f}",
        ]
        for window in tagging.windows(top_k=top_k, threshold=threshold)
        for tag in window.tags
    ]


def write_tags_tsv(tagging: TaggingResult, path: Path, top_k: int, threshold: Threshold) -> None:
    """One row per (window, tag): start and end in seconds, label, probability, logit."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(TAG_COLUMNS)
        writer.writerows(_tag_rows(tagging, top_k, threshold))


class TagTable:
    """One TSV for many files: the rows of ``write_tags_tsv`` with the file in front.

    Each file's rows are flushed as soon as they are added, so an interrupted run
    keeps what it did.
    """

    def __init__(self, path: str | os.PathLike, top_k: int, threshold: Threshold) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.top_k, self.threshold = top_k, threshold
        self._file = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._writer = csv.writer(self._file, delimiter="\t", lineterminator="\n")
        self._writer.writerow(["file", *TAG_COLUMNS])

    def add(self, audio_path: str | os.PathLike, tagging: TaggingResult) -> None:
        for row in _tag_rows(tagging, self.top_k, self.threshold):
            self._writer.writerow([str(audio_path), *row])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_outputs(
    result: dict[str, Any],
    audio_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: list[str],
    top_k: int = 5,
    threshold: Threshold = "auto",
    event_options: EventOptions | None = None,
) -> list[Path]:
    """Write the chosen formats next to each other as ``<audio stem>.<ext>``; returns the paths.

    ``events`` is ``<stem>.events.tsv``, a DCASE event list of the file.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(audio_path).stem
    written = []
    for fmt in formats:
        if fmt in TRANSCRIPT_FORMATS and "segments" in result:
            get_writer(fmt, str(out))(result, str(audio_path))
            written.append(out / f"{stem}.{fmt}")
        elif fmt == "json":
            path = out / f"{stem}.json"
            with open(path, "w", encoding="utf-8") as f:
                ready = json_ready(result, top_k, threshold, event_options)
                json.dump(ready, f, ensure_ascii=False, indent=1)
            written.append(path)
        elif fmt == "tags" and result.get("audio_tag") is not None:
            path = out / f"{stem}.tags.tsv"
            write_tags_tsv(TaggingResult.from_result(result), path, top_k, threshold)
            written.append(path)
        elif fmt == "events" and result.get("event_track") is not None:
            path = out / f"{stem}.events.tsv"
            events = TaggingResult.from_result(result).events(event_options)
            write_events_tsv(path, event_rows(Path(audio_path).name, events))
            written.append(path)
    return written
