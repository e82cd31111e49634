"""Losses, metrics, prompt sampling and dataset readers (fast, no model training)."""

import json
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.training.synthetic import make_example, write_coco_dataset, write_folder_dataset
from tf_sam import amg
from tf_sam.training import (
    DatasetError, MaskMeanIoU, PromptSampler, dice_loss, image_dataset, list_coco_examples, list_folder_examples,
    mask_iou, prompt_dataset, sam_loss, sam_loss_terms, sample_error_points, sigmoid_focal_loss,
)
from tf_sam.training.datasets import decode_coco_segmentation


def _np_focal(logits, targets, alpha=0.25, gamma=2.0):
    p = 1 / (1 + np.exp(-logits))
    ce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    p_t = p * targets + (1 - p) * (1 - targets)
    a = alpha * targets + (1 - alpha) * (1 - targets)
    return (a * ce * (1 - p_t) ** gamma).mean(axis=(-2, -1))


def test_focal_dice_iou_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 8, 8)) * 3
    targets = (rng.random((2, 3, 8, 8)) < 0.3).astype(np.float64)
    np.testing.assert_allclose(sigmoid_focal_loss(logits, targets).numpy(), _np_focal(logits, targets), rtol=1e-4)
    p = 1 / (1 + np.exp(-logits))
    dice = 1 - (2 * (p * targets).sum((-2, -1)) + 1) / (p.sum((-2, -1)) + targets.sum((-2, -1)) + 1)
    np.testing.assert_allclose(dice_loss(logits, targets).numpy(), dice, rtol=1e-4)
    pred = logits > 0
    iou = (pred & (targets > 0)).sum((-2, -1)) / (pred | (targets > 0)).sum((-2, -1))
    np.testing.assert_allclose(mask_iou(logits, targets).numpy(), iou, rtol=1e-6)
    assert mask_iou(-np.ones((4, 4)), np.zeros((4, 4))).numpy() == 1.0  # empty vs empty


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradient_is_finite_for_saturated_logits(gamma):
    # Saturated pixels (p == 1.0 in float32) once made pow's gradient 0 * inf = nan for
    # gamma < 1, which turned a whole training run's weights into nan.
    logits = tf.constant([[[-60.0, -20.0, 0.0, 20.0, 60.0]]])
    targets = tf.constant([[[0.0, 1.0, 1.0, 0.0, 1.0]]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=gamma)
    grad = tape.gradient(loss, logits).numpy()
    assert np.all(np.isfinite(grad)) and np.isfinite(loss.numpy()).all()
    expected = _np_focal(np.array([[[-8.0, 8.0]]]), np.array([[[0.0, 1.0]]]), alpha=0.5, gamma=gamma) * 2
    np.testing.assert_allclose(
        sigmoid_focal_loss([[[-8.0, 8.0]]], [[[0.0, 1.0]]], alpha=-1, gamma=gamma).numpy(), expected, rtol=1e-4)
    assert grad[0, 0, 1] < 0 and grad[0, 0, 3] > 0  # wrong and confident: still pushed back


def test_min_over_masks_backpropagates_only_the_best_mask():
    gt = np.zeros((1, 1, 8, 8), np.float32)
    gt[..., 2:6, 2:6] = 1
    good = np.where(gt[0, 0] > 0, 8.0, -8.0)
    pred = tf.Variable(np.stack([np.full((8, 8), -8.0), good, np.full((8, 8), 8.0)])[None, None].astype(np.float32))
    scores = tf.Variable(np.array([[[0.1, 0.9, 0.2]]], np.float32))
    with tf.GradientTape() as tape:
        terms = sam_loss_terms(gt, pred, scores)
        loss = tf.reduce_mean(terms["loss"])
    assert int(terms["best"][0, 0]) == 1
    assert float(terms["iou"][0, 0]) == 1.0
    grad = tape.gradient(loss, pred).numpy()
    assert np.abs(grad[0, 0, 1]).sum() > 0
    assert np.abs(grad[0, 0, [0, 2]]).sum() == 0
    # The IoU head is trained on every mask: targets 0 (empty), 1, 16/64.
    iou_grad = tape.gradient(loss, scores) if False else None
    del iou_grad
    expected_iou_mse = np.mean([(0.1 - 0.0) ** 2, (0.9 - 1.0) ** 2, (0.2 - 0.25) ** 2])
    np.testing.assert_allclose(float(terms["iou_mse"][0, 0]), expected_iou_mse, rtol=1e-5)
    # valid=0 prompts contribute nothing; the mean is over all prompt slots.
    both = np.concatenate([gt, gt], axis=1)
    pred2 = tf.concat([pred, pred], axis=1)
    scores2 = tf.concat([scores, scores], axis=1)
    full = float(sam_loss(both, pred2, scores2))
    half = float(sam_loss(both, pred2, scores2, valid=np.array([[1.0, 0.0]])))
    np.testing.assert_allclose(half, full / 2, rtol=1e-6)


def test_mask_mean_iou_metric_uses_the_scored_mask():
    gt = np.zeros((1, 2, 4, 4), np.float32)
    gt[0, :, :2, :2] = 1
    perfect = np.where(gt[0, 0] > 0, 5.0, -5.0)
    empty = np.full((4, 4), -5.0)
    pred = np.stack([np.stack([perfect, empty]), np.stack([perfect, empty])])[None].astype(np.float32)
    scores = np.array([[[0.9, 0.1], [0.1, 0.9]]], np.float32)  # prompt 2 trusts the empty mask
    metric = MaskMeanIoU()
    metric.update_state({"masks": gt}, {"pred_masks": pred, "iou_scores": scores})
    assert float(metric.result()) == pytest.approx(0.5)
    oracle = MaskMeanIoU(selection="oracle")
    oracle.update_state({"masks": gt}, {"pred_masks": pred, "iou_scores": scores})
    assert float(oracle.result()) == pytest.approx(1.0)
    metric.reset_state()
    metric.update_state({"masks": gt, "valid": np.array([[1.0, 0.0]])}, {"pred_masks": pred, "iou_scores": scores})
    assert float(metric.result()) == pytest.approx(1.0)


def _label_map():
    labels = np.full((64, 64), -1, np.int32)
    labels[:48, :] = 0  # the image covers the top 48 rows; the rest is padding
    labels[4:20, 6:30] = 1
    labels[26:44, 36:60] = 2
    return labels


@pytest.mark.parametrize("mode", ["points", "box", "points+box", "mixed"])
def test_prompt_sampler_modes(mode):
    tf.random.set_seed(0)
    labels = _label_map()
    sampler = PromptSampler(image_size=64, mask_size=32, num_prompts=3, num_points=2, num_negatives=2, mode=mode)
    element = {"pixel_values": tf.zeros((64, 64, 3)), "label_map": labels}
    for _ in range(5):
        x, y = sampler(element)
        masks = y["masks"].numpy()
        assert masks.shape == (3, 32, 32) and y["valid"].numpy().tolist() == [1, 1, 1]
        full = np.kron(masks, np.ones((2, 2)))  # back to the input frame (exact for these rectangles)
        ids = [int(np.unique(labels[full[p] > 0])[0]) for p in range(3)]
        assert set(ids) == {1, 2}  # two objects, one drawn twice
        if "input_boxes" in x:
            boxes = x["input_boxes"].numpy()
            for p, i in enumerate(ids):
                ys, xs = np.nonzero(labels == i)
                tight = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
                assert np.all(np.abs(boxes[p] - tight) <= 20 * 64 / 1024 + 1e-5)
                assert boxes[p, 3] <= 47  # clipped to the image, not the padding
        if "input_points" in x:
            points, point_labels = x["input_points"].numpy(), x["input_labels"].numpy()
            for p, i in enumerate(ids):
                for (px, py), lab in zip(points[p], point_labels[p]):
                    owner = labels[int(py), int(px)]
                    if lab == 1:
                        assert owner == i
                    elif lab == 0:
                        assert owner != i and owner >= 0
                    elif lab in (2, 3):
                        assert mode == "mixed"
                    else:
                        assert lab == -10
            if mode == "mixed":
                assert points.shape == (3, 4, 2)


def test_prompt_sampler_without_instances_marks_prompts_invalid():
    sampler = PromptSampler(image_size=64, mask_size=32, num_prompts=2)
    x, y = sampler({"pixel_values": tf.zeros((64, 64, 3)), "label_map": np.zeros((64, 64), np.int32)})
    assert y["valid"].numpy().tolist() == [0, 0] and y["masks"].numpy().sum() == 0


def test_sample_error_points_click_on_mistakes():
    tf.random.set_seed(1)
    gt = np.zeros((1, 3, 8, 8), np.float32)
    gt[0, :, 2:4, 2:4] = 1
    pred = np.full((1, 3, 8, 8), -1.0, np.float32)
    pred[0, 1] = np.where(gt[0, 1] > 0, 1.0, -1.0)  # prompt 1 is already right
    pred[0, 2, 6, 6] = 1.0
    pred[0, 2][gt[0, 2] > 0] = 1.0  # prompt 2 has only one false positive at (6, 6)
    points, labels = sample_error_points(pred, gt, image_size=64)
    assert labels.numpy()[0, :, 0].tolist() == [1, -10, 0]
    x, y = points.numpy()[0, 0, 0]
    assert 16 <= x < 32 and 16 <= y < 32  # inside the missed object (cells 2..3 of 8px)
    np.testing.assert_allclose(points.numpy()[0, 2, 0], [6 * 8 + 3.5, 6 * 8 + 3.5])


def test_folder_dataset_decodes_with_shared_processor_ops(tmp_path):
    images, masks = write_folder_dataset(str(tmp_path), 3, seed=3, height=64, width=80)
    examples = list_folder_examples(images, masks)
    element = next(iter(image_dataset(examples, 64)))
    labels = element["label_map"].numpy()
    # 80x64 -> 64x51: 51 rows of image, 13 of padding.
    assert element["pixel_values"].shape == (64, 64, 3)
    assert (labels[51:] == -1).all() and (labels[:51] >= 0).all()
    source = np.asarray(Image.open(examples[0].mask).resize((64, 51), Image.NEAREST)).astype(np.int32)
    np.testing.assert_array_equal(labels[:51], source)


def _epochs(dataset, count=2):
    return [[(x["input_points"].numpy(), y["masks"].numpy()) for x, y in dataset] for _ in range(count)]


@pytest.mark.parametrize("mode", ["points", "mixed", "points+box"])
def test_seeded_prompt_dataset_is_reproducible_and_redraws_each_epoch(tmp_path, mode):
    # Prompts are sampled in a parallel map; with stateful random ops the threads' order
    # decided which image got which draw, so two runs with one seed trained differently.
    images, masks = write_folder_dataset(str(tmp_path), 8, seed=6, height=64, width=80)
    examples = list_folder_examples(images, masks)
    sampler = PromptSampler(64, 32, num_prompts=3, num_points=2, num_negatives=1, mode=mode)
    element = next(iter(image_dataset(examples, 64)))
    seeded = {**element, "seed": tf.constant([3, 4], tf.int64)}
    one, two = sampler(seeded), sampler(seeded)
    for key in one[0]:
        np.testing.assert_array_equal(one[0][key], two[0][key])  # a pure function of the seed
    assert not np.array_equal(sampler(element)[0]["input_points"], sampler(element)[0]["input_points"])

    def build(seed):
        tf.random.set_seed(1)
        return prompt_dataset(image_dataset(examples, 64), sampler, batch_size=4, seed=seed)

    first, again, other = _epochs(build(7)), _epochs(build(7)), _epochs(build(8), count=1)
    for run_a, run_b in zip(first, again):
        for (pa, ma), (pb, mb) in zip(run_a, run_b, strict=True):
            np.testing.assert_array_equal(pa, pb)
            np.testing.assert_array_equal(ma, mb)
    points = lambda run: np.concatenate([p for p, _ in run])
    assert not np.array_equal(points(first[0]), points(first[1]))  # each epoch draws afresh
    assert not np.array_equal(points(first[0]), points(other[0]))


def test_coco_polygons_and_rle(tmp_path):
    rng = np.random.default_rng(5)
    _, labels = make_example(rng, 40, 50)
    mask = labels == 1
    rle = amg.mask_to_rle(mask[None])[0]
    np.testing.assert_array_equal(decode_coco_segmentation(rle, 40, 50), mask)
    compressed = {"counts": amg.coco_encode_rle(rle)["counts"], "size": [40, 50]}
    np.testing.assert_array_equal(decode_coco_segmentation(compressed, 40, 50), mask)
    square = decode_coco_segmentation([[10.0, 5.0, 20.0, 5.0, 20.0, 15.0, 10.0, 15.0]], 40, 50)
    assert square[5:15, 10:20].all() and square.sum() == 10 * 10  # the polygon's area, as pycocotools

    ann, images_dir, label_maps = write_coco_dataset(str(tmp_path), 3, seed=2, height=64, width=64)
    examples = list_coco_examples(ann, images_dir)
    assert len(examples) == 3
    first = next(iter(image_dataset(examples, 64)))["label_map"].numpy()
    assert first.max() == label_maps[0].max() and (first >= 0).all()


def _bad_case(tmp_path, case):
    images, masks = write_folder_dataset(str(tmp_path), 3, seed=4)
    target = None
    if case == "mismatch":
        target = os.path.join(masks, "img_001.png")
        Image.fromarray(np.ones((10, 10), np.uint8)).save(target)
    elif case == "empty":
        target = os.path.join(masks, "img_001.png")
        Image.fromarray(np.zeros((64, 80), np.uint8)).save(target)
    elif case == "missing":
        target = os.path.join(masks, "img_001.png")
        os.remove(target)
    elif case == "corrupt":
        target = os.path.join(images, "img_001.png")
        data = open(target, "rb").read()
        open(target, "wb").write(data[: len(data) // 2])
    return images, masks, target


@pytest.mark.parametrize("case,words", [
    ("mismatch", "same size"), ("empty", "empty"), ("missing", "does not exist"), ("corrupt", "cannot read image"),
])
def test_bad_data_is_named_or_skipped(tmp_path, case, words):
    images, masks, target = _bad_case(tmp_path, case)
    with pytest.raises(DatasetError) as info:
        list_folder_examples(images, masks)
    assert target in str(info.value) and words in str(info.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = list_folder_examples(images, masks, on_error="skip")
    assert len(examples) == 2 and any(target in str(w.message) for w in caught)


def test_coco_errors_name_the_file(tmp_path):
    ann, images_dir, _ = write_coco_dataset(str(tmp_path), 2, seed=2)
    coco = json.load(open(ann))
    coco["images"][1]["file_name"] = "nope.png"
    json.dump(coco, open(ann, "w"))
    with pytest.raises(DatasetError, match="nope.png"):
        list_coco_examples(ann, images_dir)
    with pytest.warns(UserWarning, match="nope.png"):
        assert len(list_coco_examples(ann, images_dir, on_error="skip")) == 1
    with pytest.raises(DatasetError, match="does not exist"):
        list_coco_examples(str(tmp_path / "missing.json"))
