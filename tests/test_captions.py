"""Captions with sound cues: the phrase table, the ontology it leans on, cue merging, styles,
the allow-list, and SRT / WebVTT files that maintained subtitle libraries parse."""

import csv
import itertools
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pysubs2
import pytest
import webvtt

from whisper_at.audio import load_audio
from whisper_at.captions import (
    CaptionStyle,
    Cue,
    caption_cues,
    caption_phrases,
    default_caption_classes,
    parse_caption_classes,
    result_cues,
    speech_classes,
    srt_text,
    vtt_text,
)
from whisper_at.cli import main
from whisper_at.events import SoundEvent
from whisper_at.heads import load_head
from whisper_at.labels import audioset_labels
from whisper_at.ontology import class_ancestors, class_descendants, ontology_children
from whisper_at.writers import write_outputs

ASSETS = Path(__file__).parent.parent / "whisper_at" / "assets"
SPEECH = str(Path(__file__).parent.parent / "examples" / "librivox_sense_and_sensibility.wav")


def seconds(timestamp: str) -> float:
    """``HH:MM:SS.mmm`` as written in a WebVTT cue (webvtt-py's ``start_in_seconds`` is whole)."""
    h, m, sec = timestamp.split(":")
    return 3600 * int(h) + 60 * int(m) + float(sec)


def event(label: str, start: float, end: float, probability: float = 0.8) -> SoundEvent:
    return SoundEvent(label, audioset_labels().index(label), start, end, probability)


def segment(start: float, end: float, text: str, **extra: object) -> dict:
    return {"start": start, "end": end, "text": f" {text}", **extra}


# --- the phrase table and the ontology ---------------------------------------------------


@pytest.mark.parametrize("head", sorted((ASSETS / "heads").glob("*.safetensors")), ids=str)
def test_every_class_a_shipped_head_reports_has_a_phrase(head: Path) -> None:
    config = load_head(head).config
    reported = {config.label_names[i] for i in config.reported_classes}
    assert reported and reported <= set(caption_phrases())


def test_phrases_are_short_lowercase_descriptions_of_audioset_classes() -> None:
    proper_nouns = {"Hammond organ", "French horn", "Middle Eastern music", "Latin music"}
    proper_nouns |= {"African music", "Asian music"}
    assert set(caption_phrases()) <= set(audioset_labels().names)
    for name, phrase in caption_phrases().items():
        assert phrase == phrase.strip() and 0 < len(phrase.split()) <= 3, name
        assert phrase == phrase.lower() or phrase in proper_nouns, name
    assert caption_phrases()["Bark"] == "dog barking"
    assert caption_phrases()["Applause"] == "applause"


