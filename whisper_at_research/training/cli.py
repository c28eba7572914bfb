"""Command-line entry points: ``whisper-at features extract``, ``train``, ``evaluate``,
``calibrate`` and ``evaluate-events``.

Each ``*_main(argv)`` takes the arguments after its subcommand words and returns an
exit status: 0 on success, 1 when the work failed (the reason is printed), 2 for
bad usage (argparse's own).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import traceback
from typing import Any

from whisper_at.cli import (
    non_negative_float,
    positive_int,
    report_missing_ray,
    threshold_argument,
)
from whisper_at.events import EventOptions
from whisper_at.heads import HEAD_TYPES, HeadError, load_head
from whisper_at.labels import LabelSet, audioset_labels

from .source_split import SPLIT_SCHEMES

logger = logging.getLogger("whisper_at")
USER_ERRORS = (OSError, ValueError, KeyError)  # FeatureStoreError, HeadError, ... are ValueErrors
EVENT_DEFAULTS = EventOptions()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


def _run(fn, args: argparse.Namespace, prog: str) -> int:
    _setup_logging(getattr(args, "verbose", False))
    try:
        fn(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _label_set(args: argparse.Namespace) -> LabelSet:
    from .manifest import labels_from_manifest, read_label_file, read_manifest

    if args.labels:
        return read_label_file(args.labels)
    if args.custom_labels:
        return labels_from_manifest(read_manifest(args.manifest))
    return audioset_labels()


# -- whisper-at features extract ------------------------------------------------------------
def features_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="whisper-at features extract",
        description="Extract every encoder block's pooled output for the clips of a manifest "
        "(three 10 s clips per 30 s encoder window). Resumes an interrupted run.",
    )
    p.add_argument("manifest", help="JSON-lines manifest (path, start, end, labels, split, ...)")
    p.add_argument("--out", required=True, help="feature store folder")
    p.add_argument("--model", default="tiny.en", help="Whisper name or local path")
    p.add_argument("--model-dir", help="where OpenAI .pt checkpoints are looked for")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", help="custom label set: a file with one class name per line")
    labels.add_argument(
        "--custom-labels",
        action="store_true",
        help="custom label set made of the manifest's label names (sorted)",
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="30 s windows per pass")
    p.add_argument("--shard-size", type=positive_int, default=960, help="clips per shard")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--augment",
        metavar="FAMILIES",
        help="make a views store: augmented views of the train clips only, with 'all' or "
        "some of reverb,eq,codec,gain,bed,speech (add it with `train --augmented`)",
    )
    p.add_argument("--augment-copies", type=positive_int, default=1, help="views per clip")
    p.add_argument(
        "--augment-probability",
        type=float,
        default=0.5,
        help="chance of each family in a view (at least one is applied)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation draws")
    ray = p.add_argument_group("on a Ray cluster (pip install 'whisper-at[ray]'; docs/scale.md)")
    ray.add_argument(
        "--ray", action="store_true", help="write the shards with Ray workers, one Whisper each"
    )
    ray.add_argument(
        "--address", help="Ray cluster (auto, HOST:6379, ray://HOST:10001); default: local Ray"
    )
    ray.add_argument("--num-workers", type=positive_int, default=1, help="Whisper actors")
    ray.add_argument("--cpus-per-worker", type=non_negative_float, default=1.0)
    ray.add_argument("--gpus-per-worker", type=non_negative_float, default=0.0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def features_main(argv: list[str] | None = None) -> int:
    parser = features_parser()
    args = parser.parse_args(argv)
    augment = None
    if args.augment:
        from .augment import AugmentConfig, AugmentError

        try:
            augment = AugmentConfig.parse(
                args.augment,
                copies=args.augment_copies,
                seed=args.seed,
                probability=args.augment_probability,
            )
        except AugmentError as e:
            parser.error(f"--augment: {e}")

    ray_only = [a for a in ("address", "num_workers", "cpus_per_worker", "gpus_per_worker")
                if getattr(args, a) != parser.get_default(a)]  # fmt: skip
    if ray_only and not args.ray:
        parser.error(f"--{ray_only[0].replace('_', '-')} applies with --ray")
    if args.ray and args.device:
        parser.error("--device: Ray workers use a GPU when given one (--gpus-per-worker)")
    if args.ray:
        try:
            from .features_ray import extract_features_ray
        except ModuleNotFoundError as e:
            report_missing_ray(e, "whisper-at features extract: error: --ray")
            return 2

    def run(args: argparse.Namespace) -> None:
        from .features import extract_features

        if args.ray:
            from whisper_at.batch import ClusterOptions

            report = extract_features_ray(
                args.model,
                args.manifest,
                args.out,
                batch_size=args.batch_size,
                labels=_label_set(args),
                shard_size=args.shard_size,
                download_root=args.model_dir,
                augment=augment,
                cluster=ClusterOptions(
                    address=args.address,
                    num_workers=args.num_workers,
                    cpus_per_worker=args.cpus_per_worker,
                    gpus_per_worker=args.gpus_per_worker,
                ),
            )
        else:
            report = extract_features(
                args.model,
                args.manifest,
                args.out,
                batch_size=args.batch_size,
                device=args.device,
                labels=_label_set(args),
                shard_size=args.shard_size,
                progress=not args.no_progress,
                download_root=args.model_dir,
                augment=augment,
            )
        print(
            f"{report.n_clips} clips in {report.out_dir}: {report.shards_written} shard(s) "
            f"written, {report.shards_skipped} already there"
        )

    return _run(run, args, "whisper-at features extract")


def comma_list(parse):
    """An argparse type for a comma list of ``parse``-d values (also for scripts/)."""

    def parse_list(text: str) -> list:
        return [parse(item.strip()) for item in text.split(",")]

    return parse_list


def add_measurement_recipe(parser: argparse.ArgumentParser, proj_dim: int) -> None:
    """The head recipe options the measurement scripts (scripts/source_gain.py,
    scripts/package_folds.py) train every head with; defaults: the low-dim recipe."""
    parser.add_argument("--head-type", default="tl_tr_low")
    parser.add_argument("--proj-dim", type=int, default=proj_dim, help="0 for tl_tr")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--crop-seconds", type=float, default=2.0, help="0: no crops")
    parser.add_argument("--threads", type=int, help="torch threads (1 on a shared machine)")
    parser.add_argument("--no-progress", action="store_true")


def start_measurement(args: argparse.Namespace) -> None:
    """Timed log lines, ``--threads`` torch threads, and the ``--work`` folder."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)


