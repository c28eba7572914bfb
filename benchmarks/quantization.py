"""Lower precision on the CPU: what it saves in time and what it costs in tags and text.

Four precisions of the default engine: float32; ``precision="float32:int8"`` (an int8
CTranslate2 decoder, the PyTorch encoder and so the tags stay float32); ``precision="int8"``
(int8 dynamic quantization of the encoder too); and ``precision="bfloat16:float32"`` (the encoder in
bfloat16, the decoder float32). Side by side in one process, alternating, on the same
audio and weights:
- speed: transcribe+tag and tags-only;
- transcripts: WER against the reference text of every real utterance with known
  text (the LibriVox clips and the Asterisk prompts), greedy;
- tags: on the corpus's test clips with speech over sounds, the largest probability
  difference from float32 of any class in any 10 s window, and how often the top tag
  and the top-3 set agree;
- with ``--held-out MANIFEST``: what the changes do to accuracy where it matters, on the
  test-split clips of the packages the head was trained without (its config's
  ``held_out_sources``), each tagged on its own
  as a user's file would be: mAP over the classes the head reports that have positives
  there, and the top-1 / top-3 hit rates.

The timings share one process and its thread pools between four models, so they are
indicative only; ``transcribe_speed.py`` (one process per contender) is the speed measure.

    python benchmarks/quantization.py --corpus DIR [--model tiny.en] [--minutes 3]
        [--held-out CORPUS4/manifest.jsonl]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transcribe_speed import speech_over_sounds

import whisper_at
from whisper_at.audio import load_audio
from whisper_at_research.analysis.wer import wer
from whisper_at_research.corpus.speech import asterisk_prompts, librivox_clips
from whisper_at_research.training import tagging_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--held-out", type=Path, help="corpus manifest: also score the head's held-out packages"
    )
    args = parser.parse_args()
    audio = speech_over_sounds(args.corpus, args.minutes)
    seconds = len(audio) / 16000
    models = {
        "float32": whisper_at.load_model(args.model, device="cpu", precision="float32"),
        "int8 decoder": whisper_at.load_model(args.model, device="cpu", precision="float32:int8"),
        "int8": whisper_at.load_model(args.model, device="cpu", precision="int8"),
        "bf16 encoder": whisper_at.load_model(
            args.model, device="cpu", precision="bfloat16:float32"
        ),
    }
    lowered = [precision for precision in models if precision != "float32"]
    engine = models["float32"].engine.name
    print(f"{args.model}, engine {engine}, {seconds:.0f} s of speech over sounds, "
          f"CPU threads {torch.get_num_threads()}, {args.repeats} repeats")  # fmt: skip

    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for precision, model in models.items():
            for job, run in (
                ("transcribe+tag", lambda m=model: m.transcribe(audio, temperature=0.0)),
                ("tags only", lambda m=model: m.tag(audio)),
            ):
                start = time.perf_counter()
                run()
                times.setdefault(f"{job}, {precision}", []).append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    print("| job, precision | median s | x real time |\n|---|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value:.2f} | {seconds / value:.1f} |")
    for job in ("transcribe+tag", "tags only"):
        for precision in lowered:
            ratio = median[f"{job}, {precision}"] / median[f"{job}, float32"]
            print(f"{job}: {precision} takes {ratio:.2f}x the time of float32")

    clips = librivox_clips() + asterisk_prompts()
    speech = [load_audio(c.path, format=c.format) for c in clips]
    for precision, model in models.items():
        hyps = [model.transcribe(a, temperature=0.0, beam_size=1)["text"] for a in speech]
        print(f"WER {precision}: {wer([c.text for c in clips], hyps):.3f} "
              f"({len(clips)} utterances, greedy)")  # fmt: skip

    probs = {p: torch.sigmoid(m.tag(audio).logits) for p, m in models.items()}
    a = probs["float32"]
    for precision in lowered:
        b = probs[precision]
        top1 = (a.argmax(1) == b.argmax(1)).float().mean().item()
        top3 = np.mean([set(x.topk(3).indices.tolist()) == set(y.topk(3).indices.tolist())
                        for x, y in zip(a, b, strict=True)])  # fmt: skip
        print(f"tags, {precision}, over {len(a)} windows of 10 s: max |probability difference| "
              f"{(a - b).abs().max().item():.4f}, mean {(a - b).abs().mean().item():.5f}; "
              f"top-1 agrees {top1:.1%}, top-3 set agrees {top3:.1%}")  # fmt: skip
    if args.held_out:
        held_out_accuracy(models, args.held_out)


def held_out_accuracy(models: dict[str, whisper_at.WhisperAT], manifest: Path) -> None:
    """mAP and top-k hits of every precision's tags on the head's held-out packages."""
    from whisper_at_research.training import read_manifest
    from whisper_at_research.training.evaluate import top_k_hits
    from whisper_at_research.training.features import ClipReader
    from whisper_at_research.training.manifest import label_indices

    head = models["float32"].head
    held = set(head.config.held_out_sources or [])
    if not held:
        raise SystemExit(f"{head.source}: the head records no held-out packages")
    clips = [c for c in read_manifest(manifest) if held & set(c.sources) and c.split == "test"]
    targets = np.zeros((len(clips), head.config.n_classes))
    for row, indices in enumerate(label_indices(clips, head.config.labels)):
        targets[row, indices] = 1
    reported = head.config.reported_classes
    scored = [c for c in reported if targets[:, c].any()]
    reader = ClipReader()  # the clips as the feature store reads them
    audio = [reader.clip(c)[0] for c in clips]
    for precision, model in models.items():
        scores = np.stack([model.tag(a).probabilities.max(0).values.numpy() for a in audio])
        metrics = tagging_metrics(targets, scores, scored)
        hits = top_k_hits(targets, scores, reported, ks=(1, 3))
        print(f"held-out packages, {precision}: {len(clips)} clips, mAP {metrics.mAP:.3f} "
              f"over {len(scored)} classes, top-1 hit {hits['1']:.3f}, "
              f"top-3 hit {hits['3']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
