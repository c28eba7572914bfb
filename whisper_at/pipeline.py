"""The object users hold: a frozen Whisper, its feature tap and a tagging head.

``transcribe`` runs a maintained Whisper implementation's own loop unchanged
(faster-whisper's with ``engine="ct2"``, the default on the CPU, or openai-whisper's
``transcribe`` with ``engine="torch"``), so
transcripts are exactly that implementation's; the tap catches every encoder pass
it makes and the head tags from those same passes. ``tag`` skips decoding: it
streams the audio in 30 s windows, encodes them in batches and only runs the head.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from whisper.audio import HOP_LENGTH, N_FRAMES, N_SAMPLES, log_mel_spectrogram

from .audio import SAMPLE_RATE, audio_duration, stream_audio
from .engines import WindowSink, make_engine
from .heads import HeadError, TaggingHead, import_reference_head, load_head
from .labels import LabelSet
from .spans import DEFAULT_SPAN_SECONDS, iter_spans, merge_results, shift_result
from .tagging import TagAccumulator, TaggingResult
from .tap import install_tap
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
    ) -> None:
        self.loaded = loaded
        self.whisper = loaded.model
        self.tap = install_tap(self.whisper)
        self.engine = make_engine(engine, loaded, self.tap, compute_type=compute_type)
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
        if (cfg.n_layer, cfg.d_model) != (dims.n_audio_layer, dims.n_audio_state):
            raise HeadError(
                f"the head reads {cfg.n_layer} layers of width {cfg.d_model} "
                f"(Whisper {cfg.whisper_name or '?'}), but {self.name} has "
                f"{dims.n_audio_layer} layers of width {dims.n_audio_state}"
            )
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
        """
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
        result = merge_results(parts)
        if accumulator is None:
            return result
        tagging = self._tagging_result(accumulator.finish(), at_time_res, n_samples / SAMPLE_RATE)
        result.update(tagging.to_result_fields())
        for segment in result["segments"]:
            segment["audio_tags"] = [
                {"label": t.label, "index": t.index, "probability": round(t.probability, 4)}
                for t in tagging.span_tags(segment["start"], segment["end"], tags_per_segment)
            ]
        return result

    def tag(
        self,
        audio: AudioInput,
        at_time_res: float = 10.0,
        batch_size: int = 8,
        progress: bool = False,
    ) -> TaggingResult:
        """Tags only: no decoding. Streams the audio, so memory does not grow with its length."""
        head = self._require_head()
        accumulator = TagAccumulator(head, at_time_res)
        n_samples = 0
        n_mels = self.whisper.dims.n_mels
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        total = round(audio_duration(audio), 1) if progress else None
        bar = tqdm(total=total, unit="s", disable=not progress, desc="tagging")
        try:
            for batch in _batches(stream_audio(audio, chunk_samples=N_SAMPLES), batch_size):
                mels = torch.stack([_window_mel(chunk, n_mels) for chunk in batch])
                with torch.inference_mode():
                    self.tap(mels.to(self.device, dtype))
                layers = self.tap.last_pass.layers
                for i, chunk in enumerate(batch):
                    accumulator.add_pass(
                        layers[i], n_samples // HOP_LENGTH, len(chunk) // HOP_LENGTH
                    )
                    n_samples += len(chunk)
                bar.update(sum(len(c) for c in batch) / SAMPLE_RATE)
        finally:
            bar.close()
            self.tap.forget()
        return self._tagging_result(accumulator.finish(), at_time_res, n_samples / SAMPLE_RATE)


def _shifted(accumulator: TagAccumulator, frames: int) -> WindowSink:
    """A window sink for a span that starts ``frames`` mel frames into the recording."""

    def add(layers: torch.Tensor, seek: int, valid: int) -> None:
        accumulator.add_pass(layers, seek + frames, valid)

    return add


def _window_mel(chunk: torch.Tensor, n_mels: int) -> torch.Tensor:
    """The encoder input openai-whisper would make for this window of a file.

    Zero audio after the chunk (as after the end of a file) and, past the last
    audio frame, zero log-mel columns (as ``pad_or_trim`` makes). Normalized per
    window, which lets long files stream; a file under 30 s gets exactly the input
    that ``transcribe`` gives the encoder.
    """
    mel = log_mel_spectrogram(chunk, n_mels, padding=N_SAMPLES - len(chunk))[:, :N_FRAMES]
    mel[:, len(chunk) // HOP_LENGTH :] = 0
    return mel


def _batches(chunks: Iterator[np.ndarray], size: int) -> Iterator[list[torch.Tensor]]:
    batch: list[torch.Tensor] = []
    for chunk in chunks:
        batch.append(torch.from_numpy(np.ascontiguousarray(chunk)))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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
    "int8", "float32", ...), ct2 only.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_whisper(name, device=device, download_root=download_root)
    if isinstance(head, str) and head == "default":
        path = shipped_head_path(loaded.name, at_low_compute)
        if path is None:
            logger.warning(
                "no tagging head is installed for %s; it will transcribe without tags", loaded.name
            )
        head = load_head(path) if path is not None else None
    elif head is not None and not isinstance(head, TaggingHead):
        head = _read_head(Path(head), loaded)
    return WhisperAT(loaded, head, engine, compute_type)