def measurement_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """``train_head`` keyword options from :func:`add_measurement_recipe`'s arguments."""
    recipe: dict[str, Any] = {
        "epochs": args.epochs,
        "lr": args.lr,
        "crop_seconds": args.crop_seconds or None,
        "progress": not args.no_progress,
    }
    if args.proj_dim:
        recipe["proj_dim"] = args.proj_dim
    return recipe


def measurement_recipe_text(args: argparse.Namespace) -> str:
    """The recipe in words, for the scripts' tables."""
    text = f"{args.head_type}" + (f" {args.proj_dim}" if args.proj_dim else "")
    text += f", {args.epochs} epochs" + (f", lr {args.lr:g}" if args.lr else "")
    return text + (f", crops of {args.crop_seconds:g} s" if args.crop_seconds else "")


def _add_held_out_sources(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--held-out-sources", type=comma_list(str), metavar="PKG,PKG", help=text)


SCORED_HELD_OUT = (
    "the held-out packages to score on (default: those the head was trained without, "
    "else the store's rule)"
)


# -- whisper-at train ------------------------------------------------------------------------
def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="whisper-at train",
        description="Train a tagging head on a feature store (Whisper-AT recipe). Across "
        "processes: torchrun --nproc-per-node N -m whisper_at train ... (DDP; docs/scale.md).",
    )
    p.add_argument("features", help="feature store folder (whisper-at features extract)")
    p.add_argument("--out", required=True, help="head checkpoint to write (.safetensors)")
    p.add_argument(
        "--recipe",
        metavar="HEAD",
        help="train with the options recorded in this head (a shipped head, or one `train` "
        "wrote), held-out packages and seed included; options given here override them",
    )
    p.add_argument("--head-type", default="tl_tr", choices=HEAD_TYPES)
    p.add_argument("--proj-dim", type=positive_int, help="tl_tr_low width (default 512)")
    p.add_argument(
        "--layers",
        type=positive_int,
        help="read only the first N encoder blocks (default: all); tags-only then runs N blocks",
    )
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--lr", type=float, help="default 1e-4 (5e-5 for TL-TR on medium/large)")
    p.add_argument("--batch-size", type=positive_int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=5e-7)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.5, help="probability of mixing a clip")
    p.add_argument("--time-mask", type=int, default=10, help="longest time mask (0.4 s frames)")
    p.add_argument(
        "--no-balanced-sampling", action="store_true", help="sample clips uniformly instead"
    )
    p.add_argument("--lr-decay", type=float, default=0.75)
    p.add_argument("--lr-decay-start", type=int, help="default 15 (scaled under 30 epochs)")
    p.add_argument("--lr-decay-step", type=positive_int, help="default 5 (scaled)")
    p.add_argument(
        "--average-last",
        type=positive_int,
        help="average the weights of the last K epochs (default: those after the decay start)",
    )
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="held out by recording when the store has no valid split (0: none)",
    )
    p.add_argument(
        "--split-scheme",
        choices=SPLIT_SCHEMES,
        default="recording",
        help="recording: the store's splits; source: train without the held-out source "
        "packages, so `evaluate` measures sources the head never saw",
    )
    _add_held_out_sources(
        p,
        "with --split-scheme source: hold out these packages instead of the store's rule "
        "(e.g. another corpus build's set, to judge both heads on the same unseen packages)",
    )
    p.add_argument(
        "--augmented",
        action="append",
        default=[],
        metavar="VIEWS",
        help="views store (features extract --augment) whose views of this store's training "
        "clips are added to them; repeatable. One epoch stays one pass's worth of clips",
    )
    p.add_argument(
        "--crop-seconds",
        type=non_negative_float,
        metavar="S",
        help="also train on S-second crops of the clips (a multiple of 0.4; 2 matches the "
        "event track), labelled from the manifest's placed events, so the head does not "
        "tag the silence next to a sound with it",
    )
    p.add_argument(
        "--crop-batches",
        type=float,
        default=0.5,
        help="with --crop-seconds: the share of batches made of crops (default 0.5)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def train_main(argv: list[str] | None = None) -> int:
    parser = train_parser()
    args = parser.parse_args(argv)
    unflagged: dict[str, Any] = {}  # recorded options without a flag (Adam's betas, ...)
    if args.recipe:
        recorded = _recorded_recipe(parser, args.recipe)
        flagged = vars(args)
        unflagged = {k: v for k, v in recorded.items() if k not in flagged}
        parser.set_defaults(**{k: v for k, v in recorded.items() if k in flagged})
        args = parser.parse_args(argv)

    def run(args: argparse.Namespace) -> None:
        from .train import train_head

        result = train_head(
            args.features,
            head_type=args.head_type,
            out=args.out,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            proj_dim=args.proj_dim,
            layers=args.layers,
            weight_decay=args.weight_decay,
            label_smoothing=args.label_smoothing,
            mixup=args.mixup,
            time_mask=args.time_mask,
            balanced_sampling=not args.no_balanced_sampling,
            lr_decay=args.lr_decay,
            lr_decay_start=args.lr_decay_start,
            lr_decay_step=args.lr_decay_step,
            average_last=args.average_last,
            valid_fraction=args.valid_fraction,
            split_scheme=args.split_scheme,
            held_out_sources=tuple(args.held_out_sources) if args.held_out_sources else None,
            augmented=tuple(args.augmented),
            crop_seconds=args.crop_seconds or None,
            crop_batches=args.crop_batches,
            device=args.device,
            progress=not args.no_progress,
            **unflagged,
        )
        if not result.saved:  # a DDP rank other than 0: rank 0 reports
            return
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()) or "no validation"
        print(f"wrote {result.path} ({len(result.trained_classes)} trained classes; {shown})")

    return _run(run, args, "whisper-at train")


