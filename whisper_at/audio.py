"""Audio input: any file FFmpeg decodes, or an array, as float32 mono 16 kHz in [-1, 1].

Decoding goes through PyAV (FFmpeg's libraries bundled in the wheel), so no ffmpeg
binary is needed. Files and arrays share one pipeline (decode -> mono mix by mean ->
swresample to 16 kHz -> clip), which is why ``stream_audio`` chunks concatenate to
exactly what ``load_audio`` returns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np
import torch
from whisper.audio import HOP_LENGTH, N_FRAMES, N_SAMPLES, log_mel_spectrogram

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "audio_duration",
    "describe_source",
    "load_audio",
    "stream_audio",
    "window_log_mel",
]

SAMPLE_RATE = 16000

logger = logging.getLogger(__name__)

Source = str | os.PathLike | np.ndarray | torch.Tensor

# Arrays are fed to the resampler in blocks of this many input samples, which bounds
# the memory that streaming an array needs beyond the array itself.
_ARRAY_BLOCK = 1 << 16


class AudioError(ValueError):
    """The input cannot be turned into audio; the message names the input and the problem."""


def load_audio(
    source: Source, sample_rate: int | None = None, *, format: str | None = None
) -> np.ndarray:
    """Return the whole signal as float32 mono 16 kHz samples in [-1, 1].

    ``source`` is a path to anything FFmpeg decodes (for a video, its first audio
    stream), or a 1-D (mono) or 2-D array/tensor. For a 2-D array the smaller
    dimension is the channel axis (a tie counts as channels-first); channels are
    averaged. Integer dtypes are scaled to [-1, 1]. ``sample_rate`` is the rate of an
    array and defaults to 16000; files carry their own rate. ``format`` forces an
    FFmpeg demuxer for headerless files, e.g. ``"g722"``.
    """
    return np.concatenate(list(_pipeline(source, sample_rate, format)))


def stream_audio(
    source: Source,
    chunk_samples: int = 30 * SAMPLE_RATE,
    format: str | None = None,
    *,
    sample_rate: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield consecutive chunks of ``chunk_samples`` (the last may be shorter).

    Files are decoded incrementally, so memory stays bounded by a few chunks
    however long the recording is. Same conventions as :func:`load_audio`; the
    source is checked before the first chunk is asked for.
    """
    if chunk_samples <= 0:
        raise ValueError(f"chunk_samples must be positive, got {chunk_samples}")
    return _rechunk(_pipeline(source, sample_rate, format), chunk_samples)


def audio_duration(
    source: Source, *, sample_rate: int | None = None, format: str | None = None
) -> float:
    """Duration in seconds: from container metadata when present, else by decoding."""
    if not _is_path(source):
        samples, rate = _check_array(source, sample_rate, format)
        return samples.shape[-1] / rate
    name = os.fspath(source)
    container, stream = _open(source, sample_rate, format)
    with container:
        declared = _declared_duration(stream)
        if declared:
            return declared
        if container.duration:
            return container.duration / av.time_base
        return sum(block.size / rate for block, rate in _decode(container, stream, name))


def describe_source(source: Source) -> str:
    """How messages name an input: its path, or the shape and type of an array."""
    if _is_path(source):
        return os.fspath(source)
    shape = tuple(getattr(source, "shape", ()))
    return f"array {shape} {getattr(source, 'dtype', type(source).__name__)}"


