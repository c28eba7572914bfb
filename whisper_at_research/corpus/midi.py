"""Render short General MIDI phrases from a SoundFont with ``tinysoundfont`` (no synth daemon).

Each (program, phrase) pair is one *recording*: a deterministic ~8 s melody (or chord
pattern, or drum pattern) whose notes come from a fixed per-phrase random generator, so
every build renders the same audio. Renders are cached as 16 kHz WAV files.
"""

from __future__ import annotations

import logging
import wave
import zlib
from pathlib import Path

import numpy as np

__all__ = ["render_phrase", "tinysoundfont_available"]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
PHRASE_SECONDS = 8.0

# Pitch range (MIDI keys) per GM program; default 48..79.
_RANGES = {
    33: (31, 55),
    43: (28, 52),
    42: (36, 64),
    47: (38, 57),
    57: (40, 70),
    60: (41, 72),
    70: (34, 65),
    22: (60, 84),
    73: (60, 91),
    9: (72, 96),
    11: (53, 84),
    12: (48, 84),
    13: (65, 96),
    14: (60, 77),
    40: (55, 88),
    65: (49, 80),
    71: (50, 84),
    109: (55, 74),
}
_CHORDAL = {0, 4, 6, 16, 19, 21, 24, 25, 27, 46, 48, 52, 61, 104, 105, 107}
_SCALES = ((0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10), (0, 2, 4, 7, 9))
# GM percussion keys: kick, snare, closed/open/pedal hat, crash, ride, toms.
_KICK, _SNARE, _HATS, _CRASH, _RIDE, _TOMS = 36, 38, (42, 46, 44), 49, 51, (41, 45, 48, 50)


def tinysoundfont_available() -> bool:
    try:
        import tinysoundfont  # noqa: F401
    except ImportError:
        return False
    return True


def render_phrase(soundfont: Path, program: int | str, phrase: int, cache: Path) -> Path:
    """Render (or reuse) ``cache/<program>/<phrase>.wav``; ``program`` is 0-127 or "drums"."""
    name = f"{program:03d}" if isinstance(program, int) else program
    target = cache / name / f"{phrase}.wav"
    if target.exists():
        return target
    signal = _render(soundfont, program, phrase)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
    tmp.replace(target)
    return target


_SYNTHS: dict[str, tuple[object, int]] = {}


def _synth(soundfont: Path):
    import tinysoundfont

    key = str(soundfont)
    if key not in _SYNTHS:
        synth = tinysoundfont.Synth(samplerate=SAMPLE_RATE)
        sfid = synth.sfload(key)
        _SYNTHS[key] = (synth, sfid)
    return _SYNTHS[key]


def _render(soundfont: Path, program: int | str, phrase: int) -> np.ndarray:
    synth, sfid = _synth(soundfont)
    seed = zlib.crc32(f"{program}/{phrase}".encode())
    rng = np.random.default_rng(seed)
    events = _drum_events(rng) if program == "drums" else _melody_events(program, rng)
    chan = 9 if program == "drums" else 0
    synth.notes_off()
    synth.sounds_off()
    if program == "drums":
        synth.program_select(chan, sfid, 128, 0, True)
    else:
        synth.program_select(chan, sfid, 0, int(program))
    events.sort(key=lambda e: (e[0], e[1]))  # time, then note-off (0) before note-on (1)
    chunks, now = [], 0
    for time, is_on, key, velocity in events:
        at = int(time * SAMPLE_RATE)
        if at > now:
            chunks.append(_generate(synth, at - now))
            now = at
        if is_on:
            synth.noteon(chan, key, velocity)
        else:
            synth.noteoff(chan, key)
    total = int(PHRASE_SECONDS * SAMPLE_RATE)
    if total > now:
        chunks.append(_generate(synth, total - now))
    synth.notes_off()
    synth.sounds_off()
    _generate(synth, SAMPLE_RATE // 2)  # let voices die before the next phrase
    signal = np.concatenate(chunks)
    peak = float(np.abs(signal).max())
    if peak > 0:
        signal = signal * (0.5 / peak)
    return signal.astype(np.float32)


def _generate(synth, samples: int) -> np.ndarray:
    stereo = np.frombuffer(synth.generate(samples), dtype=np.float32).reshape(-1, 2)
    return stereo.mean(axis=1)


def _melody_events(program: int, rng: np.random.Generator) -> list[tuple]:
    low, high = _RANGES.get(program, (48, 79))
    scale = _SCALES[rng.integers(len(_SCALES))]
    tonic = int(rng.integers(low, max(low + 1, high - 12)))
    keys = [tonic + 12 * octave + step for octave in range(-1, 3) for step in scale]
    keys = [k for k in keys if low <= k <= high] or [tonic]
    beat = float(rng.uniform(0.25, 0.55))
    chordal = program in _CHORDAL and rng.random() < 0.5
    events, t, position = [], 0.0, int(rng.integers(len(keys)))
    while t < PHRASE_SECONDS - 1.0:
        length = beat * float(rng.choice([1, 1, 2, 0.5, 3]))
        position = int(np.clip(position + rng.integers(-2, 3), 0, len(keys) - 1))
        notes = [keys[position]]
        if chordal:
            notes += [keys[i] for i in (position + 2, position + 4) if i < len(keys)]
        velocity = int(rng.integers(70, 120))
        for key in notes:
            events.append((t, 1, key, velocity))
            events.append((t + length * 0.95, 0, key, 0))
        t += length
        if rng.random() < 0.1:
            t += beat  # a rest
    return events


def _drum_events(rng: np.random.Generator) -> list[tuple]:
    beat = float(rng.uniform(0.22, 0.35))  # eighth-note length
    hat = _HATS[rng.integers(len(_HATS))]
    events, t, step = [], 0.0, 0
    while t < PHRASE_SECONDS - 0.5:
        hits = [(hat if step % 16 else _CRASH, 80)]
        if step % 8 in (0, 5) or (step % 8 == 3 and rng.random() < 0.3):
            hits.append((_KICK, 110))
        if step % 8 in (2, 6):
            hits.append((_SNARE, 105))
        if step % 16 == 15 and rng.random() < 0.5:
            hits = [(_TOMS[rng.integers(len(_TOMS))], 100)]
        if rng.random() < 0.1:
            hits.append((_RIDE, 70))
        for key, velocity in hits:
            events.append((t, 1, key, velocity))
            events.append((t + 0.1, 0, key, 0))
        t += beat
        step += 1
    return events
