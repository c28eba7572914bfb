"""The non-speech guard against faster-whisper's own (Silero VAD) and against no guard.

Same audio, same tiny.en weights (the bundled CTranslate2 folder) for every contender:

- ``faster-whisper``: ``WhisperModel.transcribe`` with its defaults (no VAD);
- ``faster-whisper + VAD``: the same with ``vad_filter=True`` (Silero VAD, shipped inside
  faster-whisper, runs offline);
- ``whisper-at``: ``transcribe`` without the guard; ``whisper-at + guard``: with
  ``suppress_non_speech=True``. The guard only removes segments after decoding, so both
  rows come from one call: the unguarded text is every segment, suppressed ones included.

Non-speech: clips of the corpus's test split whose labels hold no speech class (split
into music and other sounds), and generated silence, white and pink noise. The count is
words (after Whisper's English normalizer) per hour of audio: every word there is
invented. Speech: the LibriVox utterances and Asterisk prompts with their reference
text, clean and mixed with non-speech test clips at several SNRs; corpus WER.

It also reads the speech probability of the valid split's clips (tags only), which is
where the default threshold comes from: the share of clips with speech that would be
flagged, and of clips without speech that would.

    nice -n 10 python benchmarks/nonspeech_guard.py --corpus /work/data/corpus3 \\
        --out docs/measurements/nonspeech_guard
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel
from tqdm import tqdm

import whisper_at
from whisper_at.audio import SAMPLE_RATE, load_audio
from whisper_at.guard import DEFAULT_SPEECH_THRESHOLD, speech_classes
from whisper_at.labels import audioset_labels
from whisper_at_research.analysis.mixing import mix_at_snr
from whisper_at_research.analysis.wer import normalize, word_errors
from whisper_at_research.corpus import asterisk_prompts, librivox_clips

CONTENDERS = ("faster-whisper", "faster-whisper + VAD", "whisper-at", "whisper-at + guard")
MUSIC = audioset_labels().index("Music")
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass
class Item:
    category: str  # a table row
    name: str
    audio: np.ndarray
    reference: str | None = None  # speech only


def _speech_indices() -> set[int]:
    labels = audioset_labels()
    return set(speech_classes(labels, list(range(len(labels)))))


def corpus_rows(corpus: Path, split: str) -> list[dict]:
    with open(corpus / "manifest.jsonl", encoding="utf-8") as f:
        return [row for row in map(json.loads, f) if row["split"] == split]


def nonspeech_items(corpus: Path, per_category: int, rng: np.random.Generator) -> list[Item]:
    """Test clips without speech: ``per_category`` with music, as many other sounds."""
    speech = _speech_indices()
    rows = [r for r in corpus_rows(corpus, "test") if not speech & set(r["labels"])]
    items = []
    for category, keep in (("music", True), ("other sounds", False)):
        chosen = [r for r in rows if (MUSIC in r["labels"]) == keep]
        picked = rng.choice(len(chosen), min(per_category, len(chosen)), replace=False)
        for i in sorted(picked):
            row = chosen[i]
            items.append(Item(category, row["path"], load_audio(corpus / row["path"])))
    return items


def synthetic_items(seconds: float, rng: np.random.Generator) -> list[Item]:
    """Digital silence, and white and pink noise at -40 and -20 dBFS RMS."""
    n = int(seconds * SAMPLE_RATE)
    items = [Item("silence", "silence", np.zeros(n, dtype=np.float32))]
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))  # 1/f power
    pink = np.fft.irfft(spectrum, n)
    for name, noise in (("white noise", white), ("pink noise", pink)):
        for dbfs in (-40, -20):
            scaled = noise / np.sqrt(np.mean(noise**2)) * 10 ** (dbfs / 20)
            items.append(Item(name, f"{name} {dbfs} dBFS", scaled.astype(np.float32)))
    return items


def speech_items(
    corpus: Path, n_prompts: int, snrs: list[int], rng: np.random.Generator
) -> list[Item]:
    """LibriVox and Asterisk speech, clean and over test-split sounds (one per utterance)."""
    clips = librivox_clips() + asterisk_prompts()[:n_prompts]
    speech = _speech_indices()
    noises = [r for r in corpus_rows(corpus, "test") if not speech & set(r["labels"])]
    items = []
    for clip in clips:
        audio = load_audio(clip.path, format=clip.format)
        items.append(Item("clean", clip.id, audio, clip.text))
        noise_row = noises[int(rng.integers(len(noises)))]
        noise = load_audio(corpus / noise_row["path"])
        for snr in snrs:
            mixed, _ = mix_at_snr(audio, noise, snr, rng)
            name = f"{clip.id} + {noise_row['path']}"
            items.append(Item(f"{snr} dB SNR", name, mixed, clip.text))
    return items


def transcribe_all(model: whisper_at.WhisperAT, items: list[Item]) -> list[dict[str, object]]:
    """Each contender's text per item, and the guard's flags."""
    faster = WhisperModel(str(model.loaded.ct2_dir), device="cpu", compute_type="float32")

    def fw(audio: np.ndarray, vad: bool) -> str:
        segments, _ = faster.transcribe(audio, language="en", vad_filter=vad)
        return "".join(s.text for s in segments)

    out = []
    for item in tqdm(items, desc="transcribing", unit="clip"):
        result = model.transcribe(item.audio, language="en", suppress_non_speech=True)
        everything = sorted(
            result["segments"] + result["suppressed_segments"], key=lambda s: s["id"]
        )
        out.append(
            {
                "faster-whisper": fw(item.audio, vad=False),
                "faster-whisper + VAD": fw(item.audio, vad=True),
                "whisper-at": "".join(s["text"] for s in everything),
                "whisper-at + guard": result["text"],
                "suppressed": len(result["suppressed_segments"]),
                "segments": len(everything),
                "speech_probability": [s["speech_probability"] for s in everything],
            }
        )
    return out


def valid_scores(
    model: whisper_at.WhisperAT, corpus: Path, limit: int | None, rng: np.random.Generator
) -> tuple[list[float], list[float]]:
    """Speech probability of valid-split clips (tags only; ``limit`` drawn at random, else
    all), with speech and without."""
    rows = corpus_rows(corpus, "valid")
    if limit is not None and limit < len(rows):
        rows = [rows[i] for i in sorted(rng.choice(len(rows), limit, replace=False))]
    speech = _speech_indices()
    classes = speech_classes(model.labels, model.head.config.reported_classes)
    with_speech, without = [], []
    paths = [corpus / row["path"] for row in rows]
    for row, tagging in zip(rows, model.tag_many(paths, 10.0, progress=True), strict=True):
        p = tagging.span_probability(classes, 0.0, tagging.duration)
        (with_speech if speech & set(row["labels"]) else without).append(p)
    return with_speech, without


def _words(text: str) -> int:
    return len(normalize(text).split())


def _flagged(pairs: list[tuple[Item, dict]]) -> str:
    return f"{sum(t['suppressed'] for _, t in pairs)} of {sum(t['segments'] for _, t in pairs)}"


def tables(items: list[Item], texts: list[dict], scores: tuple[list[float], list[float]]) -> str:
    groups: dict[str, list[tuple[Item, dict]]] = {}
    for item, text in zip(items, texts, strict=True):
        groups.setdefault(item.category, []).append((item, text))
    head = " | ".join(CONTENDERS) + " | segments suppressed |"
    rule = "|---" * (len(CONTENDERS) + 3) + "|"
    lines = [
        "Hallucinated words per hour of non-speech audio (words after Whisper's normalizer):",
        "",
        "| audio | clips, minutes | " + head,
        rule,
    ]
    for category, pairs in groups.items():
        if pairs[0][0].reference is not None:
            continue
        hours = sum(len(i.audio) for i, _ in pairs) / SAMPLE_RATE / 3600
        rates = [sum(_words(t[c]) for _, t in pairs) / hours for c in CONTENDERS]
        row = f"| {category} | {len(pairs)}, {hours * 60:.1f} | "
        lines.append(row + " | ".join(f"{r:.0f}" for r in rates) + f" | {_flagged(pairs)} |")
    if any(item.reference is not None for item in items):
        lines += ["", "WER (%) on speech, clean and over non-speech sounds:", ""]
        lines += ["| speech | utterances, words | " + head, rule]
    for category, pairs in groups.items():
        if pairs[0][0].reference is None:
            continue
        n_words = sum(len(normalize(i.reference).split()) for i, _ in pairs)
        wers = [
            100 * sum(word_errors(i.reference, t[c]).errors for i, t in pairs) / n_words
            for c in CONTENDERS
        ]
        row = f"| {category} | {len(pairs)}, {n_words} | "
        lines.append(row + " | ".join(f"{w:.1f}" for w in wers) + f" | {_flagged(pairs)} |")
    with_speech, without = (np.array(s) for s in scores)
    if not len(with_speech) + len(without):
        return "\n".join(lines)
    lines += [
        "",
        f"Valid split, speech probability per 10 s clip ({len(with_speech)} clips with speech, "
        f"{len(without)} without): share under each threshold",
        "",
        "| threshold | clips with speech flagged | clips without speech flagged |",
        "|---|---|---|",
    ]
    for t in THRESHOLDS:
        mark = " (default)" if t == DEFAULT_SPEECH_THRESHOLD else ""
        lines.append(
            f"| {t}{mark} | {100 * np.mean(with_speech < t):.1f}% | "
            f"{100 * np.mean(without < t):.1f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="a built corpus folder")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.json")
    parser.add_argument("--clips", type=int, default=30, help="test clips per non-speech kind")
    parser.add_argument("--synthetic-seconds", type=float, default=30.0)
    parser.add_argument("--prompts", type=int, default=10, help="Asterisk prompts (+5 LibriVox)")
    parser.add_argument(
        "--snrs", type=int, nargs="*", default=[20, 10, 5, 0], help="none: no speech rows"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--valid-clips", type=int, help="read N valid clips drawn at random (0: none)"
    )
    args = parser.parse_args()
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    rng = np.random.default_rng(args.seed)
    start = time.time()
    model = whisper_at.load_model("tiny.en")
    items = (
        nonspeech_items(args.corpus, args.clips, rng)
        + synthetic_items(args.synthetic_seconds, rng)
        + (speech_items(args.corpus, args.prompts, args.snrs, rng) if args.snrs else [])
    )
    texts = transcribe_all(model, items)
    scores = valid_scores(model, args.corpus, args.valid_clips, rng)
    report = tables(items, texts, scores)
    minutes = (time.time() - start) / 60
    report += f"\n\n{len(items)} clips; {minutes:.1f} min wall time.\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(report + "\n", encoding="utf-8")
    raw = [
        {**{k: v for k, v in asdict(i).items() if k != "audio"}, **t}
        for i, t in zip(items, texts, strict=True)
    ]
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
