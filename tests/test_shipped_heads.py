"""The heads shipped in the package tag held-out real recordings correctly.

The recordings are test-split originals of the corpus the heads were trained on
(`whisper-at corpus build --seed 0`; splits are by recording and seed-independent,
listed in docs/results.md), so no clip of them was seen in training: dogs, a piano
phrase, female and male speech.
"""

from pathlib import Path

import numpy as np
import pytest

import whisper_at
from whisper_at.audio import load_audio
from whisper_at.pipeline import shipped_head_path
from whisper_at_research.corpus import find_recordings
from whisper_at_research.corpus.registry import fetch_debian_package

GCOMPRIS = "gcompris/src/activities"
HELD_OUT = {
    "Piano": f"gcompris:instruments.rcc/{GCOMPRIS}/instruments/resource/piano.ogg",
    "Female speech, woman speaking": "asterisk:agent-pass",
    "Male speech, man speaking": "flite:rms/conf-onlyperson",
}
MALE, FEMALE = "Male speech, man speaking", "Female speech, woman speaking"


@pytest.fixture(scope="module")
def recordings():
    return {r.id: r for r in find_recordings(["gcompris", "asterisk", "flite"])}


def window_of(recording) -> np.ndarray:
    """The recording as one 10 s window, looped when shorter (as the corpus does)."""
    audio = recording.load()
    if len(audio) < 16000 * 10:
        audio = np.tile(audio, int(np.ceil(16000 * 10 / len(audio))))[: 16000 * 10]
    return audio


@pytest.mark.parametrize("model_name", ["tiny.en", "base"])
@pytest.mark.parametrize("label,accepted", [
    ("Piano", {"Piano", "Keyboard (musical)", "Musical instrument", "Music"}),
    (FEMALE, {"Speech", FEMALE}),
    (MALE, {"Speech", MALE, "Speech synthesizer"}),
])  # fmt: skip
def test_shipped_head_names_held_out_sounds(recordings, model_name, label, accepted):
    if shipped_head_path(model_name) is None:
        pytest.fail(f"no head ships for {model_name}")
    model = whisper_at.load_model(model_name, device="cpu")
    recording = recordings[HELD_OUT[label]]
    assert label in recording.labels
    tagging = model.tag(window_of(recording), at_time_res=10.0)
    top = tagging.windows(top_k=3)[0].tags
    assert top[0].label in accepted, (
        recording.id,
        [(t.label, round(t.probability, 2)) for t in top],
    )
    assert top[0].probability > 0.5
    assert top[0].label in recording.labels


DOG_CLASSES = {"Dog", "Bark", "Domestic animals, pets"}


@pytest.mark.parametrize("model_name", ["tiny.en", "base"])
def test_shipped_head_hears_the_dogs_of_packages_it_never_saw(unseen_recordings, model_name):
    """Every dog of the held-out packages (GCompris's two La Sonotheque barks and its farm
    dog, Scorched 3D's three), each looped to one window: most are tagged with a true
    label at the head's own thresholds, and a dog class is among the three most probable
    for some. One recording is no test (a head's single bark moves by 0.3 between builds).
    Measured (tagged, named): tiny.en TL-TR of build 7 (4, 4), base TL-TR of build 7 (4, 3)."""
    model = whisper_at.load_model(model_name, device="cpu")
    dogs = [r for r in unseen_recordings if "Dog" in r.labels]
    tagged = named = 0
    for recording in dogs:
        tagging = model.tag(window_of(recording), at_time_res=10.0)
        tagged += any(t.label in recording.labels for t in tagging.windows(top_k=3)[0].tags)
        top = tagging.windows(top_k=3, threshold=0.0)[0].tags
        named += any(t.label in DOG_CLASSES for t in top)
    assert len(dogs) == 6 and tagged >= 4 and named >= 1, (tagged, named)


def said_sex(model, recording) -> str:
    male, female = model.labels.index(MALE), model.labels.index(FEMALE)
    p = model.tag(window_of(recording), at_time_res=10.0).probabilities[0]
    return MALE if p[male] > p[female] else FEMALE


@pytest.mark.parametrize("model_name", ["tiny.en", "base"])
def test_shipped_head_tells_male_from_female_speech_of_an_unseen_package(recordings, model_name):
    """Every flite recording with a sex label: flite is one of the packages the shipped
    heads were trained without (three voices, 172 recordings). Measured right: tiny.en
    TL-TR 154 (155 with the head it replaced), base TL-TR 172; one near-tie flips between
    heads, so a single recording is no test."""
    model = whisper_at.load_model(model_name, device="cpu")
    assert "debian:flite=2.2-5" in model.head.config.held_out_sources
    voices = [
        r for r in recordings.values() if r.source == "flite" and {MALE, FEMALE} & set(r.labels)
    ]
    right = sum(said_sex(model, r) in r.labels for r in voices)
    assert len(voices) == 172 and right >= 0.85 * len(voices), right


