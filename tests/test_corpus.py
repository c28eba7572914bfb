"""The training-corpus builder: Qt rcc reader, mapping table, deterministic mixing, splits."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pytest

from whisper_at.audio import load_audio
from whisper_at.labels import audioset_labels
from whisper_at_research.corpus import fetch_debian_package
from whisper_at_research.corpus.build import assign_splits, build_corpus
from whisper_at_research.corpus.cli import main as corpus_main
from whisper_at_research.corpus.mapping import load_mapping
from whisper_at_research.corpus.rcc import RccError, RccFile, write_rcc
from whisper_at_research.corpus.sources import SOURCES, Recording, find_recordings

# Small packages (a few MB in all), so a test build is quick after the first fetch.
TEST_SOURCES = ["fart", "bucklespring", "freedesktop", "librivox"]


# -- rcc ----------------------------------------------------------------------------------
def test_rcc_reads_a_real_gcompris_resource():
    root = fetch_debian_package("gcompris-qt-data", "3.1-2")
    rcc = RccFile(root / "usr/share/gcompris-qt/rcc/explore_farm_animals.rcc")
    assert rcc.version == 3
    path = "gcompris/src/activities/explore_farm_animals/resource/animals/cow.ogg"
    assert path in rcc
    data = rcc.read(path)
    assert data[:4] == b"OggS"
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        assert samples / stream.rate > 0.5
    # Compressed (flag 1) entries decompress to their declared size, e.g. the QML files.
    compressed = [entry for entry in rcc if entry.compression == "zlib"]
    assert compressed and all(rcc.read(entry) for entry in compressed)


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("compress", [False, True])
def test_rcc_round_trip(version: int, compress: bool):
    files = {
        "a/b/c.txt": b"hello " * 100,
        "a/d.bin": bytes(range(256)),
        "top.ogg": b"OggS" + b"\0" * 40,
        "a/b/é.txt": "ünïcode".encode(),
    }
    rcc = RccFile(write_rcc(files, version=version, compress=compress))
    assert {entry.path for entry in rcc} == set(files)
    for path, data in files.items():
        assert rcc.read(path) == data
        assert rcc.read(":/" + path) == data


def test_rcc_rejects_garbage():
    with pytest.raises(RccError):
        RccFile(b"not a resource file at all")
    data = bytearray(write_rcc({"x.txt": b"abc" * 50}))
    data[-20:] = b"\xff" * 20  # corrupt the names
    with pytest.raises((RccError, UnicodeDecodeError, KeyError)):
        RccFile(bytes(data)).read("x.txt")


# -- mapping ------------------------------------------------------------------------------
def test_mapping_rows_name_real_audioset_classes():
    names = set(audioset_labels().names)
    rows = load_mapping()
    assert len(rows) > 100
    for row in rows:
        assert row.source in SOURCES, row
        assert row.labels and set(row.labels) <= names, row
        assert row.license.strip(), row
        assert [audioset_labels().names[i] for i in row.indices] == list(row.labels)
    covered = {name for row in rows for name in row.labels}
    for wanted in ("Dog", "Cat", "Typing", "Fart", "Piano", "Speech", "Hi-hat", "Tabla"):
        assert wanted in covered


def test_splits_keep_groups_together():
    def rec(source: str, path: str, labels=("Drum",)) -> Recording:
        return Recording(
            f"{source}:{path}", source, path, Path(path), labels, (0,), "x", "p", False
        )

    recordings = [
        rec("hydrogen", f"Kit{k}/Snare/layer{i}.wav") for k in range(30) for i in range(5)
    ]
    recordings += [
        rec("bucklespring", f"wav/{k:02x}-{i}.wav", ("Typing",))
        for k in range(40)
        for i in range(2)
    ]
    splits = assign_splits(recordings)
    for k in range(30):
        assert len({splits[f"hydrogen:Kit{k}/Snare/layer{i}.wav"] for i in range(5)}) == 1
    for k in range(40):
        assert len({splits[f"bucklespring:wav/{k:02x}-{i}.wav"] for i in range(2)}) == 1
    assert set(splits.values()) == {"train", "valid", "test"}


# -- builds -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        folder = tmp_path_factory.mktemp(f"corpus_{name}")
        build_corpus(folder, seed=seed, max_recordings=6, sources=TEST_SOURCES, progress=False)
        out[name] = folder
    return out


def _manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def test_same_seed_same_manifest_other_seed_differs(builds):
    a, b, c = ((builds[k] / "manifest.jsonl").read_bytes() for k in "abc")
    assert a == b
    assert a != c


def test_splits_never_share_a_recording(builds):
    rows = _manifest(builds["a"])
    split_of: dict[str, str] = {}
    for row in rows:
        for rec_id in row["recordings"]:
            assert split_of.setdefault(rec_id, row["split"]) == row["split"], rec_id


def test_labels_are_the_union_of_the_mixed_recordings(builds):
    by_id = {rec.id: rec for rec in find_recordings(TEST_SOURCES)}
    rows = _manifest(builds["a"])
    assert any(row["mixed"] for row in rows)
    assert any(not row["mixed"] and row["kind"] == "real" for row in rows)
    names = audioset_labels().names
    for row in rows:
        union = sorted({i for rec_id in row["recordings"] for i in by_id[rec_id].indices})
        assert row["labels"] == union
        assert row["label_names"] == [names[i] for i in union]
        assert row["mixed"] == (len(row["recordings"]) > 1)
        assert {e["recording_id"] for e in row["events"]} == set(row["recordings"])
        assert row["recording_id"] in row["recordings"]
        if row["kind"] == "real":
            assert row["recordings"] == [row["recording_id"]]
            assert not by_id[row["recording_id"]].speech


def test_clips_are_10s_16k_mono_and_not_silent(builds):
    rows = _manifest(builds["a"])
    for row in rows[:: max(1, len(rows) // 12)]:
        path = builds["a"] / row["path"]
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            assert stream.rate == 16000 and stream.channels == 1
        audio = load_audio(path)
        assert audio.shape == (160000,)
        assert np.sqrt(np.mean(audio**2)) > 1e-3
        assert np.abs(audio).max() <= 1.0


def test_summary_and_cli(builds, tmp_path):
    summary = json.loads((builds["a"] / "summary.json").read_text())
    assert summary["clips"] == len(_manifest(builds["a"]))
    assert "Typing" in summary["per_class"] and "Fart" in summary["per_class"]
    assert (builds["a"] / "summary.md").read_text().startswith("# Corpus summary")
    code = corpus_main(
        ["build", "--out", str(tmp_path), "--sources", "fart", "--max-recordings", "2",
         "--clips-per-recording", "1", "--no-mix", "--quiet"]
    )  # fmt: skip
    assert code == 0
    rows = _manifest(tmp_path)
    assert len(rows) == 4 and not any(row["mixed"] for row in rows)
