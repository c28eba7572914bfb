"""The training-corpus builder: Qt rcc, OpenTTD cat and OpenClonk group readers, mapping
table, deterministic mixing, splits, deduplication."""

from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import write_wav

from whisper_at.audio import load_audio
from whisper_at.labels import audioset_labels
from whisper_at_research.corpus import RegistryError, fetch_debian_package, fetch_npm_package
from whisper_at_research.corpus.build import assign_splits, build_corpus
from whisper_at_research.corpus.c4group import ENTRY_SIZE as C4_ENTRY_SIZE
from whisper_at_research.corpus.c4group import HEADER_SIZE as C4_HEADER_SIZE
from whisper_at_research.corpus.c4group import C4GroupError, read_c4group
from whisper_at_research.corpus.cat import CatError, read_cat
from whisper_at_research.corpus.cli import main as corpus_main
from whisper_at_research.corpus.mapping import load_mapping, match_labels
from whisper_at_research.corpus.rcc import RccError, RccFile, write_rcc
from whisper_at_research.corpus.sources import (
    SOURCES,
    Recording,
    find_recordings,
    package_audio_files,
)

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


# -- OpenTTD cat ----------------------------------------------------------------------------
def _cat(sounds: list[tuple[str, bytes]], new_format: bool = True) -> bytes:
    """An OpenTTD sound container holding ``sounds`` (name, RIFF bytes), as OpenTTD reads it."""
    table, body = len(sounds) * 8, b""
    offsets = []
    for name, data in sounds:
        raw = name.encode() + b"\0"
        offsets.append((table + len(body), len(data)))
        body += bytes([len(raw)]) + raw + data
    flag = 0x80000000 if new_format else 0
    head = b"".join(
        (offset | (flag if k == 0 else 0)).to_bytes(4, "little") + size.to_bytes(4, "little")
        for k, (offset, size) in enumerate(offsets)
    )
    return head + body


@pytest.mark.parametrize("new_format", [True, False])
def test_cat_round_trip(tmp_path, new_format: bool):
    tone = np.sin(np.arange(1600) * 0.1) * 0.5
    crash = write_wav(tmp_path / "crash.wav", tone).read_bytes()
    wind = write_wav(tmp_path / "wind.wav", tone[:800]).read_bytes()
    sounds = [('"Big crash". By X. License: CC0.', crash), ('"Wind". By Y.', wind)]
    path = tmp_path / "sounds.cat"
    path.write_bytes(_cat(sounds, new_format))
    entries = read_cat(path)
    assert [e.title for e in entries] == ["Big crash", "Wind"]
    assert [e.filename for e in entries] == ["00_big_crash.wav", "01_wind.wav"]
    assert entries[0].name == sounds[0][0] and entries[1].data == sounds[1][1]
    (tmp_path / "read.wav").write_bytes(entries[1].data)
    assert np.abs(load_audio(tmp_path / "read.wav") - tone[:800]).max() < 1e-3


def test_cat_rejects_other_files(tmp_path):
    path = tmp_path / "other.cat"
    for blob in (b"", b"\x10\0\0\0\x08\0\0\0", _cat([("x", b"not a wave file")])):
        path.write_bytes(blob)
        with pytest.raises(CatError):
            read_cat(path)


def test_openttd_opensfx_sounds_are_read_and_labelled():
    """OpenSFX ships its 73 sounds in one .cat; the credit line names and licenses each."""
    recs = {rec.path.rsplit("/", 1)[1]: rec for rec in find_recordings(["openttd"])}
    horn = recs["26_truck_old_bus_start_pull_away_with_horn.wav"]
    assert horn.labels[:2] == ("Air horn, truck horn", "Truck")
    assert horn.path.startswith("usr/share/games/openttd/baseset/opensfx/opensfx.cat/")
    assert horn.package == "debian:openttd-opensfx=1.0.3-2"
    assert recs["24_helicopter.wav"].labels == ("Helicopter", "Aircraft", "Vehicle")
    # Sound 25 is sound 26 without the horn: "truck/old bus" alone does not say which.
    assert "25_truck_old_bus_start_pull_away.wav" not in recs
    assert "34_unused_nothing.wav" not in recs and "22_morse.wav" not in recs
    assert horn.load().size / 16000 == pytest.approx(4.015, abs=0.01)
    entries = read_cat(SOURCES["openttd"].fetch().joinpath(horn.path.rsplit("/", 1)[0]))
    assert len(entries) == 73 and "License: Creative Commons Zero 1.0." in entries[26].name


