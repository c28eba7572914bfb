"""Real speech with reference transcripts, taken from Debian packages.

These are the project's only real recordings with known text: they let tests and
evaluation check transcripts without any network source beyond the registries.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from whisper_at.cache import cache_dir
from whisper_at_research.corpus.registry import RegistryError, fetch_debian_package

__all__ = ["FLITE_VOICES", "SpeechClip", "asterisk_prompts", "flite_utterances", "librivox_clips"]

logger = logging.getLogger(__name__)

POCKETSPHINX_TESTDATA = ("pocketsphinx-testdata", "0.8+5prealpha+1-15")
ASTERISK_SOUNDS_G722 = ("asterisk-core-sounds-en-g722", "1.6.1-1")
ASTERISK_SOUNDS_TEXT = ("asterisk-core-sounds-en", "1.6.1-1")
FLITE = ("flite", "2.2-5")
FLITE_LIBRARIES = (("libflite1", "2.2-5"), ("libasound2", "1.2.8-1+b1"))
# flite's built-in voices: kal (8 kHz diphone), kal16, awb, rms are male; slt is female.
FLITE_VOICES = {"kal": "male", "kal16": "male", "awb": "male", "rms": "male", "slt": "female"}
FLITE_LICENSE = "BSD-style CMU Flite license (voices); prompt text CC-BY-SA-3.0 (Digium)"

_TRANSCRIPT_LINE = re.compile(r"^<s>\s*(?P<text>.*?)\s*</s>\s*\((?P<id>[^)]+)\)$")
_BRACKETED = re.compile(r"\[[^\]]*\]")


@dataclass(frozen=True)
class SpeechClip:
    """One utterance: where its audio is, what is said, and where it came from."""

    id: str
    path: Path
    text: str
    source: str
    license: str
    format: str | None = None  # FFmpeg demuxer to force for headerless files, e.g. "g722"


def librivox_clips() -> list[SpeechClip]:
    """The 5 LibriVox utterances (Sense and Sensibility, ch. 1) of pocketsphinx-testdata."""
    name, version = POCKETSPHINX_TESTDATA
    folder = fetch_debian_package(name, version) / "usr/share/pocketsphinx/test/data/librivox"
    clips = []
    for line in (folder / "transcription").read_text().splitlines():
        if not line.strip():
            continue
        match = _TRANSCRIPT_LINE.match(line.strip())
        if match is None:
            raise ValueError(f"{folder / 'transcription'}: unexpected line {line!r}")
        clips.append(
            SpeechClip(
                id=match["id"],
                path=folder / f"{match['id']}.wav",
                text=match["text"],
                source=f"debian:{name}={version} (LibriVox, Sense and Sensibility)",
                license="Public-Domain (LibriVox recording); package BSD-2 (CMU)",
            )
        )
    return sorted(clips, key=lambda clip: clip.id)


def asterisk_prompts(min_words: int = 6) -> list[SpeechClip]:
    """Asterisk's English prompts (one female speaker, wideband G.722) with their text.

    Bracketed notes such as ``[@]`` are dropped from the text, so pure sound effects
    like "[this is a simple beep tone]" are skipped; so are prompts shorter than
    ``min_words`` and transcript entries without a recording. Sorted by id.
    """
    audio_name, audio_version = ASTERISK_SOUNDS_G722
    text_name, text_version = ASTERISK_SOUNDS_TEXT
    sounds = fetch_debian_package(audio_name, audio_version) / (
        "usr/share/asterisk/sounds/en_US_f_Allison"
    )
    transcripts = fetch_debian_package(text_name, text_version) / (
        "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
    )
    clips = []
    for prompt_id, text in sorted(_read_prompt_texts(transcripts).items()):
        path = sounds / f"{prompt_id}.g722"
        if len(text.split()) < min_words:
            continue
        if not path.exists():
            logger.debug("%s: transcript entry %r has no recording", transcripts, prompt_id)
            continue
        clips.append(
            SpeechClip(
                id=prompt_id,
                path=path,
                text=text,
                source=f"debian:{audio_name}={audio_version}",
                license="CC-BY-SA-3.0 (Allison Smith / Digium)",
                format="g722",
            )
        )
    return clips


def _read_prompt_texts(path: Path) -> dict[str, str]:
    """Parse ``name: text`` lines (``;`` starts a comment); names may hold a subfolder."""
    texts = {}
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            name, sep, text = line.partition(": ")
            if line.startswith(";") or not sep:
                continue
            text = " ".join(_BRACKETED.sub(" ", text).split())
            if text:
                texts[name.strip()] = text
    return texts


def flite_utterances(voices: tuple[str, ...] = tuple(FLITE_VOICES)) -> list[SpeechClip]:
    """The distinct Asterisk prompt texts of 6+ words read by flite, the voices taking turns.

    The corpus's only real speech is one female speaker; these synthetic voices (four of
    them male) are what lets a head learn "Male speech" at all. Each text is read by one
    voice (the *i*-th by voice *i mod n*), so no sentence is repeated. The audio is
    synthesized once with the Debian ``flite`` binary (run from the extracted package,
    nothing installed) and cached as 16 kHz WAV. Clip ids are ``<voice>/<prompt id>``.
    """
    unknown = sorted(set(voices) - set(FLITE_VOICES))
    if unknown or not voices:
        raise ValueError(f"unknown flite voice(s) {unknown}; choose from {list(FLITE_VOICES)}")
    binary = fetch_debian_package(*FLITE) / "usr/bin/flite"
    libraries = [fetch_debian_package(*pkg) / "usr/lib/x86_64-linux-gnu" for pkg in FLITE_LIBRARIES]
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(map(str, libraries))}
    out = cache_dir() / "corpus" / "flite" / f"{FLITE[0]}_{FLITE[1]}"
    prompts = {prompt.text: prompt for prompt in reversed(asterisk_prompts(min_words=6))}
    clips = []
    for i, prompt in enumerate(sorted(prompts.values(), key=lambda prompt: prompt.id)):
        voice = voices[i % len(voices)]
        path = out / voice / f"{prompt.id}.wav"
        if not path.exists():
            _synthesize(binary, env, voice, prompt.text, path)
        clips.append(
            SpeechClip(
                id=f"{voice}/{prompt.id}",
                path=path,
                text=prompt.text,
                source=f"debian:{FLITE[0]}={FLITE[1]} (voice {voice})",
                license=FLITE_LICENSE,
            )
        )
    return clips


def _synthesize(binary: Path, env: dict[str, str], voice: str, text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.wav")
    command = [str(binary), "-voice", voice, "-t", text, "-o", str(tmp)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not tmp.exists():
        raise RegistryError(
            f"flite could not synthesize with voice {voice!r} (exit {result.returncode}): "
            f"{result.stderr.strip()[-300:]}"
        )
    tmp.replace(path)
