"""``whisper-at``: transcribe and tag audio files, or tag only (``whisper-at tag``).

Each file is processed on its own: a bad file is reported and skipped, the others
go on, and the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import traceback
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import __version__
from .audio import audio_duration
from .captions import CaptionStyle, parse_caption_classes
from .engines import ENGINES
from .events import EventOptions, SoundEvent
from .guard import DEFAULT_SPEECH_THRESHOLD, NonSpeechGuard
from .heads import HeadError
from .labels import audioset_labels
from .pipeline import FailedInput, WhisperAT, load_model
from .tagging import (
    AUTO_THRESHOLD_FALLBACK,
    TRACK_METHODS,
    TaggingResult,
    Threshold,
    TrackOptions,
    bins_per_window,
)
from .weights import WeightsError, available_models, known_models
from .writers import OUTPUT_FORMATS, TagTable, write_outputs

logger = logging.getLogger("whisper_at")
USER_ERRORS = (OSError, ValueError)  # AudioError, WeightsError, HeadError are ValueErrors
MEDIA_SUFFIXES = {
    *(".wav .flac .mp3 .ogg .oga .opus .m4a .aac .wma .aiff .aif .webm .mp4 .mkv .mov .avi".split())
}


TAG_FORMATS = ("json", "tags", "events")  # `whisper-at tag` has no transcript to write


def _formats(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    """An argparse type for a comma list of ``allowed`` formats (or ``all`` of them)."""

    def parse(text: str) -> list[str]:
        chosen = list(allowed) if text == "all" else [f.strip() for f in text.split(",")]
        unknown = [f for f in chosen if f not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown format(s) {unknown}; choose from {allowed} or all"
            )
        return chosen

    return parse


# Option checks run while parsing, so a bad value is a usage error before any model loads.
def at_time_res_argument(text: str) -> float:
    """Seconds per tag window: a positive multiple of the 0.4 s bins the head reads."""
    try:
        seconds = float(text)
        bins_per_window(seconds)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return seconds


def positive_int(text: str) -> int:
    """A count (batch size, top-k, beam width): 0 or less would make nothing to do."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A resource share (CPUs or GPUs per Ray worker): 0 is allowed, less is not."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _probability(text: str) -> float:
    """A probability from 0 to 1 (the non-speech guard's threshold)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return value


def threshold_argument(text: str) -> Threshold:
    """The argparse type of a tag threshold (here and in the research commands): "auto"
    (the head's per-class thresholds) or one probability; outside [0, 1] a number would
    keep every tag or none."""
    if text == "auto":
        return "auto"
    try:
        return _probability(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected auto or a probability in [0, 1], got {text!r}"
        ) from None


def _caption_classes(text: str) -> frozenset[str]:
    """A caption allow-list: a comma list of class names or a file of them."""
    try:
        return parse_caption_classes(text)
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _caption_seconds(text: str) -> float:
    """A minimum cue duration: seconds in [0, 60)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 60.0:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 60, got {text!r}")
    return value


def _temperatures(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(","))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", nargs="*", help="audio or video files (anything FFmpeg decodes)")
    parser.add_argument(
        "--model", default="tiny.en", help="Whisper name or local path (default: tiny.en)"
    )
    parser.add_argument("--model-dir", help="where OpenAI .pt checkpoints are looked for")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="decoder: ct2 (faster-whisper), torch (openai-whisper), or auto (default: ct2 "
        "on the CPU when the model has a CTranslate2 folder, else torch)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        help="auto, float32, float16 (GPU), bfloat16, int8, or ENCODER:DECODER such as "
        "float32:int8 (exact tags, int8 decoder); see docs/engines.md (default: auto)",
    )
    parser.add_argument(
        "--head", default="default", help="tagging head: default, none, or a .safetensors path"
    )
    parser.add_argument("--at-low-compute", action="store_true", help="use the low-dim TL-TR head")
    parser.add_argument(
        "--at-time-res",
        type=at_time_res_argument,
        default=10.0,
        help="tag window in seconds, a multiple of 0.4",
    )
    parser.add_argument("--top-k", type=positive_int, default=5, help="tags per window")
    parser.add_argument(
        "--threshold",
        type=threshold_argument,
        default="auto",
        help="minimum tag probability: auto (each class's threshold stored in the head, "
        f"{AUTO_THRESHOLD_FALLBACK} for a head without them) or one number from 0 to 1",
    )
    events = parser.add_argument_group(
        "sound events", "onsets and offsets on the 0.4 s grid (docs/events.md)"
    )
    events.add_argument(
        "--events",
        action="store_true",
        help="detect sound events: print them and write <name>.events.tsv (DCASE: filename, "
        "onset, offset, event_label) and add sound_events to the JSON. The high "
        "threshold is --threshold",
    )
    d = EventOptions()
    events.add_argument(
        "--event-low-ratio", type=float, default=d.low_ratio, help="low / high threshold"
    )
    events.add_argument(
        "--event-median-bins",
        type=int,
        default=d.median_bins,
        help="median filter, odd, in 0.4 s bins (1: none)",
    )
    events.add_argument(
        "--event-min-duration", type=float, default=d.min_duration, help="drop shorter (s)"
    )
    events.add_argument(
        "--event-max-gap", type=float, default=d.max_gap, help="merge events this close (s)"
    )
    events.add_argument(
        "--event-rollup",
        type=int,
        metavar="DEPTH",
        help="report classes as their AudioSet ontology ancestors: 0 the most general "
        "(Bark -> Animal), 1 one level below, ...",
    )
    events.add_argument(
        "--event-class",
        action="append",
        metavar="LABEL",
        help="report only this label (repeatable; after the roll-up)",
    )
    t = TrackOptions()
    events.add_argument(
        "--event-track",
        choices=TRACK_METHODS,
        default=t.method,
        help="sliding (default): the head on a window around every 0.4 s bin; frames: the "
        "head's per-frame logits over blocks (cheaper, localizes worse)",
    )
    events.add_argument(
        "--event-context",
        type=at_time_res_argument,
        default=t.context_seconds,
        help=f"seconds of context for the event track, a multiple of 0.4 "
        f"(default {t.context_seconds:g})",
    )
    parser.add_argument("--output-dir", default=".", help="where output files go")
    parser.add_argument(
        "--table", help="also write every file's tags into this one TSV (file, start, end, ...)"
    )
    parser.add_argument("--list-models", action="store_true", help="list Whisper models and exit")
    parser.add_argument(
        "--list-labels", action="store_true", help="list the head's labels and exit"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-at",
        description="Transcribe audio with Whisper and tag its sound events from the same "
        "encoder pass. Use `whisper-at tag FILES` to tag without transcribing; "
        "`whisper-at serve` serves an OpenAI-compatible HTTP API and a web page; "
        "`whisper-at batch DIR --out OUT` transcribes and tags an archive on Ray; "
        "`whisper-at corpus build --out DIR` builds the training corpus; `features extract`, "
        "`train`, `evaluate` train heads; `analyze` reproduces the paper's analyses.",
    )
    parser.add_argument("--version", action="version", version=f"whisper-at {__version__}")
    _common(parser)
    parser.add_argument(
        "--output-format",
        type=_formats(OUTPUT_FORMATS),
        default=["txt", "json", "tags"],
        help=f"comma list of {','.join(OUTPUT_FORMATS)}, or all (default: txt,json,tags)",
    )
    parser.add_argument(
        "--language", help="spoken language (default: detect; English for .en models)"
    )
    parser.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    parser.add_argument(
        "--temperature",
        type=_temperatures,
        default=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        help="comma list of fallback temperatures",
    )
    parser.add_argument(
        "--beam-size",
        type=positive_int,
        help="beam search width (default: greedy (torch), 5 (ct2))",
    )
    parser.add_argument(
        "--best-of", type=positive_int, help="candidates when sampling with temperature > 0"
    )
    parser.add_argument("--word-timestamps", action="store_true", help="word-level timestamps")
    parser.add_argument("--initial-prompt", help="text to condition the first window on")
    parser.add_argument(
        "--no-condition-on-previous-text",
        action="store_true",
        help="do not feed the previous window's text to the next",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help="decode 30 s chunks of all files this many at a time (ct2 engine; chunks are "
        "decoded independently, as faster-whisper's batched pipeline does)",
    )
    captions = parser.add_argument_group("captions with sound cues (docs/captions.md)")
    captions.add_argument(
        "--captions",
        action="store_true",
        help="srt and vtt carry dialogue and sound cues ([applause]), timed by word "
        "timestamps (turned on); the dialogue-only track goes to NAME.dialogue.srt / .vtt",
    )
    captions.add_argument(
        "--caption-style",
        choices=["lower", "upper"],
        default="lower",
        help="[dog barking] or [DOG BARKING] (default: lower)",
    )
    captions.add_argument(
        "--caption-combine",
        choices=["separate", "prefix"],
        default="separate",
        help="separate: sounds get their own cues between lines, a sound heard only under "
        "dialogue tops that cue; prefix: every dialogue cue also names the sounds heard "
        "during it (default: separate)",
    )
    captions.add_argument(
        "--caption-classes",
        type=_caption_classes,
        help="classes worth a sound cue: a comma list of AudioSet names or a file with one "
        "per line (default: every class with a caption phrase except speech)",
    )
    captions.add_argument(
        "--caption-min-duration",
        type=_caption_seconds,
        default=CaptionStyle.min_duration,
        help=f"seconds a cue stays on screen at least (default: {CaptionStyle.min_duration:g})",
    )
    parser.add_argument(
        "--suppress-non-speech",
        action="store_true",
        help="leave out of the transcript the segments the tags say hold no speech (music, "
        "noise, silence); they stay in the json under suppressed_segments (docs/nonspeech.md)",
    )
    parser.add_argument(
        "--speech-threshold",
        type=_probability,
        default=DEFAULT_SPEECH_THRESHOLD,
        help="speech probability under which a segment is non-speech "
        f"(default: {DEFAULT_SPEECH_THRESHOLD})",
    )
    return parser


