"""The held-out-source split: whole source packages kept out of training.

The corpus's recording split keeps every recording (and its augmentations) on one
side, but train and test still share packages: the same instrument bank, the same
speaker, the same sound designer. An evaluation on packages the project never used
scored the shipped heads about half of their recording-split test mAP, so heads
are also judged on packages they never saw.

The held-out set is chosen by a fixed, greedy rule over the store itself
(:func:`choose_held_out_sources`), so every store of the same corpus gets the same
set and no list has to be kept by hand:

- a class is *carried* by a package when a clip made of that package alone (a real
  clip, or a mixed clip whose partners came from the same package) has it;
- a class is *well covered* when at least two packages carry it, with at least
  ``MIN_RECORDINGS`` recordings in all;
- packages are held out one at a time. A package may be taken when it gives at least
  one well-covered class its first held-out package, every well-covered class keeps a
  training package, and at most ``MAX_HELD_OUT_SHARE`` of the clips would touch a
  held-out package. Each round takes the admissible package with the most classes
  gained minus classes lost (carried by held-out packages only, so untrained), then
  fewer clips, then the name; the rule stops when none is admissible.

Clips (:func:`source_splits`): made only of held-out packages -> ``test``; made only
of other packages -> their recording split, with the recording split's ``test`` clips
moved to ``valid`` (they were held out from training anyway); mixing both sides ->
left out (``None``), so no held-out package is ever trained on and the test side
holds no training package either.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .features import FeatureSet, FeatureStoreError

logger = logging.getLogger("whisper_at")

SPLIT_SCHEMES = ("recording", "source")
MIN_RECORDINGS = 5  # recordings (over all packages) for a class to count as well covered
MAX_HELD_OUT_SHARE = 0.3  # of all clips, counting those that mix both sides


@dataclass(frozen=True)
class SourceSplit:
    held_out: tuple[str, ...]  # the held-out packages, in the order the rule took them
    splits: list[str | None]  # per clip of the store: train / valid / test, None = left out
    covered: list[int]  # well-covered classes that have held-out test clips
    untrained: list[int]  # classes carried by held-out packages only

    def unseen_by(self, head_held_out: Sequence[str] | None) -> bool:
        """Whether a head trained without ``head_held_out`` never saw these packages."""
        return set(self.held_out) <= set(head_held_out or [])


def _require_sources(data: FeatureSet) -> list[tuple[str, ...]]:
    if data.sources is None:
        raise FeatureStoreError(
            "this feature store was made before feature format 2 and does not record the "
            "source packages of its clips; the held-out-source split needs them: extract the "
            "features again into a new folder"
        )
    if not any(data.sources):
        raise FeatureStoreError(
            "the manifest of this feature store gives no 'source' for its clips; the "
            "held-out-source split needs the package each clip comes from"
        )
    return data.sources


def _carriers(data: FeatureSet) -> dict[int, dict[str, set[str]]]:
    """class -> package -> recordings, from clips made of one package alone."""
    out: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    targets = data.targets.numpy()
    pairs = zip(data.sources or [], data.recordings, strict=True)
    for row, (sources, recording) in enumerate(pairs):
        if len(sources) == 1:
            for c in np.flatnonzero(targets[row]):
                out[int(c)][sources[0]].add(recording)
    return out


def _well_covered(
    carriers: dict[int, dict[str, set[str]]], min_recordings: int
) -> dict[int, set[str]]:
    """Well-covered classes and the packages that carry them."""
    return {
        c: set(by_package)
        for c, by_package in carriers.items()
        if len(by_package) >= 2 and len(set().union(*by_package.values())) >= min_recordings
    }


def choose_held_out_sources(
    data: FeatureSet,
    min_recordings: int = MIN_RECORDINGS,
    max_share: float = MAX_HELD_OUT_SHARE,
) -> tuple[str, ...]:
    """The held-out packages of ``data`` (a whole store) by the module's greedy rule."""
    sources = _require_sources(data)
    carriers = _carriers(data)
    carried = {c: set(by_package) for c, by_package in carriers.items()}
    well = _well_covered(carriers, min_recordings)
    clips: dict[str, int] = defaultdict(int)
    for packages in sources:
        for p in packages:
            clips[p] += 1
    held: list[str] = []
    covered: set[int] = set()
    while True:
        best: tuple[int, int, str] | None = None
        for p in sorted(clips):
            if p in held:
                continue
            after = {*held, p}
            gain = sum(1 for c, ps in well.items() if p in ps and c not in covered)
            if not gain or any(ps <= after for ps in well.values()):
                continue  # adds nothing, or leaves a well-covered class no training package
            touching = sum(1 for packages in sources if after & set(packages))
            if touching > max_share * len(sources):
                continue
            lost = sum(1 for ps in carried.values() if p in ps and ps <= after)
            key = (lost - gain, clips[p], p)
            if best is None or key < best:
                best = key
        if best is None:
            return tuple(held)
        held.append(best[2])
        covered |= {c for c, ps in well.items() if best[2] in ps}


