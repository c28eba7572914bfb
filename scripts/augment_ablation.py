"""Augmentation ablation on the held-out-source split (issue 13, section 3).

For each variant (``none``, each family alone, ``all``): a views store of the training
clips with that augmentation, a head trained on the base store's held-out-source split
plus those views, and its evaluation on the held-out packages. The base store (every
split, no augmentation) is extracted once and shared; only the clips on the training side
of the held-out-source split are augmented (the held-out packages are found from the
manifest by the same rule the store uses). Every step resumes: a finished views store or
head is reused, so the command can be stopped and run again. The table (markdown + json)
is rewritten after each variant.

    python scripts/augment_ablation.py MANIFEST --base FEATURES --work DIR \\
        [--variants none,all,reverb,eq,codec,gain,bed,speech] [--epochs 30] [--lr LR] \\
        [--copies 1] [--threads N] [--out docs/measurements/augment_ablation]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from whisper_at.labels import audioset_labels
from whisper_at_research.training.augment import FAMILIES, AugmentConfig
from whisper_at_research.training.evaluate import evaluate_head
from whisper_at_research.training.features import FeatureSet, extract_features, read_meta
from whisper_at_research.training.manifest import label_indices, read_manifest
from whisper_at_research.training.source_split import source_splits
from whisper_at_research.training.train import train_head

logger = logging.getLogger("whisper_at")
VARIANTS = ("none", *FAMILIES, "all")


def training_side_manifest(manifest: Path, out: Path) -> Path:
    """The clips on the training side of the held-out-source split, as a manifest.

    Clip ids are kept (views are matched to the base store by them), paths made absolute.
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
    split = source_splits(skeleton)
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


def run_variant(args: argparse.Namespace, variant: str, train_manifest: Path) -> dict:
    views: tuple[str, ...] = ()
    config = None
    if variant != "none":
        config = AugmentConfig.parse(
            variant, copies=args.copies, seed=args.seed, probability=args.probability
        )
        views_dir = args.work / f"views-{variant}-c{args.copies}-p{args.probability:g}-s{args.seed}"
        extract_features(
            read_meta(args.base)["whisper_name"],
            train_manifest,
            views_dir,
            augment=config,
            progress=not args.no_progress,
        )
        views = (str(views_dir),)
    lr = "recipe" if args.lr is None else f"{args.lr:g}"
    head_path = args.work / f"head-{variant}-e{args.epochs}-lr{lr}-s{args.seed}.safetensors"
    if not head_path.is_file():
        train_head(
            args.base,
            "tl_tr",
            out=head_path,
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            split_scheme="source",
            augmented=views,
            progress=not args.no_progress,
        )
    report = evaluate_head(
        head_path, args.base, out=head_path.with_suffix(".eval.json"), progress=False
    )
    held = report["held_out_source"]
    record = json.loads(Path(str(head_path) + ".curves.json").read_text(encoding="utf-8"))
    return {
        "variant": variant,
        "augment": config.to_dict() if config else None,
        "epochs": args.epochs,
        "lr": record["options"]["lr"],
        "n_train": record["n_train"],
        "n_train_views": record.get("n_train_views", 0),
        "held_out_mAP": held["mAP"],
        "held_out_mAUC": held["mAUC"],
        "held_out_d_prime": held["d_prime"],
        "held_out_clips": held["n_clips"],
        "held_out_classes": held["n_classes_evaluated"],
        "valid_mAP": record["final"].get("mAP"),
        "head": str(head_path),
    }


def write_table(row: dict, out: Path, args: argparse.Namespace) -> None:
    """Add ``row`` to the table at ``out`` (.json, .md), replacing an earlier row of its variant.

    Rows of runs with other conditions (epochs, lr, seed, copies, probability) are dropped, so
    separate runs of some variants each (e.g. in parallel) build one table.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    conditions = {k: getattr(args, k) for k in ("epochs", "lr", "seed", "copies", "probability")}
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    rows = old.get("rows", []) if old.get("conditions") == conditions else []
    rows = [r for r in rows if r["variant"] != row["variant"]] + [row]
    rows.sort(key=lambda r: VARIANTS.index(r["variant"]))
    table = {"manifest": str(args.manifest), "conditions": conditions, "rows": rows}
    path.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    lines = [
        f"Held-out-source split of `{args.manifest}`; TL-TR heads on {args.base.name} "
        f"({args.epochs} epochs, lr {rows[0]['lr']:g}, seed {args.seed}, {args.copies} "
        f"view(s) per clip, family probability {args.probability}); "
        "`scripts/augment_ablation.py` (docs/training.md).",
        "",
        "| augmentation | train clips + views | held-out mAP | mAUC | d' | valid mAP |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['n_train']} + {r['n_train_views']} "
            f"| {r['held_out_mAP']:.3f} | {r['held_out_mAUC']:.3f} "
            f"| {r['held_out_d_prime']:.2f} | {r['valid_mAP']:.3f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--base", type=Path, required=True, help="feature store, every split")
    parser.add_argument("--work", type=Path, required=True, help="views stores and heads")
    parser.add_argument("--variants", default="none,all")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, help="default: the recipe's (1e-4 for tiny.en)")
    parser.add_argument("--threads", type=int, help="torch threads (1 on a shared machine)")
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--probability", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
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
    train_manifest = training_side_manifest(args.manifest, args.work / "train-side.jsonl")
    for variant in variants:
        row = run_variant(args, variant, train_manifest)
        write_table(row, args.out, args)
        logger.info("%s: held-out mAP %.4f", variant, row["held_out_mAP"])


if __name__ == "__main__":
    main()
