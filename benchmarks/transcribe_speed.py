"""Transcribe+tag against transcribe-only, side by side on the same audio and weights.

Contenders, each in its own worker process (``side_by_side.py``), alternated over
several rounds (medians reported):
- openai-whisper ``transcribe`` alone;
- the reference package's algorithm on the same weights: openai-whisper's loop, batch 1,
  with the head run on every encoder call (each 30 s window, padding included, pooled
  to 75 bins and tagged in 10 s windows; temperature fallbacks encode and tag again),
  as its forked ``transcribe`` does;
- whisper-at, torch engine, with and without tags;
- faster-whisper ``transcribe`` alone on the original CTranslate2 folder, float32 and
  int8 (its best of the two is what whisper-at is held to);
- whisper-at, ct2 engine, default precision (``auto``: a bfloat16 encoder on CPUs with
  native bfloat16, else float32, and the decoder this CPU measured faster), with and
  without tags; with tags in float32 throughout (transcripts exactly faster-whisper
  float32's); and with tags as before the thread handover (PyTorch keeping its threads
  while CTranslate2 decodes);
- with ``--batch-size N``: faster-whisper's ``BatchedInferencePipeline`` (no tags, float32
  and int8) and whisper-at's batched ``transcribe_many`` (ct2, default precision, with
  tags), over the same audio cut into the same chunks;
- with ``--encoders float32,bfloat16,int8``: whisper-at ct2 + tags with the encoder in
  each of these (the default decoder; sequential, and batched with ``--batch-size``):
  what CPUs without native bfloat16 get, and PyTorch's dynamic int8 (batched
  transcription is bound by the encoder, where faster-whisper int8 runs CTranslate2's
  int8 encoder).
Same beam size and temperature for all. The CPU's model and instruction-set flags are
printed with the table. The audio is real speech over real sounds: the corpus's test
clips that contain speech, concatenated (build the corpus first: ``whisper-at corpus
build --out DIR``). A head is needed for "with tags": pass one with --head; without it a
randomly initialised TL-TR head stands in (same cost).

    python benchmarks/transcribe_speed.py --corpus DIR [--minutes 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from models import WHISPER_DIMS, random_head
from side_by_side import TABLE_HEADER, alternate

from whisper_at.audio import load_audio


@dataclass(frozen=True)
class Setup:
    """What every worker needs to rebuild the same audio, model and options."""

    corpus: Path
    minutes: float
    model: str
    head: str | None
    beam_size: int

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, repeats: int) -> None:
        parser.add_argument("--corpus", type=Path, required=True)
        parser.add_argument("--model", default="tiny.en")
        parser.add_argument("--head", help="head checkpoint (default: a random TL-TR head)")
        parser.add_argument("--minutes", type=float, default=3.0)
        parser.add_argument("--beam-size", type=int, default=5)
        parser.add_argument("--repeats", type=int, default=repeats)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Setup:
        return cls(args.corpus, args.minutes, args.model, args.head, args.beam_size)

    def audio(self) -> np.ndarray:
        return speech_over_sounds(self.corpus, self.minutes)

    def options(self) -> dict:
        return {"beam_size": self.beam_size, "temperature": 0.0}

    def tagging_head(self) -> torch.nn.Module:
        from whisper_at.heads import load_head

        if self.head:
            return load_head(self.head)
        return random_head(WHISPER_DIMS[self.model.removesuffix(".en")])


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


def with_reference_tagging(model: torch.nn.Module, head: torch.nn.Module) -> None:
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


def openai_whisper(setup: Setup, reference_tagging: bool) -> Callable[[], object]:
    import whisper

    from whisper_at.weights import load_whisper

    model = load_whisper(setup.model).model
    if reference_tagging:
        with_reference_tagging(model, setup.tagging_head().eval())
    audio, options = setup.audio(), setup.options()
    return lambda: whisper.transcribe(model, audio, fp16=False, **options)


def whisper_at_engine(
    setup: Setup,
    engine: str,
    tags: bool,
    batch_size: int | None = None,
    precision: str = "auto",
    thread_handover: bool = True,
) -> Callable[[], object]:
    import whisper_at

    if not thread_handover:  # as before: PyTorch keeps its threads while CTranslate2 decodes
        import contextlib

        import whisper_at.engines.ct2

        whisper_at.engines.ct2.torch_threads = lambda _n: contextlib.nullcontext()
    head = setup.tagging_head() if tags else None
    model = whisper_at.load_model(
        setup.model, device="cpu", head=head, engine=engine, precision=precision
    )
    assert model.engine.name == engine
    audio, options = setup.audio(), setup.options()
    return lambda: model.transcribe(audio, batch_size=batch_size, **options)


def faster_whisper(
    setup: Setup, batch_size: int | None = None, compute_type: str = "float32"
) -> Callable[[], object]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from whisper_at.spans import window_chunks
    from whisper_at.weights import load_whisper

    model = WhisperModel(str(load_whisper(setup.model).ct2_dir), compute_type=compute_type)
    audio, options = setup.audio(), setup.options()
    if batch_size is None:
        return lambda: list(model.transcribe(audio, vad_filter=False, **options)[0])
    batched = BatchedInferencePipeline(model)
    clips = [{"start": (a + 0.5) / 16000, "end": b / 16000} for a, b in window_chunks(audio)]
    return lambda: list(
        batched.transcribe(audio, clip_timestamps=clips, batch_size=batch_size, **options)[0]
    )


# the rows --core leaves out
NOT_CORE = (
    "reference algorithm",
    "whisper-at torch",
    "whisper-at ct2 + tags, float32 encoder and decoder",
    "whisper-at ct2 + tags, no thread handover",
)


def cpu_description() -> str:
    """The CPU model and the instruction-set flags that decide the kernels used."""
    from whisper_at.precision import cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    wanted = ("avx2", "fma", "avx512", "amx", "vnni", "bf16")
    shown = sorted(f for f in flags if f.startswith(wanted))
    return f"{model}, {os.cpu_count()} cores; flags: {' '.join(shown) or '-'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    Setup.add_arguments(parser, repeats=5)
    parser.add_argument("--batch-size", type=int, help="also time batched transcription")
    parser.add_argument(
        "--encoders",
        type=lambda text: [e for e in text.split(",") if e],
        default=[],
        help="also time these encoder precisions (comma-separated: float32, bfloat16, int8) "
        "with the default decoder",
    )
    parser.add_argument(
        "--core",
        action="store_true",
        help="only what the speed targets compare: openai-whisper, faster-whisper and "
        "whisper-at's ct2 engine at its default (no torch engine, reference algorithm, "
        "float32 decoder or thread-handover rows)",
    )
    args = parser.parse_args()
    setup = Setup.from_arguments(args)
    seconds = len(setup.audio()) / 16000
    p = functools.partial
    ct2 = p(whisper_at_engine, setup, "ct2")
    contenders = {
        "openai-whisper (no tags)": p(openai_whisper, setup, False),
        "reference algorithm + tags": p(openai_whisper, setup, True),
        "whisper-at torch, no tags": p(whisper_at_engine, setup, "torch", False),
        "whisper-at torch + tags": p(whisper_at_engine, setup, "torch", True),
        "faster-whisper float32 (no tags)": p(faster_whisper, setup),
        "faster-whisper int8 (no tags)": p(faster_whisper, setup, compute_type="int8"),
        "whisper-at ct2, no tags": p(ct2, False),
        "whisper-at ct2 + tags": p(ct2, True),
        "whisper-at ct2 + tags, float32 encoder and decoder": p(ct2, True, precision="float32"),
        "whisper-at ct2 + tags, no thread handover": p(ct2, True, thread_handover=False),
    }
    if args.batch_size:
        b = args.batch_size
        contenders["faster-whisper batched float32 (no tags)"] = p(faster_whisper, setup, b)
        contenders["faster-whisper batched int8 (no tags)"] = p(faster_whisper, setup, b, "int8")
        contenders["whisper-at ct2 batched + tags"] = p(ct2, True, b)
    for encoder in args.encoders:
        name, precision = f"{encoder} encoder", f"{encoder}:auto"
        contenders[f"whisper-at ct2 + tags, {name}"] = p(ct2, True, precision=precision)
        if args.batch_size:
            contenders[f"whisper-at ct2 batched + tags, {name}"] = p(
                ct2, True, args.batch_size, precision=precision
            )
    if args.core:
        contenders = {k: v for k, v in contenders.items() if not k.startswith(NOT_CORE)}
    timings = alternate(contenders, args.repeats)

    import whisper_at

    default = whisper_at.load_model(setup.model, device="cpu", head=None).precision
    print(cpu_description())
    print(f"{args.model}, {seconds:.0f} s of speech over sounds, beam {args.beam_size}, "
          f"CPU threads {torch.get_num_threads()}, one process per contender, "
          f"{args.repeats} rounds after a warm-up run (median); "
          f"whisper-at's default precision here: {default}")  # fmt: skip
    print(TABLE_HEADER)
    for timing in timings:
        print(timing.row(seconds))
    median = {t.name: t.median for t in timings}
    print("ratios:")
    ow = median["openai-whisper (no tags)"]
    fw_name = min(("float32", "int8"), key=lambda c: median[f"faster-whisper {c} (no tags)"])
    fw = median[f"faster-whisper {fw_name} (no tags)"]
    ref = median.get("reference algorithm + tags")
    print(f"  faster-whisper's best compute type here: {fw_name}")
    if ref:
        print(f"  reference algorithm: tags overhead {ref / ow - 1:+.1%} over openai-whisper")
    for engine in ("torch", "ct2"):
        tagged = median.get(f"whisper-at {engine} + tags")
        untagged = median.get(f"whisper-at {engine}, no tags")
        if tagged and untagged:
            versus_reference = (
                f"; vs the reference algorithm {ref / tagged:.2f}x faster" if ref else ""
            )
            print(f"  {engine}: tags overhead {tagged / untagged - 1:+.1%}; "
                  f"vs faster-whisper ({fw_name}) {tagged / fw:.2f}x the time; "
                  f"vs openai-whisper {ow / tagged:.2f}x faster"
                  f"{versus_reference}")  # fmt: skip
    encoders = [f"{encoder} encoder" for encoder in args.encoders]
    for variant in ["float32 encoder and decoder", "no thread handover", *encoders]:
        ours = median.get(f"whisper-at ct2 + tags, {variant}")
        if ours:
            print(f"  ct2 + tags, {variant}: {ours / fw:.2f}x the time of faster-whisper "
                  f"({fw_name}); {ow / ours:.2f}x faster than openai-whisper")  # fmt: skip
    if args.batch_size:
        theirs = min(median[f"faster-whisper batched {c} (no tags)"] for c in ("float32", "int8"))
        for variant in ["", *(f", {v}" for v in encoders)]:
            ours = median[f"whisper-at ct2 batched + tags{variant}"]
            print(f"  batched {args.batch_size}{variant}: whisper-at + tags {ours / theirs:.2f}x "
                  f"the time of faster-whisper batched (best type); {ow / ours:.2f}x faster "
                  f"than openai-whisper, {fw / ours:.2f}x faster than faster-whisper "
                  "sequential")  # fmt: skip


if __name__ == "__main__":
    main()
