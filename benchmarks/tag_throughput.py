"""Tags-only throughput (seconds of audio per second) against standalone taggers.

Runs ``WhisperAT.tag`` (stream, log-mel, tapped encoder, pooling, TL-TR head) on a
synthetic recording for each Whisper size, and an AST-shaped (87M) and a
CED-Tiny-shaped tagger on the same audio cut into 10 s clips, alternating the
contenders over several repetitions and reporting medians and ratios. Sizes
other than the bundled ones use random weights: timing does not depend on them.

    python benchmarks/tag_throughput.py [--device cuda] [--sizes tiny,base] [--seconds 300]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from models import WHISPER_DIMS, ast_like, ced_tiny_like, random_head
from whisper.model import Whisper

from whisper_at.pipeline import WhisperAT
from whisper_at.weights import LoadedWhisper


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def whisper_tagger(size: str, device: torch.device) -> WhisperAT:
    dims = WHISPER_DIMS[size]
    torch.manual_seed(0)
    with device:  # built in place: a large model's random init on the CPU takes minutes
        model = Whisper(dims).eval()
    loaded = LoadedWhisper(model=model, name=size, sha256="", source="random", ct2_dir=None)
    return WhisperAT(loaded, random_head(dims))


def standalone(tagger: torch.nn.Module, audio: np.ndarray, device: torch.device, batch: int):
    """Cost of the tagger's network on 10 s clips (log-mel front end excluded: generous)."""
    n_clips = int(np.ceil(len(audio) / 160_000))
    tagger = tagger.to(device).eval()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    mel = torch.randn(batch, tagger.n_mels, tagger.frames, device=device)

    def run() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"),
        ):
            for _ in range(int(np.ceil(n_clips / batch))):
                tagger(mel)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="tiny,base", help=f"comma list of {list(WHISPER_DIMS)}")
    parser.add_argument("--seconds", type=float, default=300.0, help="audio length")
    parser.add_argument("--batch-size", type=int, default=8, help="30 s windows per encoder batch")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(args.seconds * 16000))).astype(np.float32)

    contenders = {}
    for size in args.sizes.split(","):
        model = whisper_tagger(size, device)
        contenders[f"whisper-at {size} TL-TR"] = lambda m=model: m.tag(
            audio, batch_size=args.batch_size
        )
    contenders["AST-shaped (87M)"] = standalone(ast_like(), audio, device, 4 * args.batch_size)
    contenders["CED-Tiny-shaped"] = standalone(ced_tiny_like(), audio, device, 4 * args.batch_size)

    for run in contenders.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            times[name].append(timed(run, device))

    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"threads: {torch.get_num_threads()}, audio: {args.seconds:.0f} s, "
          f"batch: {args.batch_size} windows, repeats: {args.repeats} (median)")  # fmt: skip
    print("| contender | median s | audio s per s |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {args.seconds / median:.0f} |")
    ast = statistics.median(times["AST-shaped (87M)"])
    for name, values in times.items():
        if name.startswith("whisper-at"):
            print(
                f"{name}: {ast / statistics.median(values):.2f}x the AST-shaped tagger's throughput"
            )


if __name__ == "__main__":
    main()