def test_ontology_table_holds_every_class_under_its_published_name() -> None:
    labels = audioset_labels()
    with open(ASSETS / "audioset_ontology_children.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    names = dict(zip(labels.ids, labels.names, strict=True))
    for row in rows:
        assert row["parent_id"] not in names or names[row["parent_id"]] == row["parent_name"]
    mentioned = {row["parent_id"] for row in rows} | {
        c for row in rows for c in row["child_ids"].split()
    }
    assert set(labels.ids) <= mentioned  # no class lost to a mistyped id
    assert len(ontology_children()) == len(rows)


def test_ontology_relations_are_the_published_ones() -> None:
    assert class_ancestors("Bark") == {"Dog", "Domestic animals, pets", "Animal"}
    assert class_ancestors("Rain") == {"Water"}
    assert class_ancestors("Drum roll") >= {"Snare drum", "Drum", "Percussion", "Music"}
    assert class_ancestors("Cowbell") >= {"Cattle, bovinae", "Percussion", "Bell"}
    assert class_descendants("Speech") == {
        "Male speech, man speaking",
        "Female speech, woman speaking",
        "Child speech, kid speaking",
        "Conversation",
        "Narration, monologue",
        "Babbling",
        "Speech synthesizer",
    }
    assert class_ancestors("not a class") == frozenset()


def test_default_allow_list_leaves_out_speech() -> None:
    allowed = default_caption_classes()
    assert not allowed & speech_classes()
    assert {"Applause", "Bark", "Music", "Singing"} <= allowed


def test_allow_list_parses_names_and_files(tmp_path: Path) -> None:
    assert parse_caption_classes("applause, Bark") == {"Applause", "Bark"}
    listing = tmp_path / "classes.txt"
    listing.write_text("# what we caption\nApplause\nGunshot, gunfire  # any AudioSet class\n")
    assert parse_caption_classes(str(listing)) == {"Applause", "Gunshot, gunfire"}
    events = [event("Gunshot, gunfire", 0.0, 2.0)]
    style = CaptionStyle(classes=parse_caption_classes(str(listing)))
    assert caption_cues([], events, style, 2.0) == [Cue(0.0, 2.0, "[gunshots]")]
    listing.write_text("# what we caption\nApplause\n\nMusic\n")
    assert parse_caption_classes(str(listing)) == {"Applause", "Music"}
    with pytest.raises(ValueError, match="Barkk"):
        parse_caption_classes("Applause,Barkk")


# --- cue merging -------------------------------------------------------------------------

SEGMENTS = [segment(2.0, 5.0, "Hello there."), segment(8.0, 10.0, "La la la")]
EVENTS = [
    event("Applause", 0.0, 2.5, 0.9),
    event("Bark", 5.2, 5.5, 0.8),
    event("Dog", 5.0, 7.0, 0.7),
    event("Animal", 5.0, 7.5, 0.6),
    event("Singing", 7.5, 10.5, 0.8),
    event("Music", 7.5, 12.0, 0.9),
    event("Speech", 2.0, 5.0, 0.99),
]


def test_dialogue_and_sound_cues_on_one_time_line() -> None:
    assert caption_cues(SEGMENTS, EVENTS, duration=12.0) == [
        Cue(0.0, 2.0, "[applause]"),
        Cue(2.0, 5.0, "", "Hello there."),
        Cue(5.0, 7.0, "[dog barking]"),  # the 0.3 s bark joins the dog; no [dog], no [animal]
        Cue(7.0, 8.0, "[music] [singing]"),
        Cue(8.0, 10.0, "", "♪ La la la ♪"),  # sung: the notes say it, not [singing]
        Cue(10.0, 12.0, "[music] [singing]"),
    ]


def test_prefix_mode_names_sounds_heard_during_dialogue() -> None:
    cues = caption_cues(SEGMENTS, EVENTS, CaptionStyle(combine="prefix"), duration=12.0)
    assert cues[1] == Cue(2.0, 5.0, "[applause]", "Hello there.")


def test_a_sound_heard_only_under_dialogue_tops_that_dialogue_cue() -> None:
    cues = caption_cues(
        [segment(0.0, 4.0, "Thank you all.")], [event("Applause", 1.0, 3.0)], duration=4.0
    )
    assert cues == [Cue(0.0, 4.0, "[applause]", "Thank you all.")]
    assert cues[0].text == "[applause]\nThank you all."


def test_upper_case_style_and_no_music_notes() -> None:
    style = CaptionStyle(case="upper", music_notes=False)
    cues = caption_cues(SEGMENTS, EVENTS, style, duration=12.0)
    assert cues[0].sound == "[APPLAUSE]"
    assert cues[4] == Cue(8.0, 10.0, "", "La la la")


def test_allow_list_decides_which_sounds_get_cues() -> None:
    style = CaptionStyle(classes=frozenset({"Applause", "Dog"}))
    cues = caption_cues(SEGMENTS, EVENTS, style, duration=12.0)
    assert [c.sound for c in cues if c.sound] == ["[applause]", "[dog]"]
    assert cues[-1].dialogue == "La la la"  # no singing shown, so no notes


def test_most_specific_classes_first_and_at_most_max_labels() -> None:
    events = [event("Rain", 0, 3, 0.6), event("Water", 0, 3, 0.9), event("Thunder", 0, 3, 0.7)]
    assert caption_cues([], events, duration=3.0) == [Cue(0.0, 3.0, "[thunder] [rain]")]
    style = CaptionStyle(max_labels=1)
    assert caption_cues([], events, style, duration=3.0) == [Cue(0.0, 3.0, "[thunder]")]


def test_short_cues_last_the_minimum_duration_where_there_is_room() -> None:
    cues = caption_cues([segment(1.0, 1.3, "Hi.")], [event("Knock", 5.0, 5.2)], duration=8.0)
    assert cues == [Cue(1.0, 2.0, "", "Hi."), Cue(5.0, 6.0, "[knocking]")]
    style = CaptionStyle(min_duration=0.0)
    cues = caption_cues([segment(1.0, 1.3, "Hi.")], [event("Knock", 5.0, 5.2)], style, 8.0)
    assert cues == [Cue(1.0, 1.3, "", "Hi."), Cue(5.0, 5.2, "[knocking]")]


def test_a_sound_too_short_for_its_gap_joins_the_next_dialogue_cue() -> None:
    segments = [segment(0.0, 2.0, "Who's there?"), segment(2.3, 4.0, "Open up!")]
    cues = caption_cues(segments, [event("Knock", 2.0, 2.3)], duration=4.0)
    assert cues == [Cue(0.0, 2.0, "", "Who's there?"), Cue(2.0, 4.0, "[knocking]", "Open up!")]


def test_non_speech_segments_give_their_time_to_the_sounds() -> None:
    segments = [segment(0.0, 3.0, "Thank you.", non_speech=True), segment(3.0, 5.0, "Right.")]
    events = [event("Music", 0.0, 3.0)]
    kept = caption_cues(segments, events, duration=5.0)
    assert [c.dialogue for c in kept] == ["Thank you.", "Right."]
    dropped = caption_cues(segments, events, duration=5.0, drop_non_speech=True)
    assert dropped == [Cue(0.0, 3.0, "[music]"), Cue(3.0, 5.0, "", "Right.")]
    result = {"segments": segments[1:], "suppressed_segments": segments[:1], "duration": 5.0}
    result["sound_events"] = [
        {"label": e.label, "index": e.index, "start": e.start, "end": e.end, "probability": 0.8}
        for e in events
    ]
    assert result_cues(result) == dropped


def test_cues_never_overlap_and_stay_within_the_audio() -> None:
    rng = random.Random(0)
    labels = sorted(default_caption_classes())
    for style in (CaptionStyle(), CaptionStyle(combine="prefix", min_duration=2.0)):
        for _ in range(200):
            duration = rng.uniform(1, 60)
            segments = [
                segment(s, s + rng.uniform(0, 6), "words")
                for s in sorted(rng.uniform(-1, duration + 1) for _ in range(rng.randint(0, 8)))
            ]
            events = [
                event(rng.choice(labels), s, s + rng.uniform(0.05, 10), rng.random())
                for s in (rng.uniform(-1, duration) for _ in range(rng.randint(0, 12)))
            ]
            cues = caption_cues(segments, events, style, duration)
            for cue in cues:
                assert 0.0 <= cue.start < cue.end <= round(duration, 3)
                assert cue.text
            for a, b in itertools.pairwise(cues):
                assert a.end <= b.start


def test_style_options_are_checked() -> None:
    with pytest.raises(ValueError, match="case"):
        CaptionStyle(case="title")
    with pytest.raises(ValueError, match="combine"):
        CaptionStyle(combine="both")
    with pytest.raises(ValueError, match="min_duration"):
        CaptionStyle(min_duration=-1)
    with pytest.raises(ValueError, match="max_labels"):
        CaptionStyle(max_labels=0)


# --- files -------------------------------------------------------------------------------


def test_srt_and_vtt_parse_with_subtitle_libraries(tmp_path: Path) -> None:
    cues = caption_cues(SEGMENTS, EVENTS, duration=12.0)
    (tmp_path / "c.srt").write_text(srt_text(cues), encoding="utf-8")
    (tmp_path / "c.vtt").write_text(vtt_text(cues), encoding="utf-8")
    subs = pysubs2.load(str(tmp_path / "c.srt"))
    assert [(e.start, e.end) for e in subs] == [(c.start * 1000, c.end * 1000) for c in cues]
    assert subs[0].plaintext == "[applause]"
    assert subs[4].plaintext == "♪ La la la ♪"
    vtt = webvtt.read(str(tmp_path / "c.vtt"))
    assert [(seconds(c.start), seconds(c.end)) for c in vtt] == [(c.start, c.end) for c in cues]
    assert vtt.captions[0].raw_text == "<c.sound>[applause]</c>"
    assert vtt.captions[0].text == "[applause]"
    assert vtt.captions[1].raw_text == "Hello there."


def test_write_outputs_keeps_a_dialogue_only_track(tmp_path: Path) -> None:
    result = {
        "text": " Hello there. La la la",
        "segments": SEGMENTS,
        "duration": 12.0,
        "sound_events": [asdict(e) for e in EVENTS],
    }
    written = write_outputs(result, "film.mp4", tmp_path, ["srt", "vtt"], captions=CaptionStyle())
    names = sorted(p.name for p in written)
    assert names == ["film.dialogue.srt", "film.dialogue.vtt", "film.srt", "film.vtt"]
    assert [e.plaintext for e in pysubs2.load(str(tmp_path / "film.dialogue.srt"))] == [
        "Hello there.",
        "La la la",
    ]
    assert len(pysubs2.load(str(tmp_path / "film.srt"))) == 6
    assert "<c.sound>[dog barking]</c>" in (tmp_path / "film.vtt").read_text(encoding="utf-8")
    del result["sound_events"]
    with pytest.raises(ValueError, match="sound events"):
        write_outputs(result, "film.mp4", tmp_path, ["srt"], captions=CaptionStyle())


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--captions"], "add them to --output-format"),
        (["--captions", "--output-format", "srt", "--head", "none"], "needs a head"),
        (["--caption-classes", "Applause,Barkk"], "unknown caption class(es) ['Barkk']"),
        (["--caption-min-duration", "-1"], "expected seconds from 0 to 60"),
        (["--caption-style", "title"], "invalid choice"),
        (["--caption-combine", "both"], "invalid choice"),
    ],
)
def test_caption_usage_errors_come_before_the_model_loads(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([SPEECH, "--model", "no-such-model", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "no-such-model" not in err


def test_dialogue_never_shows_before_it_is_said() -> None:
    segments = [segment(2.0, 2.4, "No."), segment(2.4, 4.0, "Never.")]
    cues = caption_cues(segments, [], duration=4.0)
    assert cues == [Cue(2.0, 2.4, "", "No."), Cue(2.4, 4.0, "", "Never.")]


def test_long_segments_become_cues_of_two_short_lines_timed_by_their_words() -> None:
    words = "And Mr. John Dashwood had then leisure to consider how much there might be"
    timed = [
        {"word": f" {w}", "start": 9.0 + i * 0.4, "end": 9.0 + i * 0.4 + 0.3}
        for i, w in enumerate(words.split())
    ]
    seg = segment(0.0, 15.0, words, words=timed)  # Whisper's segment starts before the words
    cues = caption_cues([seg], [event("Music", 0.0, 9.0)], CaptionStyle(max_line_chars=20))
    assert cues[0] == Cue(0.0, 9.0, "[music]")
    assert [c.dialogue for c in cues[1:]] == [
        "And Mr. John\nDashwood had then",
        "leisure to consider\nhow much there might",
        "be",
    ]
    # cues stay up until the next (gaps under a second); "be" (14.2-14.5 s) gets up to
    # the minimum second, cut at the end of the audio
    assert [(c.start, c.end) for c in cues[1:]] == [(9.0, 11.4), (11.4, 14.2), (14.2, 15.0)]
    assert all(len(line) <= 20 for c in cues for line in c.dialogue.splitlines())


def test_short_gaps_in_a_conversation_over_music_stay_closed() -> None:
    segments = [segment(0.0, 2.0, "One."), segment(2.3, 4.0, "Two."), segment(4.4, 6.0, "Three.")]
    cues = caption_cues(segments, [event("Music", 0.0, 8.0)], duration=8.0)
    assert cues == [
        Cue(0.0, 2.3, "", "One."),
        Cue(2.3, 4.4, "", "Two."),
        Cue(4.4, 6.0, "", "Three."),
        Cue(6.0, 8.0, "[music]"),
    ]


def test_a_sound_shown_through_a_more_specific_class_is_not_repeated_on_dialogue() -> None:
    events = [event("Music", 0.0, 6.0, 0.9), event("Piano", 0.0, 4.0, 0.8)]
    cues = caption_cues([segment(4.0, 6.0, "Hello.")], events, duration=6.0)
    assert cues == [Cue(0.0, 4.0, "[piano]"), Cue(4.0, 6.0, "", "Hello.")]


# --- end to end on real recordings ---------------------------------------------------------
# Held-out (test-split) recordings of the corpus, fetched from Debian by the project's own
# code (gcompris-qt-data, GPL-3 / CC-BY-SA; tests/test_shipped_heads.py), around the LibriVox
# utterance in examples/ (public domain).
GCOMPRIS = "gcompris/src/activities"
PIANO = f"gcompris:instruments.rcc/{GCOMPRIS}/instruments/resource/piano.ogg"
BARK = f"gcompris:memory-sound.rcc/{GCOMPRIS}/memory-sound/resource/LRBark_3_LA_cut.ogg"


def phrases_of(root: str) -> set[str]:
    """The caption phrases of ``root`` and every class below it."""
    return {
        caption_phrases()[c] for c in {root} | class_descendants(root) if c in caption_phrases()
    }


@pytest.fixture(scope="module")
def gcompris():
    from whisper_at_research.corpus import find_recordings

    recordings = {r.id: r for r in find_recordings(["gcompris"])}
    return recordings[PIANO].load(), recordings[BARK].load()


def looped(audio: np.ndarray, seconds: float) -> np.ndarray:
    return np.tile(audio, int(np.ceil(seconds * 16000 / len(audio))))[: int(seconds * 16000)]


def run_captions(path: Path, out: Path) -> tuple[list, list]:
    """``whisper-at PATH --captions --output-format srt,vtt``: both files, parsed."""
    assert (
        main([str(path), "--captions", "--output-format", "srt,vtt", "--output-dir", str(out)]) == 0
    )
    srt = list(pysubs2.load(str(out / f"{path.stem}.srt")))
    vtt = list(webvtt.read(str(out / f"{path.stem}.vtt")))
    assert [(e.start, e.end) for e in srt] == [
        (round(seconds(c.start) * 1000), round(seconds(c.end) * 1000)) for c in vtt
    ]
    for a, b in itertools.pairwise(srt):
        assert a.start < a.end <= b.start < b.end
    return srt, vtt


def test_captions_of_music_speech_and_a_dog_on_real_audio(gcompris, tmp_audio, tmp_path) -> None:
    piano, bark = gcompris
    speech = load_audio(SPEECH)  # "And Mr. John Dashwood had then leisure to consider ..."
    pause = np.zeros(16000, dtype=np.float32)
    film = np.concatenate([looped(piano, 8.0), pause, speech, pause, looped(bark, 4.0)])
    path = tmp_audio(film, 16000).rename(tmp_path / "film.wav")
    srt, vtt = run_captions(path, tmp_path / "out")
    duration_ms = 1000 * len(film) / 16000
    assert srt[-1].end <= round(duration_ms)
    sounds = [(e.start / 1000, e.end / 1000, e.plaintext) for e in srt if "[" in e.plaintext]
    music, animals = phrases_of("Music"), phrases_of("Animal")
    named = lambda text, phrases: any(f"[{p}]" in text for p in phrases)  # noqa: E731
    assert any(end <= 9.5 and named(text, music) for _, end, text in sounds), sounds
    assert any(start >= 15.5 and named(text, animals) for start, _, text in sounds), sounds
    assert any("Dashwood" in e.plaintext for e in srt)
    sound_cues = [c for c in vtt if c.raw_text.startswith("<c.sound>")]
    assert {c.text for c in sound_cues} <= {e.plaintext for e in srt}
    assert len(sound_cues) == sum(1 for e in srt if e.plaintext.startswith("["))
    dialogue = pysubs2.load(str(tmp_path / "out" / "film.dialogue.srt"))
    assert "Dashwood" in " ".join(e.plaintext for e in dialogue)
    assert not any("[" in e.plaintext for e in dialogue)


def test_thirty_seconds_of_music_get_captions(gcompris, tmp_audio, tmp_path) -> None:
    """Before captions, a music file gave empty .srt and .vtt files."""
    path = tmp_audio(looped(gcompris[0], 30.0), 16000).rename(tmp_path / "piano.wav")
    srt, vtt = run_captions(path, tmp_path / "out")
    assert srt and len(vtt) == len(srt)
    assert srt[0].start == 0 and srt[-1].end == 30_000
    assert any(f"[{p}]" in e.plaintext for e in srt for p in phrases_of("Music"))
    assert (tmp_path / "out" / "piano.dialogue.srt").exists()
