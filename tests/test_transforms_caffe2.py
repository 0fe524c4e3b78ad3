"""Caffe2's geometry, size by size: ``ScaleTransform`` (the test-time resize) against a
re-statement of its C++ for every height and width 1..4096, and the authors' dataset
preparation (ffmpeg ``scale="trunc(oh*a/2)*2:256"``) against ffmpeg's own scale filter.

The re-statements use numpy float32 arrays (IEEE single precision, as the C++ computes on
x86-64), not the spec's scalar code."""
from fractions import Fraction

import numpy as np
import pytest

from frameworks.spec import transforms as tf

TARGET = 256
SIDES = np.arange(1, 4097)


def _scale_transform_cxx(heights, widths, side_length=TARGET):
    """video-nonlocal-net ``customized_video_io.cc`` ``ScaleTransform`` (605-614), vectorised:
    ``ratio = (float)side_length / (float)(height > width ? width : height)``;
    ``new_height = (int)((float)height * ratio)``; ``new_width = (int)((float)width * ratio)``."""
    h = np.asarray(heights, dtype=np.int64)
    w = np.asarray(widths, dtype=np.int64)
    short = np.where(h > w, w, h).astype(np.float32)
    ratio = np.float32(side_length) / short
    new_h = (h.astype(np.float32) * ratio).astype(np.int64)
    new_w = (w.astype(np.float32) * ratio).astype(np.int64)
    assert ratio.dtype == np.float32 and (h.astype(np.float32) * ratio).dtype == np.float32
    return new_h, new_w


def _documented(new_h, new_w):
    """The project's rule where the C++ leaves a side below the crop: raise it to 256."""
    return np.maximum(new_h, TARGET), np.maximum(new_w, TARGET)


def _check_sizes(heights, widths):
    cxx_h, cxx_w = _scale_transform_cxx(heights, widths)
    doc_h, doc_w = _documented(cxx_h, cxx_w)
    cxx_ok = np.minimum(cxx_h, cxx_w) >= TARGET
    changed = 0
    for h, w, ch, cw, ok, dh, dw in zip(heights, widths, cxx_h, cxx_w, cxx_ok, doc_h, doc_w):
        ours = tf.short_edge_size(int(h), int(w), TARGET, "floor")
        if ok:
            assert ours == (ch, cw), (h, w)
        else:
            assert ours == (dh, dw), (h, w)
            changed += 1
        # every result admits Caffe2's three 256 crops, inside the frame
        for top, left in tf.three_crop_offsets(ours[0], ours[1], TARGET, "caffe2"):
            assert 0 <= top and top + TARGET <= ours[0] and 0 <= left and left + TARGET <= ours[1], (h, w)
    return changed


def test_scale_transform_every_square_size():
    changed = _check_sizes(SIDES, SIDES)
    # 568 square sizes in 1..4096 (276 of them in 64..2160) come out 255x255 from the C++
    cxx_h, cxx_w = _scale_transform_cxx(SIDES, SIDES)
    short = SIDES[cxx_h < TARGET]
    assert changed == len(short) == 568
    assert int(((short >= 64) & (short <= 2160)).sum()) == 276
    assert short[:6].tolist() == [41, 47, 55, 61, 82, 83] and 282 in short
    assert tf.short_edge_size(282, 282, 256, "floor") == (256, 256)  # the C++: 255x255
    assert tf.short_edge_size(256, 256, 256, "floor") == (256, 256)


def test_scale_transform_non_square_sizes():
    """Every height 1..4096 against its neighbours (w = h - 1, h + 1, h + 2) and 6 random
    widths; the exact C++ result wherever it leaves both sides >= 256."""
    rng = np.random.default_rng(20261126)
    hs, ws = [], []
    for h in SIDES:
        for w in [h - 1, h + 1, h + 2, *rng.integers(1, 4097, size=6)]:
            if 1 <= w <= 4096 and w != h:
                hs.append(h)
                ws.append(int(w))
    hs, ws = np.array(hs), np.array(ws)
    changed = _check_sizes(hs, ws)
    assert 0 < changed < len(hs)  # the C++ short side is 255 for 568 of the 4096 short sides
    # hand-computed: 242x322 -> (int)(322 * (256.f / 242.f)) = 340, short side 255 -> 256
    assert tf.short_edge_size(242, 322, 256, "floor") == (256, 340)
    assert tf.short_edge_size(322, 242, 256, "floor") == (340, 256)
    assert tf.short_edge_size(256, 602, 256, "floor") == (256, 602)  # after the 256-high preparation
    assert tf.short_edge_size(256, 144, 256, "floor") == (455, 256)  # portrait: width up to 256


