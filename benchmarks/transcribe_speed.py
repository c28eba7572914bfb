"""Transcribe+tag against transcribe-only, side by side on the same audio and weights.

Contenders, alternated over several repetitions in one process (medians reported):
- openai-whisper ``transcribe`` alone;
- the reference package's algorithm on the same weights: openai-whisper's loop, batch 1,
  with the head run on every encoder call (each 30 s window, padding included, pooled
  to 75 bins and tagged in 10 s windows; temperature fallbacks encode and tag again),
  as its forked ``transcribe`` does;
- whisper-at, torch engine, with and without tags;
- faster-whisper ``transcribe`` alone on the original CTranslate2 folder;
- whisper-at, ct2 engine, with and without tags;
- with ``--batch-size N``: faster-whisper's ``BatchedInferencePipeline`` (no tags) and
  whisper-at's batched ``transcribe_many`` (ct2, with tags), over the same audio cut
  into the same chunks.
Same beam size and temperature for all. The audio is real speech over real sounds:
the corpus's test clips that contain speech, concatenated (build the corpus first:
``whisper-at corpus build --out DIR``). A head is needed for "with tags": pass one
with --head; without it a randomly initialised TL-TR head stands in (same cost).

    python benchmarks/transcribe_speed.py --corpus DIR [--minutes 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import whisper
from faster_whisper import BatchedInferencePipeline, WhisperModel
from models import WHISPER_DIMS, random_head

import whisper_at
from whisper_at.audio import load_audio
from whisper_at.heads import load_head
from whisper_at.spans import window_chunks
from whisper_at.weights import load_whisper


def speech_over_sounds(corpus: Path, minutes: float) -> np.ndarray:
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").open()]
    clips = [r for r in rows if r["split"] == "test" and 0 in r["labels"] and r.get("mixed")]
    audio, total = [], 0
    for row in clips:
        audio.append(load_audio(corpus / row["path"]))
        total += len(audio[-1])
        if total >= minutes * 60 * 16000:
            break
    return np.concatenate(audio)


def with_reference_tagging(model: whisper.model.Whisper, head: torch.nn.Module) -> None:
    """Hooks that make openai-whisper's encoder tag as the reference package's fork does."""
    outputs: list[torch.Tensor] = []
    for block in model.encoder.blocks:
        block.register_forward_hook(lambda _m, _i, out: outputs.append(out))

    def tag(_module: torch.nn.Module, _inputs: object, _output: torch.Tensor) -> None:
        layers = torch.stack(outputs, dim=1)  # [batch, n_layer, 1500, d]
        outputs.clear()
        n, n_layer, frames, d = layers.shape
        bins = layers.reshape(n, n_layer, frames // 20, 20, d).mean(dim=3)  # 75 bins of 0.4 s
        windows = bins.reshape(n, n_layer, 3, 25, d).transpose(1, 2).reshape(-1, n_layer, 25, d)
        head(windows)

    model.encoder.register_forward_hook(tag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--head", help="head checkpoint (default: a random TL-TR head)")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, help="also time batched transcription")
    args = parser.parse_args()
    audio = speech_over_sounds(args.corpus, args.minutes)
    seconds = len(audio) / 16000
    options = {"beam_size": args.beam_size, "temperature": 0.0}

    plain = load_whisper(args.model).model
    size = args.model.removesuffix(".en")
    head = load_head(args.head) if args.head else random_head(WHISPER_DIMS[size])
    torch_tags = whisper_at.load_model(args.model, device="cpu", head=head)
    torch_only = whisper_at.load_model(args.model, device="cpu", head=None)
    ct2_tags = whisper_at.load_model(args.model, device="cpu", head=head, engine="ct2")
    ct2_only = whisper_at.load_model(args.model, device="cpu", head=None, engine="ct2")
    reference = load_whisper(args.model).model
    with_reference_tagging(reference, head)
    faster = WhisperModel(str(torch_tags.loaded.ct2_dir), device="cpu", compute_type="default")

    def faster_run() -> None:
        segments, _ = faster.transcribe(audio, vad_filter=False, **options)
        list(segments)

    contenders = {
        "openai-whisper (no tags)": lambda: whisper.transcribe(plain, audio, fp16=False, **options),
        "reference algorithm + tags": lambda: whisper.transcribe(
            reference, audio, fp16=False, **options
        ),
        "whisper-at torch, no tags": lambda: torch_only.transcribe(audio, **options),
        "whisper-at torch + tags": lambda: torch_tags.transcribe(audio, **options),
        "faster-whisper (no tags)": faster_run,
        "whisper-at ct2, no tags": lambda: ct2_only.transcribe(audio, **options),
        "whisper-at ct2 + tags": lambda: ct2_tags.transcribe(audio, **options),
    }
    if args.batch_size:
        batched = BatchedInferencePipeline(faster)
        clips = [{"start": (a + 0.5) / 16000, "end": b / 16000} for a, b in window_chunks(audio)]

        def faster_batched() -> None:
            segments, _ = batched.transcribe(
                audio, clip_timestamps=clips, batch_size=args.batch_size, **options
            )
            list(segments)

        contenders["faster-whisper batched (no tags)"] = faster_batched
        contenders["whisper-at ct2 batched + tags"] = lambda: ct2_tags.transcribe(
            audio, batch_size=args.batch_size, **options
        )
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.model}, {seconds:.0f} s of speech over sounds, beam {args.beam_size}, "
          f"CPU threads {torch.get_num_threads()}, {args.repeats} repeats (median)")  # fmt: skip
    print("| contender | median s | x real time |")
    print("|---|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value:.2f} | {seconds / value:.1f} |")
    print("ratios:")
    ow, fw = median["openai-whisper (no tags)"], median["faster-whisper (no tags)"]
    ref = median["reference algorithm + tags"]
    print(f"  reference algorithm: tags overhead {ref / ow - 1:+.1%} over openai-whisper")
    for engine in ("torch", "ct2"):
        tagged = median[f"whisper-at {engine} + tags"]
        untagged = median[f"whisper-at {engine}, no tags"]
        print(f"  {engine}: tags overhead {tagged / untagged - 1:+.1%}; "
              f"vs faster-whisper {tagged / fw:.2f}x the time; "
              f"vs openai-whisper {ow / tagged:.2f}x faster; "
              f"vs the reference algorithm {ref / tagged:.2f}x faster")  # fmt: skip
    if args.batch_size:
        ours, theirs = (
            median["whisper-at ct2 batched + tags"],
            median["faster-whisper batched (no tags)"],
        )
        print(f"  batched {args.batch_size}: whisper-at + tags {ours / theirs:.2f}x the time of "
              f"faster-whisper batched; {ow / ours:.2f}x faster than openai-whisper, "
              f"{fw / ours:.2f}x faster than faster-whisper sequential")  # fmt: skip


if __name__ == "__main__":
    main()
