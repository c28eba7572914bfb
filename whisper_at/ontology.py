"""The AudioSet ontology's parent/child relations, for reporting classes as their ancestors.

``assets/audioset_ontology_children.tsv`` holds, for each of the 158 ontology nodes with
children, its id, name and child ids, copied from the AudioSet ontology's
``ontology.json`` (632 nodes; the data-sources page in docs/ says where from and under
which license). Some nodes are not among the 527 classes a head reports (e.g. "Human voice",
"Sounds of things"); ancestry passes through them, so "Speech" has no ancestor among
the classes and "Bark" has Dog, "Domestic animals, pets" and Animal.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable
from functools import cache, lru_cache
from importlib import resources

from .labels import LabelSet, audioset_labels


@lru_cache(maxsize=1)
def ontology_parents() -> dict[str, tuple[str, ...]]:
    """Every ontology node with parents: id -> its parents' ids (a node may have several)."""
    path = resources.files("whisper_at") / "assets" / "audioset_ontology_children.tsv"
    parents: dict[str, list[str]] = defaultdict(list)
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            for child in row["child_ids"].split():
                parents[child].append(row["parent_id"])
    return {child: tuple(ids) for child, ids in parents.items()}


def _ancestors(node: str) -> set[str]:
    seen: set[str] = set()
    todo = list(ontology_parents().get(node, ()))
    while todo:
        parent = todo.pop()
        if parent not in seen:
            seen.add(parent)
            todo.extend(ontology_parents().get(parent, ()))
    return seen


@lru_cache(maxsize=8)
def _label_parents(labels: LabelSet) -> tuple[tuple[int, ...], ...]:
    """Per class, its nearest ancestors among ``labels`` (through nodes outside them)."""
    index = {mid: i for i, mid in enumerate(labels.ids)}
    unknown = [mid for mid in labels.ids if not _in_ontology(mid)]
    if unknown:
        raise ValueError(
            f"the ontology roll-up needs AudioSet class ids; this head's labels include "
            f"{unknown[:3]} which are not in the AudioSet ontology"
        )
    nearest = []
    for mid in labels.ids:
        above = {a for a in _ancestors(mid) if a in index}
        # the nearest: those not above another ancestor in the label set
        covered = set().union(*(_ancestors(a) for a in above)) if above else set()
        nearest.append(tuple(sorted(index[a] for a in above - covered)))
    return tuple(nearest)


def _in_ontology(mid: str) -> bool:
    return mid in ontology_parents() or mid in _roots()


@lru_cache(maxsize=1)
def _roots() -> frozenset[str]:
    path = resources.files("whisper_at") / "assets" / "audioset_ontology_children.tsv"
    with path.open(encoding="utf-8", newline="") as f:
        parents = {row["parent_id"] for row in csv.DictReader(f, delimiter="\t")}
    return frozenset(parents - set(ontology_parents()))


def label_paths(labels: LabelSet, index: int) -> list[tuple[int, ...]]:
    """Every chain of classes from a most general one (no ancestor in ``labels``) down to
    ``index``, e.g. (Animal, Domestic animals, Dog, Bark)."""
    parents = _label_parents(labels)[index]
    if not parents:
        return [(index,)]
    return [path + (index,) for parent in parents for path in label_paths(labels, parent)]


def ancestors_at_depth(labels: LabelSet, index: int, depth: int) -> list[int]:
    """The classes ``index`` is reported as when rolled up to ``depth`` (0: the most
    general); a class on a path shorter than that stays itself. Sorted, no repeats."""
    return sorted({path[min(depth, len(path) - 1)] for path in label_paths(labels, index)})


def ancestors(node: str) -> frozenset[str]:
    """Every ontology node above ``node`` (any path), nodes outside the 527 classes included."""
    return frozenset(_ancestors(node))


@lru_cache(maxsize=1)
def ontology_children() -> dict[str, tuple[str, ...]]:
    """Every ontology node with children: id -> its children's ids."""
    children: dict[str, list[str]] = defaultdict(list)
    for child, parents in ontology_parents().items():
        for parent in parents:
            children[parent].append(child)
    return {parent: tuple(ids) for parent, ids in children.items()}


def descendants(node: str) -> frozenset[str]:
    """Every ontology node below ``node``."""
    seen: set[str] = set()
    todo = list(ontology_children().get(node, ()))
    while todo:
        child = todo.pop()
        if child not in seen:
            seen.add(child)
            todo.extend(ontology_children().get(child, ()))
    return frozenset(seen)


@cache
def class_ancestors(name: str) -> frozenset[str]:
    """Display names of the AudioSet classes above the class ``name`` (captions drop a
    class when a more specific one is present). A name outside AudioSet has none."""
    return _class_names(ancestors, name)


@cache
def class_descendants(name: str) -> frozenset[str]:
    """Display names of the AudioSet classes below the class ``name``."""
    return _class_names(descendants, name)


def _class_names(relatives: Callable[[str], frozenset[str]], name: str) -> frozenset[str]:
    labels = audioset_labels()
    if name not in labels.names:
        return frozenset()
    names = dict(zip(labels.ids, labels.names, strict=True))
    found = relatives(labels.ids[labels.names.index(name)])
    return frozenset(names[mid] for mid in found if mid in names)
