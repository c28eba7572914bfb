"""whisper-at: one frozen Whisper encoder pass gives the transcript and sound-event tags.

>>> import whisper_at
>>> model = whisper_at.load_model("tiny.en")
>>> result = model.transcribe("talk.wav", at_time_res=10)
>>> whisper_at.parse_at_label(result, top_k=5)

Code written for the reference Whisper-AT package (``import whisper_at as whisper``)
runs unchanged: its module-level names are here too (whisper_at.compat,
docs/compatibility.md).
"""

__version__ = "0.1.0"  # before the imports: the pipeline records it in every result

from .audio import AudioError
from .compat import (
    DecodingOptions,
    DecodingResult,
    ModelDimensions,
    decode,
    detect_language,
    load_audio,
    log_mel_spectrogram,
    pad_or_trim,
    parse_at_label,
    print_label_name,
    print_support_language,
    transcribe,
)
from .engines import EngineError, WindowPlacementError
from .events import EventOptions, SoundEvent
from .heads import HeadConfig, HeadError, TaggingHead, load_head, save_head
from .labels import LabelSet, audioset_labels
from .pipeline import FailedInput, WhisperAT, load_model
from .precision import Precision, PrecisionError
from .tagging import Tag, TaggingResult, TagWindow, TrackOptions
from .weights import WeightsError, available_models, known_models

__all__ = [
    "AudioError",
    "DecodingOptions",
    "DecodingResult",
    "EngineError",
    "EventOptions",
    "FailedInput",
    "HeadConfig",
    "HeadError",
    "ModelDimensions",
    "Precision",
    "PrecisionError",
    "SoundEvent",
    "TrackOptions",
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
    "decode",
    "detect_language",
    "known_models",
    "load_audio",
    "load_head",
    "load_model",
    "log_mel_spectrogram",
    "pad_or_trim",
    "parse_at_label",
    "print_label_name",
    "print_support_language",
    "save_head",
    "transcribe",
]