# -- OpenClonk groups ----------------------------------------------------------------------
def _c4group(files: dict[str, bytes | dict], *, top: bool = True) -> bytes:
    """An OpenClonk group holding ``files`` (name -> bytes, or a dict for a child group)."""
    body, cores = b"", b""
    for name, content in files.items():
        child = isinstance(content, dict)
        data = _c4group(content, top=False) if child else content
        core = name.encode().ljust(260, b"\0") + struct.pack(
            "<5i", 0, int(child), len(data), 0, len(body)
        )
        cores += core.ljust(C4_ENTRY_SIZE, b"\0")
        body += data
    header = bytearray(
        b"RedWolf Design GrpFolder".ljust(28, b"\0") + struct.pack("<3i", 1, 2, len(files))
    )
    header = bytearray(b ^ 0xED for b in header.ljust(C4_HEADER_SIZE, b"\0"))
    for i in range(0, len(header) - 2, 3):
        header[i], header[i + 2] = header[i + 2], header[i]
    group = bytes(header) + cores + body
    return b"\x1e\x8c" + gzip.compress(group)[2:] if top else group


def test_c4group_round_trip(tmp_path):
    tone = np.sin(np.arange(1600) * 0.1) * 0.5
    wave = write_wav(tmp_path / "t.wav", tone).read_bytes()
    path = tmp_path / "Sound.ocg"
    path.write_bytes(
        _c4group({"Thunder.wav": wave, "Animals.ocg": {"Bat.ocg": {"Chirp.wav": b"x"}}})
    )
    members = read_c4group(path)
    assert [m.path for m in members] == ["Thunder.wav", "Animals.ocg/Bat.ocg/Chirp.wav"]
    assert members[0].data == wave and members[1].data == b"x"


def test_c4group_rejects_other_files(tmp_path):
    path = tmp_path / "Other.ocg"
    good = _c4group({"a.wav": b"abc"})
    for blob in (b"", b"PK\x03\x04", good[:40], b"\x1e\x8c" + gzip.compress(b"x" * 300)[2:]):
        path.write_bytes(blob)
        with pytest.raises(C4GroupError):
            read_c4group(path)


def test_openclonk_sounds_are_read_from_its_groups_and_labelled():
    """OpenClonk keeps its sounds in the gzipped group Sound.ocg; authors.txt licenses them."""
    recs = {rec.path.split("Sound.ocg/", 1)[1]: rec for rec in find_recordings(["openclonk"])}
    assert len(recs) == 72
    thunder = recs["Environment.ocg/Lightning.ocg/Thunder1.ogg"]
    assert thunder.labels == ("Thunder", "Thunderstorm")
    assert (
        thunder.license.startswith("CC-BY-3.0") and thunder.package == "debian:openclonk-data=8.1-3"
    )
    assert recs["Liquids.ocg/Boiling.ogg"].license.startswith("CC0-1.0")
    assert recs["Clonk.ocg/Skin.ocg/Steampunk.ocg/Laughter2.wav"].labels == ("Laughter",)
    assert "Clonk.ocg/Skin.ocg/Steampunk.ocg/Singing1.wav" not in recs  # not checked by ear
    assert thunder.load().size == 47113  # 2.94 s, decoded from the extracted member


def test_fillets_voices_carry_the_sex_the_script_gives_them():
    """The small fish (``-m-``) speaks of herself in the feminine, the big fish (``-v-``) in
    the masculine (dialogs_cs.lua); 200 of their 1,238 recorded lines, both voices."""
    recs = find_recordings(["fillets"])
    female = [r for r in recs if "Female speech, woman speaking" in r.labels]
    male = [r for r in recs if "Male speech, man speaking" in r.labels]
    assert len(recs) == 200 and len(female) == 97 and len(male) == 103
    assert all("-m-" in r.path.rsplit("/", 1)[1] for r in female)
    assert all("-v-" in r.path.rsplit("/", 1)[1] for r in male)
    assert all(r.speech and r.package == "debian:fillets-ng-data-cs=1.0.1-1.1" for r in recs)


