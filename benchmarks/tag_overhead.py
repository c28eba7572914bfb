"""What the tags add to a transcription: the same engine with and without a head, paired.

The overhead target (at most 1% extra wall time) is smaller than the run-to-run spread
of a whole transcription on a shared CPU (a few percent), so a five-round table cannot
settle it. Here the two contenders of each engine run back to back in every round (one
worker process each, ``side_by_side.py``) and the overhead is the median of the
per-round ratios, with a bootstrap 95% interval, over many rounds. Same audio, head and
options as ``transcribe_speed.py``. Worker processes differ among themselves by a few
percent as well, so ``--profile`` also counts the tag work itself in one tagged run
(cProfile: placing and pooling each encoder pass and running the head, then the result's
tag fields) as a share of that run.

    python benchmarks/tag_overhead.py --corpus DIR [--engines ct2 torch] [--repeats 15]
        [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import time

import numpy as np
import torch
from side_by_side import alternate
from transcribe_speed import Setup, whisper_at_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    Setup.add_arguments(parser, repeats=15)
    parser.add_argument("--engines", nargs="+", default=["ct2"], choices=["ct2", "torch"])
    parser.add_argument("--profile", action="store_true", help="also profile the tag work")
    args = parser.parse_args()
    setup = Setup.from_arguments(args)
    seconds = len(setup.audio()) / 16000
    contenders = {
        f"{engine} {'+ tags' if tags else 'no tags'}": functools.partial(
            whisper_at_engine, setup, engine, tags
        )
        for engine in args.engines
        for tags in (False, True)
    }
    runs = {t.name: np.array(t.seconds) for t in alternate(contenders, args.repeats)}
    print(f"{args.model}, {seconds:.0f} s of speech over sounds, beam {args.beam_size}, "
          f"CPU threads {torch.get_num_threads()}, {args.repeats} paired rounds")  # fmt: skip
    rng = np.random.default_rng(0)
    for engine in args.engines:
        tagged, untagged = runs[f"{engine} + tags"], runs[f"{engine} no tags"]
        ratios = tagged / untagged
        boot = np.median(rng.choice(ratios, (2000, len(ratios))), axis=1)
        low, high = np.percentile(boot, [2.5, 97.5])
        print(f"  {engine}: no tags {np.median(untagged):.2f} s, + tags {np.median(tagged):.2f} s;"
              f" overhead (median of per-round ratios) {np.median(ratios) - 1:+.1%}"
              f" (95% CI {low - 1:+.1%} to {high - 1:+.1%})")  # fmt: skip
        if args.profile:
            print(f"  {engine}: {profiled_tag_share(setup, engine)}")


# where the tag work happens: the tap listener (place, pool, head) and the result's fields
TAG_FUNCTIONS = ("place", "_with_tags")


def profiled_tag_share(setup: Setup, engine: str) -> str:
    run = whisper_at_engine(setup, engine, tags=True)
    run()  # warm-up
    profile = cProfile.Profile()
    profile.enable()
    start = time.perf_counter()
    run()
    total = time.perf_counter() - start
    profile.disable()
    spent = {name: 0.0 for name in TAG_FUNCTIONS}
    for (path, _, name), row in pstats.Stats(profile).stats.items():
        if name in spent and "whisper_at" in path:
            spent[name] += row[3]  # cumulative time
    parts = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in spent.items())
    return (f"tag work in one profiled run: {parts} = {sum(spent.values()) / total:.1%} "
            f"of its {total:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
