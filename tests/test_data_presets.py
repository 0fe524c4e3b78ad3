"""The five named data presets: their values as their sources state them, their hashes,
and their whole frame -> clip pipelines on synthetic frames against hand-written
re-statements of each codebase's steps (all exact)."""
import json
import warnings

import cv2
import numpy as np
import pytest

from frameworks.spec import clips
from frameworks.spec.data_presets import PRESETS, data_preset_hash, get_data_preset


def _preset(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_data_preset(name)


def test_preset_values_as_their_sources_state_them():
    val, test = _preset("mmaction2_val"), _preset("mmaction2_test_10x3")
    seed, caffe2 = _preset("seed_eval"), _preset("caffe2_test_10x3")
    for p in (val, test):
        assert (p.clip_len, p.frame_interval, p.short_edge, p.interpolation) == (32, 2, 256, "bilinear")
        assert p.mean == (123.675, 116.28, 103.53) and p.std == (58.395, 57.12, 57.375)
        assert p.value_scale == 1.0 and p.clip_combine == "prob" and p.label_order == "alphabetical"
    assert (val.num_clips, val.crop, val.crop_size, val.protocol) == (1, "center", 224, "1x1")
    assert (test.num_clips, test.crop, test.crop_size, test.protocol) == (10, "three", 256, "10x3")
    # the seed's nonlocal.yaml eval block, verbatim, typo included
    assert (seed.clip_len, seed.frame_interval, seed.num_clips, seed.sampler) == (32, 6, 1, "seed_interval")
    assert (seed.interpolation, seed.short_edge, seed.crop, seed.crop_size) == ("bicubic", 256, "center", 256)
    assert seed.mean == (0.485, 0.456, 0.406) and seed.std == (0.229, 0.224, 0.255)
    assert seed.value_scale == pytest.approx(1 / 255) and seed.label_order == "train_csv"
    assert seed.crop_rounding == "half_even" and seed.offset_seed == 0
    assert (caffe2.num_clips, caffe2.crop, caffe2.crop_size, caffe2.three_crop_order) == (10, "three", 256, "caffe2")
    assert caffe2.mean == (114.75,) * 3 and caffe2.std == (57.375,) * 3 and caffe2.size_rounding == "floor"
    assert (caffe2.pre_resize_height, caffe2.pre_resize_interpolation) == (256, "bicubic")
    # mmaction2 0.x (73.92 / 91.59): the 1.x geometry, the 0.x sampler, mean of raw scores
    old = _preset("mmaction2_0x_test_10x3")
    assert (old.sampler, old.clip_combine, old.protocol) == ("mmaction2_0x", "score", "10x3")
    assert (old.clip_len, old.frame_interval, old.short_edge, old.interpolation, old.size_rounding) == (
        32, 2, 256, "bilinear", "round")
    assert (old.crop, old.crop_size, old.three_crop_order, old.normalize_op) == ("three", 256, "mmaction2", "divide")
    assert old.mean == test.mean and old.std == test.std and old.pre_resize_height is None
    assert any("rawframes" in q for q in old.known_quirks)
    for p in (val, test, seed, caffe2, old):
        assert p.layout == "NCTHW" and p.channel_order == "RGB"
    for p in (val, test, seed):
        assert p.pre_resize_height is None


def test_seed_eval_warns_about_its_std_typo():
    with pytest.warns(UserWarning, match="0.255"):
        get_data_preset("seed_eval")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("mmaction2_val", "mmaction2_test_10x3", "mmaction2_0x_test_10x3", "caffe2_test_10x3"):
            get_data_preset(name)  # no warning


def test_unknown_preset_and_bad_fields():
    with pytest.raises(KeyError, match="mmaction2_val"):
        get_data_preset("kinetics_magic")
    with pytest.raises(ValueError, match="interpolation"):
        _preset("mmaction2_val").replace(interpolation="lanczos")
    with pytest.raises(ValueError, match="offset_seed"):
        _preset("seed_eval").replace(offset_seed=None)
    with pytest.raises(ValueError, match="sampler"):
        _preset("mmaction2_val").replace(sampler="mmaction2_1x")
    with pytest.raises(ValueError, match="pre_resize_interpolation"):
        _preset("caffe2_test_10x3").replace(pre_resize_interpolation="swscale")
    with pytest.raises(ValueError, match="pre_resize_height"):
        _preset("caffe2_test_10x3").replace(pre_resize_height=0)


def test_hash_is_stable_distinct_and_sensitive():
    hashes = {name: data_preset_hash(p) for name, p in PRESETS.items()}
    assert len(PRESETS) == 5 and len(set(hashes.values())) == 5
    # pinned: results/ records these; a preset without a preparation step keeps its hash
    # (the pre_resize_* fields stay out of its to_dict), caffe2_test_10x3's changed with it
    assert hashes["mmaction2_val"] == "e5f21bbd775a417a"
    assert hashes["mmaction2_test_10x3"] == "9ad4e457509da702" and hashes["seed_eval"] == "b01b520a518e1648"
    caffe2 = _preset("caffe2_test_10x3")
    assert caffe2.to_dict()["pre_resize_height"] == 256
    assert "pre_resize_height" not in _preset("mmaction2_val").to_dict()
    assert data_preset_hash(caffe2.replace(pre_resize_height=None)) != hashes["caffe2_test_10x3"]
    assert data_preset_hash(caffe2.replace(pre_resize_interpolation="area")) != hashes["caffe2_test_10x3"]
    assert all(len(h) == 16 and int(h, 16) >= 0 for h in hashes.values())
    val = _preset("mmaction2_val")
    assert data_preset_hash(val) == data_preset_hash(_preset("mmaction2_val"))
    assert data_preset_hash(val.replace(decoder="pyav")) != hashes["mmaction2_val"]
    assert data_preset_hash(_preset("seed_eval").replace(offset_seed=1)) != hashes["seed_eval"]
    d = json.loads(json.dumps(val.to_dict()))
    assert d["name"] == "mmaction2_val" and d["protocol"] == "1x1" and d["std"] == [58.395, 57.12, 57.375]


def test_shapes():
    assert _preset("mmaction2_val").input_shape(2) == (2, 3, 32, 224, 224)
    assert _preset("mmaction2_test_10x3").input_shape() == (30, 3, 32, 256, 256)
    assert _preset("seed_eval").input_shape() == (1, 3, 32, 256, 256)


def test_frame_indices_per_sampler():
    val, seed, caffe2 = _preset("mmaction2_val"), _preset("seed_eval"), _preset("caffe2_test_10x3")
    np.testing.assert_array_equal(val.frame_indices(300), clips.sample_clip_indices(300, 32, 2, 1))
    np.testing.assert_array_equal(caffe2.frame_indices(300)[:, 0], np.arange(0, 300, 30))
    old = _preset("mmaction2_0x_test_10x3")
    np.testing.assert_array_equal(old.frame_indices(300), clips.mmaction2_0x_test_indices(300, 32, 2, 10))
    assert old.frame_indices(300)[:, 0].tolist() == [11, 35, 59, 82, 106, 130, 154, 177, 201, 225]
    # seed: deterministic for (offset_seed, video id), different across videos and seeds
    a = seed.frame_indices(300, "vid_a")
    np.testing.assert_array_equal(a, seed.frame_indices(300, "vid_a"))
    offsets = {int(seed.frame_indices(300, f"vid_{i}")[0, 0]) for i in range(20)}
    assert len(offsets) > 10 and max(offsets) <= 300 - 193
    other = seed.replace(offset_seed=5)
    assert any(
        other.frame_indices(300, f"vid_{i}")[0, 0] != seed.frame_indices(300, f"vid_{i}")[0, 0] for i in range(5)
    )


def test_combine_prob_and_score_by_hand():
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    p = 1 / (1 + np.exp(-2.0))  # softmax([2, 0])[0]
    np.testing.assert_allclose(_preset("mmaction2_test_10x3").combine(logits), [(p + 0.5) / 2, (1 - p + 0.5) / 2])
    np.testing.assert_allclose(_preset("seed_eval").combine(logits), [1.0, 0.0])
    np.testing.assert_allclose(_preset("mmaction2_0x_test_10x3").combine(logits), [1.0, 0.0])  # raw scores


def _frames(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_seed_eval_pipeline_restated():
    """The seed's eval chain, re-stated step by step: VideoShortEdgeResize(256, bicubic) =
    cv2 INTER_CUBIC to (int(s*w+.5), int(s*h+.5)); VideoCenterCrop(256) at np.round offsets;
    VideoRescale x/255 (float64, then float32); VideoReOrder to CTHW; VideoNormalize."""
    preset = _preset("seed_eval")
    frames = _frames(32, 240, 323)  # -> 256 x int(344.5 + .5) = 345; crop offset round(44.5) = 44
    resized = np.stack([cv2.resize(f, (345, 256), interpolation=cv2.INTER_CUBIC) for f in frames])
    cropped = resized[:, 0:256, 44 : 44 + 256]
    x = (cropped * (1 / 255.0)).astype(np.float32).transpose(3, 0, 1, 2)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None, None]
    std = np.array([0.229, 0.224, 0.255], np.float32)[:, None, None, None]
    expected = (x - mean) / std
    ours = preset.make_clips(frames)
    assert ours.shape == (1, 3, 32, 256, 256) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours[0], expected)


