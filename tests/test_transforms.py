"""Spatial and value transforms against mmaction2's own transforms (the oracle) and against
hand-computed sizes, offsets and values.

Every comparison with mmaction2 here is exact (``assert_array_equal`` on uint8 / float32):
both sides call ``cv2.resize`` with ``INTER_LINEAR`` on the same uint8 input, and
normalisation is the same IEEE float32 arithmetic. Nothing needs the 1-grey-level slack.
"""
import cv2
import numpy as np
import pytest

from frameworks.spec import transforms as tf

processing = pytest.importorskip("mmaction.datasets.transforms.processing")
formatting = pytest.importorskip("mmaction.datasets.transforms.formatting")

# (H, W) of inputs: landscape, portrait, odd sizes whose rescaled side rounds both ways
SHAPES = [(256, 340), (240, 320), (242, 322), (342, 256), (144, 176), (720, 1280), (131, 257), (256, 256)]


def _frames(h, w, t=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def _mm(op, imgs, **extra):
    results = dict(imgs=list(imgs), img_shape=imgs[0].shape[:2], modality="RGB", **extra)
    return op(results)


@pytest.mark.parametrize("h,w", SHAPES)
def test_short_edge_resize_matches_mmaction2_resize(h, w):
    frames = _frames(h, w)
    ref = np.stack(_mm(processing.Resize(scale=(-1, 256)), frames)["imgs"])
    ours = tf.resize_short_edge(frames, 256, "bilinear", "round")
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("h,w", SHAPES)
def test_center_crop_matches_mmaction2(h, w):
    frames = tf.resize_short_edge(_frames(h, w), 256)
    ref = np.stack(_mm(processing.CenterCrop(crop_size=224), frames)["imgs"])
    np.testing.assert_array_equal(tf.center_crop(frames, 224, "floor"), ref)


@pytest.mark.parametrize("h,w", SHAPES)
def test_three_crop_matches_mmaction2_order(h, w):
    frames = tf.resize_short_edge(_frames(h, w), 256)
    ref = np.stack(_mm(processing.ThreeCrop(crop_size=256), frames)["imgs"])  # crop-major
    ours = tf.three_crop(frames, 256, "mmaction2")
    np.testing.assert_array_equal(ours.reshape(ref.shape), ref)


def test_format_shape_ncthw_matches_mmaction2():
    clips = _frames(32, 40, t=2 * 3 * 4).reshape(6, 4, 32, 40, 3)  # 2 crops x 3 clips, T=4
    results = dict(imgs=clips.reshape(-1, 32, 40, 3), num_clips=3, clip_len=4, modality="RGB")
    ref = formatting.FormatShape("NCTHW")(results)["imgs"]
    np.testing.assert_array_equal(tf.to_ncthw(clips), ref)


def test_normalize_matches_mmaction2_data_preprocessor():
    torch = pytest.importorskip("torch")
    from mmaction.models.data_preprocessors import ActionDataPreprocessor

    views = _frames(16, 20, t=2 * 4).reshape(2, 4, 16, 20, 3)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    pre = ActionDataPreprocessor(mean=list(mean), std=list(std), format_shape="NCTHW")
    ref = pre.preprocess([torch.from_numpy(tf.to_ncthw(views))], None)[0].numpy()[0]
    ours = tf.to_ncthw(tf.normalize(views, mean, std))
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


def test_size_rounding_hand_computed():
    # mmcv: int(x * 256 / min + 0.5); 242x322 -> 256 x int(340.6 + 0.5) = 341
    assert tf.short_edge_size(242, 322, 256, "round") == (256, 341)
    # Caffe2 truncates the long side: (int)(322 * (256.f / 242.f)) = 340; its short side
    # would come out as (int)(242 * (256.f / 242.f)) = 255 in float32, which is kept at 256
    assert tf.short_edge_size(242, 322, 256, "floor") == (256, 340)
    assert tf.short_edge_size(322, 242, 256, "floor") == (340, 256)
    assert tf.short_edge_size(720, 1280, 256, "round") == (256, 455)  # 455.11
    assert tf.short_edge_size(720, 1280, 256, "floor") == (256, 455)
    assert tf.short_edge_size(144, 176, 256, "round") == (256, 313)  # 312.89 rounds up
    assert tf.short_edge_size(144, 176, 256, "floor") == (256, 312)
    assert tf.short_edge_size(342, 256, 256) == (342, 256)  # portrait, already 256 wide


def test_center_crop_rounding_hand_computed():
    # width 343 - 256 = 87: floor -> 43 (mmaction2), half-to-even round(43.5) -> 44 (the seed)
    assert tf.center_crop_offsets(256, 343, 256, "floor") == (0, 43)
    assert tf.center_crop_offsets(256, 343, 256, "half_even") == (0, 44)
    # 341 - 256 = 85: round(42.5) -> 42, same as floor
    assert tf.center_crop_offsets(256, 341, 256, "half_even") == (0, 42)
    assert tf.center_crop_offsets(256, 340, 224) == (16, 58)


def test_three_crop_offsets_both_orders():
    # 340 wide: step (340 - 256) // 2 = 42; mmaction2 left, right, middle; Caffe2 0, 1/2, 1
    assert tf.three_crop_offsets(256, 340, 256, "mmaction2") == [(0, 0), (0, 84), (0, 42)]
    assert tf.three_crop_offsets(256, 340, 256, "caffe2") == [(0, 0), (0, 42), (0, 84)]
    # portrait: crops move down the long side
    assert tf.three_crop_offsets(342, 256, 256, "caffe2") == [(0, 0), (43, 0), (86, 0)]
    with pytest.raises(ValueError):
        tf.three_crop_offsets(300, 300, 256)


def test_bicubic_is_opencv_inter_cubic():
    frames = _frames(240, 320)
    ours = tf.resize_short_edge(frames, 256, "bicubic", "round")
    ref = np.stack([cv2.resize(f, (341, 256), interpolation=cv2.INTER_CUBIC) for f in frames])
    np.testing.assert_array_equal(ours, ref)
    assert not np.array_equal(ours, tf.resize_short_edge(frames, 256, "bilinear"))
    with pytest.raises(ValueError):
        tf.resize(frames, (10, 10), "lanczos")


def test_normalize_value_scale_and_inverse_multiply_by_hand():
    x = np.array([[[[0, 255, 128]]]], dtype=np.uint8)  # one RGB pixel
    seed = tf.normalize(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.255), value_scale=1 / 255.0)
    expected = (np.array([0, 1, 128 / 255.0], np.float32) - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
        [0.229, 0.224, 0.255], np.float32
    )
    np.testing.assert_array_equal(seed.reshape(3), expected)
    np.testing.assert_allclose(seed.reshape(3), [-2.117904, 2.428571, 0.376317], atol=1e-5)
    caffe2 = tf.normalize(x, (114.75,) * 3, (57.375,) * 3, op="multiply_inverse").reshape(3)
    np.testing.assert_allclose(caffe2, [-2.0, 2.444444, 0.230937], atol=1e-5)
    np.testing.assert_allclose(caffe2, tf.normalize(x, (114.75,) * 3, (57.375,) * 3).reshape(3), rtol=1e-6)


def test_flip_and_random_crop():
    frames = _frames(20, 30)
    np.testing.assert_array_equal(tf.hflip(frames)[:, :, 0], frames[:, :, -1])
    a = tf.random_crop(frames, (8, 10), np.random.default_rng(3))
    b = tf.random_crop(frames, (8, 10), np.random.default_rng(3))
    assert a.shape == (3, 8, 10, 3) and np.array_equal(a, b)
    with pytest.raises(ValueError):
        tf.random_crop(frames, 40, np.random.default_rng(0))


@pytest.mark.parametrize("op", ["divide", "multiply_inverse"])
@pytest.mark.parametrize("value_scale", [None, 1 / 255.0])
def test_fast_normalize_ncthw_is_bit_identical(op, value_scale):
    views = _frames(12, 14, t=2 * 5).reshape(2, 5, 12, 14, 3)
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.255)) if value_scale else ((114.75,) * 3, (57.375,) * 3)
    slow = tf.to_ncthw(tf.normalize(views, mean, std, value_scale=value_scale, op=op))
    fast = tf.normalize_ncthw(views, mean, std, value_scale=value_scale, op=op)
    assert fast.dtype == np.float32 and fast.flags.c_contiguous
    np.testing.assert_array_equal(fast, slow)
