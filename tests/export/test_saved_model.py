"""The SavedModel runs with TensorFlow alone and agrees with the Keras model and processor."""

import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tf_sam
from tf_sam.export import export_saved_model

# Runs in a fresh interpreter in which importing tf_sam fails, so the export must stand
# on TensorFlow alone, as it does under TF Serving.
SERVE_SCRIPT = r"""
import sys, json
import numpy as np
sys.modules["tf_sam"] = None
try:
    import tf_sam
    raise SystemExit("tf_sam should not be importable here")
except ImportError:
    pass
import tensorflow as tf
export, image_path, prompts_path, out_path = sys.argv[1:5]
loaded = tf.saved_model.load(export)
image = np.load(image_path)
p = np.load(prompts_path)
png = tf.io.encode_png(image)
e = loaded.signatures["embed_image"](image=tf.constant(image))
eb = loaded.signatures["embed_image_bytes"](image_bytes=png)
args = dict(point_coords=tf.constant(p["coords"]), point_labels=tf.constant(p["labels"]),
            mask_input=tf.constant(p["mask_input"]), has_mask_input=tf.constant(p["has_mask"]))
d = loaded.signatures["decode"](image_embeddings=e["image_embeddings"], original_size=e["original_size"], **args)
s = loaded.signatures["serving_default"](image_bytes=png, **args)
np.savez(out_path, **{"embed_" + k: v.numpy() for k, v in e.items()},
         **{"bytes_" + k: v.numpy() for k, v in eb.items()},
         **{"decode_" + k: v.numpy() for k, v in d.items()},
         **{"serve_" + k: v.numpy() for k, v in s.items() if k != "masks_png"},
         serve_png0=np.frombuffer(s["masks_png"].numpy()[0, 0], np.uint8))
"""


@pytest.fixture(scope="module")
def exported(hf_small_checkpoints, tmp_path_factory):
    model = tf_sam.SamModel.from_pretrained(hf_small_checkpoints["padded-windows"][1])
    path = tmp_path_factory.mktemp("export") / "sam" / "1"
    export_saved_model(model, path)
    return model, path


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    rng = np.random.default_rng(0)
    image = (rng.random((120, 200, 3)) * 255).astype(np.uint8)
    # Prompt 0: two clicks plus Meta's explicit -1 pad; prompt 1: a box as corners 2 and 3
    # after one click; prompt 2: a click with a mask prompt.
    coords = np.array([[[50, 60], [150, 20], [0, 0]], [[100, 70], [20, 30], [180, 110]],
                       [[120, 40], [0, 0], [0, 0]]], np.float32)
    labels = np.array([[1, 0, -1], [1, 2, 3], [1, -1, -1]], np.int32)
    mask_input = np.zeros((3, 32, 32), np.float32)
    mask_input[2] = rng.standard_normal((32, 32)) * 4
    has_mask = np.array([0, 0, 1], np.float32)
    return image, dict(coords=coords, labels=labels, mask_input=mask_input, has_mask=has_mask)


@pytest.fixture(scope="module")
def served(exported, case, tmp_path_factory):
    _, path = exported
    image, prompts = case
    work = tmp_path_factory.mktemp("serve")
    np.save(work / "image.npy", image)
    np.savez(work / "prompts.npz", **prompts)
    result = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, str(path), str(work / "image.npy"), str(work / "prompts.npz"),
         str(work / "out.npz")], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(work / "out.npz"))


def _keras_reference(model, image, prompts):
    """The same requests through SamProcessor + the Keras model + post_process_masks."""
    processor = tf_sam.SamProcessor.for_model(model)
    features = processor(image, return_tensors="np")
    embeddings = model.get_image_embeddings(features["pixel_values"])
    logits, scores, masks = [], [], []
    for i in range(3):
        points, labels = prompts["coords"][i], prompts["labels"][i]
        if labels[-1] == -1:  # Keras appends one not-a-point pad itself when there is no box
            points, labels = points[:-1], labels[:-1]
        kwargs = {}
        if (labels == 2).any():
            box = np.concatenate([points[labels == 2][0], points[labels == 3][0]])
            kwargs["input_boxes"] = [[box.tolist()]]
            points, labels = points[labels < 2], labels[labels < 2]
        scaled = processor(original_sizes=features["original_sizes"], input_points=[[points.tolist()]],
                           input_labels=[[labels.tolist()]], return_tensors="np", **kwargs)
        if prompts["has_mask"][i]:
            kwargs["input_masks"] = prompts["mask_input"][i][None]
        out = model(image_embeddings=embeddings, input_points=scaled["input_points"],
                    input_labels=scaled["input_labels"],
                    **{k: (scaled["input_boxes"] if k == "input_boxes" else v) for k, v in kwargs.items()})
        logits.append(np.asarray(out.pred_masks)[0, 0])
        scores.append(np.asarray(out.iou_scores)[0, 0])
        masks.append(processor.post_process_masks(out.pred_masks, features["original_sizes"],
                                                  features["reshaped_input_sizes"])[0][0])
    return np.asarray(embeddings), np.stack(logits), np.stack(scores), np.stack(masks)


