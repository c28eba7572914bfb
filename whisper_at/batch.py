"""``whisper-at batch``: transcribe and tag an archive on a Ray cluster (or a local Ray).

Ray Data runs the job (``pip install 'whisper-at[ray]'``): the inputs are a dataset of
paths, decoding is a task per file (parallel, on any node), and the model is held by an
actor pool (``map_batches`` with :class:`BatchWorker`, one model per worker) that runs
``transcribe_many`` / ``tag_many`` over each batch of decoded files. Each batch is written
by the worker that made it as one Parquet shard, ``part-<hash of its paths>.parquet``,
atomically (a temporary file, then a rename), so a killed worker never leaves a half shard
that counts as done, and a retried batch finds its shard already there instead of writing
its rows twice. A restart reads the paths of the shards in the output folder and skips
them. A file that cannot be read becomes an error row; the job goes on.

One row per input file; the schema (:data:`SCHEMA`, also in docs/scale.md):

=============  ==========================================================================
path           the input's absolute path
status         ``ok`` or ``error``
error          why the file failed (null when ok)
duration       seconds of audio (null when it could not be decoded)
language       the transcript's language (null for ``--tags-only`` and errors)
text           the transcript (null for ``--tags-only`` and errors)
segments       list of {id, start, end, text, speech_probability, non_speech,
               tags: list of {label, probability}} (null for ``--tags-only``)
tags           list of {start, end, label, probability}: each ``at_time_res`` window's top
               ``top_k`` tags over the threshold (empty without a head)
sound_events   list of {start, end, label, probability} with ``--events``, else null
model          the Whisper model's name
head           the tagging head's file name (null without a head)
version        the whisper-at version that made the row
=============  ==========================================================================
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from . import __version__
from .audio import SAMPLE_RATE, load_audio
from .cli import (
    MEDIA_SUFFIXES,
    at_time_res_argument,
    non_negative_float,
    positive_int,
    threshold_argument,
)
from .engines import ENGINES
from .events import EventOptions
from .pipeline import FailedInput, WhisperAT, load_model
from .tagging import TaggingResult, Threshold, TrackOptions
from .weights import known_models

logger = logging.getLogger("whisper_at")

LIST_SUFFIXES = {".txt", ".lst", ".list"}  # one path per line
MANIFEST_SUFFIXES = {".jsonl"}  # one JSON object per line with a "path"
SHARD_GLOB = "part-*.parquet"

_TAG = pa.struct([("label", pa.string()), ("probability", pa.float64())])
_TIMED_TAG = pa.struct(
    [
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("label", pa.string()),
        ("probability", pa.float64()),
    ]
)
_SEGMENT = pa.struct(
    [
        ("id", pa.int32()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("text", pa.string()),
        ("speech_probability", pa.float64()),
        ("non_speech", pa.bool_()),
        ("tags", pa.list_(_TAG)),
    ]
)
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("duration", pa.float64()),
        ("language", pa.string()),
        ("text", pa.string()),
        ("segments", pa.list_(_SEGMENT)),
        ("tags", pa.list_(_TIMED_TAG)),
        ("sound_events", pa.list_(_TIMED_TAG)),
        ("model", pa.string()),
        ("head", pa.string()),
        ("version", pa.string()),
    ]
)


class BatchUsageError(ValueError):
    """Inputs or an output folder the job cannot start with (a usage error: exit 2)."""


@dataclass(frozen=True)
class BatchOptions:
    """What each worker loads and computes; the same on every worker."""

    model: str = "tiny.en"
    head: str | None = "default"  # "default", a head file, or None (transcripts only)
    device: str | None = None  # None: cuda where the worker was given a GPU, else cpu
    engine: str = "auto"  # transcripts: ct2 (the batched pipeline) on every device
    precision: str = "auto"
    tags_only: bool = False
    at_time_res: float = 10.0
    top_k: int = 5
    threshold: Threshold = "auto"
    events: bool = False  # sound events (the 0.4 s event track costs extra head work)
    batch_size: int = 8  # 30 s chunks (tags: windows) per model batch inside a worker
    files_per_shard: int = 4  # files per Ray batch, i.e. per Parquet shard
    language: str | None = None


@dataclass(frozen=True)
class ClusterOptions:
    """Where the job runs: a Ray address, else a local Ray instance started for it."""

    address: str | None = None  # "auto", "ray://HOST:10001", "HOST:6379"; None: start one
    num_workers: int = 1  # model actors (one model each)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    num_cpus: int | None = None  # the local instance's CPUs (None: all of this machine's)
    object_store_mb: int | None = None  # the local instance's object store (None: Ray's)


@dataclass(frozen=True)
class BatchReport:
    out_dir: Path
    n_inputs: int
    skipped: int  # already in the output folder's shards before this run
    ok: int
    failed: int
    audio_seconds: float  # decoded by this run
    seconds: float  # wall time of this run, Ray's start-up included


def list_inputs(arguments: list[str]) -> list[str]:
    """Absolute paths of the files to process, in order, each once.

    An argument is a folder (the media files under it, sorted), a file list (``.txt``,
    ``.lst``, ``.list``: one path per line, ``#`` comments), a manifest (``.jsonl``: a
    ``path`` per line, as ``whisper-at features extract`` reads), or a media file. Paths
    inside lists and manifests are relative to the list's folder. A missing argument is
    a :class:`BatchUsageError`; a missing file named in a list becomes an error row.
    """
    paths: list[str] = []
    for argument in arguments:
        given = Path(argument)
        if given.is_dir():
            found = [
                f for f in sorted(given.rglob("*")) if f.suffix.lower() in MEDIA_SUFFIXES
            ]  # fmt: skip
            paths += [os.path.abspath(f) for f in found if f.is_file()]
        elif not given.exists():
            raise BatchUsageError(f"{argument}: no such file or folder")
        elif given.suffix.lower() in LIST_SUFFIXES:
            lines = given.read_text(encoding="utf-8").splitlines()
            entries = [line.strip() for line in lines]
            paths += [_beside(given, e) for e in entries if e and not e.startswith("#")]
        elif given.suffix.lower() in MANIFEST_SUFFIXES:
            paths += [_beside(given, p) for p in _manifest_paths(given)]
        else:
            paths.append(os.path.abspath(given))
    return list(dict.fromkeys(paths))


def _beside(listing: Path, entry: str) -> str:
    return os.path.abspath(listing.parent / entry)


def _manifest_paths(manifest: Path) -> list[str]:
    paths = []
    for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            paths.append(str(row["path"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise BatchUsageError(f"{manifest}:{n}: not a JSON object with a 'path' ({e})") from e
    return paths


def shard_paths(out_dir: str | os.PathLike) -> list[Path]:
    """The finished shards of an output folder (temporary files are not shards)."""
    return sorted(Path(out_dir).glob(SHARD_GLOB))


def read_results(out_dir: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """Every row written to ``out_dir`` so far, as one table of :data:`SCHEMA`."""
    tables = [pq.read_table(p, columns=columns, schema=SCHEMA) for p in shard_paths(out_dir)]
    if not tables:
        schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)


def done_paths(out_dir: str | os.PathLike) -> set[str]:
    """Paths that already have a row (ok or error): a rerun skips them."""
    return set(read_results(out_dir, columns=["path"]).column("path").to_pylist())


def shard_name(paths: list[str]) -> str:
    """A batch's shard: named by its paths, so a retried batch finds its own shard."""
    digest = hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()[:20]
    return f"part-{digest}.parquet"


