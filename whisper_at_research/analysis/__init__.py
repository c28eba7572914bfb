"""The paper's analyses: noise robustness, layer-wise probes, class-wise correlations.

CLI: ``whisper-at analyze {robustness,probe,classwise,best-layer,family}`` (see
docs/analysis.md); ``python -m whisper_at_research.analysis.cli`` works as well.
"""

from .figures import best_layer_figure, classwise, family, figure1
from .mixing import fit_noise, mix_at_snr, snr_db
from .probe import layer_probe, run_mixture_probe, run_probe
from .robustness import QUICK_GRID, RobustnessGrid, run_robustness
from .wer import bootstrap_wer, normalize, wer, word_errors

__all__ = [
    "QUICK_GRID",
    "RobustnessGrid",
    "best_layer_figure",
    "bootstrap_wer",
    "classwise",
    "family",
    "figure1",
    "fit_noise",
    "layer_probe",
    "mix_at_snr",
    "normalize",
    "run_mixture_probe",
    "run_probe",
    "run_robustness",
    "snr_db",
    "wer",
    "word_errors",
]