def test_scale_transform_full_grid_only_leaves_255_where_documented():
    """Over the whole 4096 x 4096 grid the C++ gives sides of at least 255, and a long side
    below 256 only for square frames: so "raise every side to 256" changes exactly the short
    side of a non-square frame or both sides of a square one, never anything else."""
    n_short_255 = 0
    for start in range(1, 4097, 512):
        h = np.arange(start, start + 512)[:, None]
        w = SIDES[None, :]
        new_h, new_w = _scale_transform_cxx(np.broadcast_to(h, (512, 4096)), np.broadcast_to(w, (512, 4096)))
        short_new, long_new = np.minimum(new_h, new_w), np.maximum(new_h, new_w)
        assert short_new.min() >= TARGET - 1 and short_new.max() == TARGET
        assert np.array_equal(long_new < TARGET, (h == w) & (short_new < TARGET))
        n_short_255 += int((short_new < TARGET).sum())
    assert n_short_255 > 0


@pytest.mark.parametrize("h,w", [(720, 1280), (242, 322), (144, 176), (1280, 720), (256, 256), (300, 300)])
def test_ffmpeg_prepare_size_by_hand(h, w):
    new_h, new_w = tf.ffmpeg_height_even_width_size(h, w, 256)
    assert new_h == 256 and new_w % 2 == 0
    assert new_w == 2 * int(256 * w / h / 2)


def test_ffmpeg_prepare_sizes_then_scale_transform():
    """For every (H, W) on a grid of landscape and portrait sizes: the preparation gives
    height 256 and an even width; then ScaleTransform is the identity for W' >= 256
    (landscape) and, for portrait, brings the width up to 256 (the height grows)."""
    rng = np.random.default_rng(7)
    sizes = [(h, w) for h in range(2, 2200, 37) for w in range(2, 2200, 41)]
    sizes += [tuple(int(v) for v in rng.integers(16, 4097, size=2)) for _ in range(2000)]
    sizes = [(h, w) for h, w in sizes if 128 * w >= h]  # aspect >= 1/128: the width cannot evaluate to 0
    assert len(sizes) > 4000
    for h, w in sizes:
        ph, pw = tf.ffmpeg_height_even_width_size(h, w, 256)
        assert ph == 256 and pw % 2 == 0 and pw >= 2, (h, w)
        sh, sw = tf.short_edge_size(ph, pw, 256, "floor")
        if pw >= 256:
            assert (sh, sw) == (ph, pw), (h, w)
        else:
            assert sw == 256 and sh > 256, (h, w)
    # ffmpeg's rule for a width that evaluates to 0 (aspect < 1/128): keep the input width
    assert tf.ffmpeg_height_even_width_size(4096, 3, 256) == (256, 3)
    with pytest.raises(ValueError):
        tf.ffmpeg_height_even_width_size(0, 10, 256)


def test_ffmpeg_prepare_size_equals_ffmpegs_scale_filter():
    """The size ffmpeg's own scale filter picks for ``w=trunc(oh*a/2)*2:h=256`` (through
    PyAV's filter graph, the libavfilter that PyAV links), for odd, even, landscape,
    portrait and extreme sizes."""
    av = pytest.importorskip("av")
    import av.filter

    def ffmpeg_size(h, w):
        graph = av.filter.Graph()
        src = graph.add_buffer(width=w, height=h, format="gray", time_base=Fraction(1, 25))
        scale = graph.add("scale", "w=trunc(oh*a/2)*2:h=256:flags=bicubic")
        sink = graph.add("buffersink")
        src.link_to(scale)
        scale.link_to(sink)
        graph.configure()
        frame = av.VideoFrame(w, h, "gray")
        frame.pts, frame.time_base = 0, Fraction(1, 25)
        graph.push(frame)
        out = graph.pull()
        return out.height, out.width

    rng = np.random.default_rng(11)
    sizes = [(720, 1280), (1280, 720), (242, 322), (144, 176), (272, 640), (256, 256), (255, 257), (4096, 3),
             (4096, 1), (1, 4096), (3, 2), (360, 480), (1080, 1920), (1920, 1080)]
    sizes += [tuple(int(v) for v in rng.integers(1, 4097, size=2)) for _ in range(150)]
    sizes += [tuple(int(v) for v in rng.integers(100, 800, size=2)) for _ in range(150)]
    for h, w in sizes:
        assert tf.ffmpeg_height_even_width_size(h, w, 256) == ffmpeg_size(h, w), (h, w)