def test_nexuiz_voices_carry_the_sex_of_the_characters_that_use_them():
    """data.pk3's voice sets are shared by player models whose .txt gives their sex; only sets
    used by one sex (and whose pitch agrees) are labelled, the others give only their groans."""
    recs = {rec.path.split("data.pk3/", 1)[1]: rec for rec in find_recordings(["nexuiz"])}
    assert len(recs) == 292
    female = {p for p, r in recs.items() if "Female speech, woman speaking" in r.labels}
    male = {p for p, r in recs.items() if "Male speech, man speaking" in r.labels}
    assert (len(female), len(male)) == (55, 93)
    assert {p.split("/")[2] for p in female} == {"fricka", "pyria-skadi", "specop"}
    assert recs["sound/player/insurrectionist/player/death1.ogg"].labels == ("Groan",)
    assert "sound/player/insurrectionist/coms/attack.ogg" not in recs  # F0 254 Hz: unsure
    assert recs["sound/weapons/uzi_fire.ogg"].labels == ("Gunshot, gunfire", "Explosion")
    assert all(r.package == "debian:nexuiz-data=2.5.2-12" for r in recs.values())


def test_scratch_media_give_the_wanted_classes_the_games_lack():
    """Scratch's sound library (MIT, CC-BY-SA-3.0) has the motorcycle, crying baby, coughs,
    typing and dogs that no game package had; names of every file say what is heard."""
    recs = {rec.path.rsplit("/Sounds/", 1)[1]: rec for rec in find_recordings(["scratch"])}
    assert len(recs) == 50
    assert recs["Effects/MotorcyclePassing.wav"].labels[0] == "Motorcycle"
    assert recs["Human/BabyCry.mp3"].labels == ("Baby cry, infant cry", "Crying, sobbing")
    assert [recs[f"Human/Cough-{sex}.wav"].labels for sex in ("female", "male")] == [("Cough",)] * 2
    assert sum("Dog" in r.labels for r in recs.values()) == 2
    assert "Music Loops/Techno.mp3" not in recs  # genre loops: not labelled beyond what is named
    assert all(r.license.startswith("CC-BY-SA-3.0") for r in recs.values())


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


# Build 4 (the corpus the shipped heads were trained on): these sources, in this order.
# New sources are appended, so `--sources <these>` rebuilds it and duplicate ranks hold.
BUILD4_SOURCES = (
    "gcompris tuxpaint sonic-pi hydrogen bucklespring freedesktop oxygen lomiri deepin fart "
    "fluid-gm timgm6mb-gm asterisk librivox flite openarena warzone2100 hedgewars wesnoth "
    "freedroidrpg boswars 0ad supertuxkart flightgear redeclipse trigger-rally scorched3d "
    "frozen-bubble supertux lincity-ng moh asterisk-es asterisk-fr asterisk-it asterisk-ru"
).split()


def test_build4_sources_keep_their_place():
    assert list(SOURCES)[: len(BUILD4_SOURCES)] == BUILD4_SOURCES
    assert SOURCES["0ad"].label == "debian:0ad-data=0.0.26-1"


def test_each_registry_labels_its_packages_as_its_own_client_writes_them():
    assert SOURCES["fart"].label == "pypi:ovos-skill-fart==1.0.1"
    assert SOURCES["ion-sound"].label == "npm:ion-sound@3.0.7"


def test_a_missing_npm_version_is_a_clear_registry_error():
    with pytest.raises(RegistryError, match=r"could not fetch npm package ion-sound@0\.0\.0-none"):
        fetch_npm_package("ion-sound", "0.0.0-none")


@pytest.mark.parametrize(
    "source",
    [
        "openttd",
        "minetest",
        "simutrans",
        "micropolis",
        "homedecor",
        "triplea",
        "searchandrescue",
        "ion-sound",
        "opensesame",
    ],
)
def test_every_mapping_row_of_a_small_source_matches_a_file(source: str):
    """A row that matches nothing is a typo or a file the pinned version does not ship."""
    paths = [path for path, _ in package_audio_files(SOURCES[source])]
    rows = [row for row in load_mapping() if row.source == source]
    assert rows and paths
    for row in rows:
        assert any(row.regex.fullmatch(path) for path in paths), row.pattern


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


