"""Spatial and value transforms for video clips (numpy + OpenCV, nothing else).

Frames are ``uint8`` RGB arrays shaped ``(..., H, W, 3)``: any number of leading axes
(frames, clips, crops). Geometry stays in ``uint8`` so that it can be compared pixel for
pixel with other pipelines; :func:`normalize` is the only step that produces floats, and
:func:`to_ncthw` the only one that moves the channel axis.

Interpolation names mean what OpenCV means by them: ``bilinear`` is ``cv2.INTER_LINEAR``
(mmcv's ``imresize`` default, hence mmaction2's ``Resize``), ``bicubic`` is
``cv2.INTER_CUBIC``, ``area`` is ``cv2.INTER_AREA``. (mindvideo's
``VideoShortEdgeResize`` calls ``INTER_AREA`` "bilinear"; its ``bicubic``, the one the
seed's config uses, is a true ``INTER_CUBIC``.)

Rounding of the resized size and of crop offsets differs between codebases, so it is a
parameter, never a guess:

* short-edge size: ``round`` = ``int(x * s + 0.5)`` (mmcv ``rescale_size``, mindvideo);
  ``floor`` = ``(int)(x * s)`` with ``s`` in float32 (Caffe2 ``ScaleTransform``) for both
  sides, each side then raised to at least the target (see :func:`short_edge_size`).
* dataset preparation (Caffe2's ffmpeg re-encode): height fixed, width
  ``trunc(oh * a / 2) * 2`` (:func:`ffmpeg_height_even_width_size`).
* centre-crop offset: ``floor`` = ``(H - h) // 2`` (mmaction2 ``CenterCrop``, Caffe2);
  ``half_even`` = ``np.round((H - h) / 2)`` (mindvideo ``VideoCenterCrop``).
* three crops along the long side: ``mmaction2`` order is left, right, middle (``ThreeCrop``);
  ``caffe2`` order is left, middle, right (``spatial_pos`` 0, 1, 2).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}
SIZE_ROUNDINGS = ("round", "floor")
CROP_ROUNDINGS = ("floor", "half_even")
THREE_CROP_ORDERS = ("mmaction2", "caffe2")
NORMALIZE_OPS = ("divide", "multiply_inverse")

Size = Union[int, Tuple[int, int]]


def _pair(size: Size) -> Tuple[int, int]:
    """``(h, w)`` from an int or a pair."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def short_edge_size(height: int, width: int, short_edge: int, rounding: str = "round") -> Tuple[int, int]:
    """``(new_h, new_w)`` with the shorter side scaled to ``short_edge``, aspect kept."""
    if rounding == "round":
        scale = short_edge / min(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)
    if rounding == "floor":
        # Caffe2's ScaleTransform (customized_video_io.cc:605-614), float32 throughout:
        #   ratio = (float)side_length / (float)(height > width ? width : height);
        #   new_height = (int)((float)height * ratio); new_width = (int)((float)width * ratio);
        # For the short side that product can land just below the target (242 * (256.f /
        # 242.f) = 255.99998 -> 255); for a square frame both sides do (282x282 -> 255x255).
        # The C++ then crops 256 out of 255 (its assert is compiled out: undefined
        # behaviour). Documented deviation: every side is raised to at least the target,
        # so the video is kept. The C++ short side is 255 or 256, so this changes only the
        # sides that came out 255: the short side of a non-square frame, both sides of a
        # square one. Wherever the C++ gives both sides >= the target, this is the C++.
        ratio = np.float32(short_edge) / np.float32(width if height > width else height)
        new_h = int(np.float32(height) * ratio)
        new_w = int(np.float32(width) * ratio)
        return max(new_h, short_edge), max(new_w, short_edge)
    raise ValueError(f"unknown size rounding {rounding!r}; choose from {SIZE_ROUNDINGS}")