def caption_style(args: argparse.Namespace) -> CaptionStyle | None:
    """The captions the command line asks for, or None without --captions."""
    if not getattr(args, "captions", False):
        return None
    return CaptionStyle(
        case=args.caption_style,
        combine=args.caption_combine,
        min_duration=args.caption_min_duration,
        classes=args.caption_classes,
    )


def build_tag_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-at tag", description="Tag sound events without transcribing (faster)."
    )
    _common(parser)
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="30 s windows encoded together"
    )
    parser.add_argument(
        "--output-format",
        type=_formats(TAG_FORMATS),
        default=["json", "tags"],
        help="comma list of json,tags,events, or all (default: json,tags)",
    )
    return parser


def _print_tags(tagging: TaggingResult, top_k: int, threshold: Threshold) -> None:
    for window in tagging.windows(top_k=top_k, threshold=threshold):
        tags = ", ".join(f"{t.label} {t.probability:.2f}" for t in window.tags) or "-"
        print(f"[{window.start:7.1f}s -> {window.end:7.1f}s] {tags}")


def _print_events(events: list[SoundEvent]) -> None:
    print("sound events (onset -> offset):")
    for e in events:
        print(f"[{e.start:7.1f}s -> {e.end:7.1f}s] {e.label} {e.probability:.2f}")
    if not events:
        print("-")


