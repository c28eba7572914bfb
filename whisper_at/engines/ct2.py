"""The CTranslate2 engine: faster-whisper's own ``transcribe``, decoding from our encoder pass.

The tagging head needs every encoder block's output, which CTranslate2's encoder
does not expose. So the encoder runs in PyTorch, once per window, through the
:class:`~whisper_at.tap.EncoderTap`, and faster-whisper's unchanged transcription
loop decodes with CTranslate2 from that encoder output: :class:`TappedWhisperModel`
overrides only ``WhisperModel.encode``. faster-whisper calls ``encode`` once per
decoding window (and once per language-detection window); temperature fallback
and word alignment reuse the encoder output it returned.

Options use openai-whisper's names (what the pipeline and the CLI pass) and are
mapped to faster-whisper's; where none is given, faster-whisper's defaults apply
(beam search of width 5, for instance), except that voice activity detection is
off unless asked for. See ``docs/engines.md``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import ctranslate2
import faster_whisper
import numpy as np
import torch
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.feature_extractor import FeatureExtractor
from whisper.audio import HOP_LENGTH, SAMPLE_RATE
from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

from ..precision import Precision
from ..tap import EncoderPass, EncoderTap, PassListener
from ..weights import LoadedWhisper
from . import ChunkSink, EngineError, SegmentSink, WindowLocator, WindowSink

logger = logging.getLogger("whisper_at")

LIBRARY = f"faster-whisper {faster_whisper.__version__}"

# openai-whisper option name -> faster-whisper ``WhisperModel.transcribe`` argument
OPENAI_OPTIONS = {
    "language": "language",
    "task": "task",
    "temperature": "temperature",
    "beam_size": "beam_size",
    "best_of": "best_of",
    "patience": "patience",
    "length_penalty": "length_penalty",
    "compression_ratio_threshold": "compression_ratio_threshold",
    "logprob_threshold": "log_prob_threshold",
    "no_speech_threshold": "no_speech_threshold",
    "condition_on_previous_text": "condition_on_previous_text",
    "initial_prompt": "initial_prompt",
    "word_timestamps": "word_timestamps",
    "prepend_punctuations": "prepend_punctuations",
    "append_punctuations": "append_punctuations",
    "clip_timestamps": "clip_timestamps",
    "hallucination_silence_threshold": "hallucination_silence_threshold",
    "suppress_tokens": "suppress_tokens",
    "suppress_blank": "suppress_blank",
    "without_timestamps": "without_timestamps",
    "max_initial_timestamp": "max_initial_timestamp",
    "prefix": "prefix",
    "sample_len": "max_new_tokens",
}
# openai-whisper options where None means "the default": dropped, so faster-whisper's applies
NONE_IS_DEFAULT = {"language", "beam_size", "best_of", "patience", "length_penalty", "sample_len"}
# accepted and ignored: printing, and fp16 (the CTranslate2 compute_type decides precision)
IGNORED_OPTIONS = {"verbose", "fp16"}
# faster-whisper's own arguments, passed through unchanged
NATIVE_OPTIONS = {
    "repetition_penalty",
    "no_repeat_ngram_size",
    "prompt_reset_on_temperature",
    "hotwords",
    "multilingual",
    "language_detection_threshold",
    "vad_filter",
    "vad_parameters",
    "log_progress",
}
# known, but not offered by this engine, and why
UNSUPPORTED_OPTIONS = {
    "carry_initial_prompt": "faster-whisper has no equivalent",
    "prompt": "use initial_prompt",
    "chunk_length": "the encoder and the tagger work on 30 s windows",
    "language_detection_segments": "only the first window is used for language detection",
}


def faster_whisper_options(options: dict[str, Any]) -> dict[str, Any]:
    """openai-whisper-style transcription options -> ``WhisperModel.transcribe`` arguments.

    Raises TypeError for a name neither library knows, ValueError for one this engine
    does not offer.
    """
    mapped: dict[str, Any] = {"vad_filter": False}
    for name, value in options.items():
        if name in IGNORED_OPTIONS:
            continue
        if name in UNSUPPORTED_OPTIONS:
            if name == "carry_initial_prompt" and not value:
                continue
            raise EngineError(
                f"option {name!r} is not supported by the ct2 engine ({UNSUPPORTED_OPTIONS[name]})"
            )
        if name in NATIVE_OPTIONS:
            mapped[name] = value
            continue
        if name not in OPENAI_OPTIONS:
            known = sorted(OPENAI_OPTIONS.keys() | NATIVE_OPTIONS | IGNORED_OPTIONS)
            raise TypeError(
                f"unknown transcription option {name!r} for the ct2 engine; "
                f"known: {', '.join(known)}"
            )
        if value is None and name in NONE_IS_DEFAULT:
            continue
        if name == "language":
            value = _language_code(value)
        elif name == "temperature" and isinstance(value, Iterable):
            value = [float(t) for t in value]
        elif name == "suppress_tokens":
            value = _token_list(value)
        mapped[OPENAI_OPTIONS[name]] = value
    return mapped


def _language_code(language: str) -> str:
    code = language.lower()
    code = TO_LANGUAGE_CODE.get(code, code)
    if code not in LANGUAGES:
        raise EngineError(f"unknown language {language!r}")
    return code


def _token_list(tokens: str | Iterable[int] | None) -> list[int] | None:
    """openai-whisper takes "-1" or "1,2,3" as well as a list of token ids."""
    if tokens is None:
        return None
    if isinstance(tokens, str):
        return [int(t) for t in tokens.split(",") if t.strip()]
    return [int(t) for t in tokens]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``n`` while the block runs.

    PyTorch and CTranslate2 each bring their own OpenMP runtime. After PyTorch has run
    multi-threaded work, its thread team stays in the way of CTranslate2's decoding
    threads on the same cores (measured: faster-whisper decoding ~70% slower on a
    2-core CPU), unless PyTorch is back to one thread. So the engine hands the cores
    over: PyTorch gets its threads for each encoder pass and the tagging head, and one
    thread while CTranslate2 decodes (docs/performance.md).
    """
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


