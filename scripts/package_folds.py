"""Leave-packages-out cross-validation: every package judged by a head that never saw it.

Build 4's eight held-out packages judge most sound-effect classes on one or two packages
(``whisper-at corpus stats --sources``, docs/results.md), so a class's held-out AP there
says how one game's doors sound, not whether doors generalize. Here the store's packages
are dealt into K folds (largest first, each to the fold with the fewest clips so far) and,
for each fold, a head is trained without the fold's packages (``split_scheme="source"``)
and scores the fold's clips (those made of its packages only; clips that mix a fold
package with another are in neither side, as in ``source_splits``). Per class, the scores
of every fold whose head was trained on the class are pooled: its AP is over all the
packages that carry it, and the table says how many packages its scored clips come from
(a mixed clip counts its partner's package too). Heads are reused
when their file exists, so the command resumes, and ``--only-fold`` trains one fold (run
folds side by side, then once without it to pool).

``--never-train PKG,...`` keeps packages out of every head's training while they are still
scored in their own fold: what a package teaches the heads about all the others (whether
Hydrogen's isolated drum hits make impulses read as percussion, say; docs/results.md).

``--ensemble TEMPLATE`` (repeatable) scores each fold with the mean probability of its head
and other fold heads, ``TEMPLATE`` naming them with ``{fold}`` for the fold number (heads
of another recipe trained by this script into another ``--work``, say): whether heads of
different kinds err differently on unseen packages. Every member must have been trained
without exactly the fold's packages.

    python scripts/package_folds.py FEATURES --work DIR [--folds 5] [--head-type tl_tr_low]
        [--proj-dim 192] [--epochs 15] [--lr 5e-4] [--crop-seconds 2] [--seed 0]
        [--threads 1] [--only-fold N] [--never-train PKG,...] [--ensemble TEMPLATE ...]
        [--out docs/measurements/package_folds]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from whisper_at.heads import load_head
from whisper_at_research.corpus.stats import WANTED_CLASSES
from whisper_at_research.training.cli import (
    add_measurement_recipe,
    comma_list,
    measurement_recipe,
    measurement_recipe_text,
    start_measurement,
)
from whisper_at_research.training.evaluate import align_targets, top_k_hits
from whisper_at_research.training.features import FeatureSet, load_features
from whisper_at_research.training.metrics import tagging_metrics
from whisper_at_research.training.source_split import source_splits
from whisper_at_research.training.train import predict, train_head

logger = logging.getLogger("whisper_at")


def deal_folds(data: FeatureSet, k: int) -> list[list[str]]:
    """Packages dealt into ``k`` folds of about equal clip counts (deterministic)."""
    clips = Counter(package for sources in data.sources for package in sources)
    if k < 2 or k > len(clips):
        raise SystemExit(f"--folds must be between 2 and the store's {len(clips)} packages")
    folds: list[list[str]] = [[] for _ in range(k)]
    load = [0] * k
    for package, n in sorted(clips.items(), key=lambda item: (-item[1], item[0])):
        smallest = load.index(min(load))
        folds[smallest].append(package)
        load[smallest] += n
    return [sorted(fold) for fold in folds]


def untrained_packages(args: argparse.Namespace, packages: list[str]) -> list[str]:
    """The packages the fold's head is trained without: its own and ``--never-train``."""
    return sorted(set(packages) | set(args.never_train))


def fold_head(args: argparse.Namespace, fold: int, packages: list[str]) -> Path:
    """Train (or reuse) the head that never saw ``packages`` (nor ``--never-train``)."""
    name = f"fold{fold}of{args.folds}-{args.head_type}-e{args.epochs}-s{args.seed}.safetensors"
    path = args.work / name
    if not path.is_file():
        train_head(args.features, args.head_type, out=path, seed=args.seed,
                   **measurement_recipe(args), split_scheme="source",
                   held_out_sources=untrained_packages(args, packages))  # fmt: skip
    return path


def fold_clips(data: FeatureSet, packages: list[str]) -> FeatureSet:
    """The clips made of the fold's packages only (mixed clips are on neither side)."""
    split = source_splits(data, packages)
    return data.subset([i for i, side in enumerate(split.splits) if side == "test"])


