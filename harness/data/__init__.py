"""Video data: the Kinetics-400 index, decoders (decord, PyAV) and the clip loader.

The evaluate command's whole data path::

    from frameworks.spec.data_presets import get_data_preset
    from harness.data import build_index, ClipLoader

    preset = get_data_preset("mmaction2_test_10x3")
    index = build_index(data_root, "val", annotations=None, label_order=preset.label_order)
    loader = ClipLoader(index, preset, workers=4)
    for batch in loader.batches(1):              # ClipBatch
        logits = model(batch.flat())             # (B * V, classes)
        scores = [preset.combine(v) for v in logits.reshape(len(batch), -1, logits.shape[-1])]
    loader.summary()                             # n_videos, faults counted by kind and listed

``DatasetError`` (unreadable root or annotation file) is the only exception a bad
dataset raises; everything else is a counted, listed :class:`Fault`.
"""
from .decoders import DECODERS, DEFAULT_DECODER, VideoDecodeError, VideoReader, open_video
from .index import (
    FAULT_KINDS,
    DatasetError,
    DatasetIndex,
    Fault,
    FaultLog,
    VideoRecord,
    build_index,
    read_kinetics_csv,
    read_list_file,
)
from .loader import ClipBatch, ClipLoader, LoaderStartupError, VideoClips, load_clips, process_video

__all__ = [
    "DECODERS",
    "DEFAULT_DECODER",
    "FAULT_KINDS",
    "ClipBatch",
    "ClipLoader",
    "DatasetError",
    "DatasetIndex",
    "Fault",
    "FaultLog",
    "LoaderStartupError",
    "VideoClips",
    "VideoDecodeError",
    "VideoReader",
    "VideoRecord",
    "build_index",
    "load_clips",
    "open_video",
    "process_video",
    "read_kinetics_csv",
    "read_list_file",
]
