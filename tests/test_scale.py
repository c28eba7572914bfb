"""Beyond one machine: `whisper-at batch` and feature extraction on a real local Ray
instance (ray.init, 2 CPUs) and on a cluster started with `ray start --head`, and head
training across 2 processes with DDP (torchrun, gloo, CPU).

Real tiny.en weights, real speech (LibriVox and Asterisk prompts from Debian, the
README's example); the archive holds one file that is not audio.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import av
import numpy as np
import psutil
import pytest
import ray  # the [ray] extra, which the test extra installs
import torch
from conftest import ENCODERS

from whisper_at.batch import (
    SCHEMA,
    BatchOptions,
    BatchWorker,
    ClusterOptions,
    done_paths,
    list_inputs,
    read_results,
    run_batch,
    shard_paths,
)
from whisper_at.cli import main
from whisper_at.heads import load_head
from whisper_at.pipeline import load_model
from whisper_at_research.training import extract_features, load_features, train_head
from whisper_at_research.training.cli import features_main
from whisper_at_research.training.features_ray import extract_features_ray

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "librivox_sense_and_sensibility.wav"
SUFFIXES = (".wav", ".flac", ".mp3", ".wav", ".flac", ".mp3", ".wav", ".ogg", ".m4a")


@pytest.fixture(scope="module")
def local_ray():
    """A real Ray instance in this process: 2 CPUs, a small object store, no dashboard."""
    assert not ray.is_initialized()
    ray.init(
        num_cpus=2,
        object_store_memory=300 * 2**20,
        include_dashboard=False,
        logging_level="WARNING",
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory, speech) -> tuple[Path, list[Path], Path]:
    """A folder of 10 real recordings in five formats, and a text file named .wav."""
    folder = tmp_path_factory.mktemp("archive")
    good = []
    for i, ((clip, audio), suffix) in enumerate(zip(speech, SUFFIXES, strict=True)):
        path = folder / f"{i:02d}-{clip.id}{suffix}"
        rate = 48000 if suffix == ".ogg" else 16000
        with av.open(str(path), "w") as container:
            stream = container.add_stream(ENCODERS[suffix], rate=rate, layout="mono")
            frame = av.AudioFrame.from_ndarray(audio[None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, 0
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                container.mux(packet)
        good.append(path)
    example = folder / "sub" / EXAMPLE.name  # folders are searched recursively
    example.parent.mkdir()
    example.write_bytes(EXAMPLE.read_bytes())
    good.append(example)
    bad = folder / "05-notes.wav"
    bad.write_text("meeting notes, not a recording\n", encoding="utf-8")
    return folder, good, bad


def _map_workers() -> list[psutil.Process]:
    """This test's Ray Data model actors: processes under this one titled MapWorker."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "MapWorker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


class KillOneWorker(threading.Thread):
    """Kills one model actor (SIGKILL: a crashed worker) once the first shard is written,
    and notes every worker process seen, the one Ray starts in its place included."""

    def __init__(self, out: Path) -> None:
        super().__init__(daemon=True)
        self.out, self.killed, self.stop = out, None, threading.Event()
        self.seen: set[int] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            workers = _map_workers()
            self.seen |= {w.pid for w in workers}
            if self.killed is None and shard_paths(self.out) and workers:
                self.killed = workers[0].pid
                os.kill(self.killed, signal.SIGKILL)
            time.sleep(0.05)


