"""Load test of `whisper-at serve` on the loopback interface: N concurrent clients, then faults.

Starts the server in this process on a free 127.0.0.1 port (nothing else is contacted),
with its own temporary upload folder. Every client sends real speech (the LibriVox
utterances of pocketsphinx-testdata and the example reading), each file's expected
transcript computed first by the library itself, and checks that each answer is exactly
the transcript of the file it sent (so nothing is lost or mixed up) or a clean 503 with
Retry-After. With ``--faults`` every fault client also, during the load, hangs up
mid-upload, gives up while waiting, sends an upload over the size limit and a corrupt
file; afterwards the server must be idle, its upload folder empty, and still answer.

    python benchmarks/serve_load.py [--clients 8] [--requests 48] [--max-queue 4] [--faults]
        [--max-seconds 600] [--json OUT]

Prints throughput (answers and audio seconds per wall second), p50 / p95 latency of the
answered requests and the counts; exits 1 if any request was lost, wrong or unclean.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

import whisper_at
from whisper_at.audio import audio_duration
from whisper_at.server import BackgroundServer, ServerConfig, create_app
from whisper_at_research.corpus import librivox_clips

EXAMPLE = Path(__file__).parent.parent / "examples" / "librivox_sense_and_sensibility.wav"


@dataclass
class Outcome:
    kind: str  # "load" or the fault's name
    status: int | str  # HTTP status, or what happened instead ("disconnected", an error)
    seconds: float
    correct: bool | None = None  # load answers only: the exact transcript of the file sent
    audio: Path | None = None  # the file a load request sent


@dataclass
class Summary:
    clients: int
    requests: int
    max_queue: int
    wall_seconds: float
    answered: int
    busy: int
    wrong: int
    lost: int
    throughput_per_s: float
    audio_seconds_per_s: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    faults: dict[str, dict[str, int]] = field(default_factory=dict)
    unclean_faults: int = 0
    idle_after: bool = False
    temp_empty_after: bool = False
    answers_after: bool = False

    @property
    def ok(self) -> bool:
        return (
            self.wrong == 0
            and self.lost == 0
            and self.unclean_faults == 0
            and self.idle_after
            and self.temp_empty_after
            and self.answers_after
        )


def load_client(
    url: str, files: list[tuple[Path, str]], count: int, offset: int, out: list[Outcome]
) -> None:
    """``count`` requests one after the other, the files in turn from ``offset``."""
    with httpx.Client(timeout=httpx.Timeout(600)) as http:
        for i in range(count):
            path, expected = files[(offset + i) % len(files)]
            started = time.monotonic()
            try:
                with open(path, "rb") as f:
                    response = http.post(
                        url + "/v1/audio/transcriptions",
                        files={"file": (path.name, f)},
                        data={"model": "whisper-1"},
                    )
            except httpx.HTTPError as e:
                out.append(Outcome("load", type(e).__name__, time.monotonic() - started))
                continue
            seconds = time.monotonic() - started
            if response.status_code == 200:
                correct = response.json()["text"] == expected
                out.append(Outcome("load", 200, seconds, correct, path))
            elif response.status_code == 503 and "Retry-After" in response.headers:
                out.append(Outcome("load", 503, seconds))
                time.sleep(0.2)
            else:
                out.append(Outcome("load", response.status_code, seconds, False))


def fault_client(url: str, long_file: Path, max_upload: int, out: list[Outcome]) -> None:
    """One of each fault; their clean answers: none (they hang up), 413, 400 (or 503 when
    the server is full, which is as clean)."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port))) as raw:  # hangs up mid-upload
        head = (
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 2000000\r\n\r\n"
            b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        )
        raw.sendall(head + long_file.read_bytes()[:300_000])
    out.append(Outcome("disconnect mid-upload", "disconnected", time.monotonic() - started))
    started = time.monotonic()
    try:  # gives up while its transcription is queued or running
        with open(long_file, "rb") as f:
            response = httpx.post(
                url + "/v1/audio/transcriptions",
                files={"file": f},
                timeout=httpx.Timeout(60, read=0.5),
            )
        status: int | str = response.status_code
    except httpx.ReadTimeout:
        status = "disconnected"
    out.append(Outcome("disconnect while waiting", status, time.monotonic() - started))
    for kind, name, content in (
        ("oversized upload", "big.wav", b"\0" * (max_upload + 1)),
        ("corrupt upload", "corrupt.mp3", b"ID3\x04\x00" + bytes(range(256)) * 64),
    ):
        started = time.monotonic()
        response = httpx.post(
            url + "/v1/audio/transcriptions", files={"file": (name, content)}, timeout=60
        )
        out.append(Outcome(kind, response.status_code, time.monotonic() - started))