def ffmpeg_height_even_width_size(height: int, width: int, target_height: int) -> Tuple[int, int]:
    """``(target_height, new_w)`` as ffmpeg's ``scale="trunc(oh*a/2)*2:H"`` computes it.

    The Caffe2 authors re-encoded every Kinetics video this way before testing
    (video-nonlocal-net ``DATASET.md``, ``process_data/kinetics/downscale_video_joblib.py``).
    ffmpeg evaluates the expression in double precision with ``a = iw / ih`` (the storage
    aspect ratio; ``dar`` would be ``a * sar``) and ``oh`` the output height, then casts to
    int; a width that evaluates to 0 means "keep the input width" (libavfilter
    ``scale_eval.c``). The width is even whenever ``width / height >= 2 / target_height``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    new_w = int(math.trunc(target_height * (width / height) / 2) * 2)
    return int(target_height), (new_w if new_w != 0 else int(width))


def resize(frames: np.ndarray, size_hw: Tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """Resize every frame of ``(..., H, W, C)`` to ``size_hw`` with OpenCV."""
    try:
        flag = INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose from {tuple(INTERPOLATIONS)}") from None
    new_h, new_w = size_hw
    lead = frames.shape[:-3]
    flat = frames.reshape((-1,) + frames.shape[-3:])
    if flat.shape[1:3] == (new_h, new_w):
        return frames.copy()
    out = np.empty((flat.shape[0], new_h, new_w, flat.shape[3]), dtype=frames.dtype)
    for i, frame in enumerate(flat):
        resized = cv2.resize(frame, (new_w, new_h), interpolation=flag)
        out[i] = resized.reshape(out.shape[1:])  # cv2 drops a channel axis of size 1
    return out.reshape(lead + out.shape[1:])


def resize_short_edge(
    frames: np.ndarray, short_edge: int, interpolation: str = "bilinear", rounding: str = "round"
) -> np.ndarray:
    """Scale ``(..., H, W, C)`` so that the shorter side is ``short_edge``."""
    h, w = frames.shape[-3:-1]
    return resize(frames, short_edge_size(h, w, short_edge, rounding), interpolation)


def crop(frames: np.ndarray, top: int, left: int, size: Size) -> np.ndarray:
    ch, cw = _pair(size)
    h, w = frames.shape[-3:-1]
    if top < 0 or left < 0 or top + ch > h or left + cw > w:
        raise ValueError(f"crop {ch}x{cw} at ({top}, {left}) does not fit in {h}x{w}")
    return frames[..., top : top + ch, left : left + cw, :]


def center_crop_offsets(height: int, width: int, size: Size, rounding: str = "floor") -> Tuple[int, int]:
    ch, cw = _pair(size)
    if rounding == "floor":
        return (height - ch) // 2, (width - cw) // 2
    if rounding == "half_even":
        return int(np.round((height - ch) / 2.0)), int(np.round((width - cw) / 2.0))
    raise ValueError(f"unknown crop rounding {rounding!r}; choose from {CROP_ROUNDINGS}")


def center_crop(frames: np.ndarray, size: Size, rounding: str = "floor") -> np.ndarray:
    """Centre crop ``(..., H, W, C)`` to ``size`` (``(h, w)`` or an int)."""
    h, w = frames.shape[-3:-1]
    top, left = center_crop_offsets(h, w, size, rounding)
    return crop(frames, top, left, size)


def three_crop_offsets(height: int, width: int, size: Size, order: str = "mmaction2") -> Sequence[Tuple[int, int]]:
    """``(top, left)`` of three crops spaced evenly along the side the crop does not fill."""
    ch, cw = _pair(size)
    if ch == height:
        step = (width - cw) // 2
        place = lambda k: (0, k * step)  # noqa: E731
    elif cw == width:
        step = (height - ch) // 2
        place = lambda k: (k * step, 0)  # noqa: E731
    else:
        raise ValueError(f"three crop {ch}x{cw} must span one side of a {height}x{width} frame")
    if order == "mmaction2":
        positions = (0, 2, 1)  # left, right, middle (mmaction2 ThreeCrop)
    elif order == "caffe2":
        positions = (0, 1, 2)  # spatial_pos 0, 1, 2 in ClipTransformFlex
    else:
        raise ValueError(f"unknown three-crop order {order!r}; choose from {THREE_CROP_ORDERS}")
    return [place(k) for k in positions]


def three_crop(frames: np.ndarray, size: Size, order: str = "mmaction2") -> np.ndarray:
    """Three crops of ``(..., H, W, C)``, stacked on a new leading axis: ``(3, ..., h, w, C)``."""
    h, w = frames.shape[-3:-1]
    return np.stack([crop(frames, t, l, size) for t, l in three_crop_offsets(h, w, size, order)])


def random_crop(frames: np.ndarray, size: Size, rng: np.random.Generator) -> np.ndarray:
    """One crop at a uniformly drawn position, the same for every frame (train-time)."""
    ch, cw = _pair(size)
    h, w = frames.shape[-3:-1]
    if ch > h or cw > w:
        raise ValueError(f"crop {ch}x{cw} larger than frame {h}x{w}")
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return crop(frames, top, left, (ch, cw))


def hflip(frames: np.ndarray) -> np.ndarray:
    """Mirror ``(..., H, W, C)`` left-right."""
    return frames[..., ::-1, :]


def normalize(
    frames: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    value_scale: Optional[float] = None,
    op: str = "divide",
) -> np.ndarray:
    """``(x * value_scale - mean) / std`` per channel, in float32, channels last.

    ``value_scale`` (e.g. ``1/255``) is applied as the seed's ``VideoRescale`` does it:
    ``uint8 * float`` in float64, then cast to float32. ``op='multiply_inverse'``
    multiplies by ``float32(1 / std)`` as Caffe2's ``ClipTransformFlex`` does; the two
    differ in the last bit only.
    """
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    if value_scale is None:
        x = frames.astype(np.float32)
    else:
        x = (frames * float(value_scale)).astype(np.float32)
    if op == "divide":
        return (x - mean32) / std32
    if op == "multiply_inverse":
        inv = (np.float32(1.0) / std32).astype(np.float32)
        return (x - mean32) * inv
    raise ValueError(f"unknown normalize op {op!r}; choose from {NORMALIZE_OPS}")


def normalize_ncthw(
    views: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    value_scale: Optional[float] = None,
    op: str = "divide",
) -> np.ndarray:
    """uint8 ``(N, T, H, W, C)`` -> normalised float32 ``(N, C, T, H, W)``.

    Bit-identical to ``to_ncthw(normalize(...))`` but writes the channel-first result in
    place, without float temporaries: about 5x faster on a 32x224x224 clip, which matters
    because the loader normalises in the consuming process.
    """
    if views.ndim != 5:
        raise ValueError(f"expected (N, T, H, W, C), got shape {views.shape}")
    if value_scale is not None:  # the seed's float64 rescale: keep its exact rounding
        return to_ncthw(normalize(views, mean, std, value_scale=value_scale, op=op))
    shape = (1, -1, 1, 1, 1)
    mean32 = np.asarray(mean, dtype=np.float32).reshape(shape)
    std32 = np.asarray(std, dtype=np.float32).reshape(shape)
    src = views.transpose(0, 4, 1, 2, 3)
    out = np.empty(src.shape, dtype=np.float32)
    np.subtract(src, mean32, out=out)  # uint8 - float32 -> float32, as astype then subtract
    if op == "divide":
        np.divide(out, std32, out=out)
    elif op == "multiply_inverse":
        np.multiply(out, (np.float32(1.0) / std32).astype(np.float32), out=out)
    else:
        raise ValueError(f"unknown normalize op {op!r}; choose from {NORMALIZE_OPS}")
    return out


def to_ncthw(clips: np.ndarray) -> np.ndarray:
    """``(N, T, H, W, C)`` -> contiguous ``(N, C, T, H, W)``."""
    if clips.ndim != 5:
        raise ValueError(f"expected (N, T, H, W, C), got shape {clips.shape}")
    return np.ascontiguousarray(clips.transpose(0, 4, 1, 2, 3))