def test_a_recording_that_does_not_decode_is_skipped_not_fatal(tmp_path, monkeypatch):
    """A package can ship a broken file (searchandrescue's `splash01.wav`): the build names
    it, skips it and keeps every other recording."""
    import whisper_at_research.corpus.build as build

    good = find_recordings(["fart"])[:2]
    broken_file = tmp_path / "broken.wav"
    broken_file.write_bytes(b"RIFF" + bytes(200))
    broken = Recording(
        "fart:broken.wav", "fart", "broken.wav", broken_file, good[0].labels, good[0].indices,
        good[0].license, good[0].package, False,
    )  # fmt: skip
    monkeypatch.setattr(build, "find_recordings", lambda sources: [*good, broken])
    summary = build_corpus(
        tmp_path / "out", sources=["fart"], clips_per_recording=1, mix=False, progress=False
    )
    assert summary["skipped_recordings"] == ["fart:broken.wav"]
    assert {rec for row in _manifest(tmp_path / "out") for rec in row["recordings"]} == {
        r.id for r in good
    }


# -- build 4 sources ----------------------------------------------------------------------
_FOLDERS = {
    "es": "es_MX_f_Allison",
    "fr": "fr_CA_f_June",
    "it": "it_IT_m_Carlo",
    "ru": "ru_RU_f_IvrvoiceRU",
}


def test_zip_archive_members_are_enumerated_and_labelled():
    """OpenArena's sounds sit inside .pk3 (zip) archives; mapped members are extracted."""
    recs = {rec.path.split(".pk3/", 1)[1]: rec for rec in find_recordings(["openarena"])}
    assert recs["sound/weapons/machinegun/machgf1b.wav"].labels == (
        "Machine gun",
        "Gunshot, gunfire",
        "Explosion",
    )
    assert recs["sound/player/footsteps/boot1.wav"].labels == ("Walk, footsteps",)
    assert recs["sound/voices/rott/yes.ogg"].labels == ("Speech", "Male speech, man speaking")
    assert "Speech synthesizer" in recs["sound/voices/festivoxmale/yes.ogg"].labels
    assert "sound/misc/menu1.wav" not in recs  # UI blips are not mapped
    rec = recs["sound/weapons/machinegun/machgf1b.wav"]
    assert rec.file.is_file() and rec.package == "debian:openarena-data=0.8.5split-14"
    assert rec.load().size > 0.3 * 16000


def test_source_limit_keeps_a_stable_subset_of_speech():
    recs = find_recordings(["asterisk-fr"])
    assert len(recs) == SOURCES["asterisk-fr"].limit == 100
    assert recs == find_recordings(["asterisk-fr"])
    assert all(r.speech and r.labels == ("Speech", "Female speech, woman speaking") for r in recs)
    assert not any("/beep" in r.path or "/digits/" in r.path for r in recs)
    # Tones and the monkeys recording are the same in every language: not speech.
    for spec in ("asterisk-es", "asterisk-fr", "asterisk-it", "asterisk-ru"):
        for name in ("ascending-2tone", "confbridge-join", "confbridge-leave", "tt-monkeys"):
            path = f"usr/share/asterisk/sounds/x/{name}.wav"
            assert match_labels(spec, path.replace("/x/", f"/{_FOLDERS[spec[-2:]]}/")) is None
        speech = f"usr/share/asterisk/sounds/{_FOLDERS[spec[-2:]]}/confbridge-leave-in.wav"
        assert match_labels(spec, speech) is not None


def test_prompts_are_not_narration():
    for source in ("asterisk", "flite", "asterisk-es"):
        rows = [row for row in load_mapping() if row.source == source]
        assert rows and all("Narration, monologue" not in row.labels for row in rows)


# -- deduplication ------------------------------------------------------------------------
def _prompt(lang: str, name: str) -> np.ndarray:
    from whisper_at_research.corpus.build import trim_silence

    folder = _FOLDERS[lang]
    root = fetch_debian_package(f"asterisk-core-sounds-{lang}-wav", "1.6.1-1")
    return trim_silence(load_audio(root / "usr/share/asterisk/sounds" / folder / name))


