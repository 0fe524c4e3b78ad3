"""The drift audit's data path: each video decoded once per distinct sampling, then every
step's own spatial transforms applied to those frames, in the clip loader's worker processes.

:class:`SharedSampling` stands in for a :class:`~frameworks.spec.data_presets.DataPreset`
where :class:`harness.data.loader.ClipLoader` takes one: it carries the presets of every
step that samples a video the same way (:data:`SAMPLING_FIELDS`), and :func:`decode_views`
(the loader's ``process_fn``) decodes the frames once and returns each step's uint8 views,
identical views stored once. Which steps share a decode is decided per video from the
frame indices each preset actually picks, so a sampling field this module does not list
costs a second decode, never a wrong frame. The normalisation then runs per step in the
main process (:mod:`harness.drift`), and the forward pass, the score combination and the
score chunks in ``harness.evaluate``'s own :class:`~harness.evaluate.Scorer`.

Kept apart from :mod:`harness.drift` so that the spawned workers import only this (numpy,
the spec and the decoders) and never a command module. It is a library, not a command.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from frameworks.spec.data_presets import DataPreset

# The fields that decide which frames a preset decodes (DataPreset.frame_indices) and how.
# Steps whose presets agree on them are scored from one pass over the videos.
SAMPLING_FIELDS = ("sampler", "clip_len", "frame_interval", "num_clips", "offset_seed", "decoder")


def sampling_key(preset: DataPreset) -> tuple:
    return tuple(getattr(preset, f) for f in SAMPLING_FIELDS)


@dataclass(frozen=True)
class SharedSampling:
    """The presets of the steps that share one decode, in the shape the loader asks of a
    preset: its decoder, and whether a video is shorter than one clip (the loader then
    records ``short_video`` in its own words). Every preset here agrees on the sampling
    fields, clip length and frame interval among them, so the first one answers for all."""

    presets: Tuple[DataPreset, ...]

    def __post_init__(self):
        if not self.presets or len({sampling_key(p) for p in self.presets}) != 1:
            raise ValueError("SharedSampling takes one or more presets that sample alike (SAMPLING_FIELDS)")

    @property
    def decoder(self) -> str:
        return self.presets[0].decoder

    @property
    def clip_span(self) -> int:
        return self.presets[0].clip_span

    def is_short(self, num_frames: int) -> bool:
        return self.presets[0].is_short(num_frames)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def decode_views(path: str, video_id: str, shared: SharedSampling, decoder: str, threads: int = 1) -> tuple:
    """:func:`harness.data.loader.process_video` for several presets: ``("ok", payload,
    num_frames, seconds, cpu_seconds)`` or ``("fault", kind, reason, seconds, cpu_seconds)``
    when the file cannot be opened. ``payload["of_run"][k]`` is preset ``k``'s outcome: the
    index of its views in ``payload["views"]``, or ``(kind, reason)``, the fault
    ``harness.evaluate`` would have recorded for that video with that preset alone."""
    from harness.data.decoders import VideoDecodeError, open_video
    from harness.data.loader import _native_stderr

    t0, c0 = time.perf_counter(), time.process_time()

    def timed(*result):
        return result + (time.perf_counter() - t0, time.process_time() - c0)

    native = _native_stderr()

    def said(reason: str) -> str:
        first = native.first_line()
        return f"{reason} [decoder said: {first}]" if first and first not in reason else reason

    try:
        with native:
            with open_video(path, decoder, threads=threads) as video:
                n = video.num_frames
                samplings, choice = _sample(video, n, shared.presets, video_id)
    except VideoDecodeError as exc:
        return timed("fault", exc.kind, said(exc.reason))
    except FileNotFoundError as exc:
        return timed("fault", "missing_file", said(f"vanished after indexing: {exc}"))
    except Exception as exc:
        return timed("fault", "decode_error", said(_error_text(exc)))
    views, of_run = _views(shared.presets, samplings, choice, video_id)
    of_run = [(o[0], said(o[1])) if isinstance(o, tuple) else o for o in of_run]
    return timed("ok", {"views": views, "of_run": of_run, "n_decodes": len(samplings)}, n)


def _sample(video, num_frames: int, presets, video_id: str) -> Tuple[List[Tuple[np.ndarray, object]], List[object]]:
    """Each preset's frame indices, the frames of each distinct set read once: ``(samplings,
    choice)``, a sampling being ``(indices, frames or (kind, reason))`` and a choice, per
    preset, the number of its sampling or ``(kind, reason)``."""
    from harness.data.decoders import VideoDecodeError

    samplings: List[Tuple[np.ndarray, object]] = []
    choice: List[object] = []
    for preset in presets:
        try:
            indices = preset.frame_indices(num_frames, video_id)
        except Exception as exc:  # evaluate would record this video as a decode_error
            choice.append(("decode_error", _error_text(exc)))
            continue
        known = next((j for j, (seen, _) in enumerate(samplings)
                      if seen.shape == indices.shape and np.array_equal(seen, indices)), None)
        if known is None:
            try:
                frames = video.get_frames(indices.reshape(-1))
            except VideoDecodeError as exc:
                frames = (exc.kind, exc.reason)
            except Exception as exc:
                frames = ("decode_error", _error_text(exc))
            samplings.append((indices, frames))
            known = len(samplings) - 1
        choice.append(known)
    return samplings, choice


def _views(presets, samplings, choice, video_id: str) -> Tuple[List[np.ndarray], List[object]]:
    """Each preset's uint8 views of its frames, identical views stored once: ``(views,
    of_run)``, ``of_run`` holding per preset the number of its views or ``(kind, reason)``."""
    views: List[np.ndarray] = []
    of_run: List[object] = []
    for preset, picked in zip(presets, choice):
        if isinstance(picked, tuple):
            of_run.append(picked)
            continue
        frames = samplings[picked][1]
        if isinstance(frames, tuple):
            of_run.append(frames)
            continue
        try:
            v = preset.views_uint8(frames, video_id)
        except Exception as exc:
            of_run.append(("decode_error", _error_text(exc)))
            continue
        known = next((k for k, seen in enumerate(views) if seen.shape == v.shape and np.array_equal(seen, v)), None)
        if known is None:
            views.append(v)
            known = len(views) - 1
        of_run.append(known)
    return views, of_run
