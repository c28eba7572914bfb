"""Recording-chain augmentation of training clips (issue 13, section 3).

Heads trained on the corpus learn its recording chains as much as its sounds: a class
that only ever comes from one package's studio recordings is not recognised through a
phone, in a hall, or after an MP3 encoder. This module changes what differs between
sources, on the 16 kHz waveform of a 10 s training clip, before it is packed into an
encoder window (``features.extract_features(..., augment=...)``):

- ``reverb``: convolution with a shoebox room impulse response (pyroomacoustics image
  source model; random room size, RT60 and source/microphone positions). A bank of
  ``n_rooms`` RIRs is made once per run, from the seed.
- ``eq``: telephone (300-3400 Hz), AM radio (150-4500 Hz) or small-speaker (500-7000 Hz)
  band-limiting (Butterworth, zero phase), or a random spectral tilt (dB per octave).
- ``codec``: an MP3, Ogg Vorbis or Opus round trip through PyAV at a low bitrate, aligned
  back to the input (codec delay removed) and cut to the same length.
- ``gain``: a feed-forward compressor (threshold, ratio, 10 ms envelope) and an output
  gain; what goes past full scale is clipped, as a recorder would.
- ``bed``: another training clip without Speech or Music (ambience, noise, events) under
  the clip at a random SNR; the bed's labels and packages are added to the view's.
- ``speech``: a training clip with Speech and without Music over the clip at a random
  speech-to-clip ratio; its labels (Speech, ...) and packages are added.

Labels stay true: the filters, the room, the codec and the compressor change how a sound
was recorded, not what sounds are in it; the two mixing families add their partner's
labels. Each view's draw is made from ``(seed, clip index, copy)`` alone, so a view is the
same whatever the shard or resume, and the draws are stored with the features.

The module sits in ``training`` (not ``corpus``) because it acts in the feature
extractor's data flow: the corpus stays one fixed set of clips whose valid and test
features are extracted once, and each augmentation variant is a store of training views
next to it (``whisper-at train BASE --augmented VIEWS``).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property

import av
import numpy as np
from scipy import signal

from whisper_at.audio import SAMPLE_RATE

logger = logging.getLogger("whisper_at")

FAMILIES = ("reverb", "eq", "codec", "gain", "bed", "speech")
EQ_BANDS = {  # band-pass edges in Hz
    "telephone": (300.0, 3400.0),
    "am_radio": (150.0, 4500.0),
    "small_speaker": (500.0, 7000.0),
}
EQ_KINDS = (*EQ_BANDS, "tilt")
CODECS = {  # name -> (container, PyAV encoder, bitrate range in kbit/s)
    "mp3": ("mp3", "libmp3lame", (16, 48)),
    "vorbis": ("ogg", "vorbis", (32, 64)),
    "opus": ("ogg", "libopus", (8, 32)),
}
BED_EXCLUDES = ("Speech", "Music")  # a bed is neither (it would teach "speech is noise")
SPEECH_LABEL = "Speech"
EQ_ORDER = 8  # Butterworth order of the band-pass (doubled by the zero-phase pass)
ENVELOPE_SECONDS = 0.01  # compressor level detector
_MAX_CODEC_DELAY = 4096  # samples searched when aligning a codec's output
_SILENT_RMS = 1e-5
VIEW_SEPARATOR = "~aug"  # a view's id: <clip id>~aug<copy>


def view_id(clip_id: str, copy: int) -> str:
    return f"{clip_id}{VIEW_SEPARATOR}{copy}"


def view_base_id(clip_id: str) -> str:
    """The id of the clip a view was made from (``clip_id`` itself for a plain clip)."""
    return clip_id.rsplit(VIEW_SEPARATOR, 1)[0] if VIEW_SEPARATOR in clip_id else clip_id


class AugmentError(ValueError):
    """An augmentation that cannot be made (unknown family, no partner clips, ...)."""


@dataclass(frozen=True)
class AugmentConfig:
    """What an augmentation run does; stored in the views store's meta and the head's record.

    Every view applies each family of ``families`` with ``probability``, and at least one.
    """

    families: tuple[str, ...] = FAMILIES
    copies: int = 1  # views per training clip
    seed: int = 0
    probability: float = 0.5
    rt60: tuple[float, float] = (0.15, 0.8)  # seconds
    room_size: tuple[tuple[float, float], ...] = ((3.0, 10.0), (3.0, 8.0), (2.4, 4.0))  # m
    n_rooms: int = 24
    tilt_db_per_octave: tuple[float, float] = (-4.0, 4.0)
    eq_kinds: tuple[str, ...] = EQ_KINDS
    codecs: tuple[str, ...] = tuple(CODECS)
    compress_threshold_db: tuple[float, float] = (-35.0, -15.0)  # dBFS of the envelope
    compress_ratio: tuple[float, float] = (2.0, 8.0)
    gain_db: tuple[float, float] = (-20.0, 6.0)
    bed_snr_db: tuple[float, float] = (0.0, 20.0)  # clip over bed
    speech_snr_db: tuple[float, float] = (-5.0, 15.0)  # clip over speech

    def __post_init__(self) -> None:
        unknown = set(self.families) - set(FAMILIES)
        if unknown or not self.families:
            raise AugmentError(
                f"unknown augmentation {sorted(unknown)}; choose from {', '.join(FAMILIES)} "
                "or 'all'"
            )
        if self.copies < 1 or not 0 <= self.probability <= 1 or self.n_rooms < 1:
            raise AugmentError("copies and n_rooms must be >= 1 and probability in [0, 1]")
        if set(self.eq_kinds) - set(EQ_KINDS) or set(self.codecs) - set(CODECS):
            raise AugmentError(f"eq kinds are {EQ_KINDS}, codecs {tuple(CODECS)}")

    @classmethod
    def parse(cls, spec: str, **options) -> AugmentConfig:
        """``"all"`` or a comma-separated list of families, e.g. ``"reverb,codec"``."""
        names = FAMILIES if spec.strip() == "all" else tuple(s.strip() for s in spec.split(","))
        return cls(families=tuple(dict.fromkeys(n for n in names if n)), **options)

    def to_dict(self) -> dict:
        """JSON-ready (tuples as lists), as stored in a views store's meta."""
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class ViewPlan:
    """One view's draw: each applied family and its parameters (JSON-ready)."""

    steps: dict[str, dict] = field(default_factory=dict)
    partners: tuple[int, ...] = ()  # indices of the clips mixed in (bed, speech)


