"""SamImageProcessor: parity with HF's (PIL backend) on real photos, configs, bad inputs."""

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from tf_sam.processing import BatchFeature, SamImageProcessor

Image = pytest.importorskip("PIL.Image")

IMAGES_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "images"
MEAN_TOL, MAX_TOL = 0.01, 0.1  # normalized pixel_values vs HF


def shared_image_paths():
    return sorted(p for p in IMAGES_DIR.glob("*") if p.suffix.lower() in (".jpg", ".png"))


def skimage_images():
    data = pytest.importorskip("skimage.data")
    return {name: getattr(data, name)() for name in ("astronaut", "camera", "coffee", "chelsea")}


@pytest.fixture(scope="module")
def hf_processor():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.SamImageProcessor()


def hf_outputs(hf_processor, images, **kwargs):
    """HF's outputs as numpy, pixel_values moved to channels-last."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf_processor(images, return_tensors="pt", **kwargs)
    out = {k: v.numpy() for k, v in out.items()}
    out["pixel_values"] = out["pixel_values"].transpose(0, 2, 3, 1)
    return out


def assert_matches_hf(hf_processor, ours_input, hf_input=None, processor=None):
    """Runs both processors; checks pixel tolerance and exact sizes. Returns (mean, max) diff."""
    processor = processor or SamImageProcessor()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = processor(ours_input, return_tensors="np")
    ref = hf_outputs(hf_processor, ours_input if hf_input is None else hf_input)
    np.testing.assert_array_equal(ours["original_sizes"], ref["original_sizes"])
    np.testing.assert_array_equal(ours["reshaped_input_sizes"], ref["reshaped_input_sizes"])
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    assert ours["pixel_values"].dtype == np.float32
    diff = np.abs(ours["pixel_values"] - ref["pixel_values"])
    assert diff.mean() <= MEAN_TOL and diff.max() <= MAX_TOL, (diff.mean(), diff.max())
    # The resize is Pillow-exact, so nearly every value is identical (tf.image.resize's
    # antialiased bilinear, for comparison, is off by one level in 10-20% of pixels).
    assert (diff == 0).mean() >= 0.99
    return float(diff.mean()), float(diff.max())


@pytest.mark.parametrize("path", shared_image_paths() or [None], ids=lambda p: getattr(p, "name", "missing"))
def test_parity_shared_photos(hf_processor, path):
    if path is None:
        pytest.skip(f"no test photos: {IMAGES_DIR} (../shared/images from the repo root) is absent or empty")
    image = Image.open(path)
    image.load()
    assert_matches_hf(hf_processor, image)
    if image.mode == "RGB":
        assert_matches_hf(hf_processor, np.array(image))


def test_parity_skimage(hf_processor):
    for name, image in skimage_images().items():
        if image.ndim == 2:  # camera: HF rejects 2-D arrays, so give it (H, W, 1) and ours (H, W)
            assert_matches_hf(hf_processor, image, hf_input=image[..., None])
            assert_matches_hf(hf_processor, Image.fromarray(image))
        else:
            assert_matches_hf(hf_processor, image)


def _variants():
    """Tiny, huge, portrait, grayscale, RGBA and float versions of real photos."""
    data = pytest.importorskip("skimage.data")
    astronaut, coffee = data.astronaut(), data.coffee()
    pil = Image.fromarray(coffee)
    rgba = np.concatenate([astronaut, np.linspace(0, 255, 512 * 512).reshape(512, 512, 1).astype(np.uint8)], -1)
    return {
        "37x1000": np.array(pil.resize((1000, 37), Image.BILINEAR)),
        "1000x37": np.array(pil.resize((37, 1000), Image.BILINEAR)),
        "crop-37x1000": np.ascontiguousarray(np.tile(coffee, (1, 2, 1))[100:137, :1000]),
        "3000x2000-upscaled": np.array(Image.fromarray(astronaut).resize((3000, 2000), Image.BILINEAR)),
        "portrait": np.ascontiguousarray(coffee.transpose(1, 0, 2)),
        "gray-HW1": data.camera()[..., None],
        "gray-PIL-L": pil.convert("L"),
        "rgba-array": rgba,
        "rgba-PIL": Image.fromarray(rgba, "RGBA"),
        "palette-PIL": pil.convert("P"),
        "float-0-255": coffee.astype(np.float32),
        "float-0-1": coffee.astype(np.float32) / 255,
        "float64-0-1": astronaut.astype(np.float64) / 255,
        "int64": coffee.astype(np.int64),
    }


def test_parity_variants(hf_processor):
    numbers = {}
    for name, image in _variants().items():
        numbers[name] = assert_matches_hf(hf_processor, image)
    print("\nmean/max |pixel_values - HF|:", json.dumps(numbers))


def test_parity_tf_tensor_and_batch_of_sizes(hf_processor):
    data = pytest.importorskip("skimage.data")
    images = [data.astronaut(), data.coffee(), data.chelsea()[:100]]
    ours = SamImageProcessor()(tf.constant(images[0]), return_tensors="np")
    np.testing.assert_array_equal(ours["pixel_values"], hf_outputs(hf_processor, images[0])["pixel_values"])
    assert_matches_hf(hf_processor, images)
    batch4d = np.stack([images[0], images[0][::-1]])
    assert_matches_hf(hf_processor, batch4d, hf_input=list(batch4d))


def test_float_unit_images_are_rescaled_twice_like_hf_with_a_warning():
    image = np.full((8, 8, 3), 0.5, np.float32)
    with pytest.warns(UserWarning, match="rescaled twice"):
        twice = SamImageProcessor(do_normalize=False, do_pad=False)(image, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(twice, 127 / 255 / 255, rtol=1e-6)  # uint8 truncation: 0.5 * 255 -> 127
    once = SamImageProcessor(do_normalize=False, do_pad=False, do_rescale=False)(image, return_tensors="np")
    np.testing.assert_allclose(once["pixel_values"], 127 / 255, rtol=1e-6)


def test_output_types_and_attribute_access():
    image = np.zeros((30, 40, 3), np.uint8)
    out = SamImageProcessor()(image)
    assert isinstance(out, BatchFeature) and isinstance(out, dict)
    assert isinstance(out.pixel_values, tf.Tensor) and out.pixel_values.shape == (1, 1024, 1024, 3)
    assert out.pixel_values.dtype == tf.float32 and out.original_sizes.dtype == tf.int64
    assert out["reshaped_input_sizes"].numpy().tolist() == [[768, 1024]]
    with pytest.raises(AttributeError):
        out.labels
    out_np = SamImageProcessor()([image, image[:10]], return_tensors="np")
    assert isinstance(out_np.pixel_values, np.ndarray) and out_np.pixel_values.shape == (2, 1024, 1024, 3)
    assert out_np.reshaped_input_sizes.tolist() == [[768, 1024], [256, 1024]]
    np.testing.assert_array_equal(out_np.pixel_values[1, 256:], 0)  # padding is 0 after normalisation


def test_no_resize_and_no_pad_paths():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = SamImageProcessor(do_resize=False, do_normalize=False)(image, return_tensors="np")
    assert out.reshaped_input_sizes.tolist() == [[20, 30]]
    np.testing.assert_allclose(out.pixel_values[0, :20, :30], image / 255, rtol=1e-6)
    with pytest.raises(ValueError, match="do_pad"):
        SamImageProcessor(do_pad=False)([image, image[:10]])
    with pytest.raises(ValueError, match="larger than pad_size"):
        SamImageProcessor(do_resize=False)(np.zeros((2000, 10, 3), np.uint8))


def test_segmentation_maps_labels_match_hf(hf_processor):
    rng = np.random.default_rng(1)
    maps = [rng.integers(0, 5, (534, 800), dtype=np.uint8), rng.integers(0, 3, (37, 1000)).astype(np.int64)]
    images = [np.zeros((*m.shape, 3), np.uint8) for m in maps]
    ours = SamImageProcessor()(images, segmentation_maps=maps, return_tensors="np")
    ref = hf_outputs(hf_processor, images, segmentation_maps=maps)
    assert ours.labels.dtype == np.int64 and ours.labels.shape == (2, 256, 256)
    np.testing.assert_array_equal(ours.labels, ref["labels"])
    mask_path = IMAGES_DIR / "pennfudan_FudanPed00054_mask.png"
    if mask_path.exists():
        label_map, photo = Image.open(mask_path), Image.open(IMAGES_DIR / "pennfudan_FudanPed00054.png")
        ours = SamImageProcessor()(photo, segmentation_maps=label_map, return_tensors="np")
        ref = hf_outputs(hf_processor, photo, segmentation_maps=label_map)
        np.testing.assert_array_equal(ours.labels, ref["labels"])
        assert set(np.unique(ours.labels)) == {0, 1, 2, 3}


def test_segmentation_map_errors():
    image = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ValueError, match="matching its image"):
        SamImageProcessor()(image, segmentation_maps=np.zeros((12, 10), np.uint8))
    with pytest.raises(ValueError, match="2 segmentation maps for 1 images"):
        SamImageProcessor()(image, segmentation_maps=[np.zeros((10, 12))] * 2)
    with pytest.raises(ValueError, match="whole numbers"):
        SamImageProcessor()(image, segmentation_maps=np.full((10, 12), 0.5))


def _smooth_logits(torch, shape, seed):
    """Random low-res logits that form blobs, so thresholded masks are non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape[0] * shape[1], 1, 16, 16, generator=generator)
    logits = torch.nn.functional.interpolate(noise, shape[2:], mode="bicubic", align_corners=False) * 4
    return logits.reshape(shape)


