"""`tf-sam segment`: photo + prompts -> mask PNGs, overlay and result.json; clean failures."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import IMAGES
from tf_sam.cli import main


@pytest.fixture(scope="module")
def checkpoint(hf_small_checkpoints):
    return str(hf_small_checkpoints["padded-windows"][1])


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A real photo when ../shared is present, else a generated one (the CLI is what's tested)."""
    real = IMAGES / "sam_dog.jpg"
    if real.exists():
        return str(real)
    path = tmp_path_factory.mktemp("img") / "synthetic.jpg"
    Image.fromarray((np.random.default_rng(0).random((534, 800, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_segment_writes_masks_overlay_and_result(checkpoint, photo, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["segment", photo, "--point", "400,300", "--point", "100,100,0", "--box", "300,200,600,500",
                   "--checkpoint", checkpoint, "--output-dir", str(out)])
    assert status == 0
    assert sorted(os.listdir(out)) == ["mask.png", "overlay.png", "result.json"]
    width, height = Image.open(photo).size
    mask = np.asarray(Image.open(out / "mask.png"))
    assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
    overlay = Image.open(out / "overlay.png")
    assert overlay.size == (width, height)
    result = json.loads((out / "result.json").read_text())
    assert result["image_size"] == {"width": width, "height": height}
    assert result["prompts"]["points"][1] == {"x": 100.0, "y": 100.0, "label": 0}
    (record,) = result["masks"]
    assert record["area"] == int((mask > 0).sum())
    assert {"load_s", "encode_s", "decode_s", "total_s"} <= set(result["timings"])
    assert "progress" not in capsys.readouterr().out


def test_multimask_writes_three_masks_best_first(checkpoint, photo, tmp_path):
    out = tmp_path / "out"
    assert main(["segment", photo, "--point", "400,300", "--multimask", "--checkpoint", checkpoint,
                 "--output-dir", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert [m["file"] for m in result["masks"]] == ["mask_0.png", "mask_1.png", "mask_2.png"]
    scores = [m["score"] for m in result["masks"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--point", "400"], "malformed --point '400'"),
        (["--point", "4x0,3"], "malformed --point '4x0,3'"),
        (["--point", "5000,300"], "outside the"),
        (["--box", "10,10,5,20"], "need X0 < X1"),
        ([], "give at least one prompt"),
    ],
)
def test_bad_prompts_exit_nonzero_with_one_line_and_write_nothing(checkpoint, photo, tmp_path, args, message):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "tf_sam.cli", "segment", photo, *args, "--checkpoint", checkpoint,
         "--output-dir", str(out)], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    lines = [l for l in result.stderr.strip().splitlines() if l.startswith("tf-sam")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() or not os.listdir(out)


def test_unreadable_image(checkpoint, tmp_path, capsys):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"not an image")
    assert main(["segment", str(bad), "--point", "1,1", "--checkpoint", checkpoint]) == 1
    assert "cannot read image" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "missing.jpg"), "--point", "1,1", "--checkpoint", checkpoint]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_default_checkpoint_offline_says_how_to_pass_a_local_one(photo, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TF_SAM_CACHE=str(tmp_path / "c"))
    result = subprocess.run(
        [sys.executable, "-m", "tf_sam.cli", "segment", photo, "--point", "10,10", "--output-dir", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 1
    assert "facebook/sam-vit-base" in result.stderr and "pass a local checkpoint" in result.stderr