# -- the transforms, each on float32 mono 16 kHz samples --------------------------------
def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0


def mix_at_snr(clip: np.ndarray, other: np.ndarray, snr_db: float) -> np.ndarray:
    """``clip`` plus ``other`` scaled so that 10 log10(P_clip / P_other) is ``snr_db``.

    Powers are over the whole buffers; ``other`` is tiled or cut to the clip's length. A
    silent clip gets ``other`` at -30 dBFS RMS instead.
    """
    other = np.resize(other, len(clip)).astype(np.float32)
    level = rms(other)
    if level < _SILENT_RMS:
        return clip.copy()
    target = rms(clip) / 10 ** (snr_db / 20) if rms(clip) >= _SILENT_RMS else 10 ** (-30 / 20)
    return (clip + other * np.float32(target / level)).astype(np.float32)


def band_limit(audio: np.ndarray, low_hz: float, high_hz: float) -> np.ndarray:
    """Zero-phase Butterworth band-pass (order ``EQ_ORDER``, applied forwards and back)."""
    sos = signal.butter(EQ_ORDER, [low_hz, high_hz], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    return signal.sosfiltfilt(sos, audio).astype(np.float32)


def tilt(audio: np.ndarray, db_per_octave: float, pivot_hz: float = 1000.0) -> np.ndarray:
    """A spectral tilt: gain ``db_per_octave * log2(f / pivot)`` (flat below 50 Hz)."""
    spectrum = np.fft.rfft(audio)
    freqs = np.maximum(np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE), 50.0)
    gain = 10 ** (db_per_octave * np.log2(freqs / pivot_hz) / 20)
    return np.fft.irfft(spectrum * gain, n=len(audio)).astype(np.float32)


def shoebox_rir(
    room: Sequence[float], rt60: float, source: Sequence[float], mic: Sequence[float]
) -> np.ndarray:
    """A room impulse response (pyroomacoustics ISM; wall absorption by inverse Sabine)."""
    import pyroomacoustics as pra

    absorption, max_order = pra.inverse_sabine(rt60, list(room))
    shoebox = pra.ShoeBox(
        list(room), fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=max_order
    )
    shoebox.add_source(list(source))
    shoebox.add_microphone(list(mic))
    shoebox.compute_rir()
    rir = np.asarray(shoebox.rir[0][0], dtype=np.float32)
    return rir / np.abs(rir).max()