def test_usage_errors_exit_2_before_ray_starts(tmp_path, capsys):
    cases = [
        ([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], "no such file or folder"),
        ([str(EXAMPLE), "--out", str(tmp_path / "o"), "--model", "tiny.xx"], "unknown Whisper"),
        ([str(EXAMPLE), "--out", str(tmp_path / "o"), "--tags-only", "--head", "none"], "head"),
        ([str(EXAMPLE), "--out", str(EXAMPLE)], "is not a folder"),
        ([str(EXAMPLE), "--out", "o", "--address", "auto", "--num-cpus", "2"], "local instance"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["batch", *argv])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not ray.is_initialized()


def test_an_archive_survives_a_killed_worker_and_resumes(local_ray, archive, tmp_path):
    folder, good, bad = archive
    out = tmp_path / "out"
    killer = KillOneWorker(out)
    killer.start()
    options = BatchOptions(files_per_shard=1)
    report = run_batch([str(folder)], out, options, ClusterOptions(num_workers=2))
    killer.stop.set()
    killer.join()
    assert killer.killed is not None, "no worker was killed mid-run"
    assert not psutil.pid_exists(killer.killed)
    assert len(killer.seen) >= 3  # two workers, and the one restarted in the killed one's place
    assert (report.n_inputs, report.skipped, report.ok, report.failed) == (11, 0, 10, 1)

    table = read_results(out)
    assert table.schema == SCHEMA
    rows = table.to_pylist()
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(str(p) for p in [*good, bad])  # each file exactly once
    (error,) = [r for r in rows if r["status"] == "error"]
    assert error["path"] == str(bad) and error["error"].startswith(str(bad))
    assert "not an audio file" in error["error"] and error["text"] is None

    # the same results as one process's transcribe_many on each file (a shard's batch)
    model = load_model("tiny.en")
    expected = {str(p): next(model.transcribe_many([p], batch_size=8)) for p in good}
    for row in rows:
        if row["status"] != "ok":
            continue
        result = expected[row["path"]]
        assert row["text"] == result["text"] and row["language"] == "en"
        assert [s["text"] for s in row["segments"]] == [s["text"] for s in result["segments"]]
        assert row["duration"] == pytest.approx(result["duration"], abs=1e-3)
        assert row["segments"][0]["speech_probability"] > 0.5
        assert "Speech" in {t["label"] for t in row["tags"]}
        assert (row["model"], row["head"]) == ("tiny.en", "tiny.en.tl_tr.safetensors")
        assert row["sound_events"] is None  # not asked for
    example_row = next(r for r in rows if r["path"].endswith(EXAMPLE.name))
    assert "Dashwood" in example_row["text"]

    # a rerun redoes nothing: same shards, untouched, and says so
    before = {p.name: p.stat().st_mtime_ns for p in shard_paths(out)}
    assert len(before) == 11
    rerun = run_batch([str(folder)], out, options, ClusterOptions(num_workers=2))
    assert (rerun.skipped, rerun.ok, rerun.failed) == (11, 0, 0)
    assert {p.name: p.stat().st_mtime_ns for p in shard_paths(out)} == before


def test_the_command_line_resumes_and_reports(local_ray, archive, tmp_path, capsys):
    folder, good, bad = archive
    out = tmp_path / "out"
    listing = tmp_path / "files.txt"  # a file list: 3 good files, the bad one, a comment
    listing.write_text(
        "# first batch\n" + "".join(f"{p}\n" for p in [*good[:3], bad]), encoding="utf-8"
    )
    assert main(["batch", str(listing), "--out", str(out), "--tags-only", "--events"]) == 1
    first = capsys.readouterr().out
    assert "4 file(s)" in first and "0 skipped (done before), 3 done, 1 failed" in first
    rows = read_results(out).to_pylist()
    assert {r["path"] for r in rows} == {str(p) for p in [*good[:3], bad]}
    for row in rows:
        if row["status"] == "ok":  # tags only: no transcript, sound events as asked
            assert row["text"] is None and row["segments"] is None
            assert "Speech" in {e["label"] for e in row["sound_events"]}
    # the whole folder now: only the 7 new files are processed
    assert main(["batch", str(folder), "--out", str(out), "--tags-only", "--events"]) == 0
    second = capsys.readouterr().out
    assert "11 file(s)" in second and "4 skipped (done before), 7 done, 0 failed" in second
    assert sorted(done_paths(out)) == sorted(str(p) for p in [*good, bad])


@pytest.fixture
def ray_start_cluster():
    """A cluster as users start one: `ray start --head` (1 CPU) on this machine, in a
    process group of its own that is killed afterwards; yields the address it prints."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must be short
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block"]
    command += ["--port", str(port), "--num-cpus", "1", "--include-dashboard", "false"]
    command += ["--object-store-memory", str(200 * 2**20), "--temp-dir", temp]
    command += ["--disable-usage-stats"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}  # docs/scale.md
    log = Path(temp) / "ray-start.log"
    with log.open("w") as sink:
        head = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while not (address := re.search(r"ray start --address='([^']+)'", log.read_text())):
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield address.group(1), env  # the address `ray start` tells other nodes to join
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
                head.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # what the head started, if it outlived it
        shutil.rmtree(temp, ignore_errors=True)


def test_the_command_runs_on_a_cluster_started_with_ray_start(ray_start_cluster, archive, tmp_path):
    folder, good, bad = archive
    address, env = ray_start_cluster  # env: the cluster's token, as a user passes it
    out = tmp_path / "out"
    command = [sys.executable, "-m", "whisper_at", "batch", str(good[0]), str(bad)]
    command += ["--out", str(out), "--address", address, "--tags-only"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]  # one file failed
    assert "2 file(s)" in done.stdout and "1 done, 1 failed" in done.stdout
    assert "Traceback" not in done.stderr
    rows = {r["path"]: r["status"] for r in read_results(out).to_pylist()}
    assert rows == {str(good[0]): "ok", str(bad): "error"}


def test_a_retried_batch_finds_its_shard_and_temporary_files_never_count(tmp_path, speech):
    """What makes a batch exactly-once: its shard is named by its paths and renamed into
    place whole; a retry (Ray retries a batch whose worker died) finds it and redoes nothing."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".part-0123.parquet.1234.tmp").write_bytes(b"PAR1 half a shard")
    worker = BatchWorker(BatchOptions(tags_only=True), str(out))
    audio = speech[0][1]
    batch = {
        "path": np.array(["/archive/a.wav", "/archive/b.wav"], dtype=object),
        "audio": np.array([audio, np.zeros(0, np.float32)], dtype=object),
        "error": np.array(["", "/archive/b.wav: cannot decode"], dtype=object),
    }
    first = worker(batch)
    assert first["status"] == ["ok", "error"]
    (shard,) = shard_paths(out)
    written = shard.stat().st_mtime_ns
    worker.model = None  # a retry must not touch the model
    assert worker(batch) == first
    assert shard_paths(out) == [shard] and shard.stat().st_mtime_ns == written
    assert done_paths(out) == {"/archive/a.wav", "/archive/b.wav"}


def test_inputs_folders_lists_and_manifests(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("x.wav", "y.MP3", "notes.txt"):
        (tmp_path / "a" / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("a/x.wav\n\n# skipped\nmissing.flac\n", encoding="utf-8")
    (tmp_path / "m.jsonl").write_text('{"path": "a/y.MP3", "labels": []}\n', encoding="utf-8")
    found = list_inputs(
        [str(tmp_path / "a"), str(tmp_path / "list.txt"), str(tmp_path / "m.jsonl")]
    )
    assert found == [str(tmp_path / "a" / "x.wav"), str(tmp_path / "a" / "y.MP3"), str(
        tmp_path / "missing.flac"
    )]  # fmt: skip


def test_without_ray_the_command_names_the_extra():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import whisper_at.cli\n"
        "sys.exit(whisper_at.cli.main(['batch', 'x', '--out', 'y']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 2
    assert "pip install 'whisper-at[ray]'" in done.stderr and "Traceback" not in done.stderr
    imports = "import sys, whisper_at, whisper_at.cli; print('ray' in sys.modules)"
    plain = subprocess.run([sys.executable, "-c", imports], capture_output=True, text=True)
    assert plain.stdout.strip() == "False"  # the runtime never imports Ray by itself


# -- training features on Ray, heads across processes ---------------------------------------
CLIP = 10 * 16000
STORE_KINDS = {"speech": ["Speech"], "sine": ["Sine wave"], "noise": ["White noise"]}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, speech) -> Path:
    """9 real 10 s clips (speech, sine tones, noise): 2 of each kind to train, 1 to validate."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    t = np.arange(CLIP) / 16000
    rows = []
    for k in range(3):
        speech_clip = np.zeros(CLIP, np.float32)
        utterance = np.concatenate([audio for _, audio in speech[3 * k : 3 * k + 3]])[:CLIP]
        speech_clip[: len(utterance)] = utterance
        audio = {
            "speech": speech_clip,
            "sine": 0.3 * np.sin(2 * np.pi * rng.uniform(300, 2000) * t),
            "noise": 0.1 * rng.standard_normal(CLIP),
        }
        for kind, samples in audio.items():
            path = folder / f"{kind}-{k}.wav"
            with av.open(str(path), "w") as container:
                stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
                planar = np.asarray(samples, np.float32)[None]
                frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, 0
                for packet in [*stream.encode(frame), *stream.encode(None)]:
                    container.mux(packet)
            split = "valid" if k == 2 else "train"
            rows.append({"path": path.name, "labels": STORE_KINDS[kind], "split": split})
    out = folder / "manifest.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def ray_store(local_ray, manifest, tmp_path_factory) -> Path:
    """A feature store written by 2 Ray workers (features extract --ray), 3 shards of 3."""
    out = tmp_path_factory.mktemp("ray-store") / "features"
    argv = [str(manifest), "--out", str(out), "--ray", "--num-workers", "2"]
    assert features_main([*argv, "--shard-size", "3", "--batch-size", "1"]) == 0
    return out


def test_features_on_ray_are_the_store_one_process_writes(ray_store, manifest, tmp_path):
    local = tmp_path / "local"
    extract_features("tiny.en", manifest, local, batch_size=1, shard_size=3, progress=False)
    on_ray, here = load_features(ray_store), load_features(local)
    assert on_ray.meta == here.meta and on_ray.meta["n_shards"] == 3
    assert (on_ray.ids, on_ray.splits, on_ray.recordings) == (
        here.ids,
        here.splits,
        here.recordings,
    )
    assert torch.equal(on_ray.targets, here.targets)
    assert torch.allclose(on_ray.features.float(), here.features.float(), atol=2e-2, rtol=1e-2)
    # a second run on Ray finds every shard written and does no encoder work
    again = extract_features_ray("tiny.en", manifest, ray_store, batch_size=1, shard_size=3)
    assert (again.shards_written, again.shards_skipped, again.encoder_passes) == (0, 3, 0)


def test_two_ddp_processes_train_the_head_one_process_trains(ray_store, tmp_path):
    """torchrun, 2 processes, gloo on the CPU: the same weights (float order aside) and
    the same number of steps. Batches of 5 of 6 clips: the last global batch has one clip,
    so one rank's slice is empty."""
    args = ["--epochs", "3", "--batch-size", "5", "--lr", "1e-3", "--seed", "1"]
    one = train_head(
        ray_store, out=tmp_path / "one.safetensors", epochs=3, batch_size=5, lr=1e-3, seed=1,
        progress=False,
    )  # fmt: skip
    ddp_out = tmp_path / "ddp.safetensors"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "whisper_at", "train", str(ray_store)]
    done = subprocess.run(
        [*command, "--out", str(ddp_out), *args, "--no-progress"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 only
    ddp = load_head(ddp_out)
    weights = one.head.state_dict()
    for name, value in ddp.state_dict().items():
        torch.testing.assert_close(value, weights[name], atol=1e-4, rtol=0)
    one_record = json.loads((tmp_path / "one.safetensors.curves.json").read_text())
    ddp_record = json.loads((tmp_path / "ddp.safetensors.curves.json").read_text())
    assert (ddp_record["processes"], one_record["processes"]) == (2, 1)
    assert ddp_record["steps"] == one_record["steps"] == 6
    for a, b in zip(ddp_record["epochs"], one_record["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ddp")) == [
        "ddp.safetensors", "ddp.safetensors.curves.json", "ddp.safetensors.curves.png"
    ]  # fmt: skip