def source_splits(
    data: FeatureSet, held_out: Sequence[str] | None = None, absent_ok: bool = False
) -> SourceSplit:
    """Each clip's side in the held-out-source split (``held_out`` default: the rule's).

    A given package that no clip comes from is an error (a typo would otherwise hold out
    nothing), unless ``absent_ok``: then it stays in ``held_out`` (nothing of it is
    trained on) with a warning.
    """
    sources = _require_sources(data)
    held = tuple(held_out) if held_out is not None else choose_held_out_sources(data)
    unknown = set(held) - {p for packages in sources for p in packages}
    if unknown and not absent_ok:
        raise FeatureStoreError(f"no clip of this store comes from {sorted(unknown)}")
    if unknown:
        logger.warning("held out but not in this store: %s", ", ".join(sorted(unknown)))
    if unknown == set(held):
        raise FeatureStoreError(f"no clip of this store comes from any of {sorted(unknown)}")
    held_set = set(held)
    splits: list[str | None] = []
    for packages, split in zip(sources, data.splits, strict=True):
        inside = held_set & set(packages)
        if not inside:
            splits.append("valid" if split == "test" else split)
        else:
            splits.append("test" if inside == set(packages) else None)
    test = np.asarray([s == "test" for s in splits])
    positives = data.targets.numpy()[test].sum(axis=0)
    carriers = _carriers(data)
    well = _well_covered(carriers, MIN_RECORDINGS)
    covered = sorted(c for c, ps in well.items() if held_set & ps and positives[c])
    untrained = sorted(c for c, ps in carriers.items() if set(ps) <= held_set)
    return SourceSplit(held, splits, covered, untrained)


def with_scheme(
    data: FeatureSet,
    scheme: str,
    held_out: Sequence[str] | None = None,
    absent_ok: bool = False,
) -> tuple[FeatureSet, SourceSplit | None]:
    """``data`` with the splits of ``scheme``: as stored ("recording"), or held-out-source.

    For "source", clips that mix held-out and training packages are dropped.
    """
    if scheme == "recording":
        return data, None
    if scheme != "source":
        raise ValueError(f"unknown split scheme {scheme!r}; expected one of {SPLIT_SCHEMES}")
    split = source_splits(data, held_out, absent_ok)
    kept = [i for i, s in enumerate(split.splits) if s is not None]
    relabelled = dataclasses.replace(data, splits=[s or "" for s in split.splits])
    return relabelled.subset(kept), split


def with_scheme_for_head(
    data: FeatureSet,
    scheme: str,
    head_held_out: Sequence[str] | None,
    given: Sequence[str] | None = None,
) -> tuple[FeatureSet, SourceSplit | None, str | None]:
    """:func:`with_scheme` for judging or calibrating a head, and where the held-out list
    came from.

    Held out: the ``given`` packages (to judge several heads on the same ones); else those
    the head was trained without when the store has any of them, so a head judged on
    another build of the corpus is still scored on what it never saw; else the store's rule.
    """
    if scheme != "source":
        return *with_scheme(data, scheme), None
    if given:
        held, origin = tuple(given), "given"
    elif head_held_out and set(head_held_out) & {p for ps in _require_sources(data) for p in ps}:
        held, origin = tuple(head_held_out), "the head's"
    else:
        held, origin = None, "the store's rule"
    relabelled, split = with_scheme(data, scheme, held, absent_ok=held is not None)
    return relabelled, split, origin


def held_out_sentence(held_out: list[str], origin: str, trained_without_them: bool) -> str:
    """The reports' warning when a head's held-out-source scores measure seen packages."""
    listed = f"Held-out sources ({origin}): {', '.join(held_out)}."
    if trained_without_them:
        return f"{listed} The head was trained without them."
    return (
        f"{listed} **The head was trained on these sources "
        "too, so these scores do not measure unseen sources** (train one with "
        "`--split-scheme source`)."
    )
