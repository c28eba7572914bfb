"""What more source packages buy on packages no head saw (issue 13).

The shipped heads are trained without a fixed set of packages (``--added``, build 4's
eight) so that they can be judged on them. This measures what those packages would add
to training: a second set of packages (H2, chosen by the store's held-out rule among the
packages left once ``--added`` is taken away) is held out from both arms, and

- ``without_added``: a head trained without ``--added`` and without H2,
- ``with_added``: the same recipe trained without H2 only (``--added`` in training),

are scored on H2's clips. The difference is the gain from ``--added``'s packages on
sources neither head saw. ``--scored-on`` names H2 instead (for example build 4's eight,
with ``--added`` a new build's packages: what the new build adds on the shipped heads'
held-out packages). Every head is reused when its file exists, so the command
resumes; the table (markdown + json) is rewritten after each head.

    python scripts/source_gain.py FEATURES --added A,B,... --work DIR \\
        [--head-type tl_tr_low] [--proj-dim 256] [--epochs 15] [--lr 5e-4] \\
        [--crop-seconds 2] [--seeds 0] [--threads 1] [--scored-on P,Q,...] \\
        [--out docs/measurements/source_gain]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from whisper_at_research.training.cli import (
    add_measurement_recipe,
    comma_list,
    measurement_recipe,
    measurement_recipe_text,
    start_measurement,
)
from whisper_at_research.training.evaluate import evaluate_head
from whisper_at_research.training.features import FeatureStoreError, load_features
from whisper_at_research.training.source_split import choose_held_out_sources, source_splits
from whisper_at_research.training.train import train_head

logger = logging.getLogger("whisper_at")
ARMS = ("without_added", "with_added")


def second_held_out(
    features: Path, added: list[str], scored_on: list[str] | None = None
) -> tuple[list[str], dict]:
    """H2 (``scored_on``, else the store's rule over the clips that touch none of
    ``added``); and clip counts."""
    data = load_features(features)
    try:
        source_splits(data, [*added, *(scored_on or [])])  # names packages no clip comes from
    except FeatureStoreError as e:
        raise SystemExit(f"{features}: {e}") from None
    shared = sorted(set(added) & set(scored_on or []))
    if shared:
        raise SystemExit(f"--scored-on and --added share {shared}")
    rest = data.subset([i for i, s in enumerate(data.sources) if not set(added) & set(s)])
    h2 = list(scored_on or choose_held_out_sources(rest))
    if not h2:
        raise SystemExit(
            "the held-out rule finds no second set among the packages left: every "
            "well-covered class would lose its last training package"
        )
    split = source_splits(data, h2)
    counts = {
        "clips": len(data),
        "touching_added": sum(bool(set(added) & set(s)) for s in data.sources),
        "touching_h2": sum(bool(set(h2) & set(s)) for s in data.sources),
        "h2_test_clips": sum(side == "test" for side in split.splits),
        "h2_covered_classes": len(split.covered),
    }
    return h2, counts


def run_arm(args: argparse.Namespace, arm: str, seed: int, h2: list[str]) -> dict:
    """Train (or reuse) one arm's head and score it on H2."""
    head_path = args.work / f"{arm}-{args.head_type}-e{args.epochs}-s{seed}.safetensors"
    held_out = h2 if arm == "with_added" else [*args.added, *h2]
    if not head_path.is_file():
        train_head(args.features, args.head_type, out=head_path, seed=seed,
                   **measurement_recipe(args), split_scheme="source",
                   held_out_sources=held_out)  # fmt: skip
    report = evaluate_head(
        head_path,
        args.features,
        held_out_sources=h2,
        out=head_path.with_suffix(".eval.json"),
        progress=not args.no_progress,
    )
    scored = report["held_out_source"]
    curves = head_path.with_name(head_path.name + ".curves.json")  # written by train_head
    return {
        "arm": arm,
        "seed": seed,
        "head": head_path.name,
        "trained_without": len(held_out),
        "n_train": json.loads(curves.read_text(encoding="utf-8"))["n_train"],
        "classes": scored["n_classes_evaluated"],
        "mAP": scored["mAP"],
        "mAUC": scored["mAUC"],
        "top1": scored["top_k_hit"]["1"],
        "top3": scored["top_k_hit"]["3"],
        "per_class": {r["name"]: r["ap"] for r in scored["per_class"] if r["ap"] is not None},
        "positives": {r["name"]: r["positives"] for r in scored["per_class"]},
    }


