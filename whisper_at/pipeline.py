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
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from whisper.audio import HOP_LENGTH, N_SAMPLES

from .audio import SAMPLE_RATE, audio_duration, stream_audio, window_log_mel
from .engines import EngineError, WindowSink, make_engine, resolve_engine
from .heads import HeadError, TaggingHead, import_reference_head, load_head
from .labels import LabelSet
from .quantize import quantize_int8
from .spans import DEFAULT_SPAN_SECONDS, iter_spans, merge_results, shift_result, window_chunks
from .tagging import TagAccumulator, TaggingResult
from .tap import encoder_precision, install_tap
from .weights import LoadedWhisper, load_whisper

logger = logging.getLogger("whisper_at")

AudioInput = str | os.PathLike | np.ndarray | torch.Tensor
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


class WhisperAT:
    """A Whisper model whose encoder passes also feed a sound-event tagging head."""

    def __init__(
        self,
        loaded: LoadedWhisper,
        head: TaggingHead | None,
        engine: str = "auto",
        compute_type: str | None = None,
        bf16: bool = False,
    ) -> None:
        self.loaded = loaded
        self.whisper = loaded.model
        self.tap = install_tap(self.whisper)
        self.encoder_dtype = encoder_precision(self.whisper.device, bf16)
        if bf16 and resolve_engine(engine, loaded) != "ct2":
            raise ValueError(
                "bf16 needs the ct2 engine: openai-whisper's decoding runs in float16 or "
                "float32 only (load with engine='ct2', or without bf16)"
            )
        self.engine = make_engine(
            engine,
            loaded,
            self.tap,
            compute_type=compute_type,
            encoder_dtype=self.encoder_dtype if bf16 else None,
        )
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

    def _tagging_result(self, logits: torch.Tensor, at_time_res: float, duration: float):
        head = self._require_head()
        return TaggingResult(
            logits=logits,
            at_time_res=at_time_res,
            duration=duration,
            labels=head.config.labels,
            reported_classes=head.config.reported_classes,
        )

    def transcribe(
        self,
        audio: AudioInput,
        at_time_res: float = 10.0,
        *,
        tags_per_segment: int = 5,
        span_seconds: float = DEFAULT_SPAN_SECONDS,
        batch_size: int | None = None,
        **whisper_options: Any,
    ) -> dict[str, Any]:
        """openai-whisper's transcription plus ``audio_tag`` logits per ``at_time_res`` window.

        ``whisper_options`` go unchanged to the engine (openai-whisper's ``transcribe``
        options: language, task, temperature, beam_size, word_timestamps, ...). The
        result also holds ``at_time_res``, the label names, and per segment its top
        ``audio_tags``. Without a head the result is the engine's alone.

        Recordings longer than ``span_seconds`` are read and transcribed span by span
        (cut at quiet points, the language and the previous span's text carried
        over), so memory stays bounded; shorter ones are one untouched call.

        With ``batch_size``, the recording is decoded in batches of 30 s chunks instead
        (ct2 engine; see :meth:`transcribe_many` for what changes).
        """
        if batch_size is not None:
            results = self.transcribe_many(
                [audio],
                batch_size,
                at_time_res,
                tags_per_segment=tags_per_segment,
                group_seconds=span_seconds,
                **whisper_options,
            )
            return next(iter(results))
        accumulator = TagAccumulator(self.head, at_time_res) if self.head is not None else None
        parts: list[dict[str, Any]] = []
        n_samples = 0
        for offset, samples in iter_spans(audio, span_seconds):
            options = dict(whisper_options)
            if parts:
                options.setdefault("language", parts[0]["language"])
                if options.get("condition_on_previous_text", True):
                    options["initial_prompt"] = parts[-1]["text"][-_PROMPT_CHARS:]
            sink = None if accumulator is None else _shifted(accumulator, offset // HOP_LENGTH)
            part = self.engine.transcribe(samples, sink, **options)
            n_segments = sum(len(p["segments"]) for p in parts)
            shift_result(part, offset / SAMPLE_RATE, offset // HOP_LENGTH, n_segments)
            parts.append(part)
            n_samples = offset + len(samples)
        return self._with_tags(merge_results(parts), accumulator, n_samples, tags_per_segment)

    def _with_tags(
        self,
        result: dict[str, Any],
        accumulator: TagAccumulator | None,
        n_samples: int,
        tags_per_segment: int,
    ) -> dict[str, Any]:
        """The transcription result plus the head's tags: per window, and per segment."""
        if accumulator is None:
            return result
        tagging = self._tagging_result(
            accumulator.finish(), accumulator.at_time_res, n_samples / SAMPLE_RATE
        )
        result.update(tagging.to_result_fields())
        for segment in result["segments"]:
            segment["audio_tags"] = [
                {"label": t.label, "index": t.index, "probability": round(t.probability, 4)}
                for t in tagging.span_tags(segment["start"], segment["end"], tags_per_segment)
            ]
        return result

    def transcribe_many(
        self,
        audios: Iterable[AudioInput],
        batch_size: int = 8,
        at_time_res: float = 10.0,
        *,
        tags_per_segment: int = 5,
        group_seconds: float = DEFAULT_SPAN_SECONDS,
        progress: bool = False,
        **whisper_options: Any,
    ) -> Iterator[dict[str, Any]]:
        """Transcribe and tag many recordings with batched decoding: one result per input, in order.

        Each recording is cut into chunks of at most 30 s at quiet points, and the chunks
        of consecutive recordings (up to ``group_seconds`` of audio at a time, so memory
        stays bounded) are encoded and decoded ``batch_size`` at a time by
        faster-whisper's ``BatchedInferencePipeline`` (ct2 engine). As there, chunks are
        decoded independently: no conditioning on the previous chunk, only the first
        temperature, and, unless ``without_timestamps=False`` is given, one segment per
        chunk. The language is detected once per group unless given (pass
        ``multilingual=True`` to detect it per chunk). Results are yielded lazily, each
        as soon as its recording is done.
        """
        if self.engine.name != "ct2":
            raise EngineError(
                "batched transcription runs faster-whisper's batched pipeline: load the "
                "model with engine='ct2' (the default on the CPU)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        group = _Group(self, at_time_res, tags_per_segment, batch_size, whisper_options)
        limit = int(group_seconds * SAMPLE_RATE)

        def results() -> Iterator[dict[str, Any]]:
            for audio in audios:
                group.open_recording()
                for offset, samples in iter_spans(audio, group_seconds):
                    group.add(offset, samples)
                    if group.n_samples >= limit:
                        yield from group.run()
                yield from group.close_recording()
            yield from group.run()

        with tqdm(unit="file", desc="transcribing", disable=not progress) as bar:
            for result in results():
                bar.update(1)
                yield result

    def tag(
        self,
        audio: AudioInput,
        at_time_res: float = 10.0,
        batch_size: int = 8,
        progress: bool = False,
    ) -> TaggingResult:
        """Tags only: no decoding. Streams the audio, so memory does not grow with its length."""
        total = audio_duration(audio) if progress else None
        return next(self.tag_many([audio], at_time_res, batch_size, progress, total))

    def tag_many(
        self,
        audios: Iterable[AudioInput],
        at_time_res: float = 10.0,
        batch_size: int = 8,
        progress: bool = False,
        total_seconds: float | None = None,
    ) -> Iterator[TaggingResult]:
        """Tags only for many recordings: one result per input, in order, lazily.

        The 30 s windows of consecutive recordings share encoder batches, so a folder
        of short clips fills batches as well as one long file does. Each recording is
        streamed; at most ``batch_size`` windows are held at once. With a head that
        reads only the first encoder blocks, the deeper ones are not run.
        """
        head = self._require_head()
        n_mels = self.whisper.dims.n_mels
        waiting: list[_Recording] = []  # in input order, not yielded yet
        batch: list[tuple[_Recording, torch.Tensor, int]] = []  # (recording, window, start)

        # a head that reads only the first blocks lets the encoder stop there
        deepest = head.config.n_layer
        stop_early = deepest < self.whisper.dims.n_audio_layer

        def encode_batch() -> None:
            mels = torch.stack([window_log_mel(window, n_mels) for _, window, _ in batch])
            mels = mels.to(self.device, self.encoder_dtype)
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
            bar.update(sum(len(window) for _, window, _ in batch) / SAMPLE_RATE)
            batch.clear()

        def finished() -> Iterator[TaggingResult]:
            while waiting and waiting[0].complete and all(r is not waiting[0] for r, *_ in batch):
                recording = waiting.pop(0)
                logits = recording.accumulator.finish()
                yield self._tagging_result(logits, at_time_res, recording.n_samples / SAMPLE_RATE)

        total = round(total_seconds, 1) if total_seconds is not None else None
        bar = tqdm(total=total, unit="s", disable=not progress, desc="tagging")
        try:
            for audio in audios:
                waiting.append(_Recording(TagAccumulator(head, at_time_res)))
                for chunk in stream_audio(audio, chunk_samples=N_SAMPLES):
                    window = torch.from_numpy(np.ascontiguousarray(chunk))
                    batch.append((waiting[-1], window, waiting[-1].n_samples))
                    waiting[-1].n_samples += len(chunk)
                    if len(batch) == batch_size:
                        encode_batch()
                        yield from finished()
                waiting[-1].complete = True
                yield from finished()
            if batch:
                encode_batch()
            yield from finished()
        finally:
            bar.close()
            self.tap.forget()


@dataclass
class _Recording:
    """One input of a batched run: its transcript so far, its tags, its length."""

    accumulator: TagAccumulator | None
    segments: list[dict[str, Any]] = field(default_factory=list)
    language: str | None = None
    n_samples: int = 0
    complete: bool = False  # every span of it has been read


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
        batch_size: int,
        options: dict[str, Any],
    ) -> None:
        self.model, self.at_time_res = model, at_time_res
        self.tags_per_segment, self.batch_size, self.options = tags_per_segment, batch_size, options
        self.pieces: list[_Piece] = []
        self.waiting: list[_Recording] = []  # opened, not yielded yet, in input order
        self.n_samples = 0

    def open_recording(self) -> None:
        head = self.model.head
        accumulator = TagAccumulator(head, self.at_time_res) if head is not None else None
        self.waiting.append(_Recording(accumulator))

    def add(self, offset: int, samples: np.ndarray) -> None:
        recording = self.waiting[-1]
        recording.n_samples = offset + len(samples)
        self.pieces.append(_Piece(recording, offset, samples))
        self.n_samples += len(samples)

    def close_recording(self) -> Iterator[dict[str, Any]]:
        self.waiting[-1].complete = True
        yield from self._finished()

    def run(self) -> Iterator[dict[str, Any]]:
        if self.pieces:
            self._decode()
        yield from self._finished()

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
        self.pieces, self.n_samples = [], 0

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
        for piece, _ in owners:
            piece.recording.language = piece.recording.language or result["language"]

    def _finished(self) -> Iterator[dict[str, Any]]:
        """Yield the finished recordings at the front of the queue, in input order."""
        while (
            self.waiting
            and self.waiting[0].complete
            and not any(piece.recording is self.waiting[0] for piece in self.pieces)
        ):
            recording = self.waiting.pop(0)
            result = {
                "text": "".join(s["text"] for s in recording.segments),
                "segments": recording.segments,
                "language": recording.language,
            }
            yield self.model._with_tags(
                result, recording.accumulator, recording.n_samples, self.tags_per_segment
            )


def _shifted(accumulator: TagAccumulator, frames: int) -> WindowSink:
    """A window sink for a span that starts ``frames`` mel frames into the recording."""

    def add(layers: torch.Tensor, seek: int, valid: int) -> None:
        accumulator.add_pass(layers, seek + frames, valid)

    return add


def _read_head(path: Path, loaded: LoadedWhisper) -> TaggingHead:
    """A whisper-at head (.safetensors), or an original Whisper-AT checkpoint (.pth)."""
    if path.suffix in (".pth", ".pt"):
        return import_reference_head(path, n_layer=loaded.model.dims.n_audio_layer)
    return load_head(path)


def load_model(
    name: str | os.PathLike = "tiny.en",
    device: str | torch.device | None = None,
    head: str | os.PathLike | TaggingHead | None = "default",
    at_low_compute: bool = False,
    download_root: str | None = None,
    engine: str = "auto",
    compute_type: str | None = None,
    int8: bool = False,
    bf16: bool = False,
) -> WhisperAT:
    """Load Whisper weights (a name or a local path) and a tagging head.

    head: "default" uses the head shipped for this model if there is one (TL-TR, or
    TL-TR-low-dim with ``at_low_compute``); a path loads a head checkpoint (ours,
    .safetensors, or an original Whisper-AT ``<size>_ori.pth`` / ``_low.pth``); None
    loads no head. Without a head the model transcribes and says it cannot tag.
    engine: which Whisper implementation decodes: "torch" (openai-whisper) or "ct2"
    (faster-whisper / CTranslate2, from the same PyTorch encoder pass; needs a
    CTranslate2 model folder, as the bundled models have). "auto" (default): ct2 on
    the CPU where there is such a folder (it is as fast as faster-whisper alone),
    otherwise torch. compute_type: the CTranslate2 decoder's precision ("default",
    "int8", "float32", ...), ct2 only. int8: on the CPU, int8 dynamic quantization of
    the encoder's linear layers, and of the decoder's (torch engine) or an int8
    CTranslate2 decoder (ct2 engine, unless compute_type says otherwise); faster, with
    slightly different tags and transcripts (measured in docs/performance.md).
    bf16: the encoder computes in bfloat16 (ct2 engine and tags-only; the CTranslate2
    decoder keeps its compute_type): much faster on CPUs with AMX / AVX512-BF16, with
    slightly different tags and transcripts (measured in docs/performance.md).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_whisper(name, device=device, download_root=download_root)
    if int8:
        engine = resolve_engine(engine, loaded)
        quantize_int8(loaded.model.encoder)
        if engine == "torch":
            quantize_int8(loaded.model.decoder)
        else:
            compute_type = compute_type or "int8"
    if isinstance(head, str) and head == "default":
        path = shipped_head_path(loaded.name, at_low_compute)
        if path is None:
            logger.warning(
                "no tagging head is installed for %s; it will transcribe without tags", loaded.name
            )
        head = load_head(path) if path is not None else None
    elif head is not None and not isinstance(head, TaggingHead):
        head = _read_head(Path(head), loaded)
    return WhisperAT(loaded, head, engine, compute_type, bf16)
