"""The command line, run in-process on real audio (a random head checks the mechanics)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import random_head

from whisper_at.audio import load_audio
from whisper_at.cli import main
from whisper_at.heads import load_head, save_head
from whisper_at.pipeline import shipped_head_path


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("heads") / "tiny.en.tl_tr.safetensors"
    save_head(random_head(whisper_name="tiny.en", trained_classes=[0, 137, 74]), path)
    return path


@pytest.fixture(scope="module")
def speech_file(librivox_clips):
    return str(librivox_clips[0].path)


def test_transcribe_and_tag_writes_every_format(tmp_path, head_file, speech_file, capsys):
    out = tmp_path / "out"
    code = main(
        [
            speech_file,
            "--head",
            str(head_file),
            "--at-time-res",
            "2",
            "--output-dir",
            str(out),
            "--output-format",
            "all",
            "--temperature",
            "0",
            "--threshold",
            "0",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "And Mr. John Dashwood had then leisure" in printed
    assert "sound events:" in printed
    stem = "sense_and_sensibility_01_austen_64kb-0870"
    for ext in ("txt", "srt", "vtt", "tsv", "json", "tags.tsv"):
        assert (out / f"{stem}.{ext}").is_file(), ext
    data = json.loads((out / f"{stem}.json").read_text())
    assert data["text"].strip().startswith("And Mr. John Dashwood")
    assert len(data["audio_tag"]) == 4 and len(data["audio_tag"][0]) == 527  # 7 s at 2 s
    assert {t["label"] for w in data["tags"] for t in w["tags"]} <= {"Speech", "Music", "Dog"}
    assert data["segments"][0]["audio_tags"]
    rows = (out / f"{stem}.tags.tsv").read_text().splitlines()
    assert rows[0] == "start\tend\tlabel\tprobability\tlogit"
    assert len(rows) == 1 + 4 * 3  # every window, the head's three trained classes


def test_tags_only_command(tmp_path, head_file, speech_file, capsys):
    code = main(["tag", speech_file, "--head", str(head_file), "--output-dir", str(tmp_path)])
    assert code == 0
    assert "[    0.0s ->     7.1s]" in capsys.readouterr().out
    data = json.loads((tmp_path / "sense_and_sensibility_01_austen_64kb-0870.json").read_text())
    assert data["at_time_res"] == 10.0 and len(data["tags"]) == 1


def test_a_batch_goes_on_past_bad_files_and_fails_at_the_end(tmp_path, speech_file, capsys):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    missing = tmp_path / "missing.flac"
    code = main(
        [
            str(missing),
            str(empty),
            speech_file,
            str(text),
            "--head",
            "none",
            "--output-dir",
            str(tmp_path / "out"),
            "--temperature",
            "0",
        ]
    )
    assert code == 1
    captured = capsys.readouterr()
    assert "no such file" in captured.err and "is empty" in captured.err
    assert "not an audio file" in captured.err
    assert "3 of 4 file(s) failed" in captured.err
    assert "And Mr. John Dashwood" in captured.out
    assert (tmp_path / "out" / "sense_and_sensibility_01_austen_64kb-0870.txt").is_file()
    assert "no tagging head is installed" in captured.out


def test_without_a_head_the_command_says_so(tmp_path, speech_file, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["tag", speech_file, "--head", "none"])
    assert exit_.value.code == 2
    assert "tagging needs a head" in capsys.readouterr().err


def test_unknown_models_and_bad_heads_are_named(tmp_path, capsys):
    assert main(["x.wav", "--model", "huge-v9"]) == 2
    err = capsys.readouterr().err
    assert "huge-v9" in err and "tiny.en" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(np.zeros(16, dtype=np.uint8).tobytes())
    assert main(["x.wav", "--head", str(bad)]) == 2
    assert f"{bad} is not a head checkpoint" in capsys.readouterr().err
    for name, content in [("notes.pth", b"just some text\n"), ("noise.pth", bytes(range(256)))]:
        (tmp_path / name).write_bytes(content)
        assert main(["x.wav", "--head", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / name} is not a head checkpoint: expected an original Whisper-AT" in err
        assert "weights_only" not in err and "Traceback" not in err


def test_listings(capsys, head_file):
    assert main(["--list-models"]) == 0
    assert any(
        line.split() == ["tiny.en", "available"] for line in capsys.readouterr().out.splitlines()
    )


def _label_table(capsys) -> tuple[list[list[str]], str]:
    captured = capsys.readouterr()
    return [line.split("\t") for line in captured.out.splitlines()], captured.err


def test_label_listing_marks_the_classes_the_head_reports(capsys, head_file):
    assert main(["--list-labels"]) == 0
    rows, err = _label_table(capsys)
    shipped = load_head(shipped_head_path("tiny.en")).config.reported_classes
    assert len(rows) == 527 and rows[0] == ["0", "/m/09x0r", "Speech", "reported"]
    assert [int(r[0]) for r in rows if r[3] == "reported"] == shipped
    assert {r[3] for r in rows} == {"reported", "-"} and len(shipped) == 230
    assert "230 of 527 classes are reported by the head tiny.en.tl_tr" in err
    assert main(["--list-labels", "--head", str(head_file)]) == 0
    rows, err = _label_table(capsys)
    assert [int(r[0]) for r in rows if r[3] == "reported"] == [0, 74, 137]
    assert "3 of 527 classes are reported by the head tiny.en.tl_tr" in err
    assert main(["--list-labels", "--head", "none"]) == 0
    rows, err = _label_table(capsys)
    assert len(rows) == 527 and {r[3] for r in rows} == {"-"}
    assert "no tagging head is installed for tiny.en: no class is reported" in err


def test_help_and_bad_arguments_exit_cleanly():
    run = subprocess.run(
        [sys.executable, "-m", "whisper_at", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "--at-time-res" in run.stdout and "--output-format" in run.stdout
    run = subprocess.run(
        [sys.executable, "-m", "whisper_at", "a.wav", "--output-format", "pdf"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "unknown format" in run.stderr and "Traceback" not in run.stderr


def test_a_folder_is_tagged_into_one_table(tmp_path, head_file, librivox_clips, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i, clip in enumerate(librivox_clips[:3]):
        target = folder / ("sub" if i == 2 else "") / clip.path.name
        target.write_bytes(clip.path.read_bytes())
    (folder / "notes.txt").write_text("not audio, not picked up")
    table = tmp_path / "all.tsv"
    code = main(
        ["tag", str(folder), "--head", str(head_file), "--table", str(table), "--batch-size", "2"]
        + ["--output-dir", str(tmp_path / "out"), "--top-k", "2"]
    )
    assert code == 0
    rows = [line.split("\t") for line in table.read_text().splitlines()]
    assert rows[0] == ["file", "start", "end", "label", "probability", "logit"]
    files = sorted({row[0] for row in rows[1:]})
    assert files == sorted(str(p) for p in folder.rglob("*.wav")) and len(files) == 3
    assert all(len([r for r in rows[1:] if r[0] == f]) == 2 for f in files)  # 1 window, top 2
    assert len(list((tmp_path / "out").glob("*.tags.tsv"))) == 3


def test_batched_transcription_of_several_files(tmp_path, speech_file, librivox_clips, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt nonsense")
    files = [speech_file, str(broken), str(librivox_clips[1].path)]
    out = tmp_path / "out"
    code = main(files + ["--head", "none", "--batch-size", "4", "--output-dir", str(out)])
    assert code == 1
    captured = capsys.readouterr()
    assert "broken.wav" in captured.err and "1 of 3 file(s) failed" in captured.err
    assert "And Mr. John Dashwood had then leisure" in captured.out
    assert (out / f"{librivox_clips[1].path.stem}.txt").read_text().strip()


def test_inputs_that_would_overwrite_each_others_outputs_are_refused(tmp_path, speech_file, capsys):
    twin = tmp_path / "other" / "sense_and_sensibility_01_austen_64kb-0870.wav"
    twin.parent.mkdir()
    twin.write_bytes(open(speech_file, "rb").read())
    assert main([speech_file, str(twin), "--head", "none"]) == 2
    assert "would write the same output files" in capsys.readouterr().err
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    assert main([str(empty), "--head", "none"]) == 2
    assert "no audio or video files in this folder" in capsys.readouterr().err


def test_audio_too_short_to_tag_is_a_user_error(tmp_path, tmp_audio, speech_file, capsys):
    blip = tmp_audio(load_audio(speech_file)[8000:8001], 16000)  # one real sample
    for command in (["tag"], ["--temperature", "0"]):
        code = main([*command, str(blip), speech_file, "--output-dir", str(tmp_path)])
        assert code == 1
        captured = capsys.readouterr()
        assert f"whisper-at: error: {blip}: the audio is too short to tag: it needs at least " in (
            captured.err
        )
        assert "10 ms" in captured.err and "Traceback" not in captured.err
        assert "1 of 2 file(s) failed" in captured.err
        assert "[    0.0s ->     7.1s]" in captured.out  # the other file was tagged