def write_table(rows: list[dict], h2: list[str], counts: dict, args: argparse.Namespace) -> None:
    recipe = measurement_recipe_text(args)
    lines = [
        f"Gain from {len(args.added)} added packages on {len(h2)} packages neither arm saw "
        f"(H2: {counts['h2_test_clips']} clips, "
        + (
            "given with --scored-on"
            if args.scored_on
            else "the store's rule over the packages left without the added ones"
        )
        + f"); store `{args.features}` ({counts['clips']} clips, "
        f"{counts['touching_added']} touch an added package, {counts['touching_h2']} "
        f"touch H2); heads {recipe}; `scripts/source_gain.py` (docs/results.md).",
        "",
        f"Added: {', '.join(args.added)}",
        "",
        f"H2: {', '.join(h2)}",
        "",
        "| arm | seed | packages held out | training clips | H2 classes scored | H2 mAP "
        "| mAUC | top-1 / top-3 hit |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['trained_without']} | {r['n_train']} | "
            f"{r['classes']} | {r['mAP']:.3f} | "
            f"{r['mAUC']:.3f} | {r['top1']:.3f} / {r['top3']:.3f} |"
        )
    lines += per_class_lines(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    payload = {"added": args.added, "h2": h2, "counts": counts, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1), encoding="utf-8")


def per_class_lines(rows: list[dict], min_positives: int = 5, shown: int = 8) -> list[str]:
    """The classes whose H2 AP moves most with the added packages (mean over seeds)."""

    def mean_ap(arm: str) -> dict[str, float]:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            return {}
        names = set.intersection(*(set(r["per_class"]) for r in mine))
        positives = mine[0]["positives"]
        return {
            n: sum(r["per_class"][n] for r in mine) / len(mine)
            for n in names
            if positives.get(n, 0) >= min_positives
        }

    without, with_ = mean_ap("without_added"), mean_ap("with_added")
    if not without or not with_:
        return []
    deltas = sorted((with_[n] - without[n], n) for n in without.keys() & with_.keys())
    gains = ", ".join(f"{n} {d:+.2f}" for d, n in reversed(deltas[-shown:]) if d > 0)
    losses = ", ".join(f"{n} {d:+.2f}" for d, n in deltas[:shown] if d < 0)
    return [
        "",
        f"Largest per-class changes of H2 AP with the added packages (classes with at least "
        f"{min_positives} H2 clips): gains {gains or '-'}; losses {losses or '-'}.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path, help="feature store, every split")
    parser.add_argument("--added", type=comma_list(str), required=True, help="packages A,B")
    parser.add_argument("--work", type=Path, required=True, help="where the heads go")
    add_measurement_recipe(parser, proj_dim=256)
    parser.add_argument("--seeds", type=comma_list(int), default=[0])
    parser.add_argument(
        "--scored-on", type=comma_list(str), help="H2's packages (default: the store's rule)"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/measurements/source_gain"))
    args = parser.parse_args()
    start_measurement(args)
    h2, counts = second_held_out(args.features, args.added, args.scored_on)
    logger.info("H2 (%d packages): %s", len(h2), ", ".join(h2))
    rows: list[dict] = []
    for seed in args.seeds:
        for arm in ARMS:
            rows.append(run_arm(args, arm, seed, h2))
            write_table(rows, h2, counts, args)
            logger.info("%s seed %d: H2 mAP %.4f", arm, seed, rows[-1]["mAP"])


if __name__ == "__main__":
    main()
