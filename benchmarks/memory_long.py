"""Peak memory for a long recording: tags-only, transcribe+tag, batched, each in a fresh process.

Writes a FLAC of ``--minutes`` (the LibriVox utterances over a quiet tone, looped),
then runs each job in a child process and reports its peak resident memory
(``ru_maxrss``) next to the size of the decoded signal, for a short and a long file,
so growth with length shows. A random TL-TR head stands in for a trained one; the
engine is the default (ct2 on the CPU); batched transcription uses batch size 8.

    python benchmarks/memory_long.py [--minutes 60] [--jobs tag,transcribe,transcribe_batched]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from whisper_at.audio import load_audio
from whisper_at_research.corpus import librivox_clips

JOB = """
import resource, sys
sys.path.insert(0, {bench!r})
from models import WHISPER_DIMS, random_head
import whisper_at
model = whisper_at.load_model("tiny.en", device="cpu", head=random_head(WHISPER_DIMS["tiny"]))
if {job!r} == "tag":
    model.tag({path!r})
elif {job!r} == "transcribe":
    model.transcribe({path!r}, temperature=0.0)
else:  # transcribe_batched
    model.transcribe({path!r}, temperature=0.0, batch_size=8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_recording(path: Path, minutes: float) -> None:
    speech = np.concatenate([load_audio(c.path) for c in librivox_clips()])
    total = int(minutes * 60 * 16000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("flac", rate=16000, layout="mono")
        written = 0
        while written < total:
            n = min(len(speech), total - written)
            t = (written + np.arange(n)) / 16000
            block = speech[:n] + 0.01 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(
                block[None].astype(np.float32), format="flt", layout="mono"
            )
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
            written += n
        for packet in stream.encode(None):
            container.mux(packet)


def peak_rss_mb(job: str, path: Path) -> tuple[float, float]:
    code = JOB.format(bench=str(Path(__file__).parent), job=job, path=str(path))
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if child.returncode:
        raise SystemExit(child.stderr)
    elapsed = time.perf_counter() - start
    return int(child.stdout.split()[-1]) / 1024, elapsed  # the child's own peak, in KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--jobs", default="tag,transcribe,transcribe_batched")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("| job | audio | decoded signal MB | peak RSS MB | wall s |")
        print("|---|---|---|---|---|")
        for minutes in (10.0, args.minutes):  # both fill a batch: growth shows as a difference
            path = Path(tmp) / f"{minutes:g}min.flac"
            write_recording(path, minutes)
            for job in args.jobs.split(","):
                rss, elapsed = peak_rss_mb(job, path)
                signal_mb = minutes * 60 * 16000 * 4 / 2**20
                print(f"| {job} | {minutes:g} min | {signal_mb:.0f} | {rss:.0f} | {elapsed:.0f} |")


if __name__ == "__main__":
    main()
