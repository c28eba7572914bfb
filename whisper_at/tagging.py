"""From encoder passes to time-aligned tags.

Whisper's encoder gives one frame per 20 ms; the paper mean-pools 20 of them into
0.4 s frames ("bins"). Here bins sit on an absolute grid (bin ``b`` covers
``[0.4 b, 0.4 b + 0.4)`` seconds of the file), whatever offsets the decoder's 30 s
windows happen to start at, so tags line up with the audio and not with the
decoder's seek. Each 20 ms frame is taken from the first pass that covered it,
which is also what lets a bin span two decoder windows.

Tagging windows of ``at_time_res`` seconds group consecutive bins; complete windows
go to the head in batches of about ``HEAD_BATCH_BINS`` bins (one call for many windows
costs less than one call each), so long audio needs only the bins of one batch.

Independently of ``at_time_res``, an *event track* gives every bin its own logits,
the input of sound-event detection (:mod:`whisper_at.events`): by default the head run
on a 2 s window centred on every bin (``TrackOptions``; docs/events.md compares it with
the head's per-frame logits and with other window lengths).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from whisper.audio import HOP_LENGTH, SAMPLE_RATE

from .events import EventOptions, SoundEvent, detect_events
from .labels import LabelSet, audioset_labels

if TYPE_CHECKING:
    from .heads import TaggingHead

logger = logging.getLogger("whisper_at")

MEL_FRAMES_PER_SECOND = 100  # Whisper's log-mel hop: 10 ms
MEL_FRAMES_PER_ENCODER_FRAME = 2  # conv2 has stride 2
ENCODER_FRAMES_PER_BIN = 20  # the paper's 20x mean pooling
MEL_FRAMES_PER_BIN = MEL_FRAMES_PER_ENCODER_FRAME * ENCODER_FRAMES_PER_BIN
BIN_SECONDS = MEL_FRAMES_PER_BIN / MEL_FRAMES_PER_SECOND  # 0.4 s
# Threshold "auto" means the head's per-class thresholds; a head without them gets this one.
# Chosen from measurements of the shipped heads (docs/results.md, "Decision thresholds").
AUTO_THRESHOLD_FALLBACK = 0.5
Threshold = float | Literal["auto"]
# Only whole 10 ms mel frames are audio to the encoder; shorter input leaves the head nothing.
MIN_TAG_SAMPLES = HOP_LENGTH  # 160 samples at 16 kHz


class AudioTooShortError(ValueError):
    """Audio shorter than one mel frame: there is nothing to tag."""


def bins_per_window(at_time_res: float) -> int:
    """Validate a tagging resolution (a positive multiple of 0.4 s) and return its bin count."""
    n = round(at_time_res / BIN_SECONDS) if math.isfinite(at_time_res) else 0
    if n < 1 or not math.isclose(n * BIN_SECONDS, at_time_res, abs_tol=1e-6):
        raise ValueError(
            f"at_time_res must be a positive multiple of {BIN_SECONDS} s "
            f"(0.4, 0.8, ..., 10.0); got {at_time_res}"
        )
    return n


def pool_bins(layers: torch.Tensor) -> torch.Tensor:
    """``[batch, n_layer, 1500, d]`` block outputs -> ``[batch, n_layer, 75, d]`` 0.4 s bins.

    The pooled features heads read; part of the contract between inference and
    training (docs/architecture.md).
    """
    b, n_layer, frames, d = layers.shape
    n_bins = frames // ENCODER_FRAMES_PER_BIN
    return layers.float().reshape(b, n_layer, n_bins, ENCODER_FRAMES_PER_BIN, d).mean(dim=3)


TrackMethod = Literal["frames", "sliding"]
TRACK_METHODS: tuple[str, ...] = TrackMethod.__args__  # type: ignore[attr-defined]
TRACK_BATCH = 64  # sliding windows per head call, so memory stays bounded


@dataclass(frozen=True)
class TrackOptions:
    """How the per-bin event track is computed.

    method: "sliding" (default): the head's logits for a window of ``context_seconds``
        centred on every bin (cut at the file's ends), one window per bin, so
        ``context_seconds / 0.4`` times the head work of the tags. "frames": the head's
        per-frame logits (:meth:`~whisper_at.heads.TaggingHead.frame_logits`) over
        consecutive blocks of ``context_seconds`` on the file's grid, about the tags'
        cost; measured to localize worse (docs/events.md).
    context_seconds: a multiple of 0.4 s. The heads were trained on 10 s windows; a
        short window localizes, a long one recognizes (2 s: docs/events.md).
    """

    method: TrackMethod = "sliding"
    context_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.method not in TRACK_METHODS:
            raise ValueError(f"track method must be one of {TRACK_METHODS}, got {self.method!r}")
        bins_per_window(self.context_seconds)


def head_precision(
    encoder_dtype: torch.dtype, like: torch.Tensor
) -> contextlib.AbstractContextManager:
    """Where the head computes: bfloat16 autocast (matrix products in bf16, norms and
    softmax in float32) when the encoder runs in bfloat16, so the head costs far less
    than in float32 and tags stay a small share of the encoder's time; float32 for any
    other encoder (a float16 GPU encoder included)."""
    bf16 = encoder_dtype == torch.bfloat16
    return torch.autocast(like.device.type, dtype=torch.bfloat16, enabled=bf16)


class EventTrack:
    """Per-bin logits of one stream, computed as its pooled bins arrive in order."""

    def __init__(
        self, head: TaggingHead, options: TrackOptions, encoder_dtype: torch.dtype = torch.float32
    ) -> None:
        self.head, self.options, self.encoder_dtype = head, options, encoder_dtype
        self.context = bins_per_window(options.context_seconds)
        self._pending: torch.Tensor | None = None  # pooled bins [n, n_layer, d] still needed
        self._first = 0  # absolute bin of _pending[0]
        self._next = 0  # the next bin whose logits are due
        self._logits: list[torch.Tensor] = []

    def add(self, pooled: torch.Tensor) -> None:
        """The next pooled bins ``[n, n_layer, d]`` of the stream."""
        self._pending = pooled if self._pending is None else torch.cat([self._pending, pooled])
        self._run(final=False)

    def finish(self) -> torch.Tensor:
        """Logits ``[n_bins, n_classes]`` for every bin of the stream."""
        self._run(final=True)
        return torch.cat(self._logits).float().cpu() if self._logits else torch.zeros(0, 0)

    def _run(self, final: bool) -> None:
        if self._pending is None:
            return
        with torch.inference_mode(), head_precision(self.encoder_dtype, self._pending):
            if self.options.method == "frames":
                self._frames(final)
            else:
                self._sliding(final)

    def _frames(self, final: bool) -> None:
        k, pending = self.context, self._pending
        full = pending.shape[0] // k
        if full:
            blocks = pending[: full * k].reshape(full, k, *pending.shape[1:]).transpose(1, 2)
            self._logits.append(self.head.frame_logits(blocks).flatten(0, 1))
        used = full * k
        if final and pending.shape[0] > used:
            rest = pending[used:].transpose(0, 1)[None]
            self._logits.append(self.head.frame_logits(rest)[0])
            used = pending.shape[0]
        self._pending = pending[used:]
        self._first += used
        self._next = self._first

    def _sliding(self, final: bool) -> None:
        k, pending, first = self.context, self._pending, self._first
        before = (k - 1) // 2
        after = k - 1 - before
        end = first + pending.shape[0]  # bins available
        ready = end if final else end - after
        b = self._next
        while b < ready:
            lo, hi = max(0, b - before), min(end, b + after + 1)
            if hi - lo == k:  # a run of whole windows, batched
                stop = min(ready, end - after)
                windows = pending.unfold(0, k, 1)[lo - first : stop - before - first]
                for batch in windows.permute(0, 1, 3, 2).split(TRACK_BATCH):
                    self._logits.append(self.head(batch))
                b = stop
            else:  # near an end of the file: a shorter window
                window = pending[lo - first : hi - first].transpose(0, 1)[None]
                self._logits.append(self.head(window))
                b += 1
        self._next = b
        keep = max(first, b - before)
        self._pending = pending[keep - first :]
        self._first = keep


# pooled bins (0.4 s each) gathered before the head runs on their windows: bounds memory
# on long audio while the head runs in batches (cheaper per window than one at a time)
HEAD_BATCH_BINS = 200


def bin_sums(frames: torch.Tensor, first_frame: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Sums per 0.4 s bin of consecutive encoder frames ``[n_layer, n, d]`` that start at
    absolute frame ``first_frame``: (the first bin's index, float32 sums ``[n_bins,
    n_layer, d]``, frame counts ``[n_bins]``). The whole bins in the middle take one
    reshape; a partial bin at either end is summed on its own (a window that starts or
    ends mid-bin shares that bin with its neighbour)."""
    per_bin = ENCODER_FRAMES_PER_BIN
    n_layer, n, d = frames.shape
    lead = min(n, -first_frame % per_bin)
    body = (n - lead) // per_bin
    tail = n - lead - body * per_bin
    parts, counts = [], []
    if lead:
        parts.append(frames[:, :lead].sum(dim=1, dtype=torch.float32)[None])
        counts.append(lead)
    if body:
        whole = frames[:, lead : lead + body * per_bin].reshape(n_layer, body, per_bin, d)
        parts.append(whole.sum(dim=2, dtype=torch.float32).transpose(0, 1))
        counts += [per_bin] * body
    if tail:
        parts.append(frames[:, n - tail :].sum(dim=1, dtype=torch.float32)[None])
        counts.append(tail)
    counted = torch.tensor(counts, dtype=torch.float32, device=frames.device)
    return first_frame // per_bin, torch.cat(parts), counted


class TagAccumulator:
    """Collects encoder passes for one audio stream and runs the head on its windows."""

    def __init__(
        self,
        head: Callable[[torch.Tensor], torch.Tensor],
        at_time_res: float,
        track: EventTrack | None = None,
        encoder_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.head = head  # features [n, n_layer, time, d] -> logits [n, n_classes]
        self.encoder_dtype = encoder_dtype  # what the head follows (see head_precision)
        self.at_time_res = at_time_res
        self.window_bins = bins_per_window(at_time_res)
        self.track = track  # per-bin logits for sound events, when wanted
        self._covered = 0  # absolute encoder frames [0, covered) already taken
        self._first_bin = 0  # absolute index of _sums[0]
        self._sums: torch.Tensor | None = None  # [pending bins, n_layer, d] running sums
        self._counts: torch.Tensor | None = None  # [pending bins] frames summed per bin
        self._logits: list[torch.Tensor] = []

    def add_pass(self, layers: torch.Tensor, seek: int, valid_mel_frames: int) -> None:
        """Take the frames of one window not covered yet.

        layers: ``[n_layer, encoder_frames, d]`` for one window; seek: the window's
        start in mel frames; valid_mel_frames: how many of its mel frames are audio
        (the rest is padding).
        """
        start = seek // MEL_FRAMES_PER_ENCODER_FRAME
        n_valid = math.ceil(valid_mel_frames / MEL_FRAMES_PER_ENCODER_FRAME)
        if start > self._covered:
            logger.warning(
                "encoder windows left a gap at %.2f s; those frames are not tagged",
                self._covered * MEL_FRAMES_PER_ENCODER_FRAME / MEL_FRAMES_PER_SECOND,
            )
            self._covered = start
        skip = self._covered - start
        if skip >= n_valid:
            return
        first_bin, sums, counts = bin_sums(layers[:, skip:n_valid], self._covered)
        self._grow(first_bin + len(counts), sums)
        local = slice(first_bin - self._first_bin, first_bin - self._first_bin + len(counts))
        self._sums[local] += sums
        self._counts[local] += counts
        self._covered = start + n_valid
        self._emit(complete_bins=self._covered // ENCODER_FRAMES_PER_BIN)

    def finish(self) -> torch.Tensor:
        """Tag the remaining (last, possibly partial) window; logits ``[n_windows, n_classes]``."""
        self._emit(complete_bins=self._first_bin + self._pending_bins(), final=True)
        if not self._logits:
            raise AudioTooShortError(
                f"the audio is too short to tag: it needs at least "
                f"{1000 * MIN_TAG_SAMPLES / SAMPLE_RATE:g} ms ({MIN_TAG_SAMPLES} samples at "
                f"{SAMPLE_RATE // 1000} kHz, one log-mel frame)"
            )
        return torch.cat(self._logits).float().cpu()

    def _pending_bins(self) -> int:
        return 0 if self._counts is None else int(self._counts.shape[0])

    def _grow(self, end_bin: int, like: torch.Tensor) -> None:
        n_layer, d = like.shape[1], like.shape[2]
        needed = end_bin - self._first_bin - self._pending_bins()
        if needed <= 0:
            return
        more_sums = like.new_zeros(needed, n_layer, d)
        more_counts = like.new_zeros(needed)
        if self._sums is None:
            self._sums, self._counts = more_sums, more_counts
        else:
            self._sums = torch.cat([self._sums, more_sums])
            self._counts = torch.cat([self._counts, more_counts])

    def _emit(self, complete_bins: int, final: bool = False) -> None:
        """Run the head on every window whose bins are all complete, once there are
        HEAD_BATCH_BINS of them (one larger batch costs less than several small ones)."""
        k = self.window_bins
        ready = (complete_bins - self._first_bin) // k
        if not final and ready * k < HEAD_BATCH_BINS:
            return
        if final and self._pending_bins() > ready * k:
            ready += 1  # the last window of the file, possibly shorter
        if ready == 0 or self._sums is None:
            return
        n_bins = min(ready * k, self._pending_bins())
        pooled = self._sums[:n_bins] / self._counts[:n_bins].clamp(min=1)[:, None, None]
        if self.track is not None:
            self.track.add(pooled)
        full = n_bins // k
        with torch.inference_mode(), head_precision(self.encoder_dtype, pooled):
            if full:
                windows = pooled[: full * k].reshape(full, k, *pooled.shape[1:])
                self._logits.append(self.head(windows.transpose(1, 2)))
            if n_bins > full * k:
                self._logits.append(self.head(pooled[full * k :].transpose(0, 1)[None]))
        self._sums, self._counts = self._sums[n_bins:], self._counts[n_bins:]
        self._first_bin += n_bins


@dataclass(frozen=True)
class Tag:
    label: str
    index: int
    probability: float
    logit: float


@dataclass(frozen=True)
class TagWindow:
    start: float
    end: float
    tags: list[Tag]


@dataclass(repr=False)
class TaggingResult:
    """Window logits of one audio stream, with what is needed to read them."""

    logits: torch.Tensor  # [n_windows, n_classes]
    at_time_res: float
    duration: float
    labels: LabelSet
    reported_classes: list[int]
    thresholds: list[float] | None = None  # the head's per-class thresholds, for "auto"
    made_by: dict[str, Any] | None = None  # version, model, engine, precision, head file
    track: torch.Tensor | None = None  # [n_bins, n_classes] logits per 0.4 s bin, for events
    track_options: TrackOptions | None = None  # how ``track`` was computed

    @property
    def probabilities(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def __repr__(self) -> str:
        """A summary: the dataclass repr would print every logit and all the label names."""
        n_windows = self.logits.shape[0]
        everything = self.class_thresholds(0.0)
        top = self._top(self.logits.max(dim=0).values, 1, everything, None) if n_windows else []
        best = f"{top[0].label!r} {top[0].probability:.2f}" if top else None
        return (
            f"TaggingResult(windows={n_windows}, duration={self.duration:.2f}, "
            f"at_time_res={self.at_time_res:g}, classes={len(self.labels)} "
            f"({len(self.reported_classes)} reported), top={best})"
        )

    def window_bounds(self, i: int) -> tuple[float, float]:
        return i * self.at_time_res, min((i + 1) * self.at_time_res, self.duration)

    def class_thresholds(self, threshold: Threshold = "auto") -> torch.Tensor:
        """Per-class probability thresholds: a number for all, or "auto".

        "auto" is the head's own thresholds (chosen on validation data), or
        ``AUTO_THRESHOLD_FALLBACK`` for every class when the head has none.
        """
        n = len(self.labels)
        if threshold == "auto":
            if self.thresholds is None:
                return torch.full((n,), AUTO_THRESHOLD_FALLBACK)
            return torch.tensor(self.thresholds, dtype=torch.float32)
        if isinstance(threshold, str) or not 0.0 <= threshold <= 1.0:
            raise ValueError(
                f'threshold must be "auto" or a probability in [0, 1], got {threshold!r}'
            )
        return torch.full((n,), float(threshold))

    def windows(
        self, top_k: int = 5, threshold: Threshold = "auto", names: Sequence[str] | None = None
    ) -> list[TagWindow]:
        """Per window, up to ``top_k`` reported classes over their threshold.

        ``threshold``: "auto" (the head's per-class thresholds) or one probability for all;
        a tag is kept when its probability is >= the threshold.
        """
        thresholds = self.class_thresholds(threshold)
        return [
            TagWindow(
                *self.window_bounds(i), tags=self._top(self.logits[i], top_k, thresholds, names)
            )
            for i in range(self.logits.shape[0])
        ]

    def span_tags(
        self, start: float, end: float, top_k: int = 5, threshold: Threshold = "auto"
    ) -> list[Tag]:
        """Tags for a time span (an ASR segment): max over the windows it overlaps."""
        rows = self.logits[self._span_windows(start, end)]
        if rows.shape[0] == 0:
            return []
        return self._top(rows.max(dim=0).values, top_k, self.class_thresholds(threshold), None)

    def span_probability(self, classes: Sequence[int], start: float, end: float) -> float:
        """The highest probability any of ``classes`` reaches over a time span.

        Max over the classes and over every window the span overlaps (a span inside one
        window reads that window; one that starts at the end of the audio, the last
        window), so it follows whatever resolution the windows have.
        """
        if not classes:
            raise ValueError("span_probability needs at least one class")
        n_windows = self.logits.shape[0]
        if n_windows == 0:
            return 0.0
        start = min(start, (n_windows - 1) * self.at_time_res)
        rows = self.logits[self._span_windows(start, end)][:, list(classes)]
        return float(torch.sigmoid(rows.max().double()))

    def _span_windows(self, start: float, end: float) -> slice:
        """The windows a span overlaps (at least the one ``start`` falls in)."""
        first = int(start // self.at_time_res)
        return slice(first, max(first, math.ceil(end / self.at_time_res) - 1) + 1)

    def _top(
        self,
        logits: torch.Tensor,
        top_k: int,
        thresholds: torch.Tensor,
        names: Sequence[str] | None,
    ) -> list[Tag]:
        """The ``top_k`` most probable reported classes among those over their threshold."""
        names = names or self.labels.names
        candidates = torch.tensor(self.reported_classes, dtype=torch.long)
        scores = logits[candidates].double()
        over = torch.sigmoid(scores) >= thresholds[candidates].double()
        candidates, scores = candidates[over], scores[over]
        order = torch.argsort(scores, descending=True)[:top_k]
        tags = []
        for j in order.tolist():
            index = int(candidates[j])
            logit = float(scores[j])
            tags.append(Tag(names[index], index, 1.0 / (1.0 + math.exp(-logit)), logit))
        return tags

    def events(self, options: EventOptions | None = None) -> list[SoundEvent]:
        """Sound events with onsets and offsets, from the per-bin track (0.4 s resolution,
        whatever ``at_time_res`` is); see :class:`~whisper_at.events.EventOptions`."""
        if self.track is None:
            raise ValueError(
                "this result has no event track: ask for one when tagging "
                "(tag(..., track_options=TrackOptions()); transcribe(..., event_options=...)); "
                "a result read back from JSON keeps its events but not the track"
            )
        options = options or EventOptions()
        return detect_events(
            torch.sigmoid(self.track),
            self.labels,
            self.class_thresholds(options.threshold),
            options,
            candidates=self.reported_classes,
            duration=self.duration,
            bin_seconds=BIN_SECONDS,
        )

    def to_result_fields(self) -> dict[str, Any]:
        """The keys a transcription result dict carries (reference-compatible names)."""
        fields = {
            "audio_tag": self.logits,
            "at_time_res": self.at_time_res,
            "audio_tag_labels": list(self.labels.names),
            "audio_tag_label_ids": list(self.labels.ids),
            "audio_tag_classes": list(self.reported_classes),
            "audio_tag_thresholds": self.thresholds,
            "duration": self.duration,
            **({"whisper_at": self.made_by} if self.made_by is not None else {}),
        }
        if self.track is not None:
            fields["event_track"] = self.track
            fields["event_track_options"] = asdict(self.track_options or TrackOptions())
        return fields

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> TaggingResult:
        if result.get("audio_tag") is None:
            raise ValueError(
                "this result has no audio tags (no tagging head was installed for the model)"
            )
        logits = torch.as_tensor(result["audio_tag"]).float()
        names = result.get("audio_tag_labels")
        labels = (
            LabelSet(tuple(names), tuple(result.get("audio_tag_label_ids") or names))
            if names
            else audioset_labels()
        )
        res = float(result["at_time_res"])
        track = result.get("event_track")
        return cls(
            logits=logits,
            at_time_res=res,
            duration=float(result.get("duration", logits.shape[0] * res)),
            labels=labels,
            reported_classes=list(result.get("audio_tag_classes") or range(len(labels))),
            thresholds=result.get("audio_tag_thresholds"),
            made_by=result.get("whisper_at"),
            track=None if track is None else torch.as_tensor(track).float(),
            track_options=TrackOptions(**result["event_track_options"])
            if result.get("event_track_options")
            else None,
        )
