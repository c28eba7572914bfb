"""Augmentation ablation on the held-out-source split (issue 13, section 3).

For each variant (``none``, each family alone, ``all``): a views store of the training
clips with that augmentation, a head trained on the base store's held-out-source split
plus those views, and its evaluation on the held-out packages. The base store (every
split, no augmentation) is extracted once and shared; only the clips on the training side
of the held-out-source split are augmented (the held-out packages are found from the
manifest by the same rule the store uses). Every step resumes: a finished views store or
head is reused, so the command can be stopped and run again. The table (markdown + json)
is rewritten after each head. Several ``--seeds`` train one head per seed on the same
views, so the table shows how much of a difference a change of seed alone makes.

    python scripts/augment_ablation.py MANIFEST --base FEATURES --work DIR \\
        [--variants none,all,reverb,eq,codec,gain,bed,speech] [--epochs 30] [--lr LR] \\
        [--head-type tl_tr] [--proj-dim N] [--crop-seconds S] [--held-out-sources A,B] \\
        [--seeds 0,1] [--copies 1] [--threads N] [--out docs/measurements/augment_ablation]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from whisper_at.labels import audioset_labels
from whisper_at_research.training.augment import FAMILIES, AugmentConfig
from whisper_at_research.training.cli import comma_list
from whisper_at_research.training.evaluate import evaluate_head
from whisper_at_research.training.features import FeatureSet, extract_features, read_meta
from whisper_at_research.training.manifest import label_indices, read_manifest
from whisper_at_research.training.source_split import source_splits
from whisper_at_research.training.train import train_head

logger = logging.getLogger("whisper_at")
VARIANTS = ("none", *FAMILIES, "all")


def training_side_manifest(manifest: Path, out: Path, held_out: list[str] | None = None) -> Path:
    """The clips on the training side of the held-out-source split, as a manifest.

    ``held_out``: the packages held out (default: the store's rule). Clip ids are kept
    (views are matched to the base store by them), paths made absolute.
    """
    clips = read_manifest(manifest)
    labels = audioset_labels()
    targets = torch.zeros(len(clips), len(labels), dtype=torch.uint8)
    for row, indices in enumerate(label_indices(clips, labels)):
        targets[row, indices] = 1
    skeleton = FeatureSet(  # the split rule reads labels, recordings and packages only
        features=torch.zeros(len(clips), 0, 0, 0),
        targets=targets,
        ids=[c.id for c in clips],
        splits=[c.split for c in clips],
        recordings=[c.recording for c in clips],
        meta={},
        sources=[c.sources for c in clips],
    )
    split = source_splits(skeleton, held_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for clip, side in zip(clips, split.splits, strict=True):
            if side != "train":
                continue
            row = {
                "id": clip.id,
                "path": clip.path,
                "start": clip.start,
                "end": clip.end,
                "labels": list(clip.labels),
                "split": "train",
                "recording": clip.recording,
                "source": list(clip.sources),
            }
            if clip.format:
                row["format"] = clip.format
            f.write(json.dumps(row) + "\n")
    logger.info("held out %s; training side -> %s", ", ".join(split.held_out), out)
    return out


def make_views(args: argparse.Namespace, variant: str, train_manifest: Path) -> Path | None:
    """The views store of ``variant`` (None for ``none``), drawn with ``--view-seed``."""
    if variant == "none":
        return None
    config = AugmentConfig.parse(
        variant, copies=args.copies, seed=args.view_seed, probability=args.probability
    )
    views_dir = (
        args.work / f"views-{variant}-c{args.copies}-p{args.probability:g}-s{args.view_seed}"
    )
    extract_features(
        read_meta(args.base)["whisper_name"],
        train_manifest,
        views_dir,
        augment=config,
        progress=not args.no_progress,
    )
    return views_dir


def run_head(args: argparse.Namespace, variant: str, views: Path | None, seed: int) -> dict:
    """Train (or reuse) one head of ``variant`` and score it on the held-out packages."""
    lr = "recipe" if args.lr is None else f"{args.lr:g}"
    crop = f"-crop{args.crop_seconds:g}" if args.crop_seconds else ""
    head_path = args.work / (
        f"head-{args.head_type}-{variant}-e{args.epochs}-lr{lr}{crop}-s{seed}.safetensors"
    )
    if not head_path.is_file():
        options = {"proj_dim": args.proj_dim} if args.proj_dim else {}
        train_head(
            args.base,
            args.head_type,
            out=head_path,
            epochs=args.epochs,
            lr=args.lr,
            seed=seed,
            split_scheme="source",
            held_out_sources=args.held_out_sources,
            crop_seconds=args.crop_seconds,
            augmented=(str(views),) if views else (),
            progress=not args.no_progress,
            **options,
        )
    report_path = head_path.with_suffix(".eval.json")
    if report_path.is_file() and report_path.stat().st_mtime > head_path.stat().st_mtime:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    else:
        report = evaluate_head(head_path, args.base, out=report_path, progress=False)
    held = report["held_out_source"]
    record = json.loads(Path(str(head_path) + ".curves.json").read_text(encoding="utf-8"))
    views_record = record.get("augmented") or [{}]
    return {
        "variant": variant,
        "seed": seed,
        "augment": views_record[0].get("augment"),
        "epochs": args.epochs,
        "lr": record["options"]["lr"],
        "n_train": record["n_train"],
        "n_train_views": record.get("n_train_views", 0),
        "held_out_mAP": held["mAP"],
        "held_out_mAUC": held["mAUC"],
        "held_out_d_prime": held["d_prime"],
        "held_out_top1": held["top_k_hit"]["1"],
        "held_out_top3": held["top_k_hit"]["3"],
        "held_out_clips": held["n_clips"],
        "held_out_classes": held["n_classes_evaluated"],
        "held_out_sources": held["held_out_sources"],
        "valid_mAP": record["final"].get("mAP"),
        "head": str(head_path),
        "per_class": {
            c["name"]: {"ap": c["ap"], "positives": c["positives"]} for c in held["per_class"]
        },
    }


CONDITIONS = (
    "head_type", "proj_dim", "crop_seconds", "epochs", "lr", "copies", "probability",
    "view_seed", "held_out_sources",
)  # fmt: skip


def write_table(row: dict, out: Path, args: argparse.Namespace) -> None:
    """Add ``row`` to the table at ``out`` (.json, .md), replacing an earlier row of its
    variant and seed.

    Rows of runs with other conditions (head, epochs, lr, copies, probability, held-out
    packages) are dropped, so separate runs of some variants or seeds each (e.g. in
    parallel) build one table.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    conditions = {k: getattr(args, k) for k in CONDITIONS}
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    rows = old.get("rows", []) if old.get("conditions") == conditions else []
    key = (row["variant"], row["seed"])
    rows = [r for r in rows if (r["variant"], r["seed"]) != key] + [row]
    rows.sort(key=lambda r: (VARIANTS.index(r["variant"]), r["seed"]))
    table = {"manifest": str(args.manifest), "conditions": conditions, "rows": rows}
    path.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    head = args.head_type + (f" {args.proj_dim}" if args.proj_dim else "")
    crops = f", crops of {args.crop_seconds:g} s" if args.crop_seconds else ""
    lines = [
        f"Held-out-source split of `{args.manifest}` ({rows[0]['held_out_clips']} clips of "
        f"{len(rows[0]['held_out_sources'])} held-out packages); {head} heads on "
        f"{args.base.name} ({args.epochs} epochs, lr {rows[0]['lr']:g}{crops}; "
        f"{args.copies} view(s) per clip drawn with seed {args.view_seed}, family "
        f"probability {args.probability}). Per seed, then the mean over seeds; "
        "`scripts/augment_ablation.py` (docs/training.md).",
        "",
        "| augmentation | seeds | train clips + views | held-out mAP | mean | mAUC | d' "
        "| top-1 / top-3 hit | valid mAP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        runs = [r for r in rows if r["variant"] == variant]

        def mean(field: str, runs: list[dict] = runs) -> float:
            return sum(r[field] for r in runs) / len(runs)

        maps = [r["held_out_mAP"] for r in runs]
        lines.append(
            f"| {variant} | {', '.join(str(r['seed']) for r in runs)} "
            f"| {runs[0]['n_train']} + {runs[0]['n_train_views']} "
            f"| {' / '.join(f'{m:.3f}' for m in maps)} "
            f"| {mean('held_out_mAP'):.3f} | {mean('held_out_mAUC'):.3f} "
            f"| {mean('held_out_d_prime'):.2f} "
            f"| {mean('held_out_top1'):.3f} / {mean('held_out_top3'):.3f} "
            f"| {mean('valid_mAP'):.3f} |"
        )
    lines += per_class_changes(rows)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def per_class_changes(rows: list[dict], shown: int = 6, min_positives: int = 5) -> list[str]:
    """Markdown lines: per variant, the classes whose held-out AP (mean over seeds) moved
    most against ``none``, among classes with at least ``min_positives`` held-out clips."""

    def mean_ap(variant: str) -> dict[str, float]:
        runs = [r["per_class"] for r in rows if r["variant"] == variant and "per_class" in r]
        names = set.intersection(*(set(r) for r in runs)) if runs else set()
        return {
            n: sum(r[n]["ap"] for r in runs) / len(runs)
            for n in names
            if runs[0][n]["positives"] >= min_positives
        }

    base = mean_ap("none")
    if not base:
        return []
    lines = [
        "",
        f"Largest per-class changes of held-out AP against `none` (mean over seeds; classes "
        f"with at least {min_positives} held-out clips):",
        "",
        "| augmentation | gains | losses |",
        "|---|---|---|",
    ]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        aps = mean_ap(variant)
        if variant == "none" or not aps:
            continue
        deltas = sorted((aps[n] - base[n], n) for n in aps.keys() & base.keys())
        gains = ", ".join(f"{n} {d:+.2f}" for d, n in reversed(deltas[-shown:]) if d > 0)
        losses = ", ".join(f"{n} {d:+.2f}" for d, n in deltas[:shown] if d < 0)
        lines.append(f"| {variant} | {gains or '-'} | {losses or '-'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--base", type=Path, required=True, help="feature store, every split")
    parser.add_argument("--work", type=Path, required=True, help="views stores and heads")
    parser.add_argument("--variants", default="none,all")
    parser.add_argument("--head-type", default="tl_tr", help="tl_tr (default), tl_tr_low, ...")
    parser.add_argument("--proj-dim", type=int, help="the low-dim heads' projection")
    parser.add_argument("--crop-seconds", type=float, help="also train on crops (train's)")
    parser.add_argument(
        "--held-out-sources",
        type=comma_list(str),
        help="comma-separated packages to hold out (default: the store's rule)",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, help="default: the recipe's (1e-4 for tiny.en)")
    parser.add_argument("--threads", type=int, help="torch threads (1 on a shared machine)")
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--probability", type=float, default=0.5)
    parser.add_argument(
        "--seeds", type=comma_list(int), default=[0], help="heads' seeds, comma-separated"
    )
    parser.add_argument("--view-seed", type=int, default=0, help="the views' draws")
    parser.add_argument("--out", type=Path, default=Path("docs/measurements/augment_ablation"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    train_manifest = training_side_manifest(
        args.manifest, args.work / "train-side.jsonl", args.held_out_sources
    )
    for variant in variants:
        views = make_views(args, variant, train_manifest)
        for seed in args.seeds:
            row = run_head(args, variant, views, seed)
            write_table(row, args.out, args)
            logger.info("%s seed %d: held-out mAP %.4f", variant, seed, row["held_out_mAP"])


if __name__ == "__main__":
    main()