def test_fingerprint_matches_a_releveled_resampled_copy_only():
    from whisper_at_research.corpus.dedup import FINE_THRESHOLD, fine_similarity, fingerprint

    audio = _prompt("fr", "vm-goodbye.wav")
    # The same recording, 10 dB quieter and resampled 16 -> 22.05 -> 16 kHz.
    up = np.interp(np.arange(0, audio.size, 16000 / 22050), np.arange(audio.size), audio)
    copy = np.interp(np.arange(0, up.size, 22050 / 16000), np.arange(up.size), up) * 0.316
    same = fine_similarity(fingerprint(audio), fingerprint(copy.astype(np.float32)))
    other = fine_similarity(fingerprint(audio), fingerprint(_prompt("fr", "vm-Old.wav")))
    assert same >= FINE_THRESHOLD > other


def test_duplicates_across_packages_keep_the_first_source():
    """The Spanish and French Asterisk packages ship the same beep.wav; Italian has its own."""
    from whisper_at_research.corpus.dedup import find_duplicates, fingerprint

    fps = {
        "asterisk-es:beep": fingerprint(_prompt("es", "beep.wav")),
        "asterisk-fr:beep": fingerprint(_prompt("fr", "beep.wav")),
        "asterisk-it:beep": fingerprint(_prompt("it", "beep.wav")),
        "asterisk-fr:goodbye": fingerprint(_prompt("fr", "vm-goodbye.wav")),
    }
    rank = {"asterisk-es": 1, "asterisk-fr": 2, "asterisk-it": 3}
    dups = find_duplicates(fps, {k: rank[k.split(":")[0]] for k in fps})
    assert [(d.dropped, d.kept) for d in dups] == [("asterisk-fr:beep", "asterisk-es:beep")]
    rank = {"asterisk-es": 2, "asterisk-fr": 1, "asterisk-it": 3}
    dups = find_duplicates(fps, {k: rank[k.split(":")[0]] for k in fps})
    assert [(d.dropped, d.kept) for d in dups] == [("asterisk-es:beep", "asterisk-fr:beep")]


def test_stats_counts_recordings_and_packages(builds, capsys):
    from whisper_at_research.corpus.stats import class_coverage

    manifest = builds["a"] / "manifest.jsonl"
    coverage = class_coverage(manifest)
    rows = _manifest(builds["a"])
    typing = {r["recording_id"] for r in rows if r["recording_id"].startswith("bucklespring:")}
    assert coverage["Typing"].recordings == len(typing) > 0
    assert coverage["Typing"].packages == ("bucklespring",)
    assert "librivox" in coverage["Speech"].packages
    assert corpus_main(["stats", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "| Typing | " in out and "Wanted classes with no recording:" in out
    assert corpus_main(["stats", str(builds["a"] / "missing.jsonl")]) == 2
    only = class_coverage(manifest, ["bucklespring", "fart"])
    assert only["Typing"] == coverage["Typing"]
    assert "Speech" not in only  # librivox's recordings are left out
    assert set(only) < set(coverage)
    assert corpus_main(["stats", str(manifest), "--sources", "bucklespring,flite"]) == 2
    assert "no recording comes from flite" in capsys.readouterr().err


def test_pitch_check_separates_the_labelled_voices():
    from whisper_at_research.corpus.pitch import median_f0

    female, n = median_f0("asterisk-fr", ".", max_files=8)
    assert n == 8 and 165 <= female <= 255
    male, n = median_f0("openarena", "/rott/", max_files=8)
    assert n == 8 and 85 <= male <= 155
    assert corpus_main(["pitch", "openarena", "no-such-file"]) == 2


def test_compare_cli_on_the_shared_beep(capsys):
    sounds = "usr/share/asterisk/sounds"
    es = fetch_debian_package("asterisk-core-sounds-es-wav", "1.6.1-1")
    fr = fetch_debian_package("asterisk-core-sounds-fr-wav", "1.6.1-1")
    beep_es = es / sounds / "es_MX_f_Allison/beep.wav"
    assert corpus_main(["compare", str(beep_es), str(fr / sounds / "fr_CA_f_June/beep.wav")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("same recording")
    assert (
        corpus_main(["compare", str(beep_es), str(es / sounds / "es_MX_f_Allison/vm-Old.wav")]) == 0
    )
    assert capsys.readouterr().out.rstrip().endswith("different")
    assert corpus_main(["compare", str(beep_es), str(es / "missing.wav")]) == 2
