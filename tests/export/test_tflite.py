"""TFLite halves run in LiteRT with builtin ops only and agree with Keras."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tf_sam
from tests.conftest import mask_iou
from tf_sam.export import FlexOpsError, convert_to_tflite, export_tflite

litert = pytest.importorskip("ai_edge_litert.interpreter", reason="install the 'tflite' extra (ai-edge-litert)")


def _runner(content):
    return litert.Interpreter(model_content=content).get_signature_runner()


@pytest.fixture(scope="module")
def model(hf_small_checkpoints):
    return tf_sam.SamModel.from_pretrained(hf_small_checkpoints["padded-windows"][1])


@pytest.fixture(scope="module")
def request_case(model):
    rng = np.random.default_rng(0)
    image = (rng.random((90, 140, 3)) * 255).astype(np.uint8)
    processor = tf_sam.SamProcessor.for_model(model)
    features = processor(image, return_tensors="np")
    embeddings = np.asarray(model.get_image_embeddings(features["pixel_values"]))
    coords = np.array([[[30.0, 40.0], [100.0, 20.0], [0.0, 0.0]]], np.float32)
    labels = np.array([[1, 0, -1]], np.float32)
    return dict(image=image, processor=processor, features=features, embeddings=embeddings, coords=coords,
                labels=labels)


def _decode_inputs(case, mask_input=None):
    mask = np.zeros((1, 32, 32), np.float32) if mask_input is None else mask_input
    return dict(image_embeddings=case["embeddings"], point_coords=case["coords"], point_labels=case["labels"],
                mask_input=mask, has_mask_input=np.array([0.0 if mask_input is None else 1.0], np.float32),
                orig_im_size=np.array([90, 140], np.int32))


def _keras_decode(model, case, multimask_output=True):
    scaled = case["processor"](original_sizes=[[90, 140]], input_points=[case["coords"][0, :2].tolist()],
                               input_labels=[[1, 0]], return_tensors="np")
    out = model(image_embeddings=case["embeddings"], input_points=scaled["input_points"],
                input_labels=scaled["input_labels"], multimask_output=multimask_output)
    return np.asarray(out.pred_masks)[:, 0], np.asarray(out.iou_scores)[:, 0]


@pytest.fixture(scope="module")
def fp32_decoder(model):
    return convert_to_tflite(model, "decoder")


def test_fp32_decoder_matches_keras(model, request_case, fp32_decoder):
    out = _runner(fp32_decoder)(**_decode_inputs(request_case))
    logits, scores = _keras_decode(model, request_case)
    assert np.abs(out["low_res_masks"] - logits).max() <= 1e-3
    assert np.abs(out["iou_predictions"] - scores).max() <= 1e-3
    assert out["masks"].shape == (1, 3, 90, 140)
    processor, features = request_case["processor"], request_case["features"]
    expected = processor.post_process_masks(logits[:, None], features["original_sizes"],
                                            features["reshaped_input_sizes"])[0][0]
    assert min(mask_iou(out["masks"][0, i] > 0, expected[i]) for i in range(3)) >= 0.99


def test_fp32_encoder_matches_keras(model, request_case):
    out = _runner(convert_to_tflite(model, "encoder"))(pixel_values=request_case["features"]["pixel_values"])
    assert np.abs(out["image_embeddings"] - request_case["embeddings"]).max() <= 1e-3


def test_encoder_attending_in_row_bands_converts_to_builtins(hf_small_checkpoints, request_case, monkeypatch):
    # ViT-B/L/H global layers attend query-row bands (slices + concat); small grids do not,
    # so force one row per band: the conversion must stay builtin-only and agree.
    from tf_sam.modeling import image_encoder

    monkeypatch.setattr(image_encoder, "_ATTENTION_CHUNK", 1)
    banded = tf_sam.SamModel.from_pretrained(hf_small_checkpoints["padded-windows"][1])
    out = _runner(convert_to_tflite(banded, "encoder"))(pixel_values=request_case["features"]["pixel_values"])
    assert np.abs(out["image_embeddings"] - request_case["embeddings"]).max() <= 1e-3


@pytest.mark.parametrize("quantization", ["float16", "dynamic_int8"])
def test_quantized_halves_keep_masks(model, request_case, fp32_decoder, quantization):
    reference = _runner(fp32_decoder)(**_decode_inputs(request_case))["masks"] > 0
    encoder = _runner(convert_to_tflite(model, "encoder", quantization))
    embeddings = encoder(pixel_values=request_case["features"]["pixel_values"])["image_embeddings"]
    quantized = _runner(convert_to_tflite(model, "decoder", quantization))
    out = quantized(**{**_decode_inputs(request_case), "image_embeddings": embeddings})["masks"] > 0
    ious = [mask_iou(out[0, i], reference[0, i]) for i in range(3)]
    print(quantization, "mask IoU vs fp32:", ious)
    assert min(ious) >= 0.95


def test_single_mask_and_mask_input(model, request_case):
    single = _runner(convert_to_tflite(model, "decoder", return_single_mask=True))
    mask_input = np.random.default_rng(1).standard_normal((1, 32, 32)).astype(np.float32) * 3
    out = single(**_decode_inputs(request_case, mask_input))
    assert out["low_res_masks"].shape == (1, 1, 32, 32) and out["iou_predictions"].shape == (1, 1)
    # Three points (two clicks + pad) > 2.5, so Meta's rule picks the single-mask token.
    scaled = request_case["processor"](original_sizes=[[90, 140]], input_points=[request_case["coords"][0, :2].tolist()],
                                       input_labels=[[1, 0]], return_tensors="np")
    keras_out = model(image_embeddings=request_case["embeddings"], input_points=scaled["input_points"],
                      input_labels=scaled["input_labels"], input_masks=mask_input, multimask_output=False)
    assert np.abs(out["low_res_masks"] - np.asarray(keras_out.pred_masks)[:, 0]).max() <= 1e-3


def test_tanh_gelu_option_is_close_to_exact(model, request_case, fp32_decoder):
    exact = _runner(fp32_decoder)(**_decode_inputs(request_case))
    approx = _runner(convert_to_tflite(model, "decoder", tanh_gelu_approximation=True))(**_decode_inputs(request_case))
    difference = np.abs(approx["low_res_masks"] - exact["low_res_masks"]).max()
    assert 0 < difference <= 0.05


def test_flex_ops_are_reported_by_name(model, monkeypatch):
    from tf_sam.export import tflite

    def needs_flex(model):
        @tf.function(input_signature=[tf.TensorSpec([4], tf.float64)])
        def fn(x):
            return {"y": tf.math.maximum(x, tf.constant(1.0, tf.float64)) * 2.0}
        return fn

    monkeypatch.setattr(tflite, "_encoder_function", needs_flex)
    with pytest.raises(FlexOpsError, match=r"needs TensorFlow ops .*Maximum"):
        convert_to_tflite(model, "encoder")


def test_export_tflite_and_cli(hf_small_checkpoints, model, tmp_path):
    size = export_tflite(model, tmp_path / "decoder.tflite")
    assert size == (tmp_path / "decoder.tflite").stat().st_size
    with pytest.raises(FileExistsError):
        export_tflite(model, tmp_path / "decoder.tflite")
    result = subprocess.run(
        [sys.executable, "-m", "tf_sam.cli", "export", str(hf_small_checkpoints["padded-windows"][1]),
         str(tmp_path / "cli"), "--format", "tflite", "--quantization", "float16"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sam_encoder_float16.tflite" in result.stdout and "sam_decoder_float16.tflite" in result.stdout
    assert (tmp_path / "cli" / "sam_decoder_float16.tflite").exists()