class SharedFeatureExtractor(FeatureExtractor):
    """faster-whisper's feature extractor, computing a file's log-mel once for both sides.

    The tagger places windows by their content in the whole file's log-mel, the very
    array faster-whisper slices its windows from. :meth:`share` computes it for the
    tagger and keeps it; faster-whisper's own call for the same samples array then
    returns it instead of a second STFT of the whole file (about 3% of the time of a
    tiny.en transcription otherwise).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shared: tuple[np.ndarray, np.ndarray] | None = None  # (samples, features)

    def share(self, samples: np.ndarray) -> np.ndarray:
        self._shared = (samples, super().__call__(samples))
        return self._shared[1]

    def forget(self) -> None:
        self._shared = None

    def __call__(self, waveform: np.ndarray, padding: int = 160, chunk_length=None):
        shared = self._shared
        if shared is not None and waveform is shared[0] and padding == 160 and not chunk_length:
            return shared[1]
        return super().__call__(waveform, padding=padding, chunk_length=chunk_length)


class TappedWhisperModel(WhisperModel):
    """faster-whisper's ``WhisperModel`` whose encoder is the tapped PyTorch encoder.

    Only ``encode`` changes: CTranslate2 still decodes, aligns words and detects the
    language, from the encoder output the PyTorch encoder gave (CTranslate2 takes an
    already encoded ``[batch, 1500, d]`` input as it is, moved to its device and type).
    """

    def __init__(
        self,
        model_dir: str,
        tap: EncoderTap,
        torch_device: torch.device,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_dir, **kwargs)
        self.feature_extractor = SharedFeatureExtractor(**self.feat_kwargs)
        self.tap = tap
        self.torch_device = torch_device
        self._encoded: torch.Tensor | np.ndarray | None = None  # memory the StorageView reads
        self._detecting = False  # inside faster-whisper's language detection
        self._unplaced: EncoderPass | None = None  # its pass, not handed to the tagger yet
        self.encoder_threads = torch.get_num_threads()  # PyTorch's, for encoder passes

    def detect_language(self, *args: Any, **kwargs: Any) -> Any:
        self._detecting = True
        try:
            return super().detect_language(*args, **kwargs)
        finally:
            self._detecting = False

    def encode(self, features: np.ndarray) -> ctranslate2.StorageView:
        if features.ndim == 2:
            features = np.expand_dims(features, 0)
        with torch_threads(self.encoder_threads):  # PyTorch's turn: encoder and tagging head
            output = self._encode_and_tag(features)
        if output.is_cuda:  # CTranslate2 reads float16 (a bfloat16 encoder's output is cast)
            self._encoded = output.half().contiguous()
        else:
            self._encoded = np.ascontiguousarray(output.float().numpy())
        return ctranslate2.StorageView.from_array(self._encoded)

    def _encode_and_tag(self, features: np.ndarray) -> torch.Tensor:
        mel = torch.from_numpy(features).to(self.torch_device)  # the tap casts it
        tap, listener, passes = self.tap, self.tap.listener, self.tap.n_passes
        if self._detecting:  # the tagger takes the windows that decoding encodes
            tap.listener = None
        try:
            with torch.inference_mode():
                output = tap(mel)  # [batch, 1500, d]; the remembered pass for the same input
        finally:
            tap.listener = listener
        if self._detecting:
            self._unplaced = tap.last_pass if tap.n_passes > passes else None
        else:
            if tap.last_pass is self._unplaced and tap.n_passes == passes and listener:
                listener(self._unplaced)  # language detection's pass, now decoded from
            self._unplaced = None
        return output


class CTranslate2Engine:
    """Transcripts are faster-whisper's: its loop and its CTranslate2 decoder, our encoder pass.

    precision: ``decoder`` is CTranslate2's compute type; the encoder always runs in
    PyTorch, in ``precision.encoder_dtype``. cpu_threads: CTranslate2's threads (0: its
    default).
    """

    name = "ct2"
    batched = True

    def __init__(
        self,
        loaded: LoadedWhisper,
        tap: EncoderTap,
        precision: Precision,
        cpu_threads: int = 0,
    ) -> None:
        if loaded.ct2_dir is None:
            raise EngineError(
                f"the ct2 engine needs a CTranslate2 model folder; {loaded.name} was loaded "
                f"from {loaded.source}. Use engine='torch', or load a CTranslate2 folder "
                "(model.bin, config.json, tokenizer.json)"
            )
        if not (loaded.ct2_dir / "tokenizer.json").is_file():
            raise EngineError(
                f"{loaded.ct2_dir} has no tokenizer.json, which faster-whisper needs offline"
            )
        device = loaded.model.device
        self.compute_type = precision.decoder
        self.tap = tap
        self.n_mels = loaded.model.dims.n_mels
        self.model = TappedWhisperModel(
            str(loaded.ct2_dir),
            tap,
            device,
            device="cuda" if device.type == "cuda" else "cpu",
            device_index=device.index or 0,
            compute_type=self.compute_type,
            cpu_threads=cpu_threads,
        )
        if self.model.feature_extractor.mel_filters.shape[0] != self.n_mels:
            raise EngineError(
                f"{loaded.ct2_dir}: faster-whisper computes "
                f"{self.model.feature_extractor.mel_filters.shape[0]} mel bands but the "
                f"encoder takes {self.n_mels} (preprocessor_config.json missing?)"
            )

    def transcribe(
        self,
        samples: np.ndarray,
        on_window: WindowSink | None,
        on_segment: SegmentSink | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        arguments = faster_whisper_options(options)
        if on_window is not None and arguments.get("vad_filter"):
            raise EngineError(
                "vad_filter removes non-speech audio before it is encoded, so it cannot be "
                "tagged; transcribe without vad_filter, or load the model with head=None"
            )
        samples = np.asarray(samples, dtype=np.float32)
        listener = None
        if on_window is not None:
            # the same features faster-whisper computes (and slices its windows from)
            features = self.model.feature_extractor.share(samples)
            mel = torch.from_numpy(features)  # its windows are views into it, as encoded
            locator = WindowLocator(mel, features.shape[-1] - 1)
            listener = locator.listener(on_window, LIBRARY)
        return self._decode(
            listener, lambda: self.model.transcribe(samples, **arguments), on_segment
        )

    def _decode(
        self,
        listener: PassListener | None,
        run: Callable[[], tuple[Iterable[Any], Any]],
        on_segment: SegmentSink | None = None,
    ) -> dict[str, Any]:
        """Run a faster-whisper transcription with ``listener`` on the tap; openai-style dict."""
        self.tap.listener = listener
        segments: list[dict[str, Any]] = []
        try:
            with torch_threads(1):  # CTranslate2's turn; encode() takes PyTorch's threads back
                generated, info = run()
                for segment in generated:  # the generator does the work, window by window
                    segments.append(_segment_dict(segment))
                    if on_segment is not None:
                        on_segment(segments[-1])
        finally:
            self.tap.listener = None
            self.tap.forget()
            self.model.feature_extractor.forget()
            self.model._encoded = self.model._unplaced = None
        return {
            "text": "".join(s["text"] for s in segments),
            "segments": segments,
            "language": info.language,
        }

    def transcribe_chunks(
        self,
        samples: np.ndarray,
        chunks: list[tuple[int, int]],
        on_chunk: ChunkSink | None,
        batch_size: int,
        **options: Any,
    ) -> dict[str, Any]:
        """faster-whisper's batched pipeline over the given chunks of ``samples``.

        chunks: ``(start, end)`` sample indices, each at most 30 s, decoded independently
        (no conditioning on the previous chunk, first temperature only, as faster-whisper's
        ``BatchedInferencePipeline`` does) and encoded ``batch_size`` at a time.
        ``on_chunk(k, layers, valid mel frames)`` gets chunk ``k``'s encoder pass. Times
        are on ``samples``' time line.
        """
        arguments = faster_whisper_options(options)
        if arguments.pop("vad_filter", False) or arguments.pop("vad_parameters", None):
            raise EngineError("batched transcription decodes the given chunks: no vad_filter")
        # faster-whisper turns seconds back into samples with int(): half a sample over
        # the start makes that land exactly on it
        clips = [{"start": (a + 0.5) / SAMPLE_RATE, "end": b / SAMPLE_RATE} for a, b in chunks]
        samples = np.asarray(samples, dtype=np.float32)
        pipeline = BatchedInferencePipeline(self.model)
        return self._decode(
            None if on_chunk is None else _in_order(chunks, on_chunk),
            lambda: pipeline.transcribe(
                samples, clip_timestamps=clips, batch_size=batch_size, **arguments
            ),
        )


def _in_order(chunks: list[tuple[int, int]], on_chunk: ChunkSink) -> PassListener:
    """A tap listener for the batched pipeline, which encodes the chunks in their order."""
    next_chunk = 0

    def place(encoder_pass: EncoderPass) -> None:
        nonlocal next_chunk
        for layers in encoder_pass.layers:
            start, end = chunks[next_chunk]
            on_chunk(next_chunk, layers, (end - start) // HOP_LENGTH)
            next_chunk += 1

    return place


def _segment_dict(segment: Any) -> dict[str, Any]:
    """A faster-whisper ``Segment`` as openai-whisper's segment dict."""
    fields = dataclasses.asdict(segment)
    if fields.get("words") is None:
        fields.pop("words", None)
    return fields