def measure_rt60(rir: np.ndarray) -> float:
    """RT60 of an impulse response from its Schroeder decay (-5 to -35 dB, extrapolated)."""
    import pyroomacoustics as pra

    return float(pra.experimental.measure_rt60(rir, fs=SAMPLE_RATE, decay_db=30))


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """The clip in the room: convolved, aligned on the direct path, same length and RMS."""
    onset = int(np.argmax(np.abs(rir)))
    wet = signal.fftconvolve(audio, rir[onset:])[: len(audio)]
    level = rms(wet)
    return (wet * (rms(audio) / level if level > 0 else 0.0)).astype(np.float32)


def compress(audio: np.ndarray, threshold_db: float, ratio: float, gain_db: float) -> np.ndarray:
    """Feed-forward compression above ``threshold_db``, then ``gain_db``, clipped to [-1, 1]."""
    a = np.exp(-1.0 / (ENVELOPE_SECONDS * SAMPLE_RATE))
    power = signal.lfilter([1 - a], [1, -a], np.square(audio, dtype=np.float64))
    level_db = 10 * np.log10(np.maximum(power, 1e-12))
    reduction_db = np.maximum(level_db - threshold_db, 0.0) * (1 - 1 / ratio)
    out = audio * 10 ** ((gain_db - reduction_db) / 20)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def codec_round_trip(audio: np.ndarray, codec: str, kbps: int) -> np.ndarray:
    """Encode with ``codec`` (mp3, vorbis, opus) at ``kbps`` and decode, same length."""
    if codec not in CODECS:
        raise AugmentError(f"unknown codec {codec!r}; choose from {tuple(CODECS)}")
    container_format, encoder, _ = CODECS[codec]
    layout = "stereo" if encoder == "vorbis" else "mono"  # FFmpeg's Vorbis encoder: 2 channels
    channels = 2 if layout == "stereo" else 1
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as out:
        stream = out.add_stream(encoder, rate=SAMPLE_RATE, layout=layout)
        stream.bit_rate = kbps * 1000
        if encoder == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}
        planes = np.repeat(np.clip(audio, -1, 1)[None].astype(np.float32), channels, axis=0)
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
        frame.sample_rate = SAMPLE_RATE
        resampler = av.AudioResampler(
            format=stream.codec_context.format, layout=layout, rate=SAMPLE_RATE
        )
        fifo = av.AudioFifo()
        for piece in resampler.resample(frame):
            fifo.write(piece)
        for piece in fifo.read_many(stream.codec_context.frame_size or 1024, partial=True):
            out.mux(stream.encode(piece))
        out.mux(stream.encode(None))
    buffer.seek(0)
    decoded = []
    with av.open(buffer, "r") as inp:
        back = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)  # channels kept, then averaged
        for frame in inp.decode(audio=0):
            decoded += [f.to_ndarray().mean(axis=0) for f in back.resample(frame)]
        decoded += [f.to_ndarray().mean(axis=0) for f in back.resample(None)]
    out_audio = np.concatenate(decoded) if decoded else np.zeros(0, np.float32)
    return _align(audio, out_audio)


def _align(reference: np.ndarray, delayed: np.ndarray) -> np.ndarray:
    """``delayed`` shifted by the lag (0.._MAX_CODEC_DELAY) that best matches ``reference``."""
    n = len(reference)
    padded = np.zeros(n + _MAX_CODEC_DELAY, np.float32)
    padded[: min(len(delayed), len(padded))] = delayed[: len(padded)]
    corr = signal.fftconvolve(padded, reference[::-1], mode="valid")
    lag = int(np.argmax(corr[: _MAX_CODEC_DELAY + 1]))
    return padded[lag : lag + n].copy()


# -- drawing and rendering views -------------------------------------------------------
def _uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


