"""Training batches: which videos each step sees, decoded by the loader's worker processes.

The plan is a pure function of the index, the seed, the global batch and the number of
data-parallel processes (never of timing, worker count, or whether the run was resumed):

* epoch ``e`` visits the index in the order ``default_rng([seed, e]).permutation(n)`` and
  cuts it into ``steps_per_epoch`` global batches of ``batch_size`` (the remainder is
  dropped);
* process ``r`` of ``w`` takes the ``r``-th ``batch_size / w`` of each global batch;
* video ``v`` in epoch ``e`` is decoded under the key ``v@e``: the training preset's clip
  offset, crop and flip are drawn from generators seeded by that key
  (:meth:`frameworks.spec.data_presets.DataPreset.views_uint8`).

So a resumed run, a run with another number of workers and a data-parallel run all see
the same clips at the same step. A video that fails to decode is left out of its batch
(counted as a fault); a batch left empty on a process is an error. Imports no framework.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np

from frameworks.spec.data_presets import DataPreset
from harness.data import ClipLoader, DatasetIndex, VideoRecord
from harness.data.index import DatasetError, FaultLog


@functools.lru_cache(maxsize=4)
def epoch_order(num_videos: int, epoch: int, seed: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the index (read-only: it is cached, since every
    step of the epoch asks for it and a Kinetics-size permutation takes milliseconds)."""
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(int(num_videos))
    order.flags.writeable = False
    return order


def video_key(video_id: str, epoch: int) -> str:
    return f"{video_id}@{epoch}"


@dataclass
class TrainBatch:
    step: int            # global step index (0-based)
    epoch: int
    clips: np.ndarray    # float32 (B, 3, T, H, W): this process's share
    labels: np.ndarray   # int64 (B,)
    keys: List[str]


@dataclass
class TrainPlan:
    index: DatasetIndex
    batch_size: int      # global
    steps_per_epoch: int
    epochs: int
    seed: int = 0
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.batch_size % self.world:
            raise ValueError(f"the global batch {self.batch_size} does not split over {self.world} processes")

    @property
    def local_batch(self) -> int:
        return self.batch_size // self.world

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def step_records(self, step: int) -> List[Tuple[VideoRecord, str]]:
        """This process's videos of global step ``step``, each with its decode key."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = epoch_order(len(self.index.records), epoch, self.seed)
        start = within * self.batch_size + self.rank * self.local_batch
        return [(self.index.records[i], video_key(self.index.records[i].video_id, epoch))
                for i in order[start:start + self.local_batch]]

    def batches(self, preset: DataPreset, start_step: int = 0, stop_step: Optional[int] = None, *,
                workers: int = 1, faults: Optional[FaultLog] = None) -> Iterator[TrainBatch]:
        """Steps ``start_step`` .. ``stop_step - 1`` (default: to the end), decoded by
        ``workers`` processes (0: in this process; never with MindSpore, which aborts if
        decord is imported before it)."""
        stop = self.total_steps if stop_step is None else min(stop_step, self.total_steps)
        records, steps = [], []
        for step in range(start_step, stop):
            for record, key in self.step_records(step):
                records.append(VideoRecord(key, record.path, record.label, record.label_name, record.line))
                steps.append(step)
        if not records:
            return
        sub = DatasetIndex(records, self.index.label_map, FaultLog(), self.index.split, self.index.root,
                           self.index.annotation, self.index.source)
        loader = ClipLoader(sub, preset, workers=workers, prefetch=max(2, 2 * self.local_batch))
        current, group = start_step, []

        def flush(step: int) -> TrainBatch:
            if not group:
                raise DatasetError(f"step {step}: no video of this process's batch decoded "
                                   f"(see the faults: {loader.faults.summary()})")
            return TrainBatch(step, step // self.steps_per_epoch, np.stack([g.clips[0] for g in group]),
                              np.asarray([g.label for g in group], dtype=np.int64), [g.video_id for g in group])

        for item in loader:
            step = steps[item.position]
            while step > current:          # every earlier step is complete (items come in order)
                yield flush(current)
                group, current = [], current + 1
            group.append(item)
        while current < stop:
            yield flush(current)
            group, current = [], current + 1
        if faults is not None:
            faults.extend(f for f in loader.faults.faults)