def window_log_mel(chunk: torch.Tensor | np.ndarray, n_mels: int) -> torch.Tensor:
    """The encoder input ``[n_mels, 3000]`` for one window of at most 30 s of a file.

    Part of the contract between inference and training (docs/architecture.md): heads
    are trained on exactly the input that tagging gives the encoder. Zero audio
    follows the chunk (as after the end of a file) and, past the last audio frame, the
    log-mel columns are zero (as ``pad_or_trim`` makes them). Normalized per window,
    which lets long files stream; a file under 30 s gets exactly the input that
    openai-whisper's ``transcribe`` gives the encoder.
    """
    chunk = torch.as_tensor(chunk, dtype=torch.float32)
    if chunk.ndim != 1 or not 0 < len(chunk) <= N_SAMPLES:
        raise ValueError(
            f"a window is 1 to {N_SAMPLES} samples of mono audio, got {tuple(chunk.shape)}"
        )
    mel = log_mel_spectrogram(chunk, n_mels, padding=N_SAMPLES - len(chunk))[:, :N_FRAMES]
    mel[:, len(chunk) // HOP_LENGTH :] = 0
    return mel


# --- pipeline -------------------------------------------------------------------------


def _pipeline(source: Source, sample_rate: int | None, format: str | None) -> Iterator[np.ndarray]:
    """Validate/open the source now, and return a lazy iterator of 16 kHz mono pieces."""
    if _is_path(source):
        name = os.fspath(source)
        container, stream = _open(source, sample_rate, format)
        blocks = _decode(container, stream, name)
    else:
        samples, rate = _check_array(source, sample_rate, format)
        blocks = _array_blocks(samples, rate)
        name = _describe_array(samples)
    return _nonempty(_resample(blocks), name)


def _resample(blocks: Iterable[tuple[np.ndarray, int]]) -> Iterator[np.ndarray]:
    """Resample (mono float32, rate) blocks to 16 kHz with swresample, clipped to [-1, 1]."""
    resampler: av.AudioResampler | None = None
    rate = None
    for block, block_rate in blocks:
        if block_rate != rate:  # rate changes mid-stream happen in some broadcast streams
            yield from _flush(resampler)
            rate = block_rate
            resampler = None
            if rate != SAMPLE_RATE:
                resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        if resampler is None:
            yield np.clip(block, -1.0, 1.0)
            continue
        frame = av.AudioFrame.from_ndarray(block[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        for out in resampler.resample(frame):
            yield np.clip(out.to_ndarray()[0], -1.0, 1.0)
    yield from _flush(resampler)


def _flush(resampler: av.AudioResampler | None) -> Iterator[np.ndarray]:
    if resampler is not None:
        for out in resampler.resample(None):
            yield np.clip(out.to_ndarray()[0], -1.0, 1.0)


def _nonempty(pieces: Iterator[np.ndarray], name: str) -> Iterator[np.ndarray]:
    """Pass pieces through, raising AudioError at the end if there were no samples."""
    total = 0
    for piece in pieces:
        if piece.size:
            total += piece.size
            yield piece
    if not total:
        raise AudioError(f"{name}: contains no audio (0 samples)")


def _rechunk(pieces: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Regroup pieces of any length into chunks of exactly ``size`` (last one shorter)."""
    pending: list[np.ndarray] = []
    held = 0
    for piece in pieces:
        pending.append(piece)
        held += piece.size
        if held < size:
            continue
        joined = np.concatenate(pending)
        whole = held - held % size
        for start in range(0, whole, size):
            yield joined[start : start + size]
        pending = [joined[whole:].copy()] if held > whole else []
        held -= whole
    if held:
        yield np.concatenate(pending)


def _to_float(samples: np.ndarray) -> np.ndarray:
    """Scale any numeric dtype to float32 in the [-1, 1] convention."""
    kind = samples.dtype.kind
    if kind == "f":
        return samples.astype(np.float32, copy=False)
    if kind in "iu":
        half = float(2 ** (samples.dtype.itemsize * 8 - 1))
        scaled = samples.astype(np.float32) * np.float32(1.0 / half)
        return scaled - np.float32(1.0) if kind == "u" else scaled
    raise AudioError(f"audio samples must be integers or floats, got dtype {samples.dtype}")


def _mono(samples: np.ndarray) -> np.ndarray:
    """Channels-first (or 1-D) samples of any dtype -> contiguous float32 mono."""
    floats = _to_float(samples)
    if floats.ndim == 2:
        floats = floats.mean(axis=0, dtype=np.float32) if floats.shape[0] > 1 else floats[0]
    return np.ascontiguousarray(floats)


# --- files ----------------------------------------------------------------------------


def _is_path(source: object) -> bool:
    return isinstance(source, (str, os.PathLike))


def _open(
    source: str | os.PathLike, sample_rate: int | None, format: str | None
) -> tuple[av.container.InputContainer, av.audio.stream.AudioStream]:
    """Open a file's first audio stream, turning every failure into a clear AudioError."""
    name = os.fspath(source)
    if sample_rate is not None:
        raise AudioError(f"{name}: sample_rate applies to arrays only; files carry their own")
    path = Path(source)
    if not path.exists():
        raise AudioError(f"{name}: no such file")
    if path.is_dir():
        raise AudioError(f"{name}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{name}: file is empty (0 bytes)")
    if format is not None and format not in av.formats_available:
        raise AudioError(f"{name}: FFmpeg has no demuxer for format {format!r}")
    try:
        container = av.open(name, format=format, metadata_errors="ignore")
    except av.FFmpegError as err:
        raise AudioError(f"{name}: not an audio file FFmpeg can decode ({err})") from err
    stream = next(iter(container.streams.audio), None)
    if stream is None:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        container.close()
        raise AudioError(
            f"{name}: not an audio file FFmpeg can decode: no audio stream (streams: {kinds})"
        )
    return container, stream


def _decode(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream, name: str
) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (mono float32, rate) per decoded frame; close the container when done.

    Damaged packets are skipped and a cut-off file keeps what decoded, each with a
    warning; only a stream with nothing decodable is an error.
    """
    decoded = 0.0  # seconds
    bad_packets = 0
    stopped_early: Exception | None = None
    with container:
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    bad_packets += 1
                    continue
                for frame in frames:
                    decoded += frame.samples / frame.sample_rate
                    yield _mono(_channels_first(frame)), frame.sample_rate
        except av.FFmpegError as err:
            stopped_early = err
        declared = _declared_duration(stream)
    if (stopped_early or bad_packets) and not decoded:
        raise AudioError(f"{name}: corrupt audio, nothing decodable ({stopped_early or 'all bad'})")
    if stopped_early:
        logger.warning("%s: reading stopped at damaged data (%s)", name, stopped_early)
    if bad_packets:
        logger.warning("%s: skipped %d undecodable packets", name, bad_packets)
    if declared and decoded < 0.95 * declared - 0.1:
        logger.warning(
            "%s: looks truncated: decoded %.2f s of the %.2f s the header declares",
            name,
            decoded,
            declared,
        )


def _channels_first(frame: av.AudioFrame) -> np.ndarray:
    """Frame samples as (channels, samples); packed formats interleave channels."""
    samples = frame.to_ndarray()
    if frame.format.is_planar:
        return samples
    return samples.reshape(-1, frame.layout.nb_channels).T


def _declared_duration(stream: av.audio.stream.AudioStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


# --- arrays ---------------------------------------------------------------------------


def _check_array(
    source: object, sample_rate: int | None, format: str | None
) -> tuple[np.ndarray, int]:
    """Validate an array source; return it channels-first (or 1-D) and its rate."""
    if isinstance(source, torch.Tensor):
        tensor = source.detach().cpu()
        if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
            tensor = tensor.float()  # numpy has no bfloat16/float16 path worth keeping
        samples = tensor.numpy()
    elif isinstance(source, np.ndarray):
        samples = source
    else:
        raise AudioError(
            f"audio source must be a path, numpy array or torch tensor, got {type(source)}"
        )
    desc = _describe_array(samples)
    if format is not None:
        raise AudioError(f"{desc}: format applies to files only")
    if samples.ndim not in (1, 2):
        raise AudioError(f"{desc}: must be 1-D (mono) or 2-D (channels x samples)")
    if samples.size == 0:
        raise AudioError(f"{desc}: is empty")
    if samples.dtype.kind not in "iuf":
        raise AudioError(f"{desc}: audio samples must be integers or floats")
    if samples.dtype.kind == "f" and not np.isfinite(samples).all():
        raise AudioError(f"{desc}: contains NaN or infinite values")
    rate = SAMPLE_RATE if sample_rate is None else int(sample_rate)
    if rate <= 0:
        raise AudioError(f"{desc}: sample_rate must be positive, got {sample_rate}")
    if samples.ndim == 2 and samples.shape[0] > samples.shape[1]:
        samples = samples.T  # channels-last: the channel axis is the smaller one
    return samples, rate


def _describe_array(samples: np.ndarray) -> str:
    return f"array of shape {tuple(samples.shape)} and dtype {samples.dtype}"


def _array_blocks(samples: np.ndarray, rate: int) -> Iterator[tuple[np.ndarray, int]]:
    for start in range(0, samples.shape[-1], _ARRAY_BLOCK):
        yield _mono(samples[..., start : start + _ARRAY_BLOCK]), rate
