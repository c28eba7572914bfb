"""Build the 10 s training corpus: real single-event clips and multi-label mixtures.

``build_corpus(out_dir)`` fetches the sources (``sources.py``), labels each recording with
``mapping.tsv``, assigns every *split group* (an original recording, or the velocity layers
of one drum-kit instrument, or the press/release of one key) to train/valid/test, and
writes per recording:

- one *real* clip (``mixed: false``, ``kind: "real"``; not for speech sources): the
  recording alone, cropped or looped to 10 s, no noise, no perturbation;
- ``clips_per_recording`` *mixed* clips (``kind: "mix"``): the recording placed at random
  times (short events repeated 1-4 times) over silence, generated room tone or a quieter
  sound bed, with random gain and a light speed (pitch + tempo) perturbation, plus, at
  random, speech over it, a second event, or music/events under speech. Partners always
  come from the same split. Labels are the union of the labels of every recording that
  was mixed in (each is mixed at most 20 dB below the main event, so all are audible);
  room tone carries no label. With ``mix=False`` the clips hold the main event alone
  (``kind: "solo"``).

Before splitting, the same recording shipped twice (in one package or in several) is kept
once, under the source that comes first in ``SOURCES`` (``dedup.py``); the dropped copies
are listed in ``duplicates.tsv``. Recordings longer than ``MAX_SECONDS`` keep their start.

Everything is deterministic from ``seed``: the same seed and sources give a byte-identical
``manifest.jsonl``. Splits do not depend on the seed.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from whisper_at.audio import AudioError
from whisper_at.labels import audioset_labels
from whisper_at_research.corpus.dedup import (
    Duplicate,
    cache_key,
    cached_fingerprints,
    find_duplicates,
    fingerprint,
)
from whisper_at_research.corpus.sources import SOURCES, Recording, find_recordings

__all__ = ["CLIP_SECONDS", "SAMPLE_RATE", "build_corpus", "split_of", "trim_silence"]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CLIP_SECONDS = 10.0
CLIP = int(SAMPLE_RATE * CLIP_SECONDS)
SPLITS = (("test", 0.1), ("valid", 0.1))  # the rest is train
MAX_SECONDS = 30  # longer recordings keep their first 30 s (clips are 10 s)
SYNTHETIC_KINDS = ("gm", "flite")  # rendered or synthesized: not deduplicated


@dataclass
class _Loaded:
    rec: Recording
    audio: np.ndarray
    rms: float
    split: str


def build_corpus(
    out_dir: str | Path,
    seed: int = 0,
    *,
    clips_per_recording: int = 2,
    max_recordings: int | None = None,
    sources: list[str] | None = None,
    mix: bool = True,
    real_clips: bool = True,
    progress: bool = True,
) -> dict:
    """Write ``clips/``, ``manifest.jsonl``, ``summary.json`` and ``summary.md`` under out_dir.

    ``max_recordings`` keeps at most that many recordings *per source* (chosen by a stable
    hash of their ids), for quick test builds. Returns the summary dictionary.
    """
    started = time.monotonic()
    out = Path(out_dir)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    recordings = find_recordings(sources)
    if max_recordings is not None:
        recordings = _subset(recordings, max_recordings)

    audios: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    for rec in tqdm(recordings, desc="decode", unit="rec", disable=not progress):
        try:  # a little more than kept, so leading silence does not eat into it
            audio = trim_silence(rec.load(MAX_SECONDS + 10))[: SAMPLE_RATE * MAX_SECONDS]
        except AudioError as error:
            logger.warning("skipped, does not decode: %s", error)
            skipped.append(rec.id)
            continue
        if audio.size < SAMPLE_RATE // 50 or _rms(audio) < 1e-4:
            skipped.append(rec.id)
            continue
        audios[rec.id] = audio
    if skipped:
        logger.warning(
            "%d silent, empty or undecodable recordings skipped: %s", len(skipped), skipped[:5]
        )
    duplicates = deduplicate([r for r in recordings if r.id in audios], audios)
    dropped = {d.dropped for d in duplicates}
    recordings = [r for r in recordings if r.id in audios and r.id not in dropped]
    splits = assign_splits(recordings)
    loaded = [_Loaded(r, audios[r.id], _rms(audios[r.id]), splits[r.id]) for r in recordings]
    del audios

    pools: dict[tuple[str, bool], list[_Loaded]] = defaultdict(list)
    for item in loaded:
        pools[(item.split, item.rec.speech)].append(item)

    licenses = {item.rec.id: item.rec.license for item in loaded}
    rows = []
    jobs = [(item, "real", 0) for item in loaded if real_clips and not item.rec.speech]
    kind = "mix" if mix else "solo"
    jobs += [(item, kind, k) for item in loaded for k in range(clips_per_recording)]
    jobs.sort(key=lambda job: (job[0].rec.id, job[1], job[2]))
    for item, what, k in tqdm(jobs, desc="clips", unit="clip", disable=not progress):
        rng = np.random.default_rng([seed, zlib.crc32(item.rec.id.encode()), k, len(what)])
        if what == "real":
            audio, events = _real_clip(item, rng)
        else:
            audio, events = _mixed_clip(item, rng, pools, mix=(what == "mix"))
        name = f"{_slug(item.rec)}-{what}{k}.flac"
        rel = Path("clips") / item.split / item.rec.source / name
        _write_flac(out / rel, audio)
        rows.append(_manifest_row(rel, item, what, events, licenses))

    with open(out / "manifest.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    with open(out / "duplicates.tsv", "w", encoding="utf-8") as f:
        f.write("dropped\tkept\tcoarse\tfine\n")
        f.writelines(f"{d.dropped}\t{d.kept}\t{d.coarse}\t{d.fine}\n" for d in duplicates)
    summary = summarize(
        rows,
        loaded,
        skipped,
        duplicates=_duplicate_counts(duplicates),
        seconds=time.monotonic() - started,
        seed=seed,
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


# -- duplicates ---------------------------------------------------------------------------
def deduplicate(recordings: list[Recording], audios: dict[str, np.ndarray]) -> list[Duplicate]:
    """Duplicates among the recorded (not rendered or synthesized) sources; see ``dedup``.

    The copy that stays is the one whose source comes first in ``SOURCES``.
    """
    real = [r for r in recordings if SOURCES[r.source].kind not in SYNTHETIC_KINDS]
    order = {name: k for k, name in enumerate(SOURCES)}
    fingerprints = cached_fingerprints(
        {r.id: cache_key(r.id, r.file) for r in real}, lambda rec_id: fingerprint(audios[rec_id])
    )
    duplicates = find_duplicates(fingerprints, {r.id: order[r.source] for r in real})
    logger.info("%d duplicate recordings dropped", len(duplicates))
    return duplicates


def _duplicate_counts(duplicates: list[Duplicate]) -> dict[str, int]:
    """Dropped copies per (dropped source -> kept source)."""
    pairs = Counter(
        f"{d.dropped.split(':', 1)[0]} -> {d.kept.split(':', 1)[0]}" for d in duplicates
    )
    return dict(sorted(pairs.items()))


# -- splits -------------------------------------------------------------------------------
def split_group(rec: Recording) -> str:
    """Recordings that must share a split: drum-kit velocity layers, key press/release."""
    if rec.source == "hydrogen":
        return rec.id.rsplit("/", 1)[0]
    if rec.source == "bucklespring":
        return re.sub(r"-[01]\.wav$", "", rec.id)
    return rec.id


def assign_splits(recordings: list[Recording]) -> dict[str, str]:
    """Stratified 80/10/10 by label set, over split groups ordered by a stable hash.

    Seed-independent, so every build puts a recording in the same split.
    """
    groups: dict[str, list[Recording]] = defaultdict(list)
    for rec in recordings:
        groups[split_group(rec)].append(rec)
    strata: dict[tuple, list[str]] = defaultdict(list)
    for group, members in groups.items():
        strata[members[0].labels].append(group)
    out = {}
    for members in strata.values():
        members.sort(key=lambda g: (zlib.crc32(g.encode()), g))
        n, position = len(members), 0
        for name, share in SPLITS:
            count = round(n * share) if n >= 10 else (1 if n >= 3 else 0)
            for group in members[position : position + count]:
                for rec in groups[group]:
                    out[rec.id] = name
            position += count
        for group in members[position:]:
            for rec in groups[group]:
                out[rec.id] = "train"
    _hold_out_every_class(groups, out)
    return out


def _hold_out_every_class(groups: dict[str, list[Recording]], out: dict[str, str]) -> None:
    """Give test, then valid, a group of every class that has enough groups for it.

    Label sets split the strata finely (a "Bark; Dog" recording and a "Dog" one differ),
    so a class can have several recordings and none held out; move the first train
    group (stable hash order) of such a class, keeping at least two in train.
    """
    by_class: dict[str, list[str]] = defaultdict(list)
    for group, members in sorted(groups.items(), key=lambda g: (zlib.crc32(g[0].encode()), g[0])):
        for label in members[0].labels:
            by_class[label].append(group)
    for split, needed in (("test", 3), ("valid", 4)):
        for label in sorted(by_class):
            members = by_class[label]
            splits = [out[groups[g][0].id] for g in members]
            if len(members) < needed or split in splits or splits.count("train") <= 2:
                continue
            group = members[splits.index("train")]
            for rec in groups[group]:
                out[rec.id] = split


def split_of(recordings: list[Recording], rec_id: str) -> str:
    return assign_splits(recordings)[rec_id]


def _subset(recordings: list[Recording], limit: int) -> list[Recording]:
    by_source: dict[str, list[Recording]] = defaultdict(list)
    for rec in recordings:
        by_source[rec.source].append(rec)
    keep = []
    for members in by_source.values():
        members.sort(key=lambda r: (zlib.crc32(r.id.encode()), r.id))
        keep += members[:limit]
    return sorted(keep, key=lambda r: r.id)


# -- clip synthesis -----------------------------------------------------------------------
def _real_clip(item: _Loaded, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    audio = item.audio
    gain = _db_to_gain(-20.0) / item.rms
    if audio.size >= CLIP:
        start = int(rng.integers(0, audio.size - CLIP + 1))
        clip = audio[start : start + CLIP] * gain
        events = [_event(item, 0, CLIP, 20 * np.log10(gain), start / SAMPLE_RATE)]
        return _limit(clip), events
    clip = np.zeros(CLIP, np.float32)
    events, at = [], int(rng.integers(0, SAMPLE_RATE // 4 + 1))
    while at < CLIP:  # loop with short silent gaps
        piece = audio[: CLIP - at]
        clip[at : at + piece.size] += piece * gain
        events.append(_event(item, at, at + piece.size, 20 * np.log10(gain)))
        at += audio.size + int(rng.integers(SAMPLE_RATE // 5, SAMPLE_RATE + 1))
    return _limit(clip), events


def _mixed_clip(
    item: _Loaded,
    rng: np.random.Generator,
    pools: dict[tuple[str, bool], list[_Loaded]],
    *,
    mix: bool,
) -> tuple[np.ndarray, list[dict]]:
    clip = np.zeros(CLIP, np.float32)
    events: list[dict] = []
    level = float(rng.uniform(-32, -16))  # main event RMS, dBFS
    _place(clip, events, item, rng, level, perturb=not item.rec.speech)

    if mix:
        speech_pool = [p for p in pools.get((item.split, True), []) if p is not item]
        sound_pool = [p for p in pools.get((item.split, False), []) if p is not item]
        choice = rng.random()
        if item.rec.speech:
            if choice < 0.6 and sound_pool:  # music or an event under the speech
                other = sound_pool[int(rng.integers(len(sound_pool)))]
                _place(clip, events, other, rng, level - float(rng.uniform(3, 15)), perturb=True)
        elif choice < 0.35 and speech_pool:  # speech over the event / music
            other = speech_pool[int(rng.integers(len(speech_pool)))]
            _place(clip, events, other, rng, level + float(rng.uniform(-5, 10)), perturb=False)
        elif choice < 0.7 and sound_pool:  # a second event
            other = sound_pool[int(rng.integers(len(sound_pool)))]
            _place(clip, events, other, rng, level + float(rng.uniform(-8, 4)), perturb=True)
        if rng.random() < 0.25 and sound_pool:  # a quieter bed of another sound
            other = sound_pool[int(rng.integers(len(sound_pool)))]
            _place(clip, events, other, rng, level - float(rng.uniform(10, 20)), perturb=True)

    background = rng.random()
    if background < 0.6:  # low room tone (unlabelled)
        clip += _room_tone(rng, float(rng.uniform(-62, -45)))
    return _limit(clip), events


def _place(clip, events, item: _Loaded, rng, level_db: float, *, perturb: bool) -> None:
    audio = item.audio
    factor = 1.0
    if perturb and rng.random() < 0.5:
        factor = float(rng.uniform(0.94, 1.06))
        audio = _speed(audio, factor)
    gain = _db_to_gain(level_db) / item.rms
    gain_db = round(20 * np.log10(gain), 2)
    if audio.size >= CLIP:
        start = int(rng.integers(0, audio.size - CLIP + 1))
        clip += audio[start : start + CLIP] * gain
        events.append(_event(item, 0, CLIP, gain_db, start / SAMPLE_RATE, factor))
        return
    seconds = audio.size / SAMPLE_RATE
    if item.rec.speech:
        repeats = 1
    elif seconds < 1.5:
        repeats = int(rng.integers(1, 5))
    else:
        repeats = int(rng.integers(1, 3)) if seconds < 4 else 1
    for _ in range(repeats):
        at = int(rng.integers(0, CLIP - audio.size + 1))
        clip[at : at + audio.size] += audio * gain
        events.append(_event(item, at, at + audio.size, gain_db, 0.0, factor))


def _event(item: _Loaded, start: int, end: int, gain_db: float, offset=0.0, speed=1.0) -> dict:
    return {
        "recording_id": item.rec.id,
        "start": round(start / SAMPLE_RATE, 4),
        "end": round(end / SAMPLE_RATE, 4),
        "source_offset": round(float(offset), 4),
        "labels": list(item.rec.indices),
        "gain_db": round(float(gain_db), 2),
        "speed": round(float(speed), 4),
    }


def _room_tone(rng: np.random.Generator, level_db: float) -> np.ndarray:
    white = rng.standard_normal(CLIP + 4096)
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(white.size, 1 / SAMPLE_RATE)
    slope = float(rng.uniform(0.5, 1.0))  # between pink and brown
    spectrum /= np.maximum(freqs, 20.0) ** slope
    tone = np.fft.irfft(spectrum, n=white.size)[:CLIP]
    return (tone / (_rms(tone) + 1e-12) * _db_to_gain(level_db)).astype(np.float32)


def _speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Resample by ``factor`` (>1 is faster and higher), linear interpolation."""
    n = max(1, int(audio.size / factor))
    return np.interp(np.arange(n) * factor, np.arange(audio.size), audio).astype(np.float32)


