"""Tags-only throughput (seconds of audio per second) against standalone taggers.

Runs ``WhisperAT.tag`` (stream, log-mel, tapped encoder, pooling, TL-TR head) on a
synthetic recording for each Whisper size, and an AST-shaped (87M) and a
CED-Tiny-shaped tagger on the same audio cut into 10 s clips, alternating the
contenders over several repetitions and reporting medians and ratios. A size named
as a bundled model (``tiny.en``, ``base``) loads it with its shipped head and the ct2
engine, so ``--precisions`` may include the bfloat16 encoder; other sizes (``tiny``,
``large-v3``, ...) use random weights (timing does not depend on them) and the torch
engine, whose encoder precision is float32 (float16 on a GPU).

    python benchmarks/tag_throughput.py [--device cuda] [--sizes tiny,base] [--seconds 300]
        [--precisions auto,float32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from models import WHISPER_DIMS, ast_like, ced_tiny_like, random_head
from whisper.model import Whisper

from whisper_at.pipeline import WhisperAT, load_model
from whisper_at.weights import LoadedWhisper, available_models


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def whisper_tagger(size: str, device: torch.device, precision: str) -> WhisperAT:
    if size in available_models():
        return load_model(size, device=device, precision=precision)
    dims = WHISPER_DIMS[size]
    torch.manual_seed(0)
    with device:  # built in place: a large model's random init on the CPU takes minutes
        model = Whisper(dims).eval()
    loaded = LoadedWhisper(model=model, name=size, sha256="", source="random", ct2_dir=None)
    return WhisperAT(loaded, random_head(dims), precision=precision)


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
    parser.add_argument("--precisions", default="auto", help="comma list, e.g. auto,float32")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(args.seconds * 16000))).astype(np.float32)

    contenders = {}
    for size in args.sizes.split(","):
        for precision in args.precisions.split(","):
            model = whisper_tagger(size, device, precision)
            contenders[f"whisper-at {size} TL-TR ({model.precision.encoder} encoder)"] = (
                lambda m=model: m.tag(audio, batch_size=args.batch_size)
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
