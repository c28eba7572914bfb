"""The reviewed mapping from source files to AudioSet classes (``mapping.tsv``).

Each row is ``source, pattern, labels, license, note``: ``pattern`` is a Python regular
expression matched (``fullmatch``) against a recording's path inside its source (see
:mod:`whisper_at_research.corpus.sources` for what the path is for each source); ``labels`` are
``;``-separated AudioSet display names, the specific class first, with its parents
written out where the ontology has them (or the parent alone where the specific class
does not exist, e.g. Bassoon -> "Wind instrument, woodwind instrument"). Within a source
the first matching row wins; files matching no row are not used.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

from whisper_at.labels import audioset_labels

__all__ = ["MappingRow", "load_mapping", "match_labels"]


@dataclass(frozen=True)
class MappingRow:
    source: str
    pattern: str
    labels: tuple[str, ...]
    license: str
    note: str

    @property
    def regex(self) -> re.Pattern[str]:
        return _compile(self.pattern)

    @property
    def indices(self) -> tuple[int, ...]:
        labels = audioset_labels()
        return tuple(labels.names.index(name) for name in self.labels)


@cache
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@lru_cache(maxsize=1)
def load_mapping() -> tuple[MappingRow, ...]:
    """All rows of the committed table; raises ValueError on an unknown class name."""
    path = resources.files("whisper_at_research.corpus") / "mapping.tsv"
    names = set(audioset_labels().names)
    rows = []
    with path.open(encoding="utf-8", newline="") as f:
        for line, record in enumerate(csv.DictReader(f, delimiter="\t"), start=2):
            labels = tuple(name.strip() for name in record["labels"].split(";") if name.strip())
            unknown = [name for name in labels if name not in names]
            if unknown or not labels:
                raise ValueError(f"mapping.tsv line {line}: unknown AudioSet class(es) {unknown}")
            if len(set(labels)) != len(labels):
                raise ValueError(f"mapping.tsv line {line}: repeated class")
            row = MappingRow(
                record["source"], record["pattern"], labels, record["license"], record["note"] or ""
            )
            row.regex  # noqa: B018 - compile now so a bad pattern fails here, with its line
            rows.append(row)
    return tuple(rows)


def match_labels(source: str, path: str) -> MappingRow | None:
    """The first row of ``source`` whose pattern matches ``path``, else None."""
    for row in load_mapping():
        if row.source == source and row.regex.fullmatch(path):
            return row
    return None
