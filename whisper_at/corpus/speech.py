"""Real speech with reference transcripts, taken from Debian packages.

These are the project's only real recordings with known text: they let tests and
evaluation check transcripts without any network source beyond the registries.
"""

from __future__ import annotations

import gzip
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from whisper_at.corpus.registry import fetch_debian_package

__all__ = ["SpeechClip", "asterisk_prompts", "librivox_clips"]

logger = logging.getLogger(__name__)

POCKETSPHINX_TESTDATA = ("pocketsphinx-testdata", "0.8+5prealpha+1-15")
ASTERISK_SOUNDS_G722 = ("asterisk-core-sounds-en-g722", "1.6.1-1")
ASTERISK_SOUNDS_TEXT = ("asterisk-core-sounds-en", "1.6.1-1")

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
