"""Bad options are usage errors (exit 2, naming the option) before any model loads or audio
is decoded. Each command names a model that does not exist: had the options been checked
only after loading, the run would end in "unknown Whisper model" instead."""

from pathlib import Path

import pytest

from whisper_at.cli import main

SPEECH = str(Path(__file__).parent.parent / "examples" / "librivox_sense_and_sensibility.wav")
NO_MODEL = ["--model", "no-such-model"]


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command; it must stop as a usage error. Returns what it printed to stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no-such-model" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("command", [[], ["tag"]])
@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--at-time-res", "0.3", "positive multiple of 0.4"),
        ("--at-time-res", "0", "positive multiple of 0.4"),
        ("--at-time-res", "-1", "positive multiple of 0.4"),
        ("--at-time-res", "nan", "positive multiple of 0.4"),
        ("--at-time-res", "ten", "could not convert"),
        ("--batch-size", "0", "whole number >= 1"),
        ("--batch-size", "2.5", "whole number >= 1"),
        ("--top-k", "0", "whole number >= 1"),
        ("--threshold", "1.5", "probability in [0, 1]"),
        ("--threshold", "-0.1", "probability in [0, 1]"),
        ("--threshold", "high", "auto or a probability in [0, 1]"),
    ],
)
def test_bad_option_values_are_usage_errors(command, option, value, message, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*command, SPEECH, option, value, "--output-dir", str(out), *NO_MODEL]
    err = usage_error(argv, capsys)
    assert f"argument {option}:" in err and message in err
    assert not out.exists()  # nothing was done


def test_good_values_on_the_edges_pass_the_checks(tmp_path, capsys):
    argv = [SPEECH, "--at-time-res", "0.4", "--threshold", "1", "--top-k", "1", *NO_MODEL]
    assert main([*argv, "--batch-size", "1", "--output-dir", str(tmp_path)]) == 2
    assert "unknown Whisper model 'no-such-model'" in capsys.readouterr().err  # got as far
    assert main([*argv, "--threshold", "auto", "--output-dir", str(tmp_path)]) == 2
    assert "unknown Whisper model 'no-such-model'" in capsys.readouterr().err


def test_tag_writes_only_json_tags_and_events(tmp_path, capsys):
    err = usage_error(["tag", SPEECH, "--output-format", "srt", *NO_MODEL], capsys)
    assert "argument --output-format: unknown format(s) ['srt']" in err
    assert "('json', 'tags', 'events')" in err


def test_an_output_dir_that_is_a_file_is_refused_up_front(tmp_path, capsys):
    occupied = tmp_path / "results"
    occupied.write_text("keep me")
    for command in ([], ["tag"]):
        err = usage_error([*command, SPEECH, "--output-dir", str(occupied), *NO_MODEL], capsys)
        assert f"argument --output-dir: {occupied} exists and is not a folder" in err
    assert occupied.read_text() == "keep me"
    err = usage_error([SPEECH, "--output-dir", str(occupied / "sub"), *NO_MODEL], capsys)
    assert f"argument --output-dir: cannot create {occupied / 'sub'}" in err


def test_no_audio_is_a_usage_error_before_loading(capsys):
    assert "no audio files given" in usage_error(NO_MODEL, capsys)


def test_a_missing_output_dir_is_created(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    assert main(["tag", SPEECH, "--output-dir", str(out), "--output-format", "all"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "librivox_sense_and_sensibility.events.tsv",
        "librivox_sense_and_sensibility.json",
        "librivox_sense_and_sensibility.tags.tsv",
    ]
