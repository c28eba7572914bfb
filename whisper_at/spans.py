"""Long recordings in bounded memory: quiet-point spans, and their results merged.

Whisper implementations hold the whole signal and its log-mel in memory. A
recording longer than one span is cut at the quietest 20 ms within the last
seconds of each span, each span is transcribed on its own, and the results are
shifted and joined. Recordings shorter than a span are one span, untouched, so
their transcripts stay exactly the engine's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .audio import SAMPLE_RATE, stream_audio

CUT_GRID = 320  # samples per encoder frame: cuts on it keep tag bins exactly aligned
DEFAULT_SPAN_SECONDS = 1800.0
QUIET_SEARCH_SECONDS = 10.0


def quietest_cut(samples: np.ndarray, start: int, stop: int) -> int:
    """Index in ``[start, stop)``, on the 20 ms grid, where the signal is quietest."""
    start, stop = -(-start // CUT_GRID) * CUT_GRID, stop // CUT_GRID * CUT_GRID
    if stop <= start:
        return stop
    frames = samples[start:stop].reshape(-1, CUT_GRID)
    return start + int(np.argmin((frames.astype(np.float64) ** 2).mean(axis=1))) * CUT_GRID


def window_chunks(
    samples: np.ndarray, max_seconds: float = 30.0, search_seconds: float = 5.0
) -> list[tuple[int, int]]:
    """``(start, end)`` chunks of at most ``max_seconds`` covering ``samples``, cut at quiet points.

    For batched decoding, where every chunk is decoded on its own: a cut in the quietest
    20 ms of the chunk's last ``search_seconds`` rarely splits a word.
    """
    longest = max(CUT_GRID, int(max_seconds * SAMPLE_RATE) // CUT_GRID * CUT_GRID)
    search = min(longest // 2, int(search_seconds * SAMPLE_RATE))
    chunks, start = [], 0
    while len(samples) - start > longest:
        cut = quietest_cut(samples, start + longest - search, start + longest)
        chunks.append((start, cut))
        start = cut
    if start < len(samples):
        chunks.append((start, len(samples)))
    return chunks


def iter_spans(
    source: Any, span_seconds: float = DEFAULT_SPAN_SECONDS, sample_rate: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(offset in samples, samples)`` spans that together make the recording.

    sample_rate: the rate of an array source (see :func:`~whisper_at.audio.load_audio`).
    """
    span = max(CUT_GRID, int(span_seconds * SAMPLE_RATE) // CUT_GRID * CUT_GRID)
    search = min(span // 2, int(QUIET_SEARCH_SECONDS * SAMPLE_RATE))
    offset = 0
    pending: list[np.ndarray] = []
    pending_len = 0
    for chunk in stream_audio(
        source, chunk_samples=min(span, 30 * SAMPLE_RATE), sample_rate=sample_rate
    ):
        pending.append(chunk)
        pending_len += len(chunk)
        while pending_len > span:
            buffer = np.concatenate(pending)
            cut = quietest_cut(buffer, span - search, span)
            yield offset, buffer[:cut]
            offset += cut
            pending, pending_len = [buffer[cut:]], len(buffer) - cut
    if pending_len:
        yield offset, np.concatenate(pending)


def shift_result(
    result: dict[str, Any], seconds: float, frames: int, first_id: int, decimals: int | None = None
) -> None:
    """Move a span's segments (and words) to the recording's time line, in place.

    ``decimals``: round the shifted times (faster-whisper gives milliseconds).
    """
    for i, segment in enumerate(result["segments"]):
        segment["id"] = first_id + i
        segment["seek"] = segment.get("seek", 0) + frames
        for item in [segment, *(segment.get("words") or [])]:
            for key in ("start", "end"):
                item[key] += seconds
                item[key] = item[key] if decimals is None else round(item[key], decimals)


def clamp_times(result: dict[str, Any], duration: float) -> None:
    """Keep segment and word times within the audio, in place (decoders can overshoot
    the end of the last window)."""
    for segment in result["segments"]:
        for item in [segment, *(segment.get("words") or [])]:
            for key in ("start", "end"):
                item[key] = min(max(item[key], 0.0), duration)


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from span results already on the recording's time line."""
    merged = dict(parts[0])
    merged["segments"] = [segment for part in parts for segment in part["segments"]]
    merged["text"] = "".join(part["text"] for part in parts)
    return merged
