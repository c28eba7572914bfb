"""whisper-at: one frozen Whisper encoder pass gives the transcript and sound-event tags.

>>> import whisper_at
>>> model = whisper_at.load_model("tiny.en")
>>> result = model.transcribe("talk.wav", at_time_res=10)
>>> whisper_at.parse_at_label(result, top_k=5)
"""

__version__ = "0.1.0"  # before the imports: the pipeline records it in every result

from .audio import AudioError
from .engines import EngineError, WindowPlacementError
from .heads import HeadConfig, HeadError, TaggingHead, load_head, save_head
from .labels import LabelSet, audioset_labels
from .pipeline import FailedInput, WhisperAT, load_model
from .precision import Precision, PrecisionError
from .tagging import Tag, TaggingResult, TagWindow, parse_at_label
from .weights import WeightsError, available_models, known_models

__all__ = [
    "AudioError",
    "EngineError",
    "FailedInput",
    "HeadConfig",
    "HeadError",
    "Precision",
    "PrecisionError",
    "WeightsError",
    "WindowPlacementError",
    "LabelSet",
    "Tag",
    "TagWindow",
    "TaggingHead",
    "TaggingResult",
    "WhisperAT",
    "audioset_labels",
    "available_models",
    "known_models",
    "load_head",
    "load_model",
    "parse_at_label",
    "save_head",
]