CLEAN = {
    "disconnect mid-upload": {"disconnected"},
    "disconnect while waiting": {"disconnected", 200, 503},
    "oversized upload": {413},
    "corrupt upload": {400, 503},
}


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def run(
    clients: int,
    requests: int,
    max_queue: int,
    faults: bool,
    max_seconds: float,
    model_name: str = "tiny.en",
) -> Summary:
    model = whisper_at.load_model(model_name)
    paths = [EXAMPLE, *(clip.path for clip in librivox_clips())]
    files = [(p, model.transcribe(str(p))["text"]) for p in paths]
    seconds_of = {p: audio_duration(p) for p in paths}
    long_file = max(paths, key=lambda p: seconds_of[p])
    with tempfile.TemporaryDirectory(prefix="serve-load-") as temp:
        max_upload = 4 * 2**20
        config = ServerConfig(
            max_upload_bytes=max_upload, max_queue=max_queue, timeout=max_seconds, temp_dir=temp
        )
        with BackgroundServer(create_app(model, config)) as server:
            outcomes: list[Outcome] = []
            per_client = [requests // clients + (i < requests % clients) for i in range(clients)]
            threads = [
                threading.Thread(
                    target=load_client, args=(server.url, files, n, i, outcomes), daemon=True
                )
                for i, n in enumerate(per_client)
            ]
            if faults:
                threads += [
                    threading.Thread(
                        target=fault_client,
                        args=(server.url, long_file, max_upload, outcomes),
                        daemon=True,
                    )
                    for _ in range(max(1, clients // 4))
                ]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=max(0.0, max_seconds - (time.monotonic() - started)))
            wall = time.monotonic() - started
            idle = wait_idle(server.url, Path(temp), 60)
            after = httpx.post(
                server.url + "/v1/audio/transcriptions",
                files={"file": EXAMPLE.open("rb")},
                timeout=120,
            )
            answers_after = after.status_code == 200 and after.json()["text"] == files[0][1]
            temp_empty = not any(Path(temp).iterdir())
    load = [o for o in outcomes if o.kind == "load"]
    answered = [o for o in load if o.status == 200]
    correct = [o for o in answered if o.correct]
    busy = [o for o in load if o.status == 503]
    audio = sum(seconds_of[o.audio] for o in correct if o.audio is not None)
    fault_counts: dict[str, Counter] = {}
    for o in outcomes:
        if o.kind != "load":
            fault_counts.setdefault(o.kind, Counter())[str(o.status)] += 1
    unclean = sum(1 for o in outcomes if o.kind != "load" and o.status not in CLEAN[o.kind])
    return Summary(
        clients=clients,
        requests=requests,
        max_queue=max_queue,
        wall_seconds=round(wall, 2),
        answered=len(answered),
        busy=len(busy),
        wrong=sum(1 for o in load if o.status not in (200, 503) or o.correct is False),
        lost=requests - len(load),
        throughput_per_s=round(len(correct) / wall, 3),
        audio_seconds_per_s=round(audio / wall, 2),
        latency_p50_s=percentile([o.seconds for o in answered], 50),
        latency_p95_s=percentile([o.seconds for o in answered], 95),
        faults={k: dict(v) for k, v in fault_counts.items()},
        unclean_faults=unclean,
        idle_after=idle,
        temp_empty_after=temp_empty,
        answers_after=answers_after,
    )


def wait_idle(url: str, temp: Path, seconds: float) -> bool:
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        if httpx.get(url + "/health").json()["jobs"] == 0 and not any(temp.iterdir()):
            return True
        time.sleep(0.2)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent load clients")
    parser.add_argument("--requests", type=int, default=48, help="load requests in all")
    parser.add_argument("--max-queue", type=int, default=4, help="the server's --max-queue")
    parser.add_argument("--faults", action="store_true", help="mix faults into the load")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on the run")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()
    if not (1 <= args.clients <= 64 and 1 <= args.requests <= 1000):
        parser.error("--clients must be 1..64 and --requests 1..1000 (a bounded test)")
    summary = run(
        args.clients, args.requests, args.max_queue, args.faults, args.max_seconds, args.model
    )
    report = {**asdict(summary), "ok": summary.ok}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
