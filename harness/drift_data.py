"""The drift audit's data path: each video decoded once per distinct sampling, then every
step's own spatial transforms applied to those frames, in the clip loader's worker processes.

:class:`SharedSampling` stands in for a :class:`~frameworks.spec.data_presets.DataPreset`
where :class:`harness.data.loader.ClipLoader` takes one: it carries the presets of every
step that samples a video the same way (:data:`SAMPLING_FIELDS`), and :func:`decode_views`
(the loader's ``process_fn``) decodes the frames once and returns each step's uint8 views,
identical views stored once. Which steps share a decode is decided per video from the
frame indices each preset actually picks, so a sampling field this module does not list
costs a second decode, never a wrong frame. The normalisation, the forward pass and the
score combination then run per step in the main process (:mod:`harness.drift`), exactly
as ``harness.evaluate`` runs them.

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
    """The presets of the steps that share one decode, in the shape the loader asks of a preset."""

    presets: Tuple[DataPreset, ...]
    decoder: str
    name: str = "drift"

    def is_short(self, num_frames: int) -> bool:
        return False  # each step decides for itself (harness.drift), as evaluate's loader would

    @property
    def clip_span(self) -> int:
        return max(p.clip_span for p in self.presets)


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

    samplings: List[Tuple[np.ndarray, object]] = []   # (indices, frames or (kind, reason))
    choice: List[object] = []                         # per preset: a sampling number, or (kind, reason)
    try:
        with native:
            with open_video(path, decoder, threads=threads) as video:
                n = video.num_frames
                for preset in shared.presets:
                    try:
                        indices = preset.frame_indices(n, video_id)
                    except Exception as exc:  # evaluate would record this video as a decode_error
                        choice.append(("decode_error", f"{type(exc).__name__}: {exc}"[:300]))
                        continue
                    for j, (known, _) in enumerate(samplings):
                        if known.shape == indices.shape and np.array_equal(known, indices):
                            choice.append(j)
                            break
                    else:
                        try:
                            frames = video.get_frames(indices.reshape(-1))
                        except VideoDecodeError as exc:
                            frames = (exc.kind, exc.reason)
                        except Exception as exc:
                            frames = ("decode_error", f"{type(exc).__name__}: {exc}"[:300])
                        samplings.append((indices, frames))
                        choice.append(len(samplings) - 1)
    except VideoDecodeError as exc:
        return timed("fault", exc.kind, said(exc.reason))
    except FileNotFoundError as exc:
        return timed("fault", "missing_file", said(f"vanished after indexing: {exc}"))
    except Exception as exc:
        return timed("fault", "decode_error", said(f"{type(exc).__name__}: {exc}"[:300]))

    views: List[np.ndarray] = []
    of_run: List[object] = []
    for preset, picked in zip(shared.presets, choice):
        if isinstance(picked, tuple):
            of_run.append((picked[0], said(picked[1])))
            continue
        frames = samplings[picked][1]
        if isinstance(frames, tuple):
            of_run.append((frames[0], said(frames[1])))
            continue
        try:
            v = preset.views_uint8(frames, video_id)
        except Exception as exc:
            of_run.append(("decode_error", said(f"{type(exc).__name__}: {exc}"[:300])))
            continue
        for k, known in enumerate(views):
            if known.shape == v.shape and np.array_equal(known, v):
                of_run.append(k)
                break
        else:
            views.append(v)
            of_run.append(len(views) - 1)
    return timed("ok", {"views": views, "of_run": of_run, "n_decodes": len(samplings)}, n)