def trim_silence(audio: np.ndarray, threshold_db: float = -50.0) -> np.ndarray:
    """Cut leading and trailing samples below ``threshold_db`` of the peak."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        return audio
    peak = float(np.abs(audio).max())
    if peak == 0:
        return audio[:0]
    above = np.flatnonzero(np.abs(audio) > peak * _db_to_gain(threshold_db))
    return audio[above[0] : above[-1] + 1]


def _limit(clip: np.ndarray) -> np.ndarray:
    peak = float(np.abs(clip).max())
    if peak > 0.98:
        clip = clip * (0.98 / peak)
    return clip.astype(np.float32)


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def _db_to_gain(db: float) -> float:
    return float(10 ** (db / 20))


def _slug(rec: Recording) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "_", rec.path.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    return f"{stem.strip('_')[:40]}-{zlib.crc32(rec.id.encode()):08x}"


def _write_flac(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(audio, -1, 1) * 32767).round().astype(np.int16)[None, :]
    with av.open(str(path), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


# -- manifest and summary -----------------------------------------------------------------
def _manifest_row(rel: Path, item: _Loaded, kind: str, events: list[dict], licenses) -> dict:
    names = audioset_labels().names
    recs = sorted({e["recording_id"] for e in events})
    indices = sorted({i for e in events for i in e["labels"]})
    return {
        "path": rel.as_posix(),
        "start": 0.0,
        "end": CLIP_SECONDS,
        "labels": indices,
        "label_names": [names[i] for i in indices],
        "source": sorted({SOURCES[r.split(":", 1)[0]].label for r in recs}),
        "license": sorted({licenses[r] for r in recs}),
        "split": item.split,
        "recording_id": item.rec.id,
        "recordings": recs,
        "mixed": len(recs) > 1,
        "kind": kind,
        "events": events,
    }


def summarize(rows: list[dict], loaded: list[_Loaded], skipped: list[str], **extra) -> dict:
    names = audioset_labels().names
    per_class: dict[str, Counter] = defaultdict(Counter)
    per_source: dict[str, Counter] = defaultdict(Counter)
    per_split: Counter = Counter()
    for row in rows:
        per_split[row["split"]] += 1
        for i in row["labels"]:
            per_class[names[i]]["clips"] += 1
            per_class[names[i]]["seconds"] += CLIP_SECONDS
            per_class[names[i]]["real_clips"] += row["kind"] == "real"
        source = row["recording_id"].split(":", 1)[0]
        per_source[source]["clips"] += 1
        per_source[source]["seconds"] += CLIP_SECONDS
    recordings_per_class: Counter = Counter()
    licenses: Counter = Counter()
    for item in loaded:
        for name in item.rec.labels:
            recordings_per_class[name] += 1
        licenses[f"{item.rec.package}: {item.rec.license}"] += 1
        per_source[item.rec.source]["recordings"] += 1
        per_source[item.rec.source]["recording_seconds"] += item.audio.size / SAMPLE_RATE
    for name, count in recordings_per_class.items():
        per_class[name]["recordings"] = count
    return {
        "clips": len(rows),
        "hours": round(len(rows) * CLIP_SECONDS / 3600, 3),
        "classes": len(per_class),
        "recordings": len(loaded),
        "skipped_recordings": skipped,
        "splits": dict(sorted(per_split.items())),
        "per_class": {k: dict(v) for k, v in sorted(per_class.items())},
        "per_source": {
            k: {key: round(val, 1) for key, val in v.items()} for k, v in sorted(per_source.items())
        },
        "licenses": dict(sorted(licenses.items())),
        **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in extra.items()},
    }


def summary_markdown(summary: dict) -> str:
    lines = [
        "# Corpus summary",
        "",
        f"{summary['clips']} clips of 10 s ({summary['hours']} h), {summary['classes']} AudioSet "
        f"classes, {summary['recordings']} original recordings; splits {summary['splits']}; "
        f"seed {summary.get('seed')}; built in {summary.get('seconds')} s.",
        "",
        "## Per class",
        "",
        "| class | recordings | clips | real clips | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, c in summary["per_class"].items():
        lines.append(
            f"| {name} | {c.get('recordings', 0)} | {c['clips']} | {c.get('real_clips', 0)} "
            f"| {c['seconds']:.0f} |"
        )
    lines += [
        "",
        "## Per source",
        "",
        "| source | package | recordings | recording s | clips | clip s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, c in summary["per_source"].items():
        lines.append(
            f"| {name} | {SOURCES[name].label} | {c.get('recordings', 0):.0f} "
            f"| {c.get('recording_seconds', 0):.0f} | {c.get('clips', 0):.0f} "
            f"| {c.get('seconds', 0):.0f} |"
        )
    lines += ["", "## Duplicates dropped (dropped source -> kept source; duplicates.tsv)", ""]
    lines += [f"- {k}: {v}" for k, v in summary.get("duplicates", {}).items()] or ["- none"]
    lines += ["", "## Licenses (recordings)", ""]
    lines += [f"- {k}: {v}" for k, v in summary["licenses"].items()]
    return "\n".join(lines) + "\n"
