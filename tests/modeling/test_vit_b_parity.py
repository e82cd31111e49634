"""The full ViT-B architecture at 1024x1024 against the reference (random weights).

This is the suite's one big-model case: one HF ViT-B checkpoint (375 MB) serves the
parity check and the conversion-memory check.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import max_rel_err, to_numpy

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import tf_sam  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vit_b(hf_vit_b):
    return hf_vit_b


def test_vit_b_matches_reference(vit_b):
    hf, directory = vit_b
    model = tf_sam.SamModel.from_pretrained(directory)
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((1, 3, 1024, 1024)).astype("float32")
    points = np.array([[[[500.0, 375.0], [900.0, 100.0]], [[10.0, 1000.0], [0.0, 0.0]]]], "float32")
    labels = np.array([[[1, 0], [1, -10]]])
    boxes = np.array([[[425.0, 600.0, 700.0, 875.0], [0.0, 0.0, 1023.0, 1023.0]]], "float32")
    with torch.no_grad():
        ref_emb = hf.get_image_embeddings(torch.tensor(pixels))
        ref = hf(image_embeddings=ref_emb, input_points=torch.tensor(points), input_labels=torch.tensor(labels),
                 input_boxes=torch.tensor(boxes))
    emb = model.get_image_embeddings(pixels.transpose(0, 2, 3, 1))
    assert max_rel_err(emb, to_numpy(ref_emb).transpose(0, 2, 3, 1)) <= 1e-4
    out = model(image_embeddings=emb, input_points=points, input_labels=labels, input_boxes=boxes)
    assert max_rel_err(out.pred_masks, to_numpy(ref.pred_masks)) <= 1e-4
    assert max_rel_err(out.iou_scores, to_numpy(ref.iou_scores)) <= 1e-4


def _peak_rss_bytes(args):
    """Peak resident memory of a child Python process running `args`.

    Read from VmHWM, which belongs to the child's own address space: ru_maxrss would
    carry over the (much larger) high-water mark of this test process across exec.
    """
    code = (
        "import re, runpy, sys\n"
        f"sys.argv = {args!r}\n"
        "try:\n"
        "    runpy.run_module(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "status = open('/proc/self/status').read()\n"
        "print('PEAK', int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) * 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.rsplit("PEAK", 1)[1])


def test_converting_vit_b_needs_at_most_twice_its_size(vit_b, hf_small_checkpoints, tmp_path):
    _, directory = vit_b
    size = os.path.getsize(directory / "model.safetensors")
    assert size > 350e6
    # Baseline: the same command path with TensorFlow imported, on a tiny checkpoint.
    baseline = _peak_rss_bytes(["tf_sam.cli", "info", str(hf_small_checkpoints["padded-windows"][1])])
    peak = _peak_rss_bytes(["tf_sam.cli", "convert", str(directory), str(tmp_path / "out")])
    print(f"checkpoint {size / 2**20:.0f} MiB; peak RSS baseline {baseline / 2**20:.0f} MiB, converting {peak / 2**20:.0f} MiB")
    assert peak - baseline <= 2 * size
    reloaded = tf_sam.SamModel.from_pretrained(tmp_path / "out")
    assert reloaded.config.vision_config.hidden_size == 768