def test_every_signature_matches_keras(exported, case, served):
    model, _ = exported
    image, prompts = case
    embeddings, logits, scores, masks = _keras_reference(model, image, prompts)
    assert np.abs(served["embed_image_embeddings"] - embeddings).max() <= 1e-4
    np.testing.assert_array_equal(served["embed_original_size"], [120, 200])
    np.testing.assert_array_equal(served["embed_reshaped_input_size"], [38, 64])
    np.testing.assert_array_equal(served["bytes_image_embeddings"], served["embed_image_embeddings"])
    for prefix in ("decode_", "serve_"):
        assert np.abs(served[prefix + "low_res_logits"] - logits).max() <= 1e-4
        assert np.abs(served[prefix + "iou_scores"] - scores).max() <= 1e-4
        assert served[prefix + "masks"].dtype == np.uint8
        np.testing.assert_array_equal(served[prefix + "masks"].astype(bool), masks)
    assert 0 < masks.sum() < masks.size
    png = np.asarray(Image.open(io.BytesIO(served["serve_png0"].tobytes())))
    np.testing.assert_array_equal(png.reshape(120, 200) > 0, masks[0, 0])


def test_saved_model_cli_lists_the_signatures(exported):
    _, path = exported
    result = subprocess.run(["saved_model_cli", "show", "--dir", str(path), "--all"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("serving_default", "embed_image", "embed_image_bytes", "decode"):
        assert f"signature_def['{name}']" in result.stdout
    assert "point_coords" in result.stdout and "has_mask_input" in result.stdout


def test_concurrent_calls_match_serial(exported, case):
    _, path = exported
    image, prompts = case
    loaded = tf.saved_model.load(str(path))
    embedded = loaded.signatures["embed_image"](image=tf.constant(image))
    args = dict(point_coords=tf.constant(prompts["coords"]), point_labels=tf.constant(prompts["labels"]),
                mask_input=tf.constant(prompts["mask_input"]), has_mask_input=tf.constant(prompts["has_mask"]),
                image_embeddings=embedded["image_embeddings"], original_size=embedded["original_size"])
    decode = loaded.signatures["decode"]

    def request(i):
        # Different prompt counts per thread exercise the dynamic N dimension concurrently.
        n = 1 + i % 3
        sliced = {k: (v[:n] if k in ("point_coords", "point_labels", "mask_input", "has_mask_input") else v)
                  for k, v in args.items()}
        return n, {k: v.numpy() for k, v in decode(**sliced).items()}

    serial = [request(i) for i in range(8)]
    results = [None] * 8

    def worker(i):
        results[i] = request(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (n, expected), (m, got) in zip(serial, results):
        assert n == m
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


def test_export_refuses_to_overwrite(exported):
    model, path = exported
    with pytest.raises(FileExistsError, match="overwrite"):
        export_saved_model(model, path)


def test_cli_export_prints_signatures_and_how_to_serve(hf_small_checkpoints, tmp_path):
    out = tmp_path / "sam" / "1"
    result = subprocess.run(
        [sys.executable, "-m", "tf_sam.cli", "export", str(hf_small_checkpoints["padded-windows"][1]), str(out),
         "--format", "saved_model"], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "in  point_coords" in result.stdout and "out masks_png" in result.stdout
    assert "tensorflow/serving" in result.stdout and "MiB" in result.stdout
    again = subprocess.run([sys.executable, "-m", "tf_sam.cli", "export", str(hf_small_checkpoints["padded-windows"][1]),
                            str(out)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "--overwrite" in again.stderr
