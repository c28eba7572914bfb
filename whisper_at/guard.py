"""The non-speech guard: flag (and optionally drop) segments the tags say hold no speech.

Whisper writes text over silence, music and noise ("You", "Thank you.", lyrics it
invents). The tagging head sees the same encoder pass, so each segment gets the
head's speech probability over its span: the highest probability any speech class
(AudioSet's "Speech" and its children, and "Whispering") reaches in the tag windows
the segment overlaps. A segment under ``threshold`` is flagged ``non_speech``; with
``suppress`` it leaves the transcript (``text``, ``segments``) and is kept, unchanged,
in ``suppressed_segments``. Singing and choirs are not speech here: sung lyrics over
music count as non-speech (docs/nonspeech.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .labels import LabelSet, audioset_labels
from .ontology import class_descendants
from .tagging import TaggingResult

# AudioSet's "Speech" with every class below it in the ontology (male, female, child speech,
# conversation, narration, babbling, speech synthesizer) and "Whispering". Singing is
# deliberately left out.
SPEECH_CLASS_NAMES = frozenset({"Speech", "Whispering"}) | class_descendants("Speech")
# Below this speech probability a segment is non-speech. Chosen on the corpus's valid
# split so that almost no clip with speech falls under it (docs/nonspeech.md).
DEFAULT_SPEECH_THRESHOLD = 0.2


class NonSpeechGuardError(ValueError):
    """The guard cannot run: no head, or a head that reports no speech class."""


def speech_classes(labels: LabelSet, reported: list[int]) -> list[int]:
    """The reported classes of ``labels`` that carry speech (by AudioSet mid or name)."""
    audioset = audioset_labels()
    found = set()
    for name in SPEECH_CLASS_NAMES:
        for key in (name, audioset.ids[audioset.index(name)]):
            try:
                found.add(labels.index(key))
            except KeyError:
                continue
    return sorted(found & set(reported))


@dataclass(frozen=True)
class NonSpeechGuard:
    """What the guard does to a result: ``threshold`` on the speech probability, and
    whether flagged segments leave the transcript (``suppress``)."""

    threshold: float = DEFAULT_SPEECH_THRESHOLD
    suppress: bool = False

    def __post_init__(self) -> None:
        number = isinstance(self.threshold, int | float) and not isinstance(self.threshold, bool)
        if not (number and 0.0 <= self.threshold <= 1.0):
            raise ValueError(
                f"speech_threshold must be a probability in [0, 1], got {self.threshold!r}"
            )

    def check(self, labels: LabelSet | None, reported: list[int], model: str) -> None:
        """Before decoding: suppression needs a head that reports a speech class."""
        if not self.suppress:
            return
        if labels is None:
            raise NonSpeechGuardError(
                f"suppress_non_speech needs a tagging head, and none is installed for {model}"
            )
        if not speech_classes(labels, reported):
            raise NonSpeechGuardError(
                "suppress_non_speech needs a head that reports a speech class "
                "(AudioSet 'Speech' or its children); this head reports none"
            )

    def apply(self, result: dict[str, Any], tagging: TaggingResult) -> None:
        """Add ``speech_probability`` and ``non_speech`` to every segment of ``result``
        and its ``non_speech_guard`` summary; with ``suppress``, move the flagged segments
        from ``segments`` to ``suppressed_segments`` and drop their text from ``text``.

        A head without speech classes leaves the result as it is (``check`` refuses
        suppression with such a head before any decoding).
        """
        classes = speech_classes(tagging.labels, tagging.reported_classes)
        if not classes:
            return
        for segment in result["segments"]:
            p = tagging.span_probability(classes, segment["start"], segment["end"])
            segment["speech_probability"] = round(p, 4)
            segment["non_speech"] = p < self.threshold
        flagged = [s for s in result["segments"] if s["non_speech"]]
        result["non_speech_guard"] = {
            "threshold": self.threshold,
            "suppressed": self.suppress,
            "speech_classes": [tagging.labels.names[i] for i in classes],
            "flagged": len(flagged),
        }
        if not self.suppress:
            return
        result["suppressed_segments"] = flagged
        if flagged:
            result["segments"] = [s for s in result["segments"] if not s["non_speech"]]
            result["text"] = "".join(s["text"] for s in result["segments"])
