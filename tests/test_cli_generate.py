"""`tf-sam generate`: records JSON, overlay, progress on stderr, one-line failures."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import IMAGES
from tf_sam import amg, cli
from tf_sam.cli_generate import render_overlay


def _main(argv):
    return cli.main(argv)


@pytest.fixture(scope="module")
def checkpoint(hf_small_checkpoints):
    return str(hf_small_checkpoints["padded-windows"][1])


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A real photo (downsized for speed) when ../shared is present, else a generated one."""
    path = tmp_path_factory.mktemp("img") / "photo.png"
    real = IMAGES / "sam_dog.jpg"
    if real.exists():
        with Image.open(real) as image:
            image.convert("RGB").resize((320, 214)).save(path)
    else:
        Image.fromarray((np.random.default_rng(0).random((214, 320, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_generate_writes_records_and_overlay(checkpoint, photo, tmp_path, capsys):
    out, overlay = tmp_path / "masks.json", tmp_path / "overlay.png"
    status = _main(["generate", photo, "--checkpoint", checkpoint, "--points-per-side", "6", "--points-per-batch",
                    "8", "--crop-layers", "1", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                    "--box-nms-thresh", "0.95", "--output", str(out), "--overlay", str(overlay)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "generating masks" in captured.err and "25/25" in captured.err  # 5 crops x ceil(36 / 8)
    assert "25/25" not in captured.out and "wrote" in captured.out
    result = json.loads(out.read_text())
    assert result["image_size"] == {"width": 320, "height": 214}
    assert result["settings"]["points_per_side"] == 6 and result["settings"]["crop_n_layers"] == 1
    assert {"load_s", "generate_s", "total_s"} <= set(result["timings"])
    records = result["masks"]
    assert records, "lowered thresholds should leave masks"
    areas = [r["area"] for r in records]
    assert areas == sorted(areas, reverse=True)
    masks = []
    for record in records:
        assert set(record) == {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score",
                               "crop_box"}
        assert isinstance(record["segmentation"]["counts"], str)
        mask = amg.coco_decode_rle(record["segmentation"])
        assert mask.shape == (214, 320) and mask.sum() == record["area"]
        masks.append(mask)
    mask_utils = pytest.importorskip("pycocotools.mask")
    for record, mask in zip(records, masks):
        rle = dict(record["segmentation"], counts=record["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
    picture = Image.open(overlay)
    assert picture.size == (320, 214) and picture.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(picture), np.asarray(render_overlay(Image.open(photo), masks)))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tf-sam-")]


def test_uncompressed_rle_option(checkpoint, photo, tmp_path):
    out = tmp_path / "m.json"
    assert _main(["generate", photo, "--checkpoint", checkpoint, "--points-per-side", "3", "--pred-iou-thresh", "0",
                  "--stability-score-thresh", "0", "--rle", "uncompressed", "--output", str(out)]) == 0
    records = json.loads(out.read_text())["masks"]
    assert records and all(isinstance(r["segmentation"]["counts"], list) for r in records)
    assert all(amg.area_from_rle(r["segmentation"]) == r["area"] for r in records)


def test_overlay_colours_every_mask():
    image = np.full((20, 30, 3), 100, np.uint8)
    masks = [np.zeros((20, 30), bool) for _ in range(3)]
    masks[0][:, :15] = True
    masks[1][5:10, 20:25] = True
    masks[2][12:18, 2:8] = True  # inside mask 0: drawn after it because it is smaller
    out = np.asarray(render_overlay(image, masks))
    colours = {tuple(out[7, 22]), tuple(out[2, 5]), tuple(out[15, 5])}
    assert len(colours) == 3 and tuple(out[0, 29]) == (100, 100, 100)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--points-per-side", "0"], "--points-per-side must be at least 1"),
        (["--points-per-batch", "0"], "--points-per-batch must be at least 1"),
        (["--crop-layers", "-1"], "--crop-layers must be 0 or more"),
        (["--pred-iou-thresh", "nan"], "--pred-iou-thresh must be a finite number"),
        (["--output", "/nonexistent-dir/m.json"], "directory /nonexistent-dir does not exist"),
    ],
)
def test_bad_arguments_fail_with_one_line(checkpoint, photo, tmp_path, capsys, args, message):
    status = _main(["generate", photo, "--checkpoint", checkpoint, "--output", str(tmp_path / "m.json"), *args])
    err = capsys.readouterr().err
    assert status == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "m.json").exists()


def test_missing_or_unreadable_image(checkpoint, tmp_path, capsys):
    assert _main(["generate", str(tmp_path / "missing.jpg"), "--checkpoint", checkpoint]) == 1
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"not an image")
    assert _main(["generate", str(bad), "--checkpoint", checkpoint]) == 1
    assert "cannot read image" in capsys.readouterr().err