def _recorded_recipe(parser: argparse.ArgumentParser, head_path: str) -> dict[str, Any]:
    """A head's recorded training options, renamed where the CLI's flag differs; a head
    without them is a usage error that says so."""
    try:
        recorded = dict(load_head(head_path).config.training)
    except HeadError as e:
        parser.error(f"--recipe: {e}")
    if not recorded:
        parser.error(
            f"--recipe: {head_path} records no training options (trained before heads "
            "recorded them); give the options instead (docs/results.md lists each shipped "
            "head's command)"
        )
    recorded["no_balanced_sampling"] = not recorded.pop("balanced_sampling", True)
    if "betas" in recorded:
        recorded["betas"] = tuple(recorded["betas"])
    return recorded


# -- whisper-at evaluate ---------------------------------------------------------------------
def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="whisper-at evaluate",
        description="Evaluate a head: mAP, mAUC, d', per-class AP and confusions.",
    )
    p.add_argument("head", help="head checkpoint (.safetensors)")
    p.add_argument("--features", help="feature store folder (or where to extract to)")
    p.add_argument("--manifest", help="manifest to extract features from first")
    p.add_argument("--model", help="Whisper for --manifest (default: the head's)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--out", default="evaluation.json", help="report (.json; .md next to it)")
    p.add_argument(
        "--threshold",
        type=threshold_argument,
        default="auto",
        help="what counts as predicted (precision/recall, confusions): auto (the head's "
        "per-class thresholds) or a probability",
    )
    _add_held_out_sources(p, SCORED_HELD_OUT)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--device", help="cpu or cuda, for feature extraction")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def evaluate_main(argv: list[str] | None = None) -> int:
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    if not args.features and not args.manifest:
        parser.error("give --features (a feature store) or --manifest")
    if args.model and not args.manifest:
        parser.error("--model only applies with --manifest")

    def run(args: argparse.Namespace) -> None:
        from .evaluate import evaluate_head

        report = evaluate_head(
            args.head,
            args.features,
            manifest=args.manifest,
            model=args.model,
            split=args.split,
            out=args.out,
            threshold=args.threshold,
            held_out_sources=args.held_out_sources,
            batch_size=args.batch_size,
            device=args.device,
            progress=not args.no_progress,
        )

        rows = [("by recording", report)]
        held = report["held_out_source"]
        if held["available"]:
            trained = (
                "trained without them"
                if held["trained_without_them"]
                else ("NOT trained without them")
            )
            rows.append((f"held-out sources ({trained})", held))
        for name, r in rows:
            print(
                f"{r['split']} {name}: {r['n_clips']} clips, {r['n_classes_evaluated']} classes: "
                f"mAP {_fmt(r['mAP'])}, mAUC {_fmt(r['mAUC'])}, d' {_fmt(r['d_prime'])}, "
                f"ECE {_fmt(r['calibration']['ece'] if r['calibration'] else None)}, "
                f"top-1/3 hit {_fmt(r['top_k_hit']['1'])}/{_fmt(r['top_k_hit']['3'])}"
            )
        if not held["available"]:
            print(f"no held-out-source split: {held['reason']}")
        print(f"report in {args.out}")

    return _run(run, args, "whisper-at evaluate")