def test_caffe2_pipeline_restated():
    """Caffe2's chain, re-stated: the dataset preparation (height 256, width trunc(256 * W / H
    / 2) * 2, bicubic: 242x322 -> 256x340), ScaleTransform (cv2 default bilinear to
    (int)(w * 256.f/h), 256: here the identity), ClipTransformFlex crops at spatial_pos 0, 1,
    2 (offsets 0, step, 2 * step with step = (W - 256) / 2), then (x - 114.75) * (1 / 57.375)
    in float32; crop-major like its LMDB."""
    preset = _preset("caffe2_test_10x3").replace(num_clips=3, clip_len=4)  # same code path, less memory
    frames = _frames(3 * 4, 242, 322)
    prep_w = 2 * int(256 * 322 / 242 / 2)  # 340
    prepared = np.stack([cv2.resize(f, (prep_w, 256), interpolation=cv2.INTER_CUBIC) for f in frames])
    new_w = int(np.float32(prep_w) * (np.float32(256) / np.float32(256)))  # 340: ScaleTransform is the identity
    resized = np.stack([cv2.resize(f, (new_w, 256)) for f in prepared]).reshape(3, 4, 256, new_w, 3)
    step = (new_w - 256) // 2
    crops = [resized[:, :, :, k * step : k * step + 256] for k in range(3)]
    x = np.concatenate(crops).astype(np.float32)
    expected = ((x - np.float32(114.75)) * (np.float32(1) / np.float32(57.375))).transpose(0, 4, 1, 2, 3)
    ours = preset.make_clips(frames)
    assert ours.shape == (9, 3, 4, 256, 256)
    np.testing.assert_array_equal(ours, expected)


