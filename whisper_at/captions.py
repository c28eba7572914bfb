"""Captions with sound cues (SDH, closed captions): dialogue and sound events on one time line.

Conventions of broadcast and streaming caption style guides (docs/captions.md): sounds are
short bracketed descriptions (``[dog barking]``), lowercase by default or upper case; sung
lyrics are set between music notes (``♪ ... ♪``); a sound gets its own cue where no
dialogue is shown, and a sound heard only under dialogue is named at the top of that
dialogue cue; cues stay on screen a minimum time and never overlap. The builder is a pure
function of the segments, the sound events and a :class:`CaptionStyle`.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .events import SoundEvent
from .labels import audioset_labels
from .ontology import class_ancestors, class_descendants

CaptionCase = Literal["lower", "upper"]
CombineMode = Literal["separate", "prefix"]
MUSIC_NOTE = "♪"
# Speech is the dialogue itself, never a sound cue; singing sets dialogue between notes.
SPEECH_CLASS = "Speech"
SINGING_CLASS = "Singing"
MUSIC_CLASS = "Music"


@lru_cache(maxsize=1)
def caption_phrases() -> dict[str, str]:
    """AudioSet display name -> caption phrase (assets/caption_phrases.tsv, reviewed by hand)."""
    path = resources.files("whisper_at") / "assets" / "caption_phrases.tsv"
    with path.open(encoding="utf-8", newline="") as f:
        return {row["display_name"]: row["phrase"] for row in csv.DictReader(f, delimiter="\t")}


def caption_phrase(label: str) -> str:
    """The phrase for a class; a class outside the table (a custom head's) is shown by its
    name up to the first comma, lowercased."""
    return caption_phrases().get(label) or label.split(",")[0].strip().lower()


@lru_cache(maxsize=1)
def speech_classes() -> frozenset[str]:
    """The class Speech and every class below it in the ontology: dialogue, not sound cues."""
    return frozenset({SPEECH_CLASS}) | class_descendants(SPEECH_CLASS)


@lru_cache(maxsize=1)
def singing_classes() -> frozenset[str]:
    """The class Singing and those below it (choir, rapping, ...): dialogue over them is sung."""
    return frozenset({SINGING_CLASS}) | class_descendants(SINGING_CLASS)


@lru_cache(maxsize=1)
def default_caption_classes() -> frozenset[str]:
    """Every class of the phrase table except speech: what captions show by default."""
    return frozenset(caption_phrases()) - speech_classes()


def parse_caption_classes(text: str) -> frozenset[str]:
    """An allow-list given as a comma list of class names, or a file with one per line
    (``#`` starts a comment). Names are AudioSet display names, matched case-insensitively
    (a class outside the phrase table is shown by its name); an unknown name raises
    ValueError naming it."""
    path = Path(text)
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        names = [line.split("#")[0].strip() for line in lines]
    else:
        names = [name.strip() for name in text.split(",")]
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"no class names in {text!r}")
    known = {name.lower(): name for name in audioset_labels().names}
    unknown = [name for name in names if name.lower() not in known]
    if unknown:
        raise ValueError(
            f"unknown caption class(es) {unknown}; use AudioSet display names such as "
            "'Applause' or 'Bark' (whisper-at --list-labels lists them)"
        )
    return frozenset(known[name.lower()] for name in names)


@dataclass(frozen=True)
class CaptionStyle:
    """How sound cues look and where they go.

    case: "lower" (``[dog barking]``) or "upper" (``[DOG BARKING]``).
    music_notes: set dialogue that a singing event covers for at least half its time
        between ``♪`` (sung lyrics).
    min_duration: seconds a cue stays on screen at least, as room allows (no overlaps).
    max_labels: sounds named in one cue at most, the most probable first.
    combine: "separate" gives sounds their own cues where no dialogue is shown and names a
        sound heard only under dialogue at the top of that dialogue cue; "prefix" names at
        the top of each dialogue cue every sound heard during it.
    classes: the allow-list (display names); None is :func:`default_caption_classes`.
    max_line_chars, max_lines: a dialogue cue holds at most ``max_lines`` lines of
        ``max_line_chars`` characters; a longer segment is cut into several cues at word
        boundaries, timed by its word timestamps (or spread by length without them).
    """

    case: CaptionCase = "lower"
    music_notes: bool = True
    min_duration: float = 1.0
    max_labels: int = 2
    combine: CombineMode = "separate"
    classes: frozenset[str] | None = field(default=None)
    max_line_chars: int = 42
    max_lines: int = 2

    def __post_init__(self) -> None:
        if self.case not in ("lower", "upper"):
            raise ValueError(f'case must be "lower" or "upper", got {self.case!r}')
        if self.combine not in ("separate", "prefix"):
            raise ValueError(f'combine must be "separate" or "prefix", got {self.combine!r}')
        if not (isinstance(self.min_duration, int | float) and 0 <= self.min_duration < 60):
            raise ValueError(f"min_duration must be seconds in [0, 60), got {self.min_duration!r}")
        for name in ("max_labels", "max_line_chars", "max_lines"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.classes is not None:
            object.__setattr__(self, "classes", frozenset(self.classes))

    @property
    def allowed(self) -> frozenset[str]:
        return default_caption_classes() if self.classes is None else self.classes

    def sound(self, labels: Sequence[str]) -> str:
        """``[dog barking] [rain]`` in this style."""
        phrases = [caption_phrase(label) for label in labels]
        if self.case == "upper":
            phrases = [phrase.upper() for phrase in phrases]
        return " ".join(f"[{phrase}]" for phrase in dict.fromkeys(phrases))


@dataclass(frozen=True)
class Cue:
    """One caption: ``sound`` (``[applause]``, may be empty) above ``dialogue`` (may be empty)."""

    start: float
    end: float
    sound: str = ""
    dialogue: str = ""

    @property
    def kind(self) -> Literal["dialogue", "sound"]:
        return "dialogue" if self.dialogue else "sound"

    @property
    def text(self) -> str:
        return "\n".join(part for part in (self.sound, self.dialogue) if part)


@dataclass
class _Span:
    start: float
    end: float
    dialogue: str = ""
    events: list[SoundEvent] = field(default_factory=list)  # the sounds it names
    sung: bool = False

    def labels(self, max_labels: int) -> list[str]:
        """The sounds to name; sung dialogue names no singing or music (the notes say it)."""
        hidden = singing_classes() | {MUSIC_CLASS} if self.sung else frozenset()
        return _pick((e for e in self.events if e.label not in hidden), max_labels)


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _covered(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of ``[start, end)`` inside the union of ``intervals``."""
    total, reach = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, reach), min(b, end)
        if b > a:
            total += b - a
            reach = b
    return total


class _Timeline:
    """Events sorted by start, to find those overlapping a span without scanning them all."""

    def __init__(self, events: Sequence[SoundEvent]) -> None:
        self.events = sorted(events, key=lambda e: (e.start, e.end))
        self.starts = [e.start for e in self.events]
        self.longest = max((e.end - e.start for e in self.events), default=0.0)

    def overlapping(self, start: float, end: float) -> list[SoundEvent]:
        first = bisect.bisect_left(self.starts, start - self.longest)
        last = bisect.bisect_left(self.starts, end)
        return [e for e in self.events[first:last] if _overlap(e.start, e.end, start, end) > 0]


def _pick(events: Iterable[SoundEvent], max_labels: int) -> list[str]:
    """Labels of ``events``, most probable first, without a class whose more specific
    class (a descendant in the ontology) is also there, at most ``max_labels``."""
    best: dict[str, float] = {}
    for event in events:
        best[event.label] = max(best.get(event.label, 0.0), event.probability)
    present = set(best)
    above = set().union(*(class_ancestors(label) for label in present)) if present else set()
    kept = sorted((label for label in present if label not in above), key=lambda x: -best[x])
    return kept[:max_labels]


def _words(segment: dict[str, Any]) -> list[tuple[str, float, float]]:
    """``(word, start, end)`` of a segment: its word timestamps, or its words spread over
    its time by their length when it has none."""
    timed = [
        (str(w["word"]).strip(), float(w["start"]), float(w["end"]))
        for w in segment.get("words") or []
        if str(w.get("word", "")).strip()
    ]
    if timed:
        return timed
    words = str(segment.get("text", "")).split()
    start, end = float(segment["start"]), float(segment["end"])
    total = sum(len(w) + 1 for w in words) or 1
    bounds = list(itertools.accumulate((len(w) + 1 for w in words), initial=0))
    times = [start + (end - start) * b / total for b in bounds[:-1]] + [end]
    return [(word, times[i], times[i + 1]) for i, word in enumerate(words)]


def _lines(words: Sequence[str], style: CaptionStyle) -> list[str] | None:
    """``words`` broken into lines of at most ``max_line_chars``; None if more than
    ``max_lines`` are needed (a single over-long word still gets its own line)."""
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= style.max_line_chars:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines if len(lines) <= style.max_lines else None


def _dialogue_spans(
    segments: Sequence[dict[str, Any]], duration: float, style: CaptionStyle, drop_non_speech: bool
) -> list[_Span]:
    """Dialogue cues: each segment's words, from its first to its last word, cut into
    cues of at most ``max_lines`` lines of ``max_line_chars``."""
    spans: list[_Span] = []
    for segment in sorted(segments, key=lambda s: (s["start"], s["end"])):
        if drop_non_speech and segment.get("non_speech"):
            continue
        chunk: list[tuple[str, float, float]] = []
        chunks = []
        for word in _words(segment):
            if chunk and _lines([w for w, _, _ in [*chunk, word]], style) is None:
                chunks.append(chunk)
                chunk = []
            chunk.append(word)
        chunks += [chunk] if chunk else []
        for chunk in chunks:
            start = min(max(chunk[0][1], 0.0), duration)
            end = min(max(chunk[-1][2], start), duration)
            if spans and start < spans[-1].end:  # words overlap the previous cue: it ends
                start = min(max(start, spans[-1].start), end)
                spans[-1].end = start
                if spans[-1].end <= spans[-1].start:
                    spans.pop()
            if end > start:
                text = "\n".join(_lines([w for w, _, _ in chunk], style) or [])
                spans.append(_Span(start, end, text))
    return spans


def _close_short_gaps(dialogue: list[_Span], timeline: _Timeline, min_duration: float) -> None:
    """A dialogue cue stays up until the next one when they are less than ``min_duration``
    apart and no sound starts in between (no flashing gap, no sound named on every cue of a
    conversation over music)."""
    for prev, nxt in itertools.pairwise(dialogue):
        gap = nxt.start - prev.end
        starts = [e for e in timeline.overlapping(prev.end, nxt.start) if e.start >= prev.end]
        if 0 < gap < min_duration and not starts:
            prev.end = nxt.start


def _gap_spans(
    dialogue: list[_Span], timeline: _Timeline, duration: float, style: CaptionStyle
) -> list[_Span]:
    """Sound spans where no dialogue is shown: each gap cut at every event boundary, each
    piece naming its events; a piece shorter than ``min_duration`` joins its shorter
    neighbour in the gap, and neighbours naming the same sounds are joined."""
    gaps, cursor = [], 0.0
    for span in [*dialogue, _Span(duration, duration)]:
        if span.start > cursor:
            gaps.append((cursor, span.start))
        cursor = max(cursor, span.end)
    spans: list[_Span] = []
    for g0, g1 in gaps:
        inside = timeline.overlapping(g0, g1)
        cuts = sorted({g0, g1, *(t for e in inside for t in (e.start, e.end) if g0 < t < g1)})
        pieces = [
            _Span(a, b, events=[e for e in inside if e.start < b and e.end > a])
            for a, b in zip(cuts, cuts[1:], strict=False)
        ]
        pieces = _join_short([p for p in pieces if p.events], style)
        for piece in pieces:
            if (
                spans
                and spans[-1].end == piece.start
                and spans[-1].labels(style.max_labels) == piece.labels(style.max_labels)
            ):
                spans[-1].end = piece.end
                spans[-1].events += [e for e in piece.events if e not in spans[-1].events]
            else:
                spans.append(piece)
    return spans


def _join_short(pieces: list[_Span], style: CaptionStyle) -> list[_Span]:
    """Join pieces shorter than ``min_duration`` to a touching neighbour (the shorter one)."""
    while True:
        short = [i for i, p in enumerate(pieces) if p.end - p.start < style.min_duration]
        for i in short:
            p = pieces[i]
            options = [
                j
                for j in (i - 1, i + 1)
                if 0 <= j < len(pieces) and (pieces[j].end == p.start or pieces[j].start == p.end)
            ]
            if options:
                j = min(options, key=lambda k: pieces[k].end - pieces[k].start)
                a, b = sorted((i, j))
                events = pieces[a].events + [
                    e for e in pieces[b].events if e not in pieces[a].events
                ]
                pieces[a : b + 1] = [_Span(pieces[a].start, pieces[b].end, events=events)]
                break
        else:
            return pieces


def _fit(spans: list[_Span], duration: float, min_duration: float) -> list[_Span]:
    """Give each cue ``min_duration`` where the neighbours leave room (later end; for a sound
    also an earlier start); a sound cue that still cannot be read joins the dialogue cue it
    touches (named at its top)."""
    spans = sorted(spans, key=lambda s: s.start)
    for i, span in enumerate(spans):
        if span.end - span.start >= min_duration:
            continue
        after = spans[i + 1].start if i + 1 < len(spans) else duration
        span.end = min(max(span.end, span.start + min_duration), after)
        if not span.dialogue:  # a sound may show early; words never show before they are said
            before = spans[i - 1].end if i > 0 else 0.0
            span.start = max(min(span.start, span.end - min_duration), before)
    kept: list[_Span] = []
    for i, span in enumerate(spans):
        if span.dialogue or span.end - span.start >= min_duration:
            kept.append(span)
            continue
        nxt = spans[i + 1] if i + 1 < len(spans) else None
        prev = kept[-1] if kept else None
        if nxt is not None and nxt.dialogue and math.isclose(nxt.start, span.end):
            nxt.events = [*span.events, *(e for e in nxt.events if e not in span.events)]
            nxt.start = span.start
        elif prev is not None and prev.dialogue and math.isclose(prev.end, span.start):
            prev.events = [*prev.events, *(e for e in span.events if e not in prev.events)]
            prev.end = span.end
        else:
            kept.append(span)  # nothing to join: shown as long as the gap allows
    return kept


def caption_cues(
    segments: Sequence[dict[str, Any]],
    events: Sequence[SoundEvent],
    style: CaptionStyle | None = None,
    duration: float | None = None,
    *,
    drop_non_speech: bool = False,
) -> list[Cue]:
    """Dialogue and sound cues on one time line, in order, never overlapping, within
    ``[0, duration]`` (default: the end of the last segment or event).

    segments: transcript segments (``start``, ``end``, ``text``; ``non_speech`` if flagged
        by the guard). drop_non_speech: leave flagged segments out, as suppression does, so
        their time is captioned by the sounds instead.
    events: sound events; only classes in ``style.allowed`` are shown.
    """
    style = style or CaptionStyle()
    if duration is None:
        duration = max([0.0, *(s["end"] for s in segments), *(e.end for e in events)])
    allowed = style.allowed
    events = [e for e in events if e.label in allowed and min(e.end, duration) > max(e.start, 0)]
    dialogue = _dialogue_spans(segments, duration, style, drop_non_speech)
    timeline = _Timeline(events)
    _close_short_gaps(dialogue, timeline, style.min_duration)
    sounds = _gap_spans(dialogue, timeline, duration, style)
    # a class counts as shown when it or a more specific class has a cue of its own
    shown = {label for span in sounds for label in span.labels(style.max_labels)}
    shown |= set().union(*(class_ancestors(label) for label in shown))
    singing = singing_classes()
    for span in dialogue:
        under = timeline.overlapping(span.start, span.end)
        sung = [(e.start, e.end) for e in under if e.label in singing]
        if style.music_notes and _covered(sung, span.start, span.end) >= 0.5 * (
            span.end - span.start
        ):
            span.sung = True
            span.dialogue = f"{MUSIC_NOTE} {span.dialogue} {MUSIC_NOTE}"
        span.events = [e for e in under if style.combine == "prefix" or e.label not in shown]
    spans = _fit([*dialogue, *sounds], duration, style.min_duration)
    cues = []
    for span in spans:
        start, end = round(span.start, 3), round(span.end, 3)
        if end > start:
            cues.append(Cue(start, end, style.sound(span.labels(style.max_labels)), span.dialogue))
    return cues


def result_events(result: dict[str, Any]) -> list[SoundEvent]:
    """The ``sound_events`` of a transcription result (dicts of :class:`SoundEvent` fields)."""
    return [
        e if isinstance(e, SoundEvent) else SoundEvent(**e)
        for e in result.get("sound_events") or []
    ]


def result_cues(
    result: dict[str, Any],
    style: CaptionStyle | None = None,
    events: Sequence[SoundEvent] | None = None,
) -> list[Cue]:
    """:func:`caption_cues` of a transcription result: its segments, duration and
    ``events`` (default: its ``sound_events``); segments the guard flagged are left out when
    the result says it suppressed them (``suppressed_segments``)."""
    return caption_cues(
        result.get("segments", []),
        result_events(result) if events is None else events,
        style,
        result.get("duration"),
        drop_non_speech="suppressed_segments" in result,
    )


def _timestamp(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def srt_text(cues: Sequence[Cue]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm`` times."""
    blocks = [
        f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{c.text}\n"
        for i, c in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt_text(cues: Sequence[Cue]) -> str:
    """WebVTT; a sound is wrapped in a ``sound`` class span (``<c.sound>[applause]</c>``) so
    a player can style or hide it."""
    blocks = ["WEBVTT\n"]
    for c in cues:
        lines = []
        if c.sound:
            lines.append(f"<c.sound>{_vtt_escape(c.sound)}</c>")
        if c.dialogue:
            lines.append(_vtt_escape(c.dialogue))
        times = f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}"
        blocks.append(f"{times}\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks)


CAPTION_WRITERS = {"srt": srt_text, "vtt": vtt_text}
