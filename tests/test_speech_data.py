"""Real speech fetched from Debian: the transcripts and recordings tests rely on."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_at.audio import SAMPLE_RATE, audio_duration, load_audio
from whisper_at_research.corpus import SpeechClip, speech


def test_librivox_clips(librivox_clips: list[SpeechClip]) -> None:
    assert len(librivox_clips) == 5
    assert librivox_clips[0].text == (
        "and mister john dashwood had then leisure to consider how much there might be "
        "prudently in his power to do for them"
    )
    for clip in librivox_clips:
        assert clip.path.is_file() and clip.format is None
        assert "<s>" not in clip.text and clip.id not in clip.text
        assert "Public-Domain" in clip.license
        audio = load_audio(clip.path)
        assert 1.0 < audio.size / SAMPLE_RATE < 15.0 and np.abs(audio).max() > 0.05


def test_asterisk_prompts(asterisk_prompts: list[SpeechClip]) -> None:
    assert len(asterisk_prompts) >= 150
    assert [clip.id for clip in asterisk_prompts] == sorted(clip.id for clip in asterisk_prompts)
    assert len({clip.id for clip in asterisk_prompts}) == len(asterisk_prompts)
    for clip in asterisk_prompts:
        assert len(clip.text.split()) >= 6 and "[" not in clip.text
        assert clip.format == "g722" and clip.license.startswith("CC-BY-SA-3.0")
    for clip in asterisk_prompts[:: len(asterisk_prompts) // 8]:
        audio = load_audio(clip.path, format=clip.format)
        seconds = audio.size / SAMPLE_RATE
        # Plausible speaking rate: 1 to 6 words per second.
        assert len(clip.text.split()) / 6 < seconds < len(clip.text.split()) + 2
        assert np.sqrt(np.mean(audio**2)) > 0.01
        assert abs(audio_duration(clip.path, format=clip.format) - seconds) < 0.05


def test_asterisk_prompt_text_handling() -> None:
    short = {clip.id: clip.text for clip in speech.asterisk_prompts(min_words=1)}
    assert short["letters/at"] == "at"  # "at [@]": the bracketed note is dropped
    assert "beep" not in short  # "[this is a simple beep tone]" is not speech
    assert short["digits/1"] == "one"  # subfolder prompts keep their folder in the id


def test_flite_voices_read_the_prompts_intelligibly() -> None:
    """Synthetic male (and one female) voices: each text once, and Whisper understands it."""
    import whisper

    from whisper_at.weights import load_whisper
    from whisper_at_research.analysis.wer import wer

    clips = speech.flite_utterances()
    assert len({clip.text for clip in clips}) == len(clips)
    assert {clip.text for clip in clips} == {p.text for p in speech.asterisk_prompts(min_words=6)}
    voices = [clip.id.split("/", 1)[0] for clip in clips]
    assert set(voices) == set(speech.FLITE_VOICES)
    assert voices[:5] == list(speech.FLITE_VOICES)  # the voices take turns
    model = load_whisper("tiny.en").model
    texts, hypotheses = [], []
    for clip in clips[:5]:
        audio = load_audio(clip.path)
        assert 1.0 < audio.size / SAMPLE_RATE < 20.0 and np.abs(audio).max() > 0.05
        result = whisper.transcribe(model, audio, fp16=False, temperature=0.0)
        texts.append(clip.text)
        hypotheses.append(result["text"])
    assert wer(texts, hypotheses) < 0.25, list(zip(texts, hypotheses, strict=True))


def test_flite_rejects_unknown_voices() -> None:
    with pytest.raises(ValueError, match="unknown flite voice"):
        speech.flite_utterances(voices=("hal9000",))