# -- whisper-at calibrate --------------------------------------------------------------------
def calibrate_parser() -> argparse.ArgumentParser:
    from .calibrate import F1_TOLERANCE, MIN_F1, MIN_POSITIVES, THRESHOLD_FLOOR

    p = argparse.ArgumentParser(
        prog="whisper-at calibrate",
        description="Store per-class decision thresholds (F1-optimal on a split) in a head, "
        "and report its calibration there.",
    )
    p.add_argument("head", help="head checkpoint (.safetensors)")
    p.add_argument("--features", required=True, help="feature store folder")
    p.add_argument("--out", required=True, help="head with thresholds to write (may be HEAD)")
    p.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    p.add_argument("--split-scheme", choices=SPLIT_SCHEMES, default="recording")
    _add_held_out_sources(
        p,
        "with --split-scheme source: the packages kept out of the split (default: those "
        "the head was trained without, else the store's rule)",
    )
    p.add_argument(
        "--min-positives",
        type=positive_int,
        default=MIN_POSITIVES,
        help="positive clips a class needs for its own threshold (else the fallback)",
    )
    p.add_argument(
        "--fallback", type=threshold_argument, default=None, help="default: auto's fallback"
    )
    p.add_argument("--floor", type=float, default=THRESHOLD_FLOOR, help="lowest threshold")
    p.add_argument(
        "--min-f1", type=float, default=MIN_F1, help="a class with a lower best F1: the fallback"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=F1_TOLERANCE,
        help="take the highest threshold within this F1 of the best",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def calibrate_main(argv: list[str] | None = None) -> int:
    args = calibrate_parser().parse_args(argv)

    def run(args: argparse.Namespace) -> None:
        from whisper_at.tagging import AUTO_THRESHOLD_FALLBACK

        from .calibrate import calibrate_head

        fallback = AUTO_THRESHOLD_FALLBACK if args.fallback in (None, "auto") else args.fallback
        report = calibrate_head(
            args.head,
            args.features,
            args.out,
            split=args.split,
            split_scheme=args.split_scheme,
            held_out_sources=args.held_out_sources,
            min_positives=args.min_positives,
            fallback=fallback,
            floor=args.floor,
            min_f1=args.min_f1,
            tolerance=args.tolerance,
        )
        own = sum(row["rule"] == "f1" for row in report["classes"])
        cal = report["calibration"]
        print(
            f"wrote {report['out']}: {own} of {len(report['classes'])} classes with an "
            f"(near-)F1-optimal threshold, the others {fallback}; on {report['split']} "
            f"({report['n_clips']} clips) ECE {cal['ece']:.4f}"
        )
        for row in cal["bins"]:
            print(
                f"  p {row['low']:.1f}-{row['high']:.1f}: {row['count']:7d} scores, mean "
                f"{_fmt(row.get('mean_probability'))}, observed {_fmt(row.get('observed'))}"
            )

    return _run(run, args, "whisper-at calibrate")


# -- whisper-at evaluate-events --------------------------------------------------------------
def _track_choice(text: str):
    from .sed import TrackChoice

    try:
        return TrackChoice.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def evaluate_events_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="whisper-at evaluate-events",
        description="Evaluate sound events (onsets/offsets) on a feature store's clips against "
        "where the corpus builder placed each sound: PSDS of the per-bin track and F1 of the "
        "post-processed events (sed_scores_eval).",
    )
    p.add_argument("features", help="feature store folder (its manifest records the events)")
    p.add_argument("--head", help="head checkpoint (default: the one shipped for the store)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument(
        "--split-scheme",
        choices=SPLIT_SCHEMES,
        default="recording",
        help="source: the held-out-source split (test = packages a source-trained head never saw)",
    )
    _add_held_out_sources(p, "with --split-scheme source: " + SCORED_HELD_OUT)
    p.add_argument(
        "--track",
        action="append",
        type=_track_choice,
        help="window (the clip's 10 s window probabilities on every bin), or METHOD:SECONDS "
        "(frames:10, sliding:2, ...); repeatable (default: window and the runtime's default)",
    )
    d = EVENT_DEFAULTS
    grid = "; a comma list evaluates every combination"
    threshold = comma_list(threshold_argument)
    p.add_argument("--threshold", type=threshold, default=[d.threshold], help="auto or p" + grid)
    p.add_argument("--low-ratio", type=comma_list(float), default=[d.low_ratio], help=grid[2:])
    p.add_argument("--median-bins", type=comma_list(int), default=[d.median_bins], help=grid[2:])
    p.add_argument(
        "--min-duration", type=comma_list(float), default=[d.min_duration], help=grid[2:]
    )
    p.add_argument("--max-gap", type=comma_list(float), default=[d.max_gap], help=grid[2:])
    p.add_argument("--out", default="events.json", help="report (.json; .md next to it)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def evaluate_events_main(argv: list[str] | None = None) -> int:
    parser = evaluate_events_parser()
    args = parser.parse_args(argv)
    grid = (args.threshold, args.low_ratio, args.median_bins, args.min_duration, args.max_gap)
    try:
        options = [EventOptions(*values) for values in itertools.product(*grid)]
    except ValueError as e:
        parser.error(str(e))

    def run(args: argparse.Namespace) -> None:
        from .sed import evaluate_events, options_label

        report = evaluate_events(
            args.features,
            args.head,
            split=args.split,
            split_scheme=args.split_scheme,
            held_out_sources=args.held_out_sources,
            tracks=args.track,
            event_options=options,
            out=args.out,
            progress=not args.no_progress,
        )
        trained = report["trained_without_them"]
        print(
            f"{report['split']} ({report['split_scheme']} split"
            + ("" if trained is None else f", trained without them: {'yes' if trained else 'NO'}")
            + f"): {report['n_clips']} clips, {report['n_reference_events']} "
            f"reference events, {len(report['classes'])} classes"
        )
        for r in report["rows"]:
            print(
                f"  {r['track']:12s} PSDS1 {r['psds1']:.3f} PSDS2 {r['psds2']:.3f} "
                f"[{options_label(r['event_options'])}] "
                f"collar F1 {r['collar_f1_macro']:.3f} (micro {r['collar_f1_micro']:.3f}) "
                f"segment F1 {r['segment_f1_macro']:.3f} (micro {r['segment_f1_micro']:.3f}) "
                f"track {r['seconds_per_hour']:.1f} s/h"
            )
        print(f"report in {args.out}")

    return _run(run, args, "whisper-at evaluate-events")
