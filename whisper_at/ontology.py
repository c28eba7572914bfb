"""The AudioSet ontology's parent/child relations, for the 527 classes and the nodes above them.

``assets/audioset_ontology_children.tsv`` holds, for every ontology node that has children, its id,
name and ``child_ids`` as published in ``ontology.json`` of the AudioSet ontology
(github.com/audioset/ontology, CC BY-SA 4.0); descriptions and examples are left out.
A class may have several parents ("Cowbell" is under "Cattle, bovinae", "Percussion" and
"Bell"). Captions use it to drop a class when a more specific one is present.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

from .labels import audioset_labels


@dataclass(frozen=True)
class Ontology:
    """Child ids of every ontology node (by mid); nodes without children are absent."""

    children: dict[str, tuple[str, ...]]

    def parents(self, mid: str) -> frozenset[str]:
        return frozenset(p for p, kids in self.children.items() if mid in kids)

    def ancestors(self, mid: str) -> frozenset[str]:
        """Every node above ``mid`` (any path), including abstract ones that are not classes."""
        found: set[str] = set()
        todo = [mid]
        while todo:
            for parent in self.parents(todo.pop()):
                if parent not in found:
                    found.add(parent)
                    todo.append(parent)
        return frozenset(found)

    def descendants(self, mid: str) -> frozenset[str]:
        """Every node below ``mid``."""
        found: set[str] = set()
        todo = [mid]
        while todo:
            for child in self.children.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return frozenset(found)


@lru_cache(maxsize=1)
def audioset_ontology() -> Ontology:
    """The committed parent/child table (assets/audioset_ontology_children.tsv)."""
    path = resources.files("whisper_at") / "assets" / "audioset_ontology_children.tsv"
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return Ontology({row["parent_id"]: tuple(row["child_ids"].split()) for row in rows})


@cache
def class_ancestors(name: str) -> frozenset[str]:
    """Display names of the AudioSet classes above the class ``name`` (abstract nodes left out).

    A name that is not an AudioSet class has none.
    """
    labels = audioset_labels()
    if name not in labels.names:
        return frozenset()
    mid_to_name = dict(zip(labels.ids, labels.names, strict=True))
    above = audioset_ontology().ancestors(labels.ids[labels.names.index(name)])
    return frozenset(mid_to_name[mid] for mid in above if mid in mid_to_name)


@cache
def class_descendants(name: str) -> frozenset[str]:
    """Display names of the AudioSet classes below the class ``name``."""
    labels = audioset_labels()
    if name not in labels.names:
        return frozenset()
    mid_to_name = dict(zip(labels.ids, labels.names, strict=True))
    below = audioset_ontology().descendants(labels.ids[labels.names.index(name)])
    return frozenset(mid_to_name[mid] for mid in below if mid in mid_to_name)