@pytest.mark.parametrize("original", [(534, 800), (1200, 1800), (37, 1000), (1000, 37), (2000, 3000), (770, 769)])
def test_post_process_masks_iou_vs_hf(hf_processor, original):
    torch = pytest.importorskip("torch")
    longest = 1024 / max(original)
    reshaped = tuple(int(s * longest + 0.5) for s in original)
    logits = _smooth_logits(torch, (2, 3, 256, 256), seed=sum(original))
    ref = hf_processor.post_process_masks([logits], [original], [reshaped])[0].numpy()
    ours = SamImageProcessor().post_process_masks([logits.numpy()], np.array([original]), [reshaped])[0]
    assert ours.shape == (2, 3, *original) and ours.dtype == bool
    assert 0.2 < ref.mean() < 0.8
    iou = (ours & ref).sum() / (ours | ref).sum()
    assert iou >= 0.99, iou
    soft = SamImageProcessor().post_process_masks(logits.numpy()[None], [original], [reshaped], binarize=False)
    ref_soft = hf_processor.post_process_masks([logits], [original], [reshaped], binarize=False)[0].numpy()
    np.testing.assert_allclose(soft[0], ref_soft, atol=1e-4)


def test_post_process_masks_inputs():
    processor = SamImageProcessor.for_image_size(512)
    masks = tf.random.normal((1, 2, 3, 128, 128))
    out = processor.post_process_masks(masks, tf.constant([[300, 200]]), tf.constant([[512, 341]]),
                                       return_tensors="tf")
    assert isinstance(out, list) and out[0].shape == (2, 3, 300, 200) and out[0].dtype == tf.bool
    with pytest.raises(ValueError, match="one per image"):
        processor.post_process_masks(np.zeros((3, 128, 128)), [[300, 200]], [[512, 341]])
    with pytest.raises(ValueError, match="2 images"):
        processor.post_process_masks([np.zeros((1, 1, 128, 128))] * 2, [[300, 200]], [[512, 341]])