def fold_scores(test: FeatureSet, head_path: Path, untrained: list[str]) -> dict:
    """The head's probabilities and the targets on the fold's own clips ``test``."""
    head = load_head(head_path)
    if sorted(head.config.held_out_sources or []) != untrained:
        raise SystemExit(
            f"{head_path} was not trained without exactly {', '.join(untrained)} "
            "(the fold's packages and --never-train's)"
        )
    return {
        "names": head.config.label_names,
        "reported": head.config.reported_classes,
        "targets": align_targets(head, test.meta["label_ids"], test.targets),
        "scores": torch.sigmoid(predict(head, test.features)).numpy(),
        "sources": list(test.sources),
    }


def ensemble_scores(members: list[dict]) -> dict:
    """The fold's scores averaged over the heads of ``--ensemble``."""
    first = members[0]
    if any(m["names"] != first["names"] or m["reported"] != first["reported"] for m in members):
        raise SystemExit("the --ensemble heads of a fold differ in labels or trained classes")
    return {**first, "scores": np.mean([m["scores"] for m in members], axis=0)}


def top_classes(scored: dict, row: int, k: int) -> list[int]:
    """The ``k`` reported classes the head scores highest on one clip: what a user sees."""
    reported = np.asarray(scored["reported"])
    return list(reported[np.argsort(-scored["scores"][row, reported])[:k]])


def pooled_report(folds: list[list[str]], scored: list[dict]) -> dict:
    """Per-class AP over the folds whose head was trained on the class, and fold rows."""
    names = scored[0]["names"]
    if any(s["names"] != names for s in scored):
        raise SystemExit("the fold heads do not share one label set")
    per_class = []
    for c, name in enumerate(names):
        trained = [c in set(s["reported"]) for s in scored]
        mine = [s for s, yes in zip(scored, trained, strict=True) if yes]
        if not mine:
            continue
        targets = np.concatenate([s["targets"][:, c] for s in mine])
        if not targets.any():
            continue
        scores = np.concatenate([s["scores"][:, c] for s in mine])
        packages = {
            package
            for s in mine
            for row, sources in enumerate(s["sources"])
            if s["targets"][row, c]
            for package in sources
        }
        ap = tagging_metrics(targets[:, None], scores[:, None]).per_class[0]
        in_top3 = Counter(
            names[k]
            for s in mine
            for row in np.flatnonzero(s["targets"][:, c])
            for k in top_classes(s, row, 3)
        )
        untrained = sum(
            int(s["targets"][:, c].sum()) for s, yes in zip(scored, trained, strict=True) if not yes
        )
        per_class.append(
            {
                "name": name,
                "positives": int(targets.sum()),
                "packages": len(packages),
                "ap": ap["ap"],
                "auc": ap["auc"],
                "positives_untrained": untrained,
                "top3_on_its_clips": dict(in_top3.most_common(5)),
            }
        )
    fold_rows = []
    for packages, s in zip(folds, scored, strict=True):
        evaluated = [c for c in s["reported"] if s["targets"][:, c].any()]
        m = tagging_metrics(s["targets"], s["scores"], evaluated)
        labelled = s["targets"].sum(axis=1) > 0
        hits = top_k_hits(s["targets"][labelled], s["scores"][labelled], s["reported"])
        fold_rows.append(
            {
                "packages": packages,
                "clips": len(s["targets"]),
                "classes": m.n_classes,
                "mAP": m.mAP,
                "top1": hits["1"],
                "top3": hits["3"],
            }
        )
    aps = [r["ap"] for r in per_class]
    clips = sum(r["clips"] for r in fold_rows)
    return {
        "mAP": float(np.mean(aps)),
        "mAP_3_packages": float(np.mean([r["ap"] for r in per_class if r["packages"] >= 3])),
        "classes": len(aps),
        "classes_3_packages": sum(r["packages"] >= 3 for r in per_class),
        "top1": sum(r["top1"] * r["clips"] for r in fold_rows) / clips,
        "top3": sum(r["top3"] * r["clips"] for r in fold_rows) / clips,
        "folds": fold_rows,
        "per_class": per_class,
    }


