"""Throughput of `whisper-at batch` on Ray against one process, in audio seconds per second.

Makes an archive of real speech (the five LibriVox utterances of Debian's
pocketsphinx-testdata, laid end to end into ``--files`` files of about ``--seconds``
seconds each), then runs side by side, for transcription and for tags only:

- one process: ``load_model`` and ``transcribe_many`` / ``tag_many`` over every file;
- ``whisper_at.batch.run_batch`` on a fresh local Ray instance with 1 and with 2 workers
  (``--workers``), all of ``--cpus`` given to the workers (each gets cpus / workers).

Each row gives the wall time from the start (for Ray: starting Ray, then the job, which
includes every worker loading its model, decoding, and writing the Parquet shards) and the
throughput in audio seconds per second, over the whole run and over the work alone (one
process: without loading the model; Ray: without starting Ray). "Ray overhead" is a Ray
run's whole wall time minus one process's with the same number of CPUs, same files.
With ``--gpus-per-worker 1`` on a GPU machine the workers and the one process use the
GPU ("a GPU actor's throughput"). Prints the CPU model; ``--json`` writes the numbers.

    python benchmarks/scale.py [--files 24] [--seconds 30] [--workers 1,2] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from whisper_at.audio import SAMPLE_RATE, load_audio
from whisper_at.batch import BatchOptions, ClusterOptions, read_results, run_batch
from whisper_at.pipeline import FailedInput, load_model
from whisper_at.precision import cpu_model_and_flags
from whisper_at_research.corpus import librivox_clips


def make_archive(folder: Path, files: int, seconds: float) -> tuple[list[str], float]:
    """``files`` wav files of real speech, each about ``seconds`` long; their total seconds."""
    import wave

    speech = np.concatenate([load_audio(c.path) for c in librivox_clips()])
    n = int(seconds * SAMPLE_RATE)
    paths, total = [], 0.0
    for i in range(files):
        start = (i * SAMPLE_RATE * 3) % len(speech)  # each file starts elsewhere in the speech
        audio = np.resize(np.roll(speech, -start), n)
        path = folder / f"speech-{i:04d}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
        paths.append(str(path))
        total += n / SAMPLE_RATE
    return paths, total


def one_process(paths: list[str], tags_only: bool, args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    device = "cuda" if args.gpus_per_worker > 0 else "cpu"
    engine = "auto" if tags_only else "ct2"
    model = load_model(args.model, device=device, engine=engine)
    loaded = time.perf_counter()
    if tags_only:
        results = list(model.tag_many(paths, batch_size=args.batch_size))
    else:
        results = list(model.transcribe_many(paths, batch_size=args.batch_size))
    done = time.perf_counter()
    failed = sum(isinstance(r, FailedInput) for r in results)
    return {"wall": done - began, "work": done - loaded, "failed": failed}


def on_ray(paths: list[str], tags_only: bool, workers: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as out:
        began = time.perf_counter()
        ray.init(
            num_cpus=args.cpus,
            object_store_memory=args.object_store_mb * 2**20,
            include_dashboard=False,
            logging_level="WARNING",
        )
        started = time.perf_counter()
        try:
            report = run_batch(
                paths,
                out,
                BatchOptions(
                    model=args.model,
                    tags_only=tags_only,
                    batch_size=args.batch_size,
                    files_per_shard=args.files_per_shard,
                ),
                ClusterOptions(
                    num_workers=workers,
                    cpus_per_worker=args.cpus / workers,
                    gpus_per_worker=args.gpus_per_worker,
                ),
            )
            done = time.perf_counter()
            rows = read_results(out, columns=["path"]).num_rows
        finally:
            ray.shutdown()
    assert rows == len(paths), f"{rows} rows for {len(paths)} files"
    return {"wall": done - began, "work": done - started, "failed": report.failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per file")
    parser.add_argument("--workers", default="1,2", help="comma list of Ray worker counts")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs for Ray")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--files-per-shard", type=int, default=4)
    parser.add_argument("--object-store-mb", type=int, default=500)
    parser.add_argument("--modes", default="transcribe,tags", help="transcribe, tags or both")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    cpu, _ = cpu_model_and_flags()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print(f"CPU: {cpu}, {os.cpu_count()} cores; Ray gets {args.cpus} CPUs; GPU: {gpu or '-'}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}")
    torch.set_num_threads(args.cpus)  # one process gets the CPUs the Ray workers share
    rows = []
    with tempfile.TemporaryDirectory(prefix="scale-archive-") as folder:
        paths, audio = make_archive(Path(folder), args.files, args.seconds)
        print(f"archive: {len(paths)} files of real speech, {audio:.0f} s of audio\n")
        for mode in args.modes.split(","):
            tags_only = mode == "tags"
            runs = {"one process": one_process(paths, tags_only, args)}
            for n in map(int, args.workers.split(",")):
                runs[f"Ray, {n} worker{'s' * (n > 1)}"] = on_ray(paths, tags_only, n, args)
            base = runs["one process"]["wall"]
            print(f"{mode + ':':<24} {'wall s':>8} {'audio s/s':>10} {'work only':>12} Ray adds")
            for name, r in runs.items():
                overhead = "" if name == "one process" else f"{r['wall'] - base:+.1f} s"
                print(
                    f"  {name:<22} {r['wall']:8.1f} {audio / r['wall']:10.1f} "
                    f"{audio / r['work']:12.1f} {overhead}"
                )
                rows.append({"mode": mode, "run": name, "audio_seconds": audio, **r})
            print()
    if args.json:
        record = {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "args": vars(args), "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    if any(r["failed"] for r in rows):
        sys.exit("some files failed: the numbers are not comparable")


if __name__ == "__main__":
    main()