def test_views_reject_wrong_frame_count():
    with pytest.raises(ValueError, match="expected"):
        _preset("mmaction2_val").views_uint8(_frames(31, 64, 64))


def test_caffe2_preparation_portrait_and_square():
    """Portrait 400x300 -> prepared 256 x trunc(256 * 300 / 400 / 2) * 2 = 256x192 (bicubic),
    then ScaleTransform brings the width to 256: ratio 256.f / 192.f, height
    (int)(256 * ratio) = 341, bilinear; crops move down the long side at 0, 42, 84. A square
    282x282 frame (ScaleTransform's 255x255 case without the preparation) is kept."""
    preset = _preset("caffe2_test_10x3").replace(num_clips=1, clip_len=2)
    frames = _frames(2, 400, 300, seed=3)
    prepared = np.stack([cv2.resize(f, (192, 256), interpolation=cv2.INTER_CUBIC) for f in frames])
    np.testing.assert_array_equal(preset.prepare(frames), prepared)
    new_h = int(np.float32(256) * (np.float32(256) / np.float32(192)))
    assert new_h == 341
    resized = np.stack([cv2.resize(f, (256, new_h)) for f in prepared])
    expected = np.stack([resized[:, k * 42 : k * 42 + 256] for k in range(3)])
    np.testing.assert_array_equal(preset.views_uint8(frames), expected)
    views = preset.replace(pre_resize_height=None).views_uint8(_frames(2, 282, 282))
    assert views.shape == (3, 2, 256, 256, 3)


def test_mmaction2_0x_pipeline_restated():
    """0.x's test chain on decoded frames: SampleFrames (0.x rule), Resize((-1, 256)) =
    mmcv rescale_size int(x * s + 0.5) with cv2 INTER_LINEAR, ThreeCrop(256) left, right,
    middle, Normalize (mmcv imnormalize_: subtract mean, multiply by 1 / std in float64 ->
    float32), mean of raw scores."""
    preset = _preset("mmaction2_0x_test_10x3").replace(num_clips=2, clip_len=3)
    frames = _frames(2 * 3, 240, 320, seed=5)
    resized = np.stack([cv2.resize(f, (341, 256), interpolation=cv2.INTER_LINEAR) for f in frames])
    resized = resized.reshape(2, 3, 256, 341, 3)
    step = (341 - 256) // 2
    views = np.concatenate([resized[:, :, :, o : o + 256] for o in (0, 2 * step, step)]).astype(np.float32)
    # 0.x Normalize.__init__ stores float32 arrays; imnormalize_ widens them to float64
    mean = np.float64(np.array([123.675, 116.28, 103.53], dtype=np.float32))
    stdinv = 1 / np.float64(np.array([58.395, 57.12, 57.375], dtype=np.float32))
    expected = np.empty_like(views)
    for i, img in enumerate(views.reshape(-1, 256, 256, 3)):
        x = img.copy()
        cv2.subtract(x, mean.reshape(1, -1), x)
        cv2.multiply(x, stdinv.reshape(1, -1), x)
        expected.reshape(-1, 256, 256, 3)[i] = x
    np.testing.assert_array_equal(preset.make_clips(frames), expected.transpose(0, 4, 1, 2, 3))
    # and for every uint8 value in every channel
    every = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None].astype(np.float32)
    ref = every.copy()
    cv2.subtract(ref, mean.reshape(1, -1), ref)
    cv2.multiply(ref, stdinv.reshape(1, -1), ref)
    ours = preset.normalize(every.astype(np.uint8)[None, None])  # (1, 3, 1, 1, 256)
    np.testing.assert_array_equal(ours[0, :, 0, 0].T, ref[0])
