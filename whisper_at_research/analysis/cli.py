"""``whisper-at analyze ...``: the paper's analyses (figures + json/csv numbers)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from .robustness import DEFAULT_SNRS, QUICK_GRID, RobustnessGrid

DEFAULT_MODELS = ["tiny.en", "base"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="whisper-at analyze",
        description="Reproduce the Whisper-AT paper's analyses (Figures 1, 2, 3, 5).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, models=True, manifest=True):
        sp.add_argument("--out", required=True, help="folder for figures, json and csv")
        if models:
            sp.add_argument(
                "--models",
                nargs="+",
                default=DEFAULT_MODELS,
                help="Whisper names or paths (default: tiny.en base)",
            )
            sp.add_argument("--device", default="cpu")
            sp.add_argument(
                "--cache-dir",
                default=None,
                help="feature/transcript cache (default: <whisper_at cache>/analysis)",
            )
            sp.add_argument("--seed", type=int, default=0)
            sp.add_argument("--quick", action="store_true", help="a small version (tests)")
            sp.add_argument("--no-progress", action="store_true")
        if manifest:
            sp.add_argument(
                "--manifest", required=True, help="corpus manifest.jsonl (whisper-at corpus build)"
            )

    r = sub.add_parser("robustness", help="WER of speech + real sounds vs SNR (Figure 1, upper)")
    common(r)
    r.add_argument(
        "--prompts",
        type=int,
        default=RobustnessGrid.n_prompts,
        help="Asterisk prompts with 6+ words (default 40, as in the paper)",
    )
    r.add_argument(
        "--classes", type=int, default=RobustnessGrid.n_classes, help="noise classes (default 20)"
    )
    r.add_argument("--snrs", type=float, nargs="+", default=list(DEFAULT_SNRS))
    r.add_argument("--librivox", action="store_true", help="add the 5 LibriVox utterances")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument(
        "--min-recordings",
        type=int,
        default=RobustnessGrid.min_groups,
        help="a noise class needs this many independent recordings (default 5)",
    )
    r.add_argument("--bootstrap", type=int, default=1000)
    r.add_argument(
        "--only-cached",
        action="store_true",
        help="transcribe nothing; report the prompts already complete in the cache",
    )

    pr = sub.add_parser("probe", help="linear probe per layer (Figure 1, lower)")
    common(pr)
    pr.add_argument("--max-per-class", type=int, default=30)
    pr.add_argument("--min-recordings", type=int, default=5)
    pr.add_argument("--folds", type=int, default=5)
    pr.add_argument("--batch-size", type=int, default=4, help="30 s windows per encoder pass")

    c = sub.add_parser("classwise", help="probe F1 vs WER increase per class (Figure 2)")
    common(c, models=False, manifest=False)
    c.add_argument("--high-snr", type=float, default=20)
    c.add_argument("--low-snr", type=float, default=-10)
    c.add_argument("--layer", type=int, default=-1, help="probe layer (default: last block)")

    b = sub.add_parser("best-layer", help="histogram of each class's best layer (Figure 3)")
    common(b, models=False, manifest=False)

    f = sub.add_parser("family", help="head mAP vs ASR robustness per model (Figure 5)")
    common(f, models=False, manifest=False)
    f.add_argument("--head", action="append", default=[], help="head checkpoint (repeatable)")
    f.add_argument("--low-snr", type=float, default=-10)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from . import figures

    if args.command == "robustness":
        from .robustness import run_robustness

        grid = (
            QUICK_GRID
            if args.quick
            else RobustnessGrid(
                n_prompts=args.prompts,
                n_classes=args.classes,
                snrs=tuple(args.snrs),
                librivox=args.librivox,
            )
        )
        grid = replace(grid, seed=args.seed, min_groups=args.min_recordings)
        for model in args.models:
            res = run_robustness(
                model,
                args.manifest,
                args.out,
                grid,
                args.batch_size,
                args.device,
                args.cache_dir,
                args.bootstrap,
                progress=not args.no_progress,
                only_cached=args.only_cached,
            )
            print(
                f"{res.model}: "
                + ", ".join(f"{p['snr']:g} dB {100 * p['wer']:.1f}%" for p in res.per_snr)
            )
            if res.seconds_per_transcription is not None:
                print(f"  {res.seconds_per_transcription:.3f} s per transcription")
        print("\n".join(figures.figure1(args.out)))
    elif args.command == "probe":
        from .probe import run_probe

        for model in args.models:
            res = run_probe(
                model,
                args.manifest,
                args.out,
                max_per_class=6 if args.quick else args.max_per_class,
                min_groups=args.min_recordings,
                max_classes=6 if args.quick else None,
                n_folds=3 if args.quick else args.folds,
                seed=args.seed,
                batch_size=args.batch_size,
                device=args.device,
                cache_dir=args.cache_dir,
                progress=not args.no_progress,
            )
            print(
                f"{res.model}: {len(res.classes)} classes, {res.n_clips} clips; accuracy per "
                "layer "
                + " ".join(f"{100 * a:.1f}" for a in res.accuracy)
                + f" (majority {100 * res.chance:.1f})"
            )
        print("\n".join(figures.figure1(args.out)))
    elif args.command == "classwise":
        print(
            json.dumps(
                figures.classwise(args.out, args.high_snr, args.low_snr, args.layer), indent=1
            )
        )
    elif args.command == "best-layer":
        summary = figures.best_layer_figure(args.out)
        for model, s in summary.items():
            print(f"{model}: classes per best layer {s['histogram']}")
    elif args.command == "family":
        try:
            print(json.dumps(figures.family(args.out, args.head, args.low_snr), indent=1))
        except ValueError as e:
            print(f"whisper-at analyze family: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