def write_shard(rows: list[dict[str, Any]], path: Path) -> None:
    """Write rows of :data:`SCHEMA` to ``path`` atomically: whole, or not at all."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def decode(row: dict[str, Any]) -> dict[str, Any]:
    """The read stage: one file decoded to 16 kHz mono float32, or the reason it cannot be."""
    path = row["path"]
    try:
        audio = load_audio(path)
        error = ""
    except Exception as e:  # any failure is this file's error row, never the job's
        audio, error = np.zeros(0, np.float32), _message(path, e)
    return {"path": path, "audio": audio, "error": error}


def _message(path: str, error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if text.startswith(path) else f"{path}: {text}"


class BatchWorker:
    """One model on one Ray worker: results of a batch of decoded files -> one shard.

    Ray Data creates ``num_workers`` of these (the actor pool) and restarts one that dies;
    the batch it held is retried, and finds its shard if it was already written.
    """

    def __init__(self, options: BatchOptions, out_dir: str) -> None:
        self.options = options
        self.out_dir = Path(out_dir)
        device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        # transcripts come from faster-whisper's batched pipeline, on the GPU too (where
        # "auto" would pick openai-whisper's loop, which has no batched pipeline)
        engine = "ct2" if options.engine == "auto" and not options.tags_only else options.engine
        self.model: WhisperAT = load_model(
            options.model,
            device=device,
            head=options.head,
            engine=engine,
            precision=options.precision,
        )
        head = self.model.head
        source = head.source if head is not None else None
        self.head_name = None if source is None else Path(source.path).name
        self.event_options = EventOptions(threshold=options.threshold) if options.events else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        paths = [str(p) for p in batch["path"]]
        shard = self.out_dir / shard_name(paths)
        if shard.exists():  # a retry after the shard was written: nothing to redo
            table = pq.read_table(shard, columns=["path", "status", "duration"])
            return _summary(table.to_pylist())
        rows = self.rows(paths, list(batch["audio"]), [str(e) for e in batch["error"]])
        write_shard(rows, shard)
        return _summary(rows)

    def rows(self, paths: list[str], audios: list[np.ndarray], errors: list[str]) -> list[dict]:
        """One row per file, in order; files that failed to decode are error rows."""
        readable = [i for i, error in enumerate(errors) if not error]
        results = self._results([np.asarray(audios[i], np.float32) for i in readable])
        by_index = dict(zip(readable, results, strict=True))
        rows = []
        for i, path in enumerate(paths):
            result = by_index.get(i)
            if result is None:
                rows.append(self._row(path, error=errors[i]))
            elif isinstance(result, Exception):
                rows.append(self._row(path, error=_message(path, result)))
            elif isinstance(result, FailedInput):
                rows.append(self._row(path, error=_message(path, result.error)))
            else:
                rows.append(self._row(path, result=result, duration=len(audios[i]) / SAMPLE_RATE))
        return rows

    def _results(self, audios: list[np.ndarray]) -> list[Any]:
        """The batch's results in order; if the batch itself fails, file by file, so only
        the file that breaks it is lost (its exception stands in its place)."""
        try:
            return list(self._run(audios))
        except Exception as e:
            logger.warning("a batch failed (%s); going on file by file", e)
        results: list[Any] = []
        for audio in audios:
            try:
                (result,) = self._run([audio])
            except Exception as e:
                result = e
            results.append(result)
        return results

    def _run(self, audios: list[np.ndarray]) -> Iterator[Any]:
        o = self.options
        if o.tags_only:
            track = TrackOptions() if o.events else None
            return self.model.tag_many(
                audios, o.at_time_res, batch_size=o.batch_size, track_options=track
            )
        language = {"language": o.language} if o.language else {}
        return self.model.transcribe_many(
            audios,
            o.at_time_res,
            batch_size=o.batch_size,
            tags_per_segment=o.top_k,
            event_options=self.event_options,
            **language,
        )

    def _row(
        self,
        path: str,
        *,
        result: dict[str, Any] | TaggingResult | None = None,
        duration: float | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "path": path,
            "status": "error" if error else "ok",
            "error": error or None,
            "duration": duration,
            "model": self.model.name,
            "head": self.head_name,
            "version": __version__,
        }
        if result is None:
            return row
        o = self.options
        if isinstance(result, TaggingResult):
            tagging = result
            if self.event_options is not None:
                events = [asdict(e) for e in tagging.events(self.event_options)]
                row["sound_events"] = _event_rows(events)
        else:
            row["language"] = result["language"]
            row["text"] = result["text"]
            row["segments"] = [_segment(s) for s in result["segments"]]
            tagging = TaggingResult.from_result(result) if "audio_tag" in result else None
            if "sound_events" in result:
                row["sound_events"] = _event_rows(result["sound_events"])
        row["tags"] = [] if tagging is None else _window_tags(tagging, o.top_k, o.threshold)
        return row


def _segment(segment: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": int(segment["id"]),
        "start": float(segment["start"]),
        "end": float(segment["end"]),
        "text": segment["text"],
        "speech_probability": segment.get("speech_probability"),
        "non_speech": segment.get("non_speech"),
        "tags": [
            {"label": t["label"], "probability": t["probability"]}
            for t in segment.get("audio_tags", [])
        ],
    }


def _window_tags(tagging: TaggingResult, top_k: int, threshold: Threshold) -> list[dict]:
    return [
        {"start": w.start, "end": w.end, "label": t.label, "probability": round(t.probability, 4)}
        for w in tagging.windows(top_k=top_k, threshold=threshold)
        for t in w.tags
    ]


def _event_rows(events: list[dict[str, Any]]) -> list[dict]:
    """Sound events (``asdict(SoundEvent)``, as results hold them) as :data:`SCHEMA` rows."""
    return [{k: e[k] for k in ("start", "end", "label", "probability")} for e in events]


def _summary(rows: list[dict[str, Any]]) -> dict[str, list]:
    """What a worker hands back to the driver: enough to count, never the results."""
    return {
        "path": [r["path"] for r in rows],
        "status": [r["status"] for r in rows],
        "duration": [r["duration"] or 0.0 for r in rows],
    }


def check_options(options: BatchOptions) -> None:
    """What the driver can check before any worker starts: the model is a known name or an
    existing path, the head a file, the engine known (the workers find the rest)."""
    if not (Path(options.model).exists() or options.model in known_models()):
        raise BatchUsageError(
            f"unknown Whisper model {options.model!r}: no such file or folder, and not a known "
            f"name ({', '.join(known_models())})"
        )
    if options.head not in (None, "default") and not Path(options.head).is_file():
        raise BatchUsageError(f"--head {options.head}: no such file")
    if options.engine not in ("auto", *ENGINES):
        raise BatchUsageError(f"unknown engine {options.engine!r}; choose from auto, {ENGINES}")
    if options.engine == "torch" and not options.tags_only:
        raise BatchUsageError(
            "the torch engine has no batched pipeline; batch transcribes with ct2 (faster-whisper)"
        )
    if options.tags_only and options.head is None:
        raise BatchUsageError("tags only needs a head; head None leaves nothing to do")


def connect(cluster: ClusterOptions) -> bool:
    """Connect to ``cluster.address``, or start a local Ray instance; True if this call
    started or joined Ray (and so shuts it down after the job), False if Ray was already
    initialized in this process (a caller's own ``ray.init``)."""
    if ray.is_initialized():
        return False
    if cluster.address is not None:
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        return True
    ray.init(
        num_cpus=cluster.num_cpus,
        object_store_memory=None
        if cluster.object_store_mb is None
        else cluster.object_store_mb * 2**20,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    return True


def run_batch(
    inputs: list[str],
    out_dir: str | os.PathLike,
    options: BatchOptions | None = None,
    cluster: ClusterOptions | None = None,
) -> BatchReport:
    """Transcribe and tag (or tag, ``options.tags_only``) every input into Parquet shards
    in ``out_dir``, skipping the inputs already there; see the module's docstring."""
    options = options or BatchOptions()
    cluster = cluster or ClusterOptions()
    began = time.monotonic()
    check_options(options)
    paths = list_inputs(inputs)
    if not paths:
        raise BatchUsageError(f"no audio or video files in {', '.join(inputs)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BatchUsageError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    done = done_paths(out)
    todo = [p for p in paths if p not in done]
    ok, failed, audio_seconds = 0, 0, 0.0
    if todo:
        started = connect(cluster)
        try:
            ok, failed, audio_seconds = _execute(todo, out, options, cluster)
        finally:
            if started:
                ray.shutdown()
    skipped = len(paths) - len(todo)
    wall = time.monotonic() - began
    return BatchReport(out, len(paths), skipped, ok, failed, audio_seconds, wall)


def _execute(
    todo: list[str], out: Path, options: BatchOptions, cluster: ClusterOptions
) -> tuple[int, int, float]:
    """The Ray Data pipeline over ``todo``: counts of ok and failed files, audio seconds."""
    dataset = (
        # one block per file, so files are decoded in parallel; the actor pool bundles
        # blocks into batches of files_per_shard (a retried batch gets the same bundle)
        ray.data.from_items([{"path": p} for p in todo], override_num_blocks=len(todo))
        # decoding reserves no CPU (the workers' CPUs would leave it none on a small
        # machine); at most two files per worker are decoded at a time
        .map(decode, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=2 * cluster.num_workers))
        .map_batches(
            BatchWorker,
            batch_size=options.files_per_shard,
            compute=ray.data.ActorPoolStrategy(size=cluster.num_workers),
            fn_constructor_kwargs={"options": options, "out_dir": str(out)},
            num_cpus=cluster.cpus_per_worker,
            num_gpus=cluster.gpus_per_worker,
            # Ray Data's actor pool restarts a worker that dies and retries the batch it
            # held (its defaults: max_restarts=-1, max_task_retries=-1)
        )
    )
    ok = failed = 0
    seconds = 0.0
    for row in dataset.iter_rows():
        if row["status"] == "ok":
            ok += 1
        else:
            failed += 1
        seconds += float(row["duration"])
    return ok, failed, seconds


# -- the command line ------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="whisper-at batch",
        description="Transcribe and tag an archive on Ray: folders, file lists (.txt) or "
        "manifests (.jsonl) in, Parquet shards out (docs/scale.md). Files already in --out "
        "are skipped, so a stopped job resumes; a file that cannot be read is an error row.",
    )
    p.add_argument("inputs", nargs="+", help="folders, media files, file lists, manifests")
    p.add_argument("--out", required=True, help="folder of Parquet shards")
    p.add_argument(
        "--address",
        help="Ray cluster: auto (the one `ray start` made on this machine), HOST:6379, or "
        "ray://HOST:10001 (default: start a local Ray instance for this job)",
    )
    p.add_argument("--num-workers", type=positive_int, default=1, help="model actors")
    p.add_argument("--cpus-per-worker", type=non_negative_float, default=1.0)
    p.add_argument("--gpus-per-worker", type=non_negative_float, default=0.0, help="e.g. 1 or 0.5")
    p.add_argument(
        "--num-cpus", type=positive_int, help="local instance only: CPUs Ray may use"
    )  # fmt: skip
    p.add_argument(
        "--object-store-mb", type=positive_int, help="local instance only: object store size"
    )
    p.add_argument("--tags-only", action="store_true", help="tags without transcripts (faster)")
    p.add_argument("--events", action="store_true", help="add sound events (onsets, offsets)")
    p.add_argument("--model", default="tiny.en", help="Whisper name or local path")
    p.add_argument("--head", default="default", help="default, none, or a .safetensors path")
    p.add_argument(
        "--engine", default="auto", help="auto or ct2 (transcripts); torch too for --tags-only"
    )
    p.add_argument("--precision", default="auto", help="as in whisper-at --precision")
    p.add_argument("--at-time-res", type=at_time_res_argument, default=10.0)
    p.add_argument("--top-k", type=positive_int, default=5, help="tags per window")
    p.add_argument("--threshold", type=threshold_argument, default="auto")
    p.add_argument("--language", help="spoken language (default: detect)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="30 s chunks per model batch")
    p.add_argument(
        "--files-per-shard", type=positive_int, default=4, help="files per Ray batch and shard"
    )
    return p


def _first_line(error: Exception) -> str:
    """Ray's errors carry the worker's traceback; its last line says what went wrong."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    local_only = [f for f in ("num_cpus", "object_store_mb") if getattr(args, f) is not None]
    if args.address is not None and local_only:
        parser.error(f"--{local_only[0].replace('_', '-')} sets up a local instance, not --address")
    options = BatchOptions(
        model=args.model,
        head=None if args.head == "none" else args.head,
        engine=args.engine,
        precision=args.precision,
        tags_only=args.tags_only,
        at_time_res=args.at_time_res,
        top_k=args.top_k,
        threshold=args.threshold,
        events=args.events,
        batch_size=args.batch_size,
        files_per_shard=args.files_per_shard,
        language=args.language,
    )
    cluster = ClusterOptions(
        address=args.address,
        num_workers=args.num_workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        num_cpus=args.num_cpus,
        object_store_mb=args.object_store_mb,
    )
    try:
        report = run_batch(args.inputs, args.out, options, cluster)
    except BatchUsageError as e:
        parser.error(str(e))
    except ConnectionError as e:  # no Ray at --address
        print(f"whisper-at batch: error: --address {args.address}: {e}", file=sys.stderr)
        return 1
    except ray.exceptions.RayError as e:  # e.g. a worker that cannot load the model
        print(f"whisper-at batch: error: the job failed: {_first_line(e)}", file=sys.stderr)
        return 1
    print(
        f"{report.n_inputs} file(s) in {report.out_dir}: {report.skipped} skipped (done before), "
        f"{report.ok} done, {report.failed} failed; {report.audio_seconds:.1f} s of audio "
        f"in {report.seconds:.1f} s"
    )
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
