"""`tf-sam convert` and `tf-sam info` from the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

import tf_sam
from tf_sam.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "tf_sam.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def hf_dir(hf_small_checkpoints):
    return hf_small_checkpoints["padded-windows"][1]


def test_convert_then_info_counts_match_the_model(hf_dir, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(hf_dir), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "converted" in printed and "parameters" in printed
    model = tf_sam.SamModel.from_pretrained(out)
    assert main(["info", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["total"] == sum(int(np.prod(w.shape)) for w in model.weights)
    assert report["config"]["vision_config"]["window_size"] == 3
    # The HF source counts the same parameters (its tied copy counted once).
    assert main(["info", str(hf_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["total"] == report["total"]


def test_convert_refuses_to_overwrite(hf_dir, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(hf_dir), str(out)]) == 0
    assert main(["convert", str(hf_dir), str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(hf_dir), str(out), "--overwrite"]) == 0


def test_info_preset_prints_config_and_counts(capsys):
    assert main(["info", "slimsam-77"]) == 0
    printed = capsys.readouterr().out
    assert "image encoder" in printed and "mask decoder" in printed and '"mlp_dim": 696' in printed


def test_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    result = _run("convert", str(bad), str(tmp_path / "out"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("tf-sam convert: error:")
    assert "broken.pth" in result.stderr
    assert not (tmp_path / "out" / "model.weights.h5").exists()
    result = _run("info", str(tmp_path / "missing"))
    assert result.returncode == 1 and "No checkpoint" in result.stderr
