"""Time contenders side by side: one worker process each, run in turn, several rounds.

Each contender lives in its own process, as a user's program would: what one
library leaves behind (OpenMP thread pools of PyTorch and of CTranslate2 in one
process slow PyTorch's decoding loop by up to a third, measured on the 2-core CPU)
does not weigh on another. The parent asks the workers one at a time, so only
one runs at any moment, and alternates them round by round, so a change in the
machine's load spreads over all of them.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

# builds, inside the worker, the function whose run is timed
Factory = Callable[[], Callable[[], object]]


@dataclass
class Timing:
    name: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def row(self, audio_seconds: float) -> str:
        """A markdown table row: median, spread and times real time."""
        low, high = min(self.seconds), max(self.seconds)
        return (
            f"| {self.name} | {self.median:.2f} | {low:.2f}-{high:.2f} | "
            f"{audio_seconds / self.median:.1f} |"
        )


TABLE_HEADER = "| contender | median s | min-max s | x real time |\n|---|---|---|---|"


def _serve(factory: Factory, conn) -> None:
    run = factory()
    run()  # warm-up: first-call costs (allocations, lazy initialisation) are not timed
    conn.send("ready")
    while conn.recv() == "run":
        start = time.perf_counter()
        run()
        conn.send(time.perf_counter() - start)


def alternate(contenders: dict[str, Factory], repeats: int) -> list[Timing]:
    """``repeats`` timed runs of every contender, alternated; workers start one at a time."""
    context = mp.get_context("spawn")
    workers = {}
    try:
        for name, factory in contenders.items():
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(factory, child), daemon=True)
            process.start()
            workers[name] = (process, parent)
            try:
                parent.recv()
            except EOFError:
                raise RuntimeError(f"{name}: the worker failed (its traceback is above)") from None
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(repeats):
            for name, (_, conn) in workers.items():
                conn.send("run")
                times[name].append(conn.recv())
    finally:
        for process, conn in workers.values():
            if process.is_alive():
                conn.send("stop")
            process.join(timeout=30)
    return [Timing(name, values) for name, values in times.items()]
