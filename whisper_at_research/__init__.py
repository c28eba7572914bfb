"""whisper-at's research tools: the corpus builder, head training, evaluation and analyses.

They sit on top of the runtime package ``whisper_at`` and use only its public
contract (docs/architecture.md): ``whisper_at.audio.window_log_mel`` for the encoder
input of a window, ``whisper_at.tagging.pool_bins`` for the pooled features heads
read, ``whisper_at.tap`` for every block's output, ``whisper_at.heads`` for head
checkpoints. Their extra dependencies come with ``pip install 'whisper-at[research]'``
(and ``tinysoundfont`` for the corpus's music, see docs/corpus.md).
"""

from __future__ import annotations

from importlib.util import find_spec

# import name -> PyPI distribution, for the research extra
RESEARCH_DEPENDENCIES = {
    "sklearn": "scikit-learn",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
    "jiwer": "jiwer",
    "sed_scores_eval": "sed_scores_eval",
}


class MissingDependencyError(ImportError):
    """A research command was run without the packages of the research extra."""


def require_research_dependencies(command: str) -> None:
    """Raise :class:`MissingDependencyError` naming the install command when any is missing."""
    missing = [dist for module, dist in RESEARCH_DEPENDENCIES.items() if find_spec(module) is None]
    if missing:
        raise MissingDependencyError(
            f"`whisper-at {command}` is a research tool and needs {', '.join(missing)}: "
            "pip install 'whisper-at[research]'"
        )
