"""Figure 1 (upper): WER of clean speech mixed with real sounds at -20..20 dB SNR.

Speech: Asterisk prompts with 6+ words and known text (optionally the LibriVox
utterances too). Noise: the corpus's real-recording clips (``kind == "real"``) of
``n_classes`` classes; utterance ``i`` is mixed with recording ``i mod n`` of each
class (the noise crop/loop offset is fixed per utterance and class, so only the SNR
varies along a row). Decoding: openai-whisper's ``decode`` on batches of 30 s
windows, greedy (temperature 0), English, no timestamps, with the tap in place, so
the same pass also yields the encoder features of every mixture (pooled over the
speech frames) for the mixture probe.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from whisper_at.audio import SAMPLE_RATE, load_audio, window_log_mel

from .encode import LayerTap, analysis_cache_dir, digest, file_safe_name, load, pooled_frames
from .mixing import mix_at_snr
from .sounds import probe_clips, real_clips, sound_classes
from .wer import bootstrap_wer, normalize, word_errors

logger = logging.getLogger("whisper_at")

__all__ = ["RobustnessGrid", "run_robustness", "DEFAULT_SNRS", "QUICK_GRID"]

DEFAULT_SNRS = (-20, -15, -10, -5, 0, 5, 10, 15, 20)
_FRAMES_PER_SECOND = 50  # encoder frames
# Decoding stops after this many tokens (Whisper's default is 224). The prompts need
# under 60; only hallucination loops at very low SNR reach the cap, which bounds their
# cost (and their insertions: their WER is already far above 100%).
MAX_TOKENS = 128


@dataclass
class RobustnessGrid:
    n_prompts: int = 40  # of the 176 with 6+ words, as in the paper (40 utterances)
    n_classes: int = 20
    snrs: tuple[int, ...] = DEFAULT_SNRS
    seed: int = 0
    librivox: bool = False
    min_groups: int = 5  # a noise class needs this many independent recordings
    classes: list[str] | None = None  # explicit noise classes (default: a seeded draw)
    # Prompts longer than this are left out of the report (they are still in the drawn
    # grid): one 30 s window cannot hold them, and greedy decoding without timestamps
    # stops at their first long pause whatever the SNR (7 of the 176 prompts).
    max_speech_seconds: float = 20.0


QUICK_GRID = RobustnessGrid(n_prompts=4, n_classes=4, snrs=(-20, 0, 20))


@dataclass
class _Item:
    prompt: str
    text: str
    speech_path: str
    speech_format: str | None
    noise_class: str
    noise_path: str
    noise_recording: str
    noise_group: str
    snr: float
    noise_seed: int


@dataclass
class RobustnessResult:
    model: str
    sha256: str
    grid: dict
    per_snr: list[dict]
    per_class: dict[str, list[dict]]
    seconds: float
    seconds_per_transcription: float | None
    n_transcriptions: int
    features_path: str | None = None
    items_csv: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _speech(grid: RobustnessGrid):
    from ..corpus.speech import asterisk_prompts, librivox_clips

    prompts = asterisk_prompts(min_words=6)
    rng = np.random.default_rng(grid.seed)
    n = min(grid.n_prompts, len(prompts))
    chosen = [prompts[i] for i in sorted(rng.choice(len(prompts), size=n, replace=False))]
    if grid.librivox:
        chosen += librivox_clips()
    return chosen


def build_items(grid: RobustnessGrid, manifest: str | os.PathLike) -> list[_Item]:
    speech = _speech(grid)
    clips = real_clips(manifest)
    if grid.classes is not None:
        classes = list(grid.classes)
    else:
        eligible = sound_classes(clips, grid.min_groups)
        if len(eligible) < grid.n_classes:
            logger.warning("only %d noise classes are eligible", len(eligible))
        rng = np.random.default_rng(grid.seed + 1)
        pick = rng.choice(len(eligible), size=min(grid.n_classes, len(eligible)), replace=False)
        classes = sorted(eligible[i] for i in pick)
    # one clip per group, in a seeded order, so utterances meet different recordings
    noise = {
        c: probe_clips(clips, classes=[c], max_per_class=None, seed=grid.seed) for c in classes
    }
    for c, members in noise.items():
        seen, uniq = set(), []
        for m in members:
            if m.group not in seen:
                seen.add(m.group)
                uniq.append(m)
        noise[c] = uniq
    items = []
    for i, sp in enumerate(speech):
        for j, c in enumerate(classes):
            clip = noise[c][i % len(noise[c])]
            for snr in grid.snrs:
                items.append(
                    _Item(
                        prompt=sp.id,
                        text=sp.text,
                        speech_path=str(sp.path),
                        speech_format=sp.format,
                        noise_class=c,
                        noise_path=str(clip.path),
                        noise_recording=clip.recording,
                        noise_group=clip.group,
                        snr=float(snr),
                        noise_seed=grid.seed * 1_000_003 + i * 1009 + j,
                    )
                )
    return items


class _AudioCache:
    def __init__(self) -> None:
        self._d: dict[tuple[str, str | None], np.ndarray] = {}

    def get(self, path: str, fmt: str | None = None) -> np.ndarray:
        key = (path, fmt)
        if key not in self._d:
            self._d[key] = load_audio(path, format=fmt)
        return self._d[key]


def mixture_audio(item: _Item, audio: _AudioCache) -> np.ndarray:
    speech = audio.get(item.speech_path, item.speech_format)
    noise = audio.get(item.noise_path)
    mixed, _ = mix_at_snr(speech, noise, item.snr, np.random.default_rng(item.noise_seed))
    return mixed


def _decode_batch(layer_tap: LayerTap, mixtures: list[np.ndarray]) -> tuple[list[str], np.ndarray]:
    import whisper

    model = layer_tap.loaded.model
    n_mels = model.dims.n_mels
    mels = torch.stack([window_log_mel(torch.from_numpy(m), n_mels) for m in mixtures])
    fp16 = model.device.type == "cuda"
    options = whisper.DecodingOptions(
        language="en",
        task="transcribe",
        temperature=0.0,
        without_timestamps=True,
        fp16=fp16,
        sample_len=MAX_TOKENS,
    )
    layer_tap.forget()
    mels = mels.to(model.device, torch.float16 if fp16 else torch.float32)
    results = whisper.decode(model, mels, options)
    layers = layer_tap.layers()
    feats = np.stack(
        [
            pooled_frames(layers[k], 0, len(m) * _FRAMES_PER_SECOND // SAMPLE_RATE)
            for k, m in enumerate(mixtures)
        ]
    ).astype(np.float16)
    layer_tap.forget()
    return [r.text for r in results], feats


def run_robustness(
    model: str,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    grid: RobustnessGrid | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    n_boot: int = 1000,
    progress: bool = True,
    only_cached: bool = False,
) -> RobustnessResult:
    """Transcribe the grid (resuming from the cache), write ``robustness_<model>.json``
    and ``robustness_<model>_items.csv`` into ``out_dir`` and return the result.

    ``only_cached``: transcribe nothing, report the utterances whose every mixture is
    already in the cache (a partial grid, e.g. while a long run goes on elsewhere);
    the json then says ``"complete": false`` and which prompts it holds."""
    grid = grid or RobustnessGrid()
    loaded = load(model, device)
    items = build_items(grid, manifest)
    # what decides the audio and the decoding (not the grouping metadata)
    key = digest(
        [[i.prompt, i.speech_path, i.noise_path, i.snr, i.noise_seed] for i in items]
        + [batch_size, MAX_TOKENS]
    )[:16]
    work = analysis_cache_dir(cache_dir) / "robustness" / f"{loaded.sha256[:16]}-{key}"
    work.mkdir(parents=True, exist_ok=True)
    done_path = work / "hyps.jsonl"
    done: dict[int, list[str]] = {}
    timing: dict[int, float] = {}
    if done_path.exists():
        for line in done_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line being written by a running job
                continue
            if (work / f"feats-{row['batch']:05d}.npy").exists():
                done[row["batch"]] = row["hyps"]
                timing[row["batch"]] = row.get("seconds", float("nan"))
    batches = [
        list(range(b, min(b + batch_size, len(items)))) for b in range(0, len(items), batch_size)
    ]
    todo = [] if only_cached else [b for b in range(len(batches)) if b not in done]
    t0 = time.perf_counter()
    if todo:
        layer_tap = LayerTap(loaded)
        audio = _AudioCache()
        bar = tqdm(
            total=len(items),
            initial=len(items) - sum(len(batches[b]) for b in todo),
            unit="utt",
            desc=f"robustness {loaded.name}",
            disable=not progress,
        )
        try:
            for b in todo:
                start = time.perf_counter()
                mixtures = [mixture_audio(items[i], audio) for i in batches[b]]
                hyps, feats = _decode_batch(layer_tap, mixtures)
                np.save(work / f"feats-{b:05d}.npy", feats)
                took = time.perf_counter() - start
                with done_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"batch": b, "hyps": hyps, "seconds": took}) + "\n")
                done[b], timing[b] = hyps, took
                bar.update(len(batches[b]))
        finally:
            bar.close()
    have = [b for b in range(len(batches)) if b in done]
    hyp_of = {i: h for b in have for i, h in zip(batches[b], done[b], strict=True)}
    feats_of = {}
    for b in have:
        for i, f in zip(batches[b], np.load(work / f"feats-{b:05d}.npy"), strict=True):
            feats_of[i] = f
    complete = len(have) == len(batches)
    if not complete:  # keep the prompts with every mixture transcribed
        missing = {items[i].prompt for i in range(len(items)) if i not in hyp_of}
        keep = [i for i in range(len(items)) if items[i].prompt not in missing]
        if not keep:
            raise RuntimeError(f"no prompt is fully transcribed in the cache yet ({work})")
        logger.warning("partial grid: %d of %d mixtures", len(keep), len(items))
        items = [items[i] for i in keep]
    else:
        keep = list(range(len(items)))
    audio = _AudioCache()
    too_long = sorted(
        {
            it.prompt
            for it in items
            if len(audio.get(it.speech_path, it.speech_format)) / SAMPLE_RATE
            > grid.max_speech_seconds
        }
    )
    if too_long:
        logger.warning("left out of the report (over %g s): %s", grid.max_speech_seconds, too_long)
        keep = [k for k, it in zip(keep, items, strict=True) if it.prompt not in too_long]
        items = [it for it in items if it.prompt not in too_long]
    hyps = [hyp_of[i] for i in keep]
    feats = np.stack([feats_of[i] for i in keep])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe = file_safe_name(loaded.name)
    feats_path = out / f"robustness_{safe}_features.npz"
    np.savez_compressed(
        feats_path,
        features=feats,
        noise_class=np.array([i.noise_class for i in items]),
        noise_group=np.array([i.noise_group for i in items]),
        snr=np.array([i.snr for i in items]),
    )
    counts = [word_errors(i.text, h) for i, h in zip(items, hyps, strict=True)]
    errors = np.array([c.errors for c in counts])
    ref_words = np.array([c.ref_words for c in counts])
    snr = np.array([i.snr for i in items])
    cls = np.array([i.noise_class for i in items])
    per_snr = []
    for s in sorted(set(snr.tolist())):
        m = snr == s
        w, lo, hi = bootstrap_wer(errors[m], ref_words[m], n_boot=n_boot, seed=grid.seed)
        per_snr.append({"snr": s, "wer": w, "lo": lo, "hi": hi, "n": int(m.sum())})
    per_class: dict[str, list[dict]] = {}
    for c in sorted(set(cls.tolist())):
        rows = []
        for s in sorted(set(snr.tolist())):
            m = (snr == s) & (cls == c)
            w, lo, hi = bootstrap_wer(errors[m], ref_words[m], n_boot=n_boot, seed=grid.seed)
            rows.append({"snr": s, "wer": w, "lo": lo, "hi": hi, "n": int(m.sum())})
        per_class[c] = rows
    csv_path = out / f"robustness_{safe}_items.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "prompt",
                "noise_class",
                "noise_recording",
                "snr",
                "errors",
                "ref_words",
                "reference",
                "hypothesis",
                "reference_norm",
                "hypothesis_norm",
            ]
        )
        for it, h, c in zip(items, hyps, counts, strict=True):
            w.writerow(
                [
                    it.prompt,
                    it.noise_class,
                    it.noise_recording,
                    it.snr,
                    c.errors,
                    c.ref_words,
                    it.text,
                    h,
                    normalize(it.text),
                    normalize(h),
                ]
            )
    measured = [t for t in timing.values() if t == t]
    n_timed = sum(len(batches[b]) for b, t in timing.items() if t == t)
    g = asdict(grid)
    g.update(
        complete=complete,
        left_out_prompts=too_long,
        batch_size=batch_size,
        classes=sorted(set(cls.tolist())),
        prompts=sorted(set(i.prompt for i in items)),
        device=device,
    )
    result = RobustnessResult(
        model=loaded.name,
        sha256=loaded.sha256,
        grid=g,
        per_snr=per_snr,
        per_class=per_class,
        seconds=time.perf_counter() - t0,
        seconds_per_transcription=(sum(measured) / n_timed) if n_timed else None,
        n_transcriptions=len(items),
        features_path=str(feats_path),
        items_csv=str(csv_path),
    )
    (out / f"robustness_{safe}.json").write_text(
        json.dumps(result.to_json(), indent=1) + "\n", encoding="utf-8"
    )
    return result