class Augmenter:
    """Draws view plans and renders them for the clips of one manifest.

    clip_labels: each clip's label names (to find bed and speech partners); candidates:
    indices of the clips that may be partners (the training clips); load: index -> 10 s of
    samples of that clip.
    """

    def __init__(
        self,
        config: AugmentConfig,
        clip_labels: Sequence[Sequence[str]],
        recordings: Sequence[str],
        candidates: Sequence[int],
        load: Callable[[int], np.ndarray],
    ) -> None:
        self.config = config
        self._recordings = recordings
        self._load = load
        self.beds = [i for i in candidates if not set(BED_EXCLUDES) & set(clip_labels[i])]
        self.speech = [
            i
            for i in candidates
            if SPEECH_LABEL in clip_labels[i] and BED_EXCLUDES[1] not in clip_labels[i]
        ]
        for family, pool in (("bed", self.beds), ("speech", self.speech)):
            if family in config.families and not pool:
                raise AugmentError(
                    f"the '{family}' augmentation needs training clips "
                    + ("without Speech or Music" if family == "bed" else "with Speech")
                    + "; this manifest has none"
                )

    @cached_property
    def rooms(self) -> list[dict]:
        """The RIR bank: ``n_rooms`` rooms drawn from the seed (made on first use)."""
        rng = np.random.default_rng([self.config.seed, 0x800])
        bank = []
        for _ in range(self.config.n_rooms):
            room = [_uniform(rng, b) for b in self.config.room_size]
            rt60 = _uniform(rng, self.config.rt60)
            source, mic = ([_uniform(rng, (0.5, d - 0.5)) for d in room] for _ in range(2))
            rir = shoebox_rir(room, rt60, source, mic)
            bank.append({"room": room, "rt60": rt60, "source": source, "mic": mic, "rir": rir})
        return bank

    def plan(self, index: int, copy: int) -> ViewPlan:
        """The draw for view ``copy`` of clip ``index`` (a function of the seed and both)."""
        c = self.config
        rng = np.random.default_rng([c.seed, index, copy])
        chosen = [f for f in c.families if rng.random() < c.probability]
        if not chosen:
            chosen = [c.families[int(rng.integers(len(c.families)))]]
        steps: dict[str, dict] = {}
        partners: list[int] = []
        for family in chosen:
            if family == "reverb":
                steps[family] = {"room": int(rng.integers(c.n_rooms))}
            elif family == "eq":
                kind = c.eq_kinds[int(rng.integers(len(c.eq_kinds)))]
                steps[family] = {"kind": kind}
                if kind == "tilt":
                    steps[family]["db_per_octave"] = _uniform(rng, c.tilt_db_per_octave)
            elif family == "codec":
                codec = c.codecs[int(rng.integers(len(c.codecs)))]
                low, high = CODECS[codec][2]
                steps[family] = {"codec": codec, "kbps": int(rng.integers(low, high + 1))}
            elif family == "gain":
                steps[family] = {
                    "threshold_db": _uniform(rng, c.compress_threshold_db),
                    "ratio": _uniform(rng, c.compress_ratio),
                    "gain_db": _uniform(rng, c.gain_db),
                }
            else:  # bed, speech: a partner from another recording
                pool = self.beds if family == "bed" else self.speech
                partner = self._partner(rng, pool, index)
                if partner is None:
                    continue
                snr = c.bed_snr_db if family == "bed" else c.speech_snr_db
                steps[family] = {"clip": partner, "snr_db": _uniform(rng, snr)}
                partners.append(partner)
        return ViewPlan(steps, tuple(partners))

    def _partner(self, rng: np.random.Generator, pool: list[int], index: int) -> int | None:
        for _ in range(8):
            j = pool[int(rng.integers(len(pool)))]
            if self._recordings[j] != self._recordings[index]:
                return j
        return None

    def render(self, audio: np.ndarray, plan: ViewPlan) -> np.ndarray:
        """Apply a plan: mixing (bed, speech), room, EQ, compression and gain, codec."""
        out = audio.astype(np.float32, copy=True)
        s = plan.steps
        for family in ("bed", "speech"):
            if family in s:
                out = mix_at_snr(out, self._load(s[family]["clip"]), s[family]["snr_db"])
        if "reverb" in s:
            out = reverberate(out, self.rooms[s["reverb"]["room"]]["rir"])
        if "eq" in s:
            kind = s["eq"]["kind"]
            out = (
                tilt(out, s["eq"]["db_per_octave"])
                if kind == "tilt"
                else band_limit(out, *EQ_BANDS[kind])
            )
        peak = float(np.abs(out).max()) if len(out) else 0.0
        if peak > 1.0:
            out = out / peak
        if "gain" in s:
            g = s["gain"]
            out = compress(out, g["threshold_db"], g["ratio"], g["gain_db"])
        if "codec" in s:
            out = np.clip(codec_round_trip(out, s["codec"]["codec"], s["codec"]["kbps"]), -1, 1)
        return out.astype(np.float32)