def test_shipped_heads_carry_their_provenance():
    for model_name in ("tiny.en", "base"):
        head = whisper_at.load_head(shipped_head_path(model_name))
        config = head.config
        assert config.whisper_name == model_name and len(config.whisper_sha256) == 64
        assert config.head_type in ("tl_tr", "tl_tr_low") and config.window_seconds == 10.0
        assert 100 < len(config.reported_classes) < 527  # only classes with training data
        assert config.metrics["mAP"] > 0.3


# Classes plain speech may be tagged with: speech itself and what the corpus's speech
# recordings carry with it (Narration for read prompts).
SPEECH_CLASSES = {
    "Speech",
    MALE,
    FEMALE,
    "Narration, monologue",
    "Conversation",
    "Speech synthesizer",
}
ASTERISK_SILENCE = "usr/share/asterisk/sounds/en_US_f_Allison/silence/10.g722"
READING = Path(__file__).parent.parent / "examples" / "librivox_sense_and_sensibility.wav"


@pytest.fixture(scope="module")
def quiet_recording() -> np.ndarray:
    """Asterisk's 10 s silence prompt (real line noise, peak -67 dBFS), three times over."""
    folder = fetch_debian_package("asterisk-core-sounds-en-g722", "1.6.1-1")
    return np.tile(load_audio(folder / ASTERISK_SILENCE, format="g722"), 3)


@pytest.mark.parametrize("at_low_compute", [False, True])
@pytest.mark.parametrize("model_name", ["tiny.en", "base"])
def test_shipped_heads_tag_nothing_on_silence_and_only_speech_on_speech(
    quiet_recording, model_name, at_low_compute
):
    """With threshold "auto" noise-level tags (silence's Music 0.13) are not listed."""
    model = whisper_at.load_model(model_name, device="cpu", at_low_compute=at_low_compute)
    assert model.head.config.thresholds is not None
    for name, audio in [("zeros", np.zeros(30 * 16000, np.float32)), ("quiet", quiet_recording)]:
        tags = [t for w in model.tag(audio).windows(top_k=10) for t in w.tags]
        assert not tags, (name, [(t.label, round(t.probability, 3)) for t in tags])
    windows = model.tag(READING).windows(top_k=10)
    labels = [t.label for w in windows for t in w.tags]
    assert "Speech" in labels
    assert set(labels) <= SPEECH_CLASSES, [
        [(t.label, round(t.probability, 3)) for t in w.tags] for w in windows
    ]


# Packages the shipped heads were trained without (corpus build 4's held-out
# packages, docs/results.md): GCompris's recordings and Battle for Wesnoth's and Scorched
# 3D's sound effects, made by other people with other recording chains.
UNSEEN_PACKAGES = {"gcompris": "gcompris-qt-data", "wesnoth": "wesnoth", "scorched3d": "scorched3d"}
# Sounds a caption reader or an archive search asks for (instrument names are not here).
EVERYDAY = [
    "Speech", MALE, FEMALE, "Music", "Animal", "Bird", "Dog", "Canidae, dogs, wolves",
    "Cattle, bovinae", "Horse", "Livestock, farm animals, working animals", "Wild animals",
    "Explosion", "Gunshot, gunfire", "Vehicle", "Car", "Aircraft", "Aircraft engine",
    "Fixed-wing aircraft, airplane", "Jet engine", "Helicopter", "Vehicle horn, car horn, honking",
    "Siren", "Thunder", "Thunderstorm", "Rain", "Water", "Fire", "Wind", "Screaming",
    "Laughter", "Walk, footsteps", "Door", "Bell", "Glass", "Crowd", "Applause",
]  # fmt: skip


@pytest.fixture(scope="module")
def unseen_recordings():
    return find_recordings(list(UNSEEN_PACKAGES))


@pytest.mark.parametrize("at_low_compute", [False, True])
@pytest.mark.parametrize("model_name", ["tiny.en", "base"])
def test_shipped_heads_name_everyday_sounds_of_packages_they_never_saw(
    unseen_recordings, model_name, at_low_compute
):
    """Fifteen everyday classes or more (the issue asks ten; the build 3 head managed 12 on
    the two game packages alone): most of their recordings have a true label among the
    head's three most probable classes, whatever the thresholds."""
    model = whisper_at.load_model(model_name, device="cpu", at_low_compute=at_low_compute)
    held_out = " ".join(model.head.config.held_out_sources or [])
    assert all(f"debian:{p}" in held_out for p in UNSEEN_PACKAGES.values()), held_out
    hits: dict[str, list[bool]] = {name: [] for name in EVERYDAY}
    for recording in unseen_recordings:
        wanted = [name for name in EVERYDAY if name in recording.labels]
        if not wanted:
            continue
        tagging = model.tag(window_of(recording), at_time_res=10.0)
        top = {t.label for t in tagging.windows(top_k=3, threshold=0.0)[0].tags}
        for name in wanted:
            hits[name].append(bool(top & set(recording.labels)))
    named = sorted(name for name, got in hits.items() if got and sum(got) / len(got) > 0.5)
    table = {name: f"{sum(got)}/{len(got)}" for name, got in hits.items() if got}
    assert len(named) >= 15, table