def test_save_and_load_round_trip_with_hf(tmp_path, hf_processor):
    transformers = pytest.importorskip("transformers")
    ours = SamImageProcessor.for_image_size(512, image_mean=[0.5, 0.5, 0.5])
    ours.save_pretrained(tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.SamImageProcessor.from_pretrained(tmp_path / "ours")
    assert theirs.size["longest_edge"] == 512 and theirs.pad_size["height"] == 512
    assert theirs.mask_size["longest_edge"] == 128 and theirs.mask_pad_size["width"] == 128
    assert list(theirs.image_mean) == [0.5, 0.5, 0.5]
    assert SamImageProcessor.from_pretrained(tmp_path / "ours").to_dict() == ours.to_dict()

    hf_processor.save_pretrained(tmp_path / "hf")
    loaded = SamImageProcessor.from_pretrained(tmp_path / "hf")
    assert loaded.to_dict() == SamImageProcessor().to_dict()
    assert SamImageProcessor.from_pretrained(tmp_path / "hf" / "preprocessor_config.json").to_dict() == loaded.to_dict()


def test_from_pretrained_reads_old_hub_style_config(tmp_path):
    config = {"do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
              "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
              "image_processor_type": "SamImageProcessor", "pad_size": {"height": 1024, "width": 1024},
              "processor_class": "SamProcessor", "resample": 2, "rescale_factor": 0.00392156862745098,
              "size": {"longest_edge": 1024}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    processor = SamImageProcessor.from_pretrained(tmp_path)
    assert processor.mask_size == {"longest_edge": 256} and processor.pad_size == {"height": 1024, "width": 1024}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**config, "resample": 3}))
    with pytest.raises(ValueError, match="resample"):
        SamImageProcessor.from_pretrained(tmp_path)


