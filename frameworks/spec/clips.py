"""Clip sampling: which frames of a video make up each clip (numpy only).

Every function returns an ``int64`` array of shape ``(num_clips, clip_len)`` of frame
indices into a video of ``num_frames`` decoded frames. Indices past the end wrap around
(``% num_frames``): all three codebases loop a video that is shorter than a clip rather
than pad it, so a short video still yields full clips (it is counted, not dropped; see
:func:`is_short`).

Three samplers, one per codebase:

``mmaction2``  (:func:`sample_clip_indices`) mmaction2 1.x ``SampleFrames`` with
    ``out_of_bound_opt='loop'``, no ``target_fps``, no temporal jitter. Test/val mode:
    with one clip, the clip is centred (offset ``max_offset // 2``); with ``k > 1`` clips
    the offsets are ``round(i * max_offset / (k - 1))`` (numpy's round-half-to-even),
    where ``max_offset = max(N - ((L - 1) * s + 1), 0)``. Train mode draws offsets from a
    ``numpy.random.RandomState`` exactly as ``SampleFrames`` draws them from the global
    numpy generator, so seeding both identically gives identical clips.
``seed_interval`` (:func:`seed_interval_indices`) mindvideo's ``DatasetGenerator`` in
    ``seq_mode='interval'`` (the seed's eval config): one clip whose offset is drawn by
    ``random.sample(range(abs(N - (L * s + 1)) + 1), 1)``. The seed draws from the global
    ``random`` module, so its accuracy changes from run to run; here the draw comes from
    a ``random.Random`` seeded by ``(seed, video key)``, which makes it repeatable.
``caffe2_uniform`` (:func:`caffe2_test_indices`) video-nonlocal-net's multi-clip test
    (``DecodeClipFromVideoFileFlex``): clip ``k`` of ``K`` starts at
    ``int(float32(N) / float32(K) * k) % N``, i.e. ``floor(k * N / K)`` evaluated in
    float32 as the C++ does.
``mmaction2_0x`` (:func:`mmaction2_0x_test_indices`) mmaction2 0.x ``SampleFrames`` in test
    mode, the rule its 2020 numbers were measured with (it was replaced in 1.x): with
    ``avg = (N - L * s + 1) / K``, clip ``i`` starts at ``int(i * avg + avg / 2)`` if
    ``N > L * s - 1``, else every clip starts at 0. With one clip this equals the 1.x
    centred clip; with 10 clips of 32x2 it differs for every N >= 64.
"""
from __future__ import annotations

import hashlib
import random
from typing import Optional

import numpy as np

SAMPLERS = ("mmaction2", "seed_interval", "caffe2_uniform", "mmaction2_0x")


def clip_span(clip_len: int, frame_interval: int) -> int:
    """Frames covered by one clip, first to last sampled frame inclusive."""
    return (clip_len - 1) * frame_interval + 1


def is_short(num_frames: int, clip_len: int, frame_interval: int) -> bool:
    """True if the video cannot hold one clip without looping."""
    return num_frames < clip_span(clip_len, frame_interval)


