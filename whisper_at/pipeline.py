"""The object users hold: a frozen Whisper, its feature tap and a tagging head.

``transcribe`` runs a maintained Whisper implementation's own loop unchanged
(faster-whisper's with ``engine="ct2"``, the default on the CPU, or openai-whisper's
``transcribe`` with ``engine="torch"``), so
transcripts are exactly that implementation's; the tap catches every encoder pass
it makes and the head tags from those same passes. ``tag`` skips decoding: it
streams the audio in 30 s windows, encodes them in batches and only runs the head.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import whisper
from tqdm import tqdm
from whisper.audio import HOP_LENGTH, N_SAMPLES
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import ModelDimensions
from whisper.tokenizer import Tokenizer

from . import __version__
from .audio import SAMPLE_RATE, audio_duration, describe_source, stream_audio, window_log_mel
from .cache import cache_dir
from .compat import warn_at_time_res
from .engines import EngineError, WindowSink, make_engine, resolve_engine
from .events import EventOptions
from .guard import DEFAULT_SPEECH_THRESHOLD, NonSpeechGuard
from .heads import HeadError, TaggingHead, import_reference_head, load_head
from .labels import LabelSet
from .precision import Precision, PrecisionError, quantize_int8, resolve_precision
from .spans import (
    DEFAULT_SPAN_SECONDS,
    clamp_times,
    iter_spans,
    merge_results,
    shift_result,
    window_chunks,
)
from .tagging import EventTrack, TagAccumulator, TaggingResult, TrackOptions
from .tap import install_tap
from .weights import LoadedWhisper, WeightsError, load_whisper
from .weights.openai import pt_filename, pt_url, search_dirs

logger = logging.getLogger("whisper_at")

AudioInput = str | os.PathLike | np.ndarray | torch.Tensor
SegmentCallback = Callable[[dict[str, Any]], None]
_PROMPT_CHARS = 200  # text of the previous span carried as the next span's prompt


def shipped_head_path(whisper_name: str, low_compute: bool = False) -> Path | None:
    """The head bundled in the package for a Whisper model, if one ships.

    TL-TR by default, TL-TR-low-dim with ``low_compute``; where only one of the two
    ships for a model, that one.
    """
    folder = resources.files("whisper_at") / "assets" / "heads"
    kinds = ("tl_tr_low", "tl_tr") if low_compute else ("tl_tr", "tl_tr_low")
    for kind in kinds:
        path = folder / f"{whisper_name}.{kind}.safetensors"
        if path.is_file():
            return Path(str(path))
    return None


# The names the reference Whisper-AT package loads, each with a head file it fetched into
# openai-whisper's cache next to the .pt: <name>_ori.pth (TL-TR), and for these sizes also
# <name>_low.pth (TL-TR-512). Its "large" is large-v2, which openai-whisper now calls
# large-v3, so "large" gets no reference head here (docs/compatibility.md).
REFERENCE_NAMES = (
    "tiny.en", "tiny", "base.en", "base", "small.en", "small",
    "medium.en", "medium", "large-v1", "large-v2", "large",
)  # fmt: skip
_REFERENCE_LOW = ("small.en", "small", "medium.en", "medium", "large-v1", "large-v2")


def reference_head_dirs(download_root: str | os.PathLike | None = None) -> list[Path]:
    """Where a reference ``<name>_ori.pth`` / ``_low.pth`` is looked for: next to the
    OpenAI ``.pt`` files (``download_root``, else openai-whisper's caches), then
    ``heads/`` in whisper-at's cache (``$WHISPER_AT_CACHE/heads``)."""
    return [*search_dirs(download_root), cache_dir() / "heads"]


def reference_head_file(whisper_name: str, low_compute: bool = False) -> str:
    """The reference's head file name; sizes without a TL-TR-512 head take TL-TR."""
    low = low_compute and whisper_name in _REFERENCE_LOW
    return f"{whisper_name}_{'low' if low else 'ori'}.pth"


def reference_head_path(
    whisper_name: str, low_compute: bool = False, download_root: str | os.PathLike | None = None
) -> Path | None:
    """The reference package's head for a reference name, if the user has its file."""
    if whisper_name not in REFERENCE_NAMES or whisper_name == "large":
        return None
    filename = reference_head_file(whisper_name, low_compute)
    folders = reference_head_dirs(download_root)
    return next((d / filename for d in folders if (d / filename).is_file()), None)


def _reference_files_hint(
    whisper_name: str, low_compute: bool, download_root: str | os.PathLike | None, weights: bool
) -> str:
    """What to put where so that a reference name loads as in the reference package."""
    if whisper_name == "large":
        return (
            "the reference package's 'large' is large-v2; here 'large' is openai-whisper's "
            "large-v3, for which no Whisper-AT head exists: load 'large-v2' (or pass head=None)"
        )
    pt_dir, heads_dir = reference_head_dirs(download_root)[0], cache_dir() / "heads"
    head_file = reference_head_file(whisper_name, low_compute)
    pt = f"{pt_filename(whisper_name)} ({pt_url(whisper_name)}) and "
    return (
        f"to load {whisper_name!r} as the reference package does, put {pt if weights else ''}"
        f"the reference's head {head_file} (github.com/YuanGongND/whisper-at, pretrained_models) "
        f"in {pt_dir}; the head may also go in {heads_dir}"
        + ("" if weights else " (nothing is downloaded); or pass head=None to transcribe untagged")
    )


@dataclass(frozen=True)
class FailedInput:
    """Stands in a batch's results for an input that could not be read.

    ``transcribe_many`` and ``tag_many`` yield one of these in that input's place, in
    order, and go on with the next input, so no other result is lost.
    """

    index: int  # position among the inputs
    source: str  # the path, or a description of the array
    error: Exception

    def __str__(self) -> str:
        message = str(self.error)
        return message if message.startswith(self.source) else f"{self.source}: {message}"


class WhisperAT:
    """A Whisper model whose encoder passes also feed a sound-event tagging head."""

    def __init__(
        self,
        loaded: LoadedWhisper,
        head: TaggingHead | None,
        engine: str = "auto",
        precision: str | Precision = "auto",
    ) -> None:
        self.loaded = loaded
        self.whisper = loaded.model
        engine = resolve_engine(engine, loaded)
        ct2_dir = loaded.ct2_dir if engine == "ct2" else None
        self.precision = resolve_precision(precision, self.whisper.device, engine, ct2_dir)
        if self.precision.quantized_encoder:
            quantize_int8(self.whisper.encoder)
        if engine == "torch" and self.precision.decoder == "int8":
            quantize_int8(self.whisper.decoder)
        self.tap = install_tap(self.whisper)
        self.encoder_dtype = self.precision.encoder_dtype
        self.engine = make_engine(engine, loaded, self.tap, self.precision)
        self.head = head
        if head is not None:
            self._check_head(head)
            self.head = head.to(self.device).eval()

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def device(self) -> torch.device:
        return self.whisper.device

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def labels(self) -> LabelSet | None:
        return self.head.config.labels if self.head is not None else None

    # --- Whisper's own attributes, for code written against openai-whisper or the
    # reference Whisper-AT package (whose model is a Whisper). Only transcribe tags, as
    # there; decode, detect_language and embed_audio are the wrapped Whisper's.

    @property
    def dims(self) -> ModelDimensions:
        return self.whisper.dims

    @property
    def is_multilingual(self) -> bool:
        return self.whisper.is_multilingual

    @property
    def num_languages(self) -> int:
        return self.whisper.num_languages

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Whisper's encoder output ``[batch, 1500, d]`` for log-mel windows (the
        reference's returns a tuple with pooled features too: docs/compatibility.md)."""
        return self.whisper.embed_audio(mel)

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        return self.whisper.logits(tokens, audio_features)

    def detect_language(
        self, mel: torch.Tensor, tokenizer: Tokenizer | None = None
    ) -> tuple[torch.Tensor, dict[str, float] | list[dict[str, float]]]:
        """openai-whisper's language detection on 30 s log-mel windows."""
        return whisper.decoding.detect_language(self.whisper, mel, tokenizer)

    def decode(
        self, mel: torch.Tensor, options: DecodingOptions | None = None, **kwargs: Any
    ) -> DecodingResult | list[DecodingResult]:
        """openai-whisper's decoding of 30 s log-mel windows (pass ``fp16=False`` on the CPU,
        as there); no tags, as the reference's ``decode`` gives none."""
        return whisper.decoding.decode(self.whisper, mel, options or DecodingOptions(), **kwargs)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """Whisper's parameters, then the head's (as the reference's single module has)."""
        head = self.head.parameters() if self.head is not None else ()
        return itertools.chain(self.whisper.parameters(), head)

    def eval(self) -> WhisperAT:
        """Both networks are always in eval mode (frozen); returns the model, as torch does."""
        self.whisper.eval()
        if self.head is not None:
            self.head.eval()
        return self

    def to(self, device: str | torch.device) -> WhisperAT:
        """Move Whisper and the head to ``device`` and rebuild the engine there, keeping
        the precision; a precision that device cannot run raises :class:`PrecisionError`."""
        device = torch.device(device)
        if device.type == self.device.type and device.index in (None, self.device.index):
            return self
        return self._rebuild(device, self.precision)

    def half(self) -> WhisperAT:
        """Compute in float16, encoder and decoder (a GPU precision: on the CPU this raises
        :class:`PrecisionError`); the same as ``load_model(..., precision="float16")``."""
        return self._rebuild(self.device, "float16")

    def _rebuild(self, device: torch.device, precision: str | Precision) -> WhisperAT:
        try:
            resolved = resolve_precision(precision, device, self.engine.name)
        except PrecisionError as error:
            raise PrecisionError(
                f"{self.name} ({self.precision}, {self.engine.name} engine) cannot run on "
                f"{device} in {precision}: {error}; load_model(..., device=..., precision=...) "
                "sets both"
            ) from error
        self.whisper.to(device)
        if self.head is not None:
            self.head.to(device)
        self.tap.forget()
        self.precision, self.encoder_dtype = resolved, resolved.encoder_dtype
        self.engine = make_engine(self.engine.name, self.loaded, self.tap, resolved)
        return self

    def provenance(self) -> dict[str, Any]:
        """What made a result: package version, Whisper weights, engine, precision, head."""
        source = self.head.source if self.head is not None else None
        return {
            "version": __version__,
            "model": self.name,
            "model_sha256": self.loaded.sha256,
            "engine": self.engine.name,
            "precision": str(self.precision),
            "head": None if source is None else {"path": source.path, "sha256": source.sha256},
        }

    def _check_head(self, head: TaggingHead) -> None:
        dims, cfg = self.whisper.dims, head.config
        cfg.check_encoder(dims.n_audio_layer, dims.n_audio_state, self.name)
        if cfg.whisper_sha256 and cfg.whisper_sha256 != self.loaded.sha256:
            logger.warning(
                "the head was trained on other weights (%s) than %s; tags may be off",
                cfg.whisper_name or cfg.whisper_sha256[:12],
                self.name,
            )
        if cfg.encoder_input_seconds != 30.0:
            logger.warning(
                "the head was trained on a %.0f s encoder input; here the encoder sees "
                "30 s windows as decoding needs (as in the reference package)",
                cfg.encoder_input_seconds,
            )

    def _require_head(self) -> TaggingHead:
        if self.head is None:
            raise HeadError(
                f"no tagging head is installed for {self.name}; load one with "
                "load_model(..., head=PATH) or train one (whisper-at train)"
            )
        return self.head

    def _tagging_result(self, accumulator: TagAccumulator, n_samples: int) -> TaggingResult:
        head = self._require_head()
        track = accumulator.track
        return TaggingResult(
            logits=accumulator.finish(),
            at_time_res=accumulator.at_time_res,
            duration=n_samples / SAMPLE_RATE,
            labels=head.config.labels,
            reported_classes=head.config.reported_classes,
            thresholds=head.config.thresholds,
            made_by=self.provenance(),
            track=None if track is None else track.finish(),
            track_options=None if track is None else track.options,
        )

    def _accumulator(self, at_time_res: float, track: TrackOptions | None) -> TagAccumulator:
        """Tags per ``at_time_res`` window, plus the per-bin event track when ``track`` is
        given (it costs several times the head work of the tags: docs/performance.md)."""
        head = self._require_head()
        dtype = self.encoder_dtype  # the head follows a bfloat16 encoder (head_precision)
        events = None if track is None else EventTrack(head, track, dtype)
        return TagAccumulator(head, at_time_res, events, dtype)

    def _new_accumulator(
        self, at_time_res: float, track: TrackOptions | None
    ) -> TagAccumulator | None:
        if self.head is None:
            return None
        # as the reference warns in transcribe; stacklevel 3: the caller of transcribe
        warn_at_time_res(at_time_res, self.head.config.window_seconds, stacklevel=3)
        return self._accumulator(at_time_res, track)

    def transcribe(
        self,
        audio: AudioInput,
        at_time_res: float = 10.0,
        *,
        sample_rate: int | None = None,
        tags_per_segment: int = 5,
        span_seconds: float = DEFAULT_SPAN_SECONDS,
        batch_size: int | None = None,
        progress: bool = False,
        on_segment: SegmentCallback | None = None,
        suppress_non_speech: bool = False,
        speech_threshold: float = DEFAULT_SPEECH_THRESHOLD,
        event_options: EventOptions | None = None,
        track_options: TrackOptions | None = None,
        **whisper_options: Any,
    ) -> dict[str, Any]:
        """openai-whisper's transcription plus ``audio_tag`` logits per ``at_time_res`` window.

        Args:
            audio: a path to anything FFmpeg decodes, or an array / tensor of samples.
            at_time_res: tag window in seconds, a positive multiple of 0.4.
            sample_rate: the rate of an array input (default 16000); files carry their own.
            tags_per_segment: how many tags each segment lists under ``audio_tags``.
            span_seconds: longer recordings are read and transcribed span by span (cut at
                quiet points, the language and the previous span's text carried over), so
                memory stays bounded; shorter ones are one untouched engine call.
            batch_size: decode 30 s chunks in batches instead (see :meth:`transcribe_many`
                for what changes).
            progress: show a progress bar in seconds of audio.
            on_segment: called with each segment as soon as it is decoded, on the
                recording's time line (the ct2 engine decodes lazily; the torch engine
                hands a span's segments over when the span is done). Segments reach it
                before the non-speech guard has read their tags (with ``batch_size``,
                after: then only the segments kept).
            suppress_non_speech: leave segments the tags say hold no speech out of
                ``text`` and ``segments`` (they move to ``suppressed_segments``); needs a
                head. Every segment is flagged either way (``speech_probability``,
                ``non_speech``; :mod:`whisper_at.guard`, docs/nonspeech.md).
            speech_threshold: the speech probability under which a segment is non-speech.
            event_options: detect ``sound_events`` this way (``EventOptions()``: the
                defaults); given with or without ``track_options``, the result has them.
            track_options: compute the per-bin event track this way (``TrackOptions()``:
                the head on a 2 s window around every 0.4 s bin). Without either option no
                track is computed and the result has no ``sound_events``: the track costs
                several times the head work of the tags (docs/performance.md).
            whisper_options: passed unchanged to the engine (openai-whisper's names:
                language, task, temperature, beam_size, word_timestamps, ...).

        Returns:
            Whisper's result dict; with a head also ``audio_tag``, ``at_time_res``, the
            label names, per segment its top ``audio_tags``, ``speech_probability`` and
            ``non_speech``, the ``non_speech_guard`` summary, ``sound_events`` (dicts of
            :class:`~whisper_at.events.SoundEvent`), the per-bin ``event_track`` they were
            read from, and ``whisper_at``: what made it.
        """
        guard = self._guard(suppress_non_speech, speech_threshold)
        track_options = _wanted_track(event_options, track_options)
        if batch_size is not None:
            (result,) = self.transcribe_many(
                [audio],
                at_time_res,
                batch_size=batch_size,
                sample_rate=sample_rate,
                tags_per_segment=tags_per_segment,
                group_seconds=span_seconds,
                progress=progress,
                suppress_non_speech=suppress_non_speech,
                speech_threshold=speech_threshold,
                event_options=event_options,
                track_options=track_options,
                **whisper_options,
            )
            if isinstance(result, FailedInput):
                raise result.error
            if on_segment is not None:
                for segment in result["segments"]:
                    on_segment(segment)
            return result
        accumulator = self._new_accumulator(at_time_res, track_options)
        total = audio_duration(audio, sample_rate=sample_rate) if progress else None
        parts: list[dict[str, Any]] = []
        n_samples = 0
        with _audio_progress(total, "transcribing", progress) as bar:
            for offset, samples in iter_spans(audio, span_seconds, sample_rate=sample_rate):
                options = dict(whisper_options)
                if parts:
                    options.setdefault("language", parts[0]["language"])
                    if options.get("condition_on_previous_text", True):
                        options["initial_prompt"] = parts[-1]["text"][-_PROMPT_CHARS:]
                sink = None if accumulator is None else _shifted(accumulator, offset // HOP_LENGTH)
                n_segments = sum(len(p["segments"]) for p in parts)
                span_end = (offset + len(samples)) / SAMPLE_RATE
                decoded = _SpanSegments(offset, n_segments, span_end, bar, on_segment)
                part = self.engine.transcribe(samples, sink, on_segment=decoded, **options)
                shift_result(part, offset / SAMPLE_RATE, offset // HOP_LENGTH, n_segments)
                parts.append(part)
                n_samples = offset + len(samples)
                _advance(bar, span_end)
        result = merge_results(parts)
        clamp_times(result, n_samples / SAMPLE_RATE)
        return self._with_tags(
            result, accumulator, n_samples, tags_per_segment, guard, event_options
        )

    def _guard(self, suppress: bool, threshold: float) -> NonSpeechGuard:
        """The non-speech guard for one call, checked before anything is decoded."""
        guard = NonSpeechGuard(threshold, suppress)
        config = self.head.config if self.head is not None else None
        guard.check(
            config.labels if config else None, config.reported_classes if config else [], self.name
        )
        return guard

    def _with_tags(
        self,
        result: dict[str, Any],
        accumulator: TagAccumulator | None,
        n_samples: int,
        tags_per_segment: int,
        guard: NonSpeechGuard,
        event_options: EventOptions | None,
    ) -> dict[str, Any]:
        """The transcription result plus the head's tags (per window, per segment), the
        non-speech guard's flags, its sound events, and where it came from. Both
        transcription paths end here."""
        if accumulator is None:
            result["whisper_at"] = self.provenance()
            return result
        tagging = self._tagging_result(accumulator, n_samples)
        result.update(tagging.to_result_fields())  # "whisper_at" among them
        for segment in result["segments"]:
            segment["audio_tags"] = [
                {"label": t.label, "index": t.index, "probability": round(t.probability, 4)}
                for t in tagging.span_tags(segment["start"], segment["end"], tags_per_segment)
            ]
        guard.apply(result, tagging)
        if tagging.track is not None:
            result["sound_events"] = [asdict(event) for event in tagging.events(event_options)]
        return result

    def transcribe_many(
        self,
        audios: Iterable[AudioInput],
        at_time_res: float = 10.0,
        *,
        batch_size: int = 8,
        sample_rate: int | None = None,
        tags_per_segment: int = 5,
        group_seconds: float = DEFAULT_SPAN_SECONDS,
        progress: bool = False,
        suppress_non_speech: bool = False,
        speech_threshold: float = DEFAULT_SPEECH_THRESHOLD,
        event_options: EventOptions | None = None,
        track_options: TrackOptions | None = None,
        **whisper_options: Any,
    ) -> Iterator[dict[str, Any] | FailedInput]:
        """Transcribe and tag many recordings with batched decoding: one result per input, in order.

        Each recording is cut into chunks of at most 30 s at quiet points, and the chunks
        of consecutive recordings (up to ``group_seconds`` of audio at a time, so memory
        stays bounded) are encoded and decoded ``batch_size`` at a time by the engine's
        batched pipeline (faster-whisper's ``BatchedInferencePipeline``). As there, chunks
        are decoded independently: no conditioning on the previous chunk, only the first
        temperature, and, unless ``without_timestamps=False`` is given, one segment per
        chunk. The language is detected once per group unless given (pass
        ``multilingual=True`` to detect it per chunk). Results are yielded lazily, each
        as soon as its recording is done; an input that cannot be read yields a
        :class:`FailedInput` in its place. Other arguments as in :meth:`transcribe`.
        """
        if not self.engine.batched:
            raise EngineError(
                f"batched transcription needs an engine with a batched pipeline; the "
                f"{self.engine.name} engine has none: load the model with engine='ct2' "
                "(the default on the CPU)"
            )
        _check_batch_size(batch_size)
        guard = self._guard(suppress_non_speech, speech_threshold)
        track_options = _wanted_track(event_options, track_options)
        group = _Group(
            self, at_time_res, tags_per_segment, guard, batch_size, event_options, whisper_options
        )
        limit = int(group_seconds * SAMPLE_RATE)

        def results() -> Iterator[dict[str, Any] | FailedInput]:
            for audio in audios:
                recording = group.queue.open(
                    audio, self._new_accumulator(at_time_res, track_options)
                )
                spans = _read(lambda a=audio: iter_spans(a, group_seconds, sample_rate), recording)
                for offset, samples in spans:
                    group.add(recording, offset, samples)
                    if group.n_samples >= limit:
                        yield from group.run()
                if recording.error is not None:
                    group.drop(recording)
                recording.complete = True
                yield from group.finished()
            yield from group.run()

        with tqdm(unit="file", desc="transcribing", disable=not progress) as bar:
            for result in results():
                bar.update(1)
                yield result

    def tag(
        self,
        audio: AudioInput,
        at_time_res: float = 10.0,
        *,
        batch_size: int = 8,
        sample_rate: int | None = None,
        progress: bool = False,
        track_options: TrackOptions | None = None,
    ) -> TaggingResult:
        """Tags only: no decoding. Streams the audio, so memory does not grow with its length.

        With ``track_options`` (``TrackOptions()`` for the default) the per-bin event track
        is computed and kept (``[n_bins, n_classes]`` floats: 19 MB an hour), and
        ``result.events(EventOptions(...))`` reads sound events from it. Raises
        :class:`~whisper_at.audio.AudioError` for input that cannot be read.
        """
        total = audio_duration(audio, sample_rate=sample_rate) if progress else None
        (result,) = self.tag_many(
            [audio],
            at_time_res,
            batch_size=batch_size,
            sample_rate=sample_rate,
            progress=progress,
            total_seconds=total,
            track_options=track_options,
        )
        if isinstance(result, FailedInput):
            raise result.error
        return result

    def tag_many(
        self,
        audios: Iterable[AudioInput],
        at_time_res: float = 10.0,
        *,
        batch_size: int = 8,
        sample_rate: int | None = None,
        progress: bool = False,
        total_seconds: float | None = None,
        track_options: TrackOptions | None = None,
    ) -> Iterator[TaggingResult | FailedInput]:
        """Tags only for many recordings: one result per input, in order, lazily.

        The 30 s windows of consecutive recordings share encoder batches, so a folder
        of short clips fills batches as well as one long file does. Each recording is
        streamed; at most ``batch_size`` windows are held at once. With a head that
        reads only the first encoder blocks, the deeper ones are not run. An input that
        cannot be read yields a :class:`FailedInput` in its place and the others go on.
        ``total_seconds``: the audio to come, for the progress bar; ``track_options``: as
        in :meth:`tag`.
        """
        head = self._require_head()
        _check_batch_size(batch_size)
        n_mels = self.whisper.dims.n_mels
        queue = _InputOrder()
        batch: list[tuple[_Recording, torch.Tensor, int]] = []  # (recording, window, start)

        # a head that reads only the first blocks lets the encoder stop there
        deepest = head.config.n_layer
        stop_early = deepest < self.whisper.dims.n_audio_layer

        def encode_batch() -> None:
            mels = torch.stack([window_log_mel(window, n_mels) for _, window, _ in batch])
            mels = mels.to(self.device)  # the tap casts to the encoder's dtype
            with torch.inference_mode():
                if stop_early:
                    all_layers = self.tap.first_layers(mels, deepest)
                else:
                    self.tap(mels)
                    all_layers = self.tap.last_pass.layers
            for layers, (recording, window, start) in zip(all_layers, batch, strict=True):
                recording.accumulator.add_pass(
                    layers, start // HOP_LENGTH, len(window) // HOP_LENGTH
                )
                recording.pending -= 1
            _advance(bar, bar.n + sum(len(window) for _, window, _ in batch) / SAMPLE_RATE)
            batch.clear()

        def finished() -> Iterator[TaggingResult | FailedInput]:
            for recording in queue.finished():
                if recording.error is not None:
                    yield recording.failure()
                    continue
                try:
                    yield self._tagging_result(recording.accumulator, recording.n_samples)
                except ValueError as error:  # too short to tag
                    yield recording.failure(error)

        bar = _audio_progress(total_seconds, "tagging", progress)
        try:
            for audio in audios:
                recording = queue.open(audio, self._accumulator(at_time_res, track_options))
                chunks = _read(
                    lambda a=audio: stream_audio(a, N_SAMPLES, sample_rate=sample_rate), recording
                )
                for chunk in chunks:
                    window = torch.from_numpy(np.ascontiguousarray(chunk))
                    batch.append((recording, window, recording.n_samples))
                    recording.n_samples += len(chunk)
                    recording.pending += 1
                    if len(batch) == batch_size:
                        encode_batch()
                        yield from finished()
                if recording.error is not None:  # its windows are not encoded
                    batch[:] = [item for item in batch if item[0] is not recording]
                    recording.pending = 0
                recording.complete = True
                yield from finished()
            if batch:
                encode_batch()
            yield from finished()
        finally:
            bar.close()
            self.tap.forget()


def _wanted_track(
    event_options: EventOptions | None, track_options: TrackOptions | None
) -> TrackOptions | None:
    """The event track a transcription computes: the one asked for, the default one when
    only events are asked for, else none (sound events are opt-in: the track is not free)."""
    if track_options is None and event_options is not None:
        return TrackOptions()
    return track_options


def _audio_progress(total: float | None, desc: str, enabled: bool) -> tqdm:
    """A bar in seconds of audio; the rate always reads audio seconds per second."""
    counts = "{n:.1f}/{total:.1f} s" if total is not None else "{n:.1f} s"
    bar = "{l_bar}{bar}| " if total is not None else "{desc}: "
    return tqdm(
        total=total,
        desc=desc,
        unit="s",
        disable=not enabled,
        bar_format=bar + counts + " of audio [{elapsed}<{remaining}, {rate_noinv_fmt}]",
    )


def _advance(bar: tqdm, seconds: float) -> None:
    """Move ``bar`` to ``seconds`` of audio; a total from container metadata may be short."""
    if seconds <= bar.n:
        return
    if bar.total is not None and seconds > bar.total:
        bar.total = seconds
    bar.update(seconds - bar.n)


def _read(open_chunks: Callable[[], Iterator[Any]], recording: _Recording) -> Iterator[Any]:
    """The chunks of one input of a batched run, up to its end or its first read error,
    which is kept on ``recording`` (so that only this input is lost)."""
    try:
        chunks = open_chunks()
    except Exception as error:
        recording.error = error
        return
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except Exception as error:
            recording.error = error
            return
        yield chunk


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer of at least 1, got {batch_size!r}")


@dataclass(eq=False)
class _Recording:
    """One input of a batched run: its transcript so far, its tags, its length."""

    index: int
    source: AudioInput
    accumulator: TagAccumulator | None
    segments: list[dict[str, Any]] = field(default_factory=list)
    language: str | None = None
    n_samples: int = 0
    pending: int = 0  # pieces read but not encoded yet
    complete: bool = False  # read to the end (or failed)
    error: Exception | None = None

    def failure(self, error: Exception | None = None) -> FailedInput:
        return FailedInput(self.index, describe_source(self.source), error or self.error)


class _InputOrder:
    """The inputs of a batched run in input order; each leaves once read and processed."""

    def __init__(self) -> None:
        self._waiting: deque[_Recording] = deque()
        self._opened = 0

    def open(self, source: AudioInput, accumulator: TagAccumulator | None) -> _Recording:
        recording = _Recording(self._opened, source, accumulator)
        self._opened += 1
        self._waiting.append(recording)
        return recording

    def finished(self) -> Iterator[_Recording]:
        """The finished recordings at the front, in input order."""
        while self._waiting and self._waiting[0].complete and self._waiting[0].pending == 0:
            yield self._waiting.popleft()


@dataclass
class _Piece:
    recording: _Recording
    offset: int  # in the recording, samples
    samples: np.ndarray


class _Group:
    """Spans of consecutive recordings decoded together in one batched engine call."""

    def __init__(
        self,
        model: WhisperAT,
        at_time_res: float,
        tags_per_segment: int,
        guard: NonSpeechGuard,
        batch_size: int,
        event_options: EventOptions | None,
        options: dict[str, Any],
    ) -> None:
        self.model, self.at_time_res = model, at_time_res
        self.tags_per_segment, self.guard = tags_per_segment, guard
        self.batch_size, self.options = batch_size, options
        self.event_options = event_options
        self.queue = _InputOrder()
        self.pieces: list[_Piece] = []
        self.n_samples = 0

    def add(self, recording: _Recording, offset: int, samples: np.ndarray) -> None:
        recording.n_samples = offset + len(samples)
        recording.pending += 1
        self.pieces.append(_Piece(recording, offset, samples))
        self.n_samples += len(samples)

    def drop(self, recording: _Recording) -> None:
        """Forget the pieces of a recording that failed to read: they are not decoded."""
        kept = [piece for piece in self.pieces if piece.recording is not recording]
        self.pieces, self.n_samples = kept, sum(len(piece.samples) for piece in kept)
        recording.pending = 0

    def run(self) -> Iterator[dict[str, Any] | FailedInput]:
        if self.pieces:
            self._decode()
        yield from self.finished()

    def _decode(self) -> None:
        chunks: list[tuple[int, int]] = []
        owners: list[tuple[_Piece, int]] = []  # per chunk: its piece and the piece's base
        base = 0
        for piece in self.pieces:
            for start, end in window_chunks(piece.samples):
                chunks.append((base + start, base + end))
                owners.append((piece, base))
            base += len(piece.samples)
        samples = np.concatenate([piece.samples for piece in self.pieces])
        pieces, self.pieces, self.n_samples = self.pieces, [], 0

        def on_chunk(k: int, layers: torch.Tensor, valid: int) -> None:
            piece, piece_base = owners[k]
            if piece.recording.accumulator is not None:
                seek = (chunks[k][0] - piece_base + piece.offset) // HOP_LENGTH
                piece.recording.accumulator.add_pass(layers, seek, valid)

        result = self.model.engine.transcribe_chunks(
            samples, chunks, on_chunk, self.batch_size, **self.options
        )
        starts = [start for start, _ in chunks]
        for segment in result["segments"]:
            # faster-whisper's seek is int(start seconds * 100), a frame short at times;
            # chunk starts lie on the 2-frame grid, so half a grid step finds the chunk
            k = bisect.bisect_right(starts, (segment["seek"] + 1) * HOP_LENGTH) - 1
            piece, piece_base = owners[k]
            shift = (piece.offset - piece_base) / SAMPLE_RATE
            recording = piece.recording
            shift_result({"segments": [segment]}, shift, 0, len(recording.segments), decimals=3)
            segment["seek"] = (chunks[k][0] - piece_base + piece.offset) // HOP_LENGTH
            recording.segments.append(segment)
        for piece in pieces:
            piece.recording.language = piece.recording.language or result["language"]
            piece.recording.pending -= 1

    def finished(self) -> Iterator[dict[str, Any] | FailedInput]:
        for recording in self.queue.finished():
            if recording.error is not None:
                yield recording.failure()
                continue
            result = {
                "text": "".join(s["text"] for s in recording.segments),
                "segments": recording.segments,
                "language": recording.language,
            }
            clamp_times(result, recording.n_samples / SAMPLE_RATE)
            try:
                yield self.model._with_tags(
                    result,
                    recording.accumulator,
                    recording.n_samples,
                    self.tags_per_segment,
                    self.guard,
                    self.event_options,
                )
            except ValueError as error:  # too short to tag
                yield recording.failure(error)


def _shifted(accumulator: TagAccumulator, frames: int) -> WindowSink:
    """A window sink for a span that starts ``frames`` mel frames into the recording."""

    def add(layers: torch.Tensor, seek: int, valid: int) -> None:
        accumulator.add_pass(layers, seek + frames, valid)

    return add


class _SpanSegments:
    """Hands each segment of a span to the caller as it is decoded, on the recording's
    time line, and moves the progress bar."""

    def __init__(
        self,
        offset: int,
        first_id: int,
        end: float,
        bar: tqdm,
        on_segment: SegmentCallback | None,
    ) -> None:
        self.offset, self.next_id, self.end = offset, first_id, end
        self.bar, self.on_segment = bar, on_segment

    def __call__(self, segment: dict[str, Any]) -> None:
        words = segment.get("words")
        placed = dict(segment, **({"words": [dict(w) for w in words]} if words else {}))
        part = {"segments": [placed]}
        shift_result(part, self.offset / SAMPLE_RATE, self.offset // HOP_LENGTH, self.next_id)
        clamp_times(part, self.end)
        self.next_id += 1
        _advance(self.bar, placed["end"])
        if self.on_segment is not None:
            self.on_segment(placed)


def _read_head(path: Path, loaded: LoadedWhisper) -> TaggingHead:
    """A whisper-at head (.safetensors), or an original Whisper-AT checkpoint (.pth)."""
    if path.suffix in (".pth", ".pt"):
        return import_reference_head(path, n_layer=loaded.model.dims.n_audio_layer)
    return load_head(path)


def _default_head(
    loaded: LoadedWhisper, low_compute: bool, download_root: str | os.PathLike | None
) -> TaggingHead | None:
    """The shipped head, else the reference's file for a reference name. A reference name
    with neither is an error (the reference always tags); other models transcribe untagged."""
    path = shipped_head_path(loaded.name, low_compute)
    if path is not None:
        return load_head(path)
    path = reference_head_path(loaded.name, low_compute, download_root)
    if path is not None:
        n_layer = loaded.model.dims.n_audio_layer
        return import_reference_head(path, n_layer, loaded.name, loaded.sha256)
    if loaded.name in REFERENCE_NAMES:
        hint = _reference_files_hint(loaded.name, low_compute, download_root, weights=False)
        raise HeadError(f"no tagging head is installed for {loaded.name}: {hint}")
    logger.warning(
        "no tagging head is installed for %s; it will transcribe without tags", loaded.name
    )
    return None


def load_model(
    name: str | os.PathLike = "tiny.en",
    device: str | torch.device | None = None,
    download_root: str | None = None,
    in_memory: bool = False,
    at_low_compute: bool = False,
    *,
    head: str | os.PathLike | TaggingHead | None = "default",
    engine: str = "auto",
    precision: str | Precision = "auto",
) -> WhisperAT:
    """Load Whisper weights (a name or a local path) and a tagging head.

    The positional order is openai-whisper's and the reference Whisper-AT package's.

    Args:
        name: a Whisper model name (``whisper_at.available_models()``) or a local path
            (an OpenAI ``.pt``, a CTranslate2 folder, a Hugging Face folder).
        device: "cpu", "cuda", ... (default: cuda when available).
        download_root: where OpenAI ``.pt`` checkpoints (and reference heads next to
            them) are looked for.
        in_memory: accepted for compatibility; weights are always read into memory
            (and verified by SHA-256) before use.
        at_low_compute: the TL-TR-low-dim head instead of TL-TR.
        head: "default" uses the head shipped for this model, else, for a name the
            reference package loads, its ``<name>_ori.pth`` / ``_low.pth`` from
            :func:`reference_head_dirs` (a reference name with neither raises
            :class:`HeadError` saying what to put where; any other model transcribes
            untagged, with a warning); a path loads a head checkpoint (ours,
            .safetensors, or an original Whisper-AT ``<size>_ori.pth`` / ``_low.pth``);
            None loads no head, and the model transcribes and says it cannot tag.
        engine: which Whisper implementation decodes: "torch" (openai-whisper) or "ct2"
            (faster-whisper / CTranslate2, from the same PyTorch encoder pass; needs a
            CTranslate2 model folder, as the bundled models have). "auto": ct2 on the CPU
            where there is such a folder, otherwise torch.
        precision: "auto", "float32", "float16" (GPU), "bfloat16", "int8", or
            "ENCODER:DECODER" such as "float32:int8" (exact tags, an int8 decoder); see
            :mod:`whisper_at.precision` and docs/engines.md for what each changes.
    """
    del in_memory  # see above
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    default_head = isinstance(head, str) and head == "default"
    try:
        loaded = load_whisper(name, device=device, download_root=download_root)
    except WeightsError as error:
        if not (default_head and name in REFERENCE_NAMES):
            raise
        hint = _reference_files_hint(str(name), at_low_compute, download_root, weights=True)
        raise WeightsError(f"{error}; {hint}") from error
    if default_head:
        head = _default_head(loaded, at_low_compute, download_root)
    elif head is not None and not isinstance(head, TaggingHead):
        head = _read_head(Path(head), loaded)
    return WhisperAT(loaded, head, engine, precision)
