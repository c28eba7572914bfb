"""The research subcommands of the ``whisper-at`` command line.

Registered under the ``whisper_at.commands`` entry-point group (pyproject.toml), so
the runtime's CLI finds them without importing this package: ``whisper-at corpus``,
``features``, ``train``, ``evaluate``, ``evaluate-events``, ``calibrate`` and ``analyze``.
Each takes the arguments after its name and returns an exit status; without the research
extra it says what to install.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from . import MissingDependencyError, require_research_dependencies


def _checked(command: str, needs_extra: bool, run: Callable[[list[str]], int]):
    def main(argv: list[str]) -> int:
        if needs_extra:
            try:
                require_research_dependencies(command)
            except MissingDependencyError as e:
                print(f"whisper-at: error: {e}", file=sys.stderr)
                return 2
        return run(argv)

    return main


def _corpus(argv: list[str]) -> int:
    from .corpus.cli import main

    return main(argv)


def _features(argv: list[str]) -> int:
    from .training.cli import features_main

    if not argv or argv[0] != "extract":
        print("usage: whisper-at features extract MANIFEST --out DIR [...]", file=sys.stderr)
        return 2
    return features_main(argv[1:])


def _train(argv: list[str]) -> int:
    from .training.cli import train_main

    return train_main(argv)


def _evaluate(argv: list[str]) -> int:
    from .training.cli import evaluate_main

    return evaluate_main(argv)


def _evaluate_events(argv: list[str]) -> int:
    from .training.cli import evaluate_events_main

    return evaluate_events_main(argv)


def _calibrate(argv: list[str]) -> int:
    from .training.cli import calibrate_main

    return calibrate_main(argv)


def _analyze(argv: list[str]) -> int:
    from .analysis.cli import main

    return main(argv)


# the corpus builder needs only the runtime's dependencies (and tinysoundfont for music)
corpus = _checked("corpus", False, _corpus)
features = _checked("features", True, _features)
train = _checked("train", True, _train)
evaluate = _checked("evaluate", True, _evaluate)
evaluate_events = _checked("evaluate-events", True, _evaluate_events)
calibrate = _checked("calibrate", True, _calibrate)
analyze = _checked("analyze", True, _analyze)