def _check(num_frames: int, clip_len: int, frame_interval: int, num_clips: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    if clip_len < 1 or frame_interval < 1 or num_clips < 1:
        raise ValueError(
            f"clip_len, frame_interval and num_clips must be >= 1, got "
            f"{clip_len}, {frame_interval}, {num_clips}"
        )


def _assemble(offsets: np.ndarray, num_frames: int, clip_len: int, frame_interval: int) -> np.ndarray:
    offsets = np.asarray(offsets).astype(np.int64).reshape(-1, 1)
    inds = offsets + np.arange(clip_len, dtype=np.int64)[None, :] * frame_interval
    return np.mod(inds, num_frames)


def _mmaction2_test_offsets(num_frames: int, clip_len: int, frame_interval: int, num_clips: int) -> np.ndarray:
    ori_clip_len = clip_span(clip_len, frame_interval)
    max_offset = max(num_frames - ori_clip_len, 0)
    if num_clips > 1:
        offset_between = max_offset / float(num_clips - 1)
        return np.round(np.arange(num_clips) * offset_between)
    return np.array([max_offset // 2])


def _mmaction2_train_offsets(
    num_frames: int, clip_len: int, frame_interval: int, num_clips: int, rng: np.random.RandomState
) -> np.ndarray:
    # SampleFrames._get_train_clips with keep_tail_frames=False; note the train-mode clip
    # length is clip_len * frame_interval, one interval longer than the test-mode span.
    ori_clip_len = clip_len * frame_interval
    avg_interval = (num_frames - ori_clip_len + 1) // num_clips
    if avg_interval > 0:
        base = np.arange(num_clips) * avg_interval
        return base + rng.randint(avg_interval, size=num_clips)
    if num_frames > max(num_clips, ori_clip_len):
        return np.sort(rng.randint(num_frames - ori_clip_len + 1, size=num_clips))
    if avg_interval == 0:
        ratio = (num_frames - ori_clip_len + 1.0) / num_clips
        return np.around(np.arange(num_clips) * ratio)
    return np.zeros((num_clips,), dtype=np.int64)


def sample_clip_indices(
    num_frames: int,
    clip_len: int,
    frame_interval: int = 1,
    num_clips: int = 1,
    *,
    test_mode: bool = True,
    rng: Optional[np.random.RandomState] = None,
) -> np.ndarray:
    """Frame indices as mmaction2 1.x ``SampleFrames`` computes them (``loop``).

    Returns ``(num_clips, clip_len)`` int64. ``rng`` is used in train mode only
    (default: a fresh ``RandomState(0)``).
    """
    _check(num_frames, clip_len, frame_interval, num_clips)
    if clip_len == 1:
        raise NotImplementedError("clip_len=1 (2D recognisers, TSN-style segments) is not part of this spec")
    if test_mode:
        offsets = _mmaction2_test_offsets(num_frames, clip_len, frame_interval, num_clips)
    else:
        offsets = _mmaction2_train_offsets(
            num_frames, clip_len, frame_interval, num_clips, rng if rng is not None else np.random.RandomState(0)
        )
    return _assemble(offsets, num_frames, clip_len, frame_interval)


def video_seed(seed: int, video_key: str) -> int:
    """A 64-bit seed derived from a run seed and a video's identity (stable across runs,
    machines and Python versions, unlike ``hash()``)."""
    digest = hashlib.sha256(f"{int(seed)}:{video_key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def seed_interval_indices(
    num_frames: int,
    clip_len: int,
    frame_interval: int,
    num_clips: int = 1,
    *,
    rng: random.Random,
) -> np.ndarray:
    """The seed's ``seq_mode='interval'`` sampling, with its random draw taken from ``rng``.

    One clip: offset ~ ``rng.sample(range(abs(N - region) + 1), 1)`` with
    ``region = clip_len * frame_interval + num_clips`` (the ``abs`` is the seed's: a short
    video gets offsets up to ``region - N``, and then wraps). Several clips: the seed's
    deterministic ``avg_interval`` rule (``int(base + avg / 2)``).
    """
    _check(num_frames, clip_len, frame_interval, num_clips)
    region_len = clip_len * frame_interval + num_clips
    if num_clips == 1:
        offsets = np.array(rng.sample(range(abs(num_frames - region_len) + 1), 1))
    else:
        avg_interval = abs(num_frames - region_len) / num_clips
        if avg_interval == 0:
            avg_interval = 1
        offsets = (np.arange(num_clips) * avg_interval + avg_interval / 2.0).astype(np.int64)
    return _assemble(offsets, num_frames, clip_len, frame_interval)


def caffe2_test_indices(num_frames: int, clip_len: int, frame_interval: int, num_clips: int = 10) -> np.ndarray:
    """video-nonlocal-net's test-time clips: clip ``k`` starts at ``floor(k * N / K)``,
    computed as the C++ does (``(int)((float)N / (float)K * k) % N``, float32)."""
    _check(num_frames, clip_len, frame_interval, num_clips)
    gap = np.float32(num_frames) / np.float32(num_clips)
    offsets = np.array(
        [int(np.float32(gap * np.float32(k))) % num_frames for k in range(num_clips)], dtype=np.int64
    )
    return _assemble(offsets, num_frames, clip_len, frame_interval)


def mmaction2_0x_test_indices(num_frames: int, clip_len: int, frame_interval: int, num_clips: int = 1) -> np.ndarray:
    """mmaction2 0.x ``SampleFrames`` in test mode (``twice_sample=False``, ``loop``).

    The authors' code, ``mmaction/datasets/pipelines/loading.py@v0.6.0:114-122``
    (``SampleFrames._get_test_clips``, as the 2026-11 fidelity audit cites it; the text
    below is copied from the 0.x revision ``00fd89c6`` of that file)::

        ori_clip_len = self.clip_len * self.frame_interval
        avg_interval = (num_frames - ori_clip_len + 1) / float(self.num_clips)
        if num_frames > ori_clip_len - 1:
            base_offsets = np.arange(self.num_clips) * avg_interval
            clip_offsets = (base_offsets + avg_interval / 2.0).astype(np.int)
        else:
            clip_offsets = np.zeros((self.num_clips, ), dtype=np.int)

    ``ori_clip_len`` here is ``L * s`` (64 for 32x2), one frame more than the span of a
    clip; a video of ``N <= L * s - 1`` frames gets every clip at offset 0 (and wraps).
    The ``start_index`` that 0.x adds afterwards (1 for JPEG rawframes) names files, not
    frames, so it is not part of a decoded-frame index.
    """
    _check(num_frames, clip_len, frame_interval, num_clips)
    ori_clip_len = clip_len * frame_interval
    avg_interval = (num_frames - ori_clip_len + 1) / float(num_clips)
    if num_frames > ori_clip_len - 1:
        base_offsets = np.arange(num_clips) * avg_interval
        offsets = (base_offsets + avg_interval / 2.0).astype(np.int64)
    else:
        offsets = np.zeros((num_clips,), dtype=np.int64)
    return _assemble(offsets, num_frames, clip_len, frame_interval)