def write_report(report: dict, args: argparse.Namespace) -> None:
    recipe = f"{measurement_recipe_text(args)}, seed {args.seed}"
    if args.never_train:
        recipe += f"; no head trained on {', '.join(args.never_train)}"
    for template in args.ensemble:
        recipe += f"; probabilities averaged with `{template}`"
    clips = sum(f["clips"] for f in report["folds"])
    lines = [
        f"Leave-packages-out cross-validation over {args.folds} folds of the store "
        f"`{args.features}`: {clips} clips scored, each by the head trained without its "
        f"fold's packages; heads {recipe}; `scripts/package_folds.py` (docs/results.md).",
        "",
        f"**Pooled: mAP {report['mAP']:.3f} over {report['classes']} classes, "
        f"{report['mAP_3_packages']:.3f} over the {report['classes_3_packages']} classes "
        f"whose clips come from 3 or more packages; top-1 / top-3 hit {report['top1']:.3f} / "
        f"{report['top3']:.3f}.**",
        "",
        "| fold | packages | clips scored | classes | mAP | top-1 / top-3 hit |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for i, f in enumerate(report["folds"]):
        lines.append(
            f"| {i} | {', '.join(f['packages'])} | {f['clips']} | {f['classes']} | "
            f"{f['mAP']:.3f} | {f['top1']:.3f} / {f['top3']:.3f} |"
        )
    by_name = {r["name"]: r for r in report["per_class"]}
    lines += ["", "Wanted classes (issue 13):", ""]
    lines += [
        "| class | positives | packages in its clips | AP | AUC | most often in its clips' top 3 |"
    ]
    lines += ["|---|---:|---:|---:|---:|---|"]
    for name in WANTED_CLASSES:
        r = by_name.get(name)
        top = r and ", ".join(f"{k} {n}" for k, n in r["top3_on_its_clips"].items())
        lines.append(
            f"| {name} | {r['positives']} | {r['packages']} | {r['ap']:.3f} | "
            f"{r['auc']:.3f} | {top} |"
            if r
            else f"| {name} | - | - | - | - | - |"
        )
    lines += ["", "Every class scored (most packages first):", "",
              "| class | positives | packages in its clips | AP | AUC | untrained positives |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in sorted(report["per_class"], key=lambda r: (-r["packages"], r["name"])):
        lines.append(
            f"| {r['name']} | {r['positives']} | {r['packages']} | {r['ap']:.3f} | "
            f"{r['auc']:.3f} | {r['positives_untrained']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path, help="feature store, every split")
    parser.add_argument("--work", type=Path, required=True, help="where the heads go")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-fold", type=int, help="train this fold's head only")
    add_measurement_recipe(parser, proj_dim=192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--never-train", type=comma_list(str), default=[], metavar="PKG,PKG",
                        help="packages no head trains on (still scored in their fold)")  # fmt: skip
    parser.add_argument("--ensemble", action="append", default=[], metavar="TEMPLATE",
                        help="also average these heads ({fold}: the fold)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("docs/measurements/package_folds"))
    args = parser.parse_args()
    start_measurement(args)
    data = load_features(args.features)
    folds = deal_folds(data, args.folds)
    unknown = set(args.never_train) - {package for fold in folds for package in fold}
    if unknown:
        raise SystemExit(f"--never-train: the store has no package {', '.join(sorted(unknown))}")
    if args.only_fold is not None:
        if not 0 <= args.only_fold < args.folds:
            raise SystemExit(f"--only-fold must be between 0 and {args.folds - 1}")
        fold_head(args, args.only_fold, folds[args.only_fold])
        return
    scored = []
    for i, packages in enumerate(folds):
        logger.info("fold %d: %s", i, ", ".join(packages))
        others = [Path(template.format(fold=i)) for template in args.ensemble]
        if missing := [str(h) for h in others if not h.is_file()]:
            raise SystemExit(f"--ensemble: no head {', '.join(missing)}")
        test, untrained = fold_clips(data, packages), untrained_packages(args, packages)
        heads = [fold_head(args, i, packages), *others]
        scored.append(ensemble_scores([fold_scores(test, h, untrained) for h in heads]))
    report = pooled_report(folds, scored)
    write_report(report, args)
    logger.info("pooled mAP %.4f over %d classes", report["mAP"], report["classes"])


if __name__ == "__main__":
    main()