def _list_models() -> None:
    available = set(available_models())
    for name in known_models():
        print(f"{name:16s} {'available' if name in available else 'not on this machine'}")


def _list_labels(model: WhisperAT) -> None:
    """Every class as ``index, id, name, reported``; ``reported`` marks the classes the head
    was trained on (it reports no others). The summary goes to stderr, so stdout stays a table.
    """
    head = model.head
    if head is None:
        labels, reported = audioset_labels(), set()
        summary = f"no tagging head is installed for {model.name}: no class is reported"
    else:
        labels, reported = head.config.labels, set(head.config.reported_classes)
        name = Path(head.source.path).stem if head.source is not None else head.config.head_type
        summary = f"{len(reported)} of {len(labels)} classes are reported by the head {name}"
    for i, label in enumerate(labels.names):
        print(f"{i}\t{labels.ids[i]}\t{label}\t{'reported' if i in reported else '-'}")
    print(summary, file=sys.stderr)


def _whisper_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        "tags_per_segment": args.top_k,
        "event_options": args.event_options,
        "track_options": args.track_options,
        "task": args.task,
        "temperature": args.temperature,
        # captions time their cues by the words (a segment may start long before them)
        "word_timestamps": args.word_timestamps or getattr(args, "captions", False),
        "condition_on_previous_text": not args.no_condition_on_previous_text,
        "verbose": False if args.debug else None,
        "suppress_non_speech": args.suppress_non_speech,
        "speech_threshold": args.speech_threshold,
    }
    for key in ("language", "beam_size", "best_of", "initial_prompt"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    return options


def _print_segment(segment: dict[str, Any]) -> None:
    """One transcript line; above any progress bar, which lives on stderr."""
    line = f"[{segment['start']:7.1f}s -> {segment['end']:7.1f}s] {segment['text'].strip()}"
    tqdm.write(line, file=sys.stdout)


def _show_progress() -> bool:
    """Progress bars on a terminal; logs and pipes get the results only."""
    return sys.stderr.isatty()


def _report_transcript(
    model: WhisperAT,
    path: str,
    result: dict[str, Any],
    args: argparse.Namespace,
    segments_printed: bool = False,
) -> None:
    if not segments_printed:
        for segment in result["segments"]:
            _print_segment(segment)
    left_out = len(result.get("suppressed_segments", []))
    if left_out:
        print(f"({left_out} non-speech segment(s) left out of the transcript)")
    if result.get("audio_tag") is not None:
        print("sound events:")
        tagging = TaggingResult.from_result(result)
        _print_tags(tagging, args.top_k, args.threshold)
        if args.events:
            _print_events(tagging.events(args.event_options))
    else:
        print(f"(no tagging head is installed for {model.name}: no sound-event tags)")
    _write(result, path, args)


def _report_tags(path: str, tagging: TaggingResult, args: argparse.Namespace) -> None:
    _print_tags(tagging, args.top_k, args.threshold)
    if args.events:
        _print_events(tagging.events(args.event_options))
    _write(tagging.to_result_fields(), path, args)


def _write(result: dict[str, Any], path: str, args: argparse.Namespace) -> None:
    formats, top_k, threshold = args.output_format, args.top_k, args.threshold
    written = write_outputs(
        result,
        path,
        args.output_dir,
        formats,
        top_k,
        threshold,
        args.event_options,
        captions=caption_style(args),
    )
    _report_written(written)


def _report_written(paths: list[Path]) -> None:
    for path in paths:
        logger.info("wrote %s", path)


# Tools that live outside the runtime (the research package registers corpus, features,
# train, evaluate and analyze) plug in here as `whisper-at NAME ...`.
COMMAND_ENTRY_POINTS = "whisper_at.commands"


def plugin_commands() -> dict[str, Callable[[list[str]], int]]:
    """Subcommands registered by installed packages, by name (loaded on use)."""
    found = entry_points(group=COMMAND_ENTRY_POINTS)
    return {ep.name: (lambda argv, ep=ep: ep.load()(argv)) for ep in found}


RAY_EXTRA_HINT = "pip install 'whisper-at[ray]'"


def report_missing_ray(error: ModuleNotFoundError, what: str) -> None:
    """Say that ``what`` needs the Ray extra, when ``error`` is Ray (or the pyarrow it
    brings) missing; re-raise any other missing module, which is a real bug."""
    if error.name is None or error.name.split(".")[0] not in ("ray", "pyarrow"):
        raise error
    print(
        f"{what} runs on Ray, an optional extra that is not installed here "
        f"({error.name} is missing): {RAY_EXTRA_HINT}",
        file=sys.stderr,
    )


def _batch(argv: list[str]) -> int:
    """``whisper-at batch``, which runs on Ray: an optional extra, imported only here."""
    try:
        from .batch import main as batch_main
    except ModuleNotFoundError as e:
        report_missing_ray(e, "whisper-at: error: `whisper-at batch`")
        return 2
    return batch_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":  # the HTTP API and web page (docs/serving.md)
        from .server import main as serve

        return serve(argv[1:])
    if argv and argv[0] == "batch":  # archives on a Ray cluster (docs/scale.md)
        return _batch(argv[1:])
    commands = plugin_commands()
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    tags_only = bool(argv) and argv[0] == "tag"
    parser = build_tag_parser() if tags_only else build_parser()
    args = parser.parse_args(argv[1:] if tags_only else argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    # faster-whisper logs every file's duration at INFO: only with --debug
    logging.getLogger("faster_whisper").setLevel(logging.DEBUG if args.debug else logging.WARNING)

    _check_usage(parser, args)
    if args.list_models:
        _list_models()
        return 0
    try:
        head = None if args.head == "none" else args.head
        if tags_only and head is None:
            parser.error("tagging needs a head; --head none leaves nothing to do")
        model = load_model(
            args.model,
            device=args.device,
            head=head,
            at_low_compute=args.at_low_compute,
            download_root=args.model_dir,
            engine=args.engine,
            precision=args.precision,
        )
    except (WeightsError, HeadError, ValueError, TypeError) as e:
        print(f"whisper-at: error: {e}", file=sys.stderr)
        return 2
    if args.list_labels:
        _list_labels(model)
        return 0
    unknown = _unknown_event_classes(model, args.event_options)
    if unknown:
        print(
            f"whisper-at: error: argument --event-class: unknown label(s) {unknown}; "
            "see --list-labels",
            file=sys.stderr,
        )
        return 2
    if tags_only and model.head is None:
        print(f"whisper-at: error: no tagging head is installed for {model.name}", file=sys.stderr)
        return 2
    if not tags_only and args.batch_size is not None and not model.engine.batched:
        print("whisper-at: error: --batch-size needs the ct2 engine", file=sys.stderr)
        return 2
    if not tags_only and args.suppress_non_speech:
        config = model.head.config if model.head is not None else None
        try:
            NonSpeechGuard(args.speech_threshold, suppress=True).check(
                config.labels if config else None,
                config.reported_classes if config else [],
                model.name,
            )
        except ValueError as e:
            print(f"whisper-at: error: --suppress-non-speech: {e}", file=sys.stderr)
            return 2
    try:
        paths = expand_inputs(args.audio)
    except ValueError as e:
        print(f"whisper-at: error: {e}", file=sys.stderr)
        return 2
    return _run(model, paths, args, tags_only)


def _unknown_event_classes(model: WhisperAT, options: EventOptions | None) -> list[str]:
    if model.labels is None or options is None or options.classes is None:
        return []
    names = {n.lower() for n in model.labels.names} | set(model.labels.ids)
    return [c for c in options.classes if c.lower() not in names and c not in names]


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors that argparse cannot see, caught before any model loads (exit 2)."""
    try:
        args.event_options = EventOptions(
            threshold=args.threshold,
            low_ratio=args.event_low_ratio,
            median_bins=args.event_median_bins,
            min_duration=args.event_min_duration,
            max_gap=args.event_max_gap,
            rollup_depth=args.event_rollup,
            classes=tuple(args.event_class) if args.event_class else None,
        )
        args.track_options = TrackOptions(args.event_track, args.event_context)
    except ValueError as e:
        parser.error(f"sound events: {e}")
    if args.events and "events" not in args.output_format:
        args.output_format = [*args.output_format, "events"]
    if not (args.events or getattr(args, "captions", False) or "events" in args.output_format):
        # no event track where no events are shown: it costs several times the tags' head work
        args.event_options = args.track_options = None
    if args.list_models or args.list_labels:
        return
    if not args.audio:
        parser.error("no audio files given")
    if getattr(args, "captions", False):
        if not {"srt", "vtt"} & set(args.output_format):
            parser.error("--captions writes srt or vtt: add them to --output-format")
        if args.head == "none":
            parser.error("--captions reads the sound events: it needs a head, not --head none")
    if getattr(args, "suppress_non_speech", False) and args.head == "none":
        parser.error("--suppress-non-speech reads the tags: it needs a head, not --head none")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        parser.error(f"argument --output-dir: {output_dir} exists and is not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"argument --output-dir: cannot create {output_dir}: {e.strerror or e}")


def expand_inputs(arguments: list[str]) -> list[str]:
    """Files as given; folders as the media files under them, sorted.

    Two inputs whose outputs would overwrite each other (same name, one output
    folder) are refused up front rather than losing one of them.
    """
    paths: list[str] = []
    for argument in arguments:
        folder = Path(argument)
        if folder.is_dir():
            found = sorted(
                str(f)
                for f in folder.rglob("*")
                if f.suffix.lower() in MEDIA_SUFFIXES and f.is_file()
            )
            if not found:
                raise ValueError(f"{argument}: no audio or video files in this folder")
            paths.extend(found)
        else:
            paths.append(argument)
    by_stem: dict[str, str] = {}
    for path in paths:
        stem = Path(path).stem
        if stem in by_stem and by_stem[stem] != path:
            raise ValueError(
                f"{by_stem[stem]} and {path} would write the same output files ({stem}.*); "
                "rename one or run them with different --output-dir"
            )
        by_stem[stem] = path
    return list(by_stem.values())


def _run(model: WhisperAT, paths: list[str], args: argparse.Namespace, tags_only: bool) -> int:
    """Process every file; a bad one is reported and skipped. Returns the exit status."""
    failed = 0

    def fail(path: str, error: Exception) -> None:
        nonlocal failed
        failed += 1
        if isinstance(error, USER_ERRORS):
            message = str(error) if str(error).startswith(path) else f"{path}: {error}"
            print(f"whisper-at: error: {message}", file=sys.stderr)
        else:  # keep going over the batch; the traceback is for --debug
            print(f"whisper-at: unexpected error on {path}: {error!r}", file=sys.stderr)
            if args.debug:
                traceback.print_exception(error)

    table = TagTable(args.table, args.top_k, args.threshold) if args.table else None

    def report(
        path: str, result: TaggingResult | dict[str, Any], segments_printed: bool = False
    ) -> None:
        if isinstance(result, TaggingResult):
            _report_tags(path, result, args)
            tagging = result
        else:
            _report_transcript(model, path, result, args, segments_printed)
            tagging = TaggingResult.from_result(result) if "audio_tag" in result else None
        if table is not None and tagging is not None:
            table.add(path, tagging)

    batched = tags_only or args.batch_size is not None
    try:
        if not batched:
            for path in paths:
                print(f"== {path}")
                try:
                    # suppressed segments are known only once tagged: print after the file
                    live = not args.suppress_non_speech
                    result = model.transcribe(
                        path,
                        args.at_time_res,
                        progress=_show_progress(),
                        on_segment=_print_segment if live else None,
                        **_whisper_options(args),
                    )
                    report(path, result, segments_printed=live)
                except Exception as e:
                    fail(path, e)
        else:
            _run_batched(model, paths, args, tags_only, report, fail)
    finally:
        if table is not None:
            table.close()
            logger.info("wrote %s", table.path)
    if failed:
        print(f"whisper-at: {failed} of {len(paths)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


Report = Callable[[str, "TaggingResult | dict[str, Any]"], None]
Results = Iterator[TaggingResult | FailedInput] | Iterator[dict[str, Any] | FailedInput]


def _run_batched(
    model: WhisperAT,
    paths: list[str],
    args: argparse.Namespace,
    tags_only: bool,
    report: Report,
    fail: Callable[[str, Exception], None],
) -> None:
    """Files that share batches. A file that cannot be read comes back as a FailedInput
    in its place; if a batch itself fails, the rest go one by one, so only the file
    that broke it is lost."""
    durations: dict[str, float] = {}  # the readable files, probed once
    for path in paths:
        try:
            durations[path] = audio_duration(path)
        except Exception as e:
            print(f"== {path}")
            fail(path, e)
    readable = list(durations)

    def results(group: list[str]) -> Results:
        if tags_only:
            return model.tag_many(
                group,
                args.at_time_res,
                batch_size=args.batch_size,
                progress=_show_progress(),
                total_seconds=sum(durations[p] for p in group),
                track_options=args.track_options,
            )
        return model.transcribe_many(
            group,
            args.at_time_res,
            batch_size=args.batch_size,
            progress=_show_progress(),
            **_whisper_options(args),
        )

    def handle(path: str, result: TaggingResult | dict[str, Any] | FailedInput) -> None:
        print(f"== {path}")
        if isinstance(result, FailedInput):
            fail(path, result.error)
        else:
            report(path, result)

    done = 0
    try:
        for path, result in zip(readable, results(readable), strict=True):
            handle(path, result)
            done += 1
    except Exception as e:
        logger.warning("a batch failed (%s); going on file by file", e)
        for path in readable[done:]:
            try:
                (result,) = results([path])
                handle(path, result)
            except Exception as e:
                print(f"== {path}")
                fail(path, e)


if __name__ == "__main__":
    sys.exit(main())