def test_from_pretrained_errors(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(OSError, match="Hub.*local directory containing preprocessor_config.json"):
        SamImageProcessor.from_pretrained("facebook/sam-vit-base")
    with pytest.raises(FileNotFoundError):
        SamImageProcessor.from_pretrained(tmp_path)  # a directory without a config
    with pytest.raises(FileNotFoundError):
        SamImageProcessor.from_pretrained(str(tmp_path / "missing" / "dir" / "x"))


def test_for_model_follows_image_size():
    model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=512, patch_size=16)))
    processor = SamImageProcessor.for_model(model)
    assert processor.size == {"longest_edge": 512} and processor.pad_size == {"height": 512, "width": 512}
    assert processor.mask_size == {"longest_edge": 128} and processor.mask_pad_size == {"height": 128, "width": 128}
    assert SamImageProcessor.for_model(model.config).to_dict() == processor.to_dict()
    assert SamImageProcessor.for_model({"vision_config": {"image_size": 256, "patch_size": 16}}).mask_size == {
        "longest_edge": 64}
    out = processor(np.zeros((300, 200, 3), np.uint8), return_tensors="np")
    assert out.pixel_values.shape == (1, 512, 512, 3) and out.reshaped_input_sizes.tolist() == [[512, 341]]
    masks = processor.post_process_masks(np.zeros((1, 1, 3, 128, 128), np.float32) + 1, out.original_sizes,
                                         out.reshaped_input_sizes)
    assert masks[0].shape == (1, 3, 300, 200) and masks[0].all()
    with pytest.raises(ValueError, match="vision_config"):
        SamImageProcessor.for_model(object())


class _NotAnImage:
    pass


@pytest.mark.parametrize("image, message", [
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((10, 0), np.uint8), "empty"),
    (Image.new("RGB", (0, 10)), "empty"),
    (np.zeros((10,), np.uint8), r"shape \(H, W\) or \(H, W, C\)"),
    (np.zeros((2, 3, 4, 5, 6), np.uint8), r"shape \(H, W\) or \(H, W, C\)"),
    (np.zeros((10, 10, 2), np.uint8), "1 \\(gray\\), 3 \\(RGB\\) or 4 \\(RGBA\\) channels"),
    (np.zeros((10, 10, 5), np.uint8), "channels"),
    (np.zeros((3, 32, 48), np.uint8), "channels-first"),
    (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
    (np.full((10, 10, 3), np.inf), "NaN or infinite"),
    (np.full((10, 10, 3), 2.5, np.float32), r"\[0, 1\]"),
    (np.full((10, 10, 3), 300, np.int32), r"\[0, 255\]"),
    (np.array([["a", "b"]]), "numeric"),
    ("photo.jpg", "PIL.Image.open"),
    ({"pixels": 1}, "dict"),
    (None, "NoneType"),
    (_NotAnImage(), "_NotAnImage"),
    ([], "empty list"),
    ([np.zeros((4, 4, 3), np.uint8), 7], r"images\[1\]"),
])
def test_bad_images_raise_value_error(image, message):
    with pytest.raises(ValueError, match=message):
        SamImageProcessor()(image)


def test_rgb_required_without_convert():
    with pytest.raises(ValueError, match="do_convert_rgb"):
        SamImageProcessor(do_convert_rgb=False)(np.zeros((10, 10, 1), np.uint8))


def test_bad_config_values():
    with pytest.raises(ValueError, match="longest_edge"):
        SamImageProcessor(size={"height": 10})
    with pytest.raises(ValueError, match="positive integer"):
        SamImageProcessor(pad_size=0)
    with pytest.raises(ValueError, match="return_tensors"):
        SamImageProcessor()(np.zeros((4, 4, 3), np.uint8), return_tensors="pt")
