"""`keras-pvt` user errors that need no model: one line on stderr, status 2, nothing
written; near-miss preset names get a suggestion; `convert` keeps an existing output."""

from __future__ import annotations

import pytest

from keras_pvt.cli import main
from tests.helpers.reference import hf_pvt_v2


@pytest.mark.parametrize("argv, message", [
    (["predict", "--top", "0"], "argument --top: must be a positive integer; received '0'"),
    (["predict", "--top", "-1"], "argument --top: must be a positive integer; received '-1'"),
    (["segment", "--top", "x", "-o", "out"], "must be a positive integer; received 'x'"),
])
def test_bad_flag_values_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("keras-pvt: ") and "\n" not in err
    return err


def test_a_directory_as_image(tmp_path, capsys):
    err = _error(["predict", str(tmp_path), "--preset", "no_such_preset"], capsys)
    assert f"cannot read image {tmp_path}: it is a directory; pass image files" in err


@pytest.mark.parametrize("name, hint", [
    ("pvt_v2_b00", "Did you mean pvt_v2_b0"),
    ("pvt-v2-b0", "Did you mean pvt_v2_b0"),
    ("PVT_V2_B2", "Did you mean pvt_v2_b2"),
    ("OpenGVLab/pvt_v2_b0", "A Hugging Face repository is written hf://OpenGVLab/pvt_v2_b0."),
])
def test_near_miss_preset_names_get_a_suggestion(name, hint, tmp_path, capsys):
    for argv in (["predict", "--preset", name], ["convert", name, str(tmp_path / "out")]):
        err = _error(argv, capsys)
        assert f"Unknown preset {name!r}" in err and hint in err
    assert not (tmp_path / "out").exists()


def test_convert_keeps_an_existing_output_unless_told(tmp_path, capsys):
    hf_pvt_v2("tiny", num_labels=3).save_pretrained(tmp_path / "ckpt")
    capsys.readouterr()  # save_pretrained's progress bar
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    err = _error(["convert", str(tmp_path / "ckpt"), str(output)], capsys)
    assert "exists and is not an empty directory; pass --overwrite" in err
    assert (output / "notes.txt").read_text() == "mine"
    assert main(["convert", str(tmp_path / "ckpt"), str(output), "--overwrite"]) == 0
    assert not (output / "notes.txt").exists() and (output / "config.json").is_file()
    assert not (tmp_path / ".out.converting").exists()
    assert "Wrote keras-hub preset to" in capsys.readouterr().out
    # A checkpoint that cannot be read leaves the output as it was.
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not a checkpoint")
    _error(["convert", str(tmp_path / "bad"), str(output), "--overwrite"], capsys)
    assert (output / "config.json").is_file()
