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
(counted as a fault). A batch left with fewer than ``min_clips`` clips (training-mode
BatchNorm cannot normalise one value per channel, and one clip's batch statistics are not
the recipe's) is **filled** from the next videos of the epoch's order after this
process's share, wrapping around, until it holds ``min_clips``: a pure function of the
step and the files, so a resumed run fills a step as an uninterrupted one did. Only a
split with fewer than ``min_clips`` decodable videos is an error. Imports no framework.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
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
    filled: List[str] = field(default_factory=list)   # keys added from the next videos (a short batch)


@dataclass
class TrainPlan:
    index: DatasetIndex
    batch_size: int      # global
    steps_per_epoch: int
    epochs: int
    seed: int = 0
    rank: int = 0
    world: int = 1
    min_clips: int = 1   # a step never runs on fewer clips (a short batch is filled)

    def __post_init__(self) -> None:
        if self.batch_size % self.world:
            raise ValueError(f"the global batch {self.batch_size} does not split over {self.world} processes")
        if not 1 <= self.min_clips <= self.local_batch:
            raise ValueError(f"min_clips {self.min_clips} must be in 1..{self.local_batch} (the batch per process)")

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

    def fill_records(self, step: int) -> Iterator[Tuple[VideoRecord, str]]:
        """The candidates that fill a short batch of step ``step``: the videos after this
        process's share in the epoch's order, wrapping around, its own share left out."""
        epoch, within = divmod(step, self.steps_per_epoch)
        n = len(self.index.records)
        order = epoch_order(n, epoch, self.seed)
        start = within * self.batch_size + self.rank * self.local_batch
        own = set(order[start:start + self.local_batch].tolist())
        for j in range(n):
            i = int(order[(start + self.local_batch + j) % n])
            if i not in own:
                yield self.index.records[i], video_key(self.index.records[i].video_id, epoch)

    def batches(self, preset: DataPreset, start_step: int = 0, stop_step: Optional[int] = None, *,
                workers: int = 1, faults: Optional[FaultLog] = None) -> Iterator[TrainBatch]:
        """Steps ``start_step`` .. ``stop_step - 1`` (default: to the end), decoded by
        ``workers`` processes (0: in this process; never with MindSpore, which aborts if
        decord is imported before it). ``faults`` gains each video that failed, once."""
        stop = self.total_steps if stop_step is None else min(stop_step, self.total_steps)
        records, steps = [], []
        for step in range(start_step, stop):
            for record, key in self.step_records(step):
                records.append(VideoRecord(key, record.path, record.label, record.label_name, record.line))
                steps.append(step)
        if not records:
            return
        log = faults if faults is not None else FaultLog()
        seen = {(f.video_id, f.kind) for f in log.faults}
        loader = ClipLoader(self._sub_index(records), preset, workers=workers,
                            prefetch=max(2, 2 * self.local_batch))

        def note_faults(found: FaultLog) -> None:   # a video that fails in its step and as a filler: once
            for fault in found.faults:
                if (fault.video_id, fault.kind) not in seen:
                    seen.add((fault.video_id, fault.kind))
                    log.faults.append(fault)

        def flush(step: int, group: list) -> TrainBatch:
            filled: List[str] = []
            if len(group) < self.min_clips:
                note_faults(loader.faults)
                filled = self._fill(step, group, preset, workers, note_faults, log)
            return TrainBatch(step, step // self.steps_per_epoch, np.stack([g.clips[0] for g in group]),
                              np.asarray([g.label for g in group], dtype=np.int64), [g.video_id for g in group],
                              filled)

        current, group = start_step, []
        for item in loader:
            step = steps[item.position]
            while step > current:          # every earlier step is complete (items come in order)
                yield flush(current, group)
                group, current = [], current + 1
            group.append(item)
        while current < stop:
            yield flush(current, group)
            group, current = [], current + 1
        note_faults(loader.faults)

    def _sub_index(self, records: List[VideoRecord]) -> DatasetIndex:
        return DatasetIndex(records, self.index.label_map, FaultLog(), self.index.split, self.index.root,
                            self.index.annotation, self.index.source)

    def _fill(self, step: int, group: list, preset: DataPreset, workers: int, note_faults, log: FaultLog) -> List[str]:
        """Add the next decodable videos of the epoch's order to ``group`` until it holds
        ``min_clips``; returns their keys. Every candidate is decoded under its own key, as
        in its own step, so the fill does not depend on what else the run decoded."""
        need = self.min_clips - len(group)
        candidates = [VideoRecord(key, r.path, r.label, r.label_name, r.line) for r, key in self.fill_records(step)]
        loader = ClipLoader(self._sub_index(candidates), preset, workers=min(workers, need), prefetch=need)
        filled: List[str] = []
        items = iter(loader)
        try:
            for item in items:
                group.append(item)
                filled.append(item.video_id)
                if len(filled) == need:
                    break
        finally:
            items.close()
            note_faults(loader.faults)
        if len(filled) < need:
            have = len(group)
            raise DatasetError(f"step {step}: {have} clip{'s' * (have != 1)} decoded, fewer than the "
                               f"{self.min_clips} a step needs, and no other video of the split decodes "
                               f"(faults: {log.summary()})")
        return filled
