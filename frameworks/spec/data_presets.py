"""Named data presets: every choice between a video file and a model input, as data.

A :class:`DataPreset` says which frames form each clip (:mod:`.clips`), how they are
resized and cropped (:mod:`.transforms`), how values are scaled and normalised, how the
classes are numbered (:mod:`.labels`) and how the scores of a video's clips are combined.
Every result records the preset's name and :func:`data_preset_hash`; the spec hash of a
run combines this preset's :meth:`DataPreset.to_dict` with the architecture's.

Presets (sources are each project's own code and configs):

``mmaction2_val``
    ``i3d_imagenet-pretrained-r50-nl-dot-product_8xb8-32x2x1-100e_kinetics400-rgb.py``
    ``val_pipeline``: 1 clip of 32 frames, interval 2, centred; decord; short edge 256
    (bilinear); centre crop 224; ``ActionDataPreprocessor`` mean/std on 0-255 RGB.
``mmaction2_test_10x3``
    the same config's ``test_pipeline``: 10 clips x ``ThreeCrop(256)``, scores averaged
    as softmax probabilities (``average_clips='prob'``).
``mmaction2_0x_test_10x3``
    the protocol behind mmaction2 0.x's 73.92 / 91.59 (checkpoint ``20200814-7c30d5bb``,
    published 2020-08): ``i3d_nl_dot_product_r50_32x2x1_100e_kinetics400_rgb.py``
    ``test_pipeline`` at ``v0.6.0`` (``SampleFrames(32, 2, num_clips=10, test_mode=True)``,
    ``Resize((-1, 256))``, ``ThreeCrop(256)``, ``Normalize`` = ``mmcv.imnormalize_``, which
    equals ``(x - mean) / std`` in float32 bit for bit), with the 0.x test sampler
    (:func:`.clips.mmaction2_0x_test_indices`) and ``tools/test.py``'s default
    ``--average-clips score`` (the mean of raw scores). 0.x read JPEG rawframes, not video.
``seed_eval``
    the seed's ``nonlocal.yaml`` ``data_loader.eval``, verbatim: ``seq=32``,
    ``seq_mode='interval'``, ``frame_interval=6``, one clip at a random offset;
    ``VideoShortEdgeResize(256, 'bicubic')``, ``VideoCenterCrop([256, 256])`` (offsets
    rounded half-to-even), ``VideoRescale`` (x/255), ``VideoNormalize`` with
    ``std=[0.229, 0.224, 0.255]`` (0.255 is a typo for ImageNet's 0.225, kept because the
    seed's numbers were measured with it); classes numbered by first appearance in the
    train CSV. The random offset is drawn from a generator seeded by ``offset_seed`` and
    the video's id, so a run is repeatable.
``caffe2_test_10x3``
    video-nonlocal-net's test, preceded by its dataset preparation: every frame is first
    resized to height 256 and width ``trunc(256 * W / H / 2) * 2`` (bicubic), as the
    authors' ffmpeg re-encode of Kinetics did (``pre_resize_height``); then clip ``k`` of
    10 starts at ``floor(k * N / 10)``; short edge 256 with a truncated size
    (``ScaleTransform``), bilinear; three 256 crops at 0, 1/2 and 1 of the long side (left,
    centre, right); ``(x - 114.75) * (1 / 57.375)`` on 0-255 RGB; softmax per clip, then
    averaged.

Layout of the clips of one video: ``(V, C, T, H, W)`` float32 with ``V = crops x clips``,
crop-major (all clips of the first crop, then the second ...), as mmaction2's
``FormatShape('NCTHW')`` orders them and as Caffe2's test LMDB enumerates them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from . import clips as _clips
from . import transforms as _tf
from .arch import lookup

log = logging.getLogger(__name__)

CROPS = ("center", "three", "random")
CLIP_COMBINES = ("prob", "score")
DECODERS = ("decord", "pyav")
MAX_SIZE = 16384  # frames per clip, pixels per side: anything larger is a typo, refused before decoding

# Field metadata read by the drift audit (harness.drift), which lists the fields in which
# two presets differ: fields that only make sense together share a ``drift_group`` and are
# applied as one difference; a field without metadata is a difference of its own; fields
# that only name or document a preset (``drift: describes``) never are one.
DRIFT_GROUP = "drift_group"
_DESCRIBES = {"drift": "describes"}
_SAMPLING = {DRIFT_GROUP: "sampling"}   # the sampler, its clip count and its seed
_CROP = {DRIFT_GROUP: "crop"}           # the crop kind, its size and the three-crop order
_VALUES = {DRIFT_GROUP: "values"}       # scale, mean, std and the operation: one normalisation
_PREPARE = {DRIFT_GROUP: "pre_resize"}  # the dataset-preparation resize and its filter


@dataclass(frozen=True)
class DataPreset:
    """Everything that turns decoded RGB frames into a model input, and scores into a verdict."""

    name: str = field(metadata=_DESCRIBES)
    source: str = field(metadata=_DESCRIBES)
    # temporal
    sampler: str = field(metadata=_SAMPLING)  # one of clips.SAMPLERS
    clip_len: int
    frame_interval: int
    num_clips: int = field(metadata=_SAMPLING)
    # spatial
    short_edge: int
    interpolation: str
    size_rounding: str
    crop: str = field(metadata=_CROP)  # "center" | "three"
    crop_size: int = field(metadata=_CROP)
    crop_rounding: str = "floor"  # center crop only
    three_crop_order: str = field(default="mmaction2", metadata=_CROP)  # three crop only
    # values
    value_scale: float = field(default=1.0, metadata=_VALUES)  # applied before mean / std (the seed rescales to [0, 1])
    mean: Tuple[float, float, float] = field(default=(123.675, 116.28, 103.53), metadata=_VALUES)
    std: Tuple[float, float, float] = field(default=(58.395, 57.12, 57.375), metadata=_VALUES)
    normalize_op: str = field(default="divide", metadata=_VALUES)
    channel_order: str = "RGB"
    layout: str = "NCTHW"
    # scores and labels
    clip_combine: str = "prob"  # "prob": softmax then mean over views; "score": mean of logits
    label_order: str = "alphabetical"  # or "train_csv" (first appearance, the seed)
    offset_seed: Optional[int] = field(default=None, metadata=_SAMPLING)  # seed_interval sampler only
    decoder: str = "decord"
    known_quirks: Tuple[str, ...] = field(default=(), metadata=_DESCRIBES)
    # dataset preparation, applied to decoded frames before the preset's own resize: each
    # frame is first resized to this height and width trunc(h * W / H / 2) * 2 (ffmpeg's
    # scale="trunc(oh*a/2)*2:h"), as the Caffe2 authors re-encoded their copy of Kinetics.
    # None: no preparation (and the two fields stay out of to_dict, so the hashes of the
    # presets without it are unchanged).
    pre_resize_height: Optional[int] = field(default=None, metadata=_PREPARE)
    pre_resize_interpolation: str = field(default="bicubic", metadata=_PREPARE)
    # training only: a horizontal flip with this probability, drawn per video key (0: never;
    # like pre_resize_height, left out of to_dict at its default so that the hashes of the
    # presets without it are unchanged)
    flip_prob: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "sampler": (self.sampler, _clips.SAMPLERS),
            "interpolation": (self.interpolation, tuple(_tf.INTERPOLATIONS)),
            "size_rounding": (self.size_rounding, _tf.SIZE_ROUNDINGS),
            "crop": (self.crop, CROPS),
            "crop_rounding": (self.crop_rounding, _tf.CROP_ROUNDINGS),
            "three_crop_order": (self.three_crop_order, _tf.THREE_CROP_ORDERS),
            "normalize_op": (self.normalize_op, _tf.NORMALIZE_OPS),
            "clip_combine": (self.clip_combine, CLIP_COMBINES),
            "pre_resize_interpolation": (self.pre_resize_interpolation, tuple(_tf.INTERPOLATIONS)),
        }
        for field_name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{self.name}: {field_name}={value!r} not in {allowed}")
        if self.layout != "NCTHW" or self.channel_order != "RGB":
            raise ValueError(f"{self.name}: only RGB NCTHW is produced")
        if self.sampler == "seed_interval" and self.offset_seed is None:
            raise ValueError(f"{self.name}: the seed_interval sampler needs an offset_seed")
        if not (isinstance(self.flip_prob, (int, float)) and 0.0 <= self.flip_prob <= 1.0):
            raise ValueError(f"{self.name}: flip_prob must be in [0, 1], got {self.flip_prob!r}")
        if self.crop == "random" and self.offset_seed is None:
            raise ValueError(f"{self.name}: a random crop needs an offset_seed (the seed of every random draw)")
        if self.pre_resize_height is not None and int(self.pre_resize_height) < 1:
            raise ValueError(f"{self.name}: pre_resize_height must be >= 1 or None, got {self.pre_resize_height}")
        for field_name in ("clip_len", "frame_interval", "num_clips", "short_edge", "crop_size"):
            value = getattr(self, field_name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 1 <= value <= MAX_SIZE:
                raise ValueError(f"{self.name}: {field_name} must be an integer in 1..{MAX_SIZE}, got {value!r}")
        if self.crop_size > self.short_edge:
            raise ValueError(f"{self.name}: crop_size {self.crop_size} is larger than short_edge {self.short_edge}")
        for field_name in ("mean", "std"):
            value = getattr(self, field_name)
            if (not isinstance(value, tuple) or len(value) != 3
                    or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in value)):
                raise ValueError(f"{self.name}: {field_name} must be three finite numbers (R, G, B), got {value!r}")
        if min(self.std) <= 0:
            raise ValueError(f"{self.name}: std must be > 0, got {self.std}")
        if not (np.isfinite(self.value_scale) and self.value_scale > 0):
            raise ValueError(f"{self.name}: value_scale must be a finite number > 0, got {self.value_scale}")
        if self.decoder not in DECODERS:
            raise ValueError(f"{self.name}: decoder={self.decoder!r} not in {DECODERS}")

    # ------------------------------------------------------------------ identity
    def replace(self, **changes) -> "DataPreset":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["protocol"] = self.protocol
        if self.pre_resize_height is None:  # no preparation: the dict (and hash) from before these fields
            del d["pre_resize_height"], d["pre_resize_interpolation"]
        if self.flip_prob == 0.0:
            del d["flip_prob"]
        return d

    @property
    def num_crops(self) -> int:
        return 3 if self.crop == "three" else 1

    @property
    def views_per_video(self) -> int:
        return self.num_crops * self.num_clips

    @property
    def protocol(self) -> str:
        """``clips x crops`` as papers write it: ``1x1``, ``10x3``."""
        return f"{self.num_clips}x{self.num_crops}"

    @property
    def clip_span(self) -> int:
        return _clips.clip_span(self.clip_len, self.frame_interval)

    def input_shape(self, batch: int = 1) -> Tuple[int, int, int, int, int]:
        """Shape of the model input for ``batch`` videos: ``(batch * V, 3, T, crop, crop)``."""
        return (batch * self.views_per_video, 3, self.clip_len, self.crop_size, self.crop_size)

    # ------------------------------------------------------------------ temporal
    def is_short(self, num_frames: int) -> bool:
        """The video is shorter than one clip, so its clips loop (counted, still used)."""
        return _clips.is_short(num_frames, self.clip_len, self.frame_interval)

    def frame_indices(self, num_frames: int, video_key: str = "") -> np.ndarray:
        """``(num_clips, clip_len)`` int64 frame indices; ``video_key`` seeds random offsets."""
        if self.sampler == "mmaction2":
            return _clips.sample_clip_indices(
                num_frames, self.clip_len, self.frame_interval, self.num_clips, test_mode=True
            )
        if self.sampler == "seed_interval":
            rng = random.Random(_clips.video_seed(self.offset_seed, video_key))
            return _clips.seed_interval_indices(
                num_frames, self.clip_len, self.frame_interval, self.num_clips, rng=rng
            )
        if self.sampler == "mmaction2_0x":
            return _clips.mmaction2_0x_test_indices(num_frames, self.clip_len, self.frame_interval, self.num_clips)
        return _clips.caffe2_test_indices(num_frames, self.clip_len, self.frame_interval, self.num_clips)

    # ------------------------------------------------------------------ spatial
    def prepare(self, frames: np.ndarray) -> np.ndarray:
        """The dataset-preparation resize (``pre_resize_height``), or the frames unchanged."""
        if self.pre_resize_height is None:
            return frames
        h, w = frames.shape[-3:-1]
        size = _tf.ffmpeg_height_even_width_size(h, w, int(self.pre_resize_height))
        return _tf.resize(frames, size, self.pre_resize_interpolation)

    def resize(self, frames: np.ndarray) -> np.ndarray:
        return _tf.resize_short_edge(frames, self.short_edge, self.interpolation, self.size_rounding)

    def crop_views(self, frames: np.ndarray, video_key: str = "") -> np.ndarray:
        """Resized ``(num_clips, T, H, W, 3)`` -> ``(V, T, crop, crop, 3)``, crop-major.
        ``video_key`` seeds the random crop and flip of a training preset."""
        if self.crop == "random":
            return self._random_views(frames, video_key)
        if self.crop == "center":
            return _tf.center_crop(frames, self.crop_size, self.crop_rounding)
        crops = _tf.three_crop(frames, self.crop_size, self.three_crop_order)  # (3, clips, T, h, w, 3)
        return crops.reshape((-1,) + crops.shape[2:])

    def _random_views(self, frames: np.ndarray, video_key: str) -> np.ndarray:
        # one generator per video key: the crop and the flip do not depend on which process
        # decoded the video, nor on what was decoded before it
        rng = np.random.default_rng(_clips.video_seed(self.offset_seed, f"{video_key}/crop"))
        views = _tf.random_crop(frames, self.crop_size, rng)
        if self.flip_prob > 0 and rng.random() < self.flip_prob:
            views = _tf.hflip(views)
        return np.ascontiguousarray(views)

    def views_uint8(self, frames: np.ndarray, video_key: str = "") -> np.ndarray:
        """Decoded frames of the sampled indices, ``(num_clips, T, H, W, 3)`` or flat
        ``(num_clips * T, H, W, 3)`` uint8 RGB -> ``(V, T, crop, crop, 3)`` uint8."""
        frames = np.asarray(frames)
        if frames.ndim == 4 and frames.shape[0] == self.num_clips * self.clip_len:
            frames = frames.reshape((self.num_clips, self.clip_len) + frames.shape[1:])
        if frames.ndim != 5 or frames.shape[:2] != (self.num_clips, self.clip_len) or frames.shape[-1] != 3:
            raise ValueError(
                f"{self.name}: expected ({self.num_clips}, {self.clip_len}, H, W, 3) frames, got {frames.shape}"
            )
        return self.crop_views(self.resize(self.prepare(frames)), video_key)

    # ------------------------------------------------------------------ values
    def normalize(self, views: np.ndarray) -> np.ndarray:
        """uint8 ``(V, T, h, w, 3)`` -> float32 ``(V, 3, T, h, w)``."""
        scale = None if self.value_scale == 1.0 else self.value_scale
        return _tf.normalize_ncthw(views, self.mean, self.std, value_scale=scale, op=self.normalize_op)

    def make_clips(self, frames: np.ndarray) -> np.ndarray:
        """Decoded frames -> the model input for one video, float32 ``(V, 3, T, h, w)``."""
        return self.normalize(self.views_uint8(frames))

    # ------------------------------------------------------------------ scores
    def video_score(self, view_outputs: np.ndarray, head: str = "fc") -> np.ndarray:
        """The network's outputs for every view of one video -> the video's score vector.

        An ``fc`` head gives logits, combined as the preset's codebase combines them
        (:meth:`combine`); Caffe2's ``conv_softmax_avg`` head already gives probabilities
        (softmax per position inside the network), which its test averages over views."""
        if head == "fc":
            return self.combine(view_outputs)
        return np.asarray(view_outputs, dtype=np.float64).mean(axis=0)

    def combine(self, logits: np.ndarray) -> np.ndarray:
        """Per-view logits ``(V, classes)`` -> one score vector per video, as the preset's
        codebase combines them (``prob``: softmax, then mean; ``score``: mean of logits)."""
        x = np.asarray(logits, dtype=np.float64)
        if self.clip_combine == "prob":
            x = x - x.max(axis=-1, keepdims=True)
            e = np.exp(x)
            x = e / e.sum(axis=-1, keepdims=True)
        return x.mean(axis=0)


# Published and config-documented values; see the module docstring for each source.
_MMACTION2_MEAN = (123.675, 116.28, 103.53)
_MMACTION2_STD = (58.395, 57.12, 57.375)
SEED_STD_TYPO = "std[2] = 0.255 in the seed's nonlocal.yaml is a typo for ImageNet's 0.225; kept verbatim"

_MMACTION2_VAL = DataPreset(
    name="mmaction2_val",
    source="mmaction2 1.1.0 configs/recognition/i3d/"
    "i3d_imagenet-pretrained-r50-nl-dot-product_8xb8-32x2x1-100e_kinetics400-rgb.py val_pipeline",
    sampler="mmaction2",
    clip_len=32,
    frame_interval=2,
    num_clips=1,
    short_edge=256,
    interpolation="bilinear",
    size_rounding="round",
    crop="center",
    crop_size=224,
    crop_rounding="floor",
    mean=_MMACTION2_MEAN,
    std=_MMACTION2_STD,
    clip_combine="prob",
    label_order="alphabetical",
)

PRESETS: Dict[str, DataPreset] = {
    p.name: p
    for p in (
        _MMACTION2_VAL,
        # the same config's test_pipeline: 10 clips x ThreeCrop(256)
        _MMACTION2_VAL.replace(
            name="mmaction2_test_10x3",
            source=_MMACTION2_VAL.source.replace("val_pipeline", "test_pipeline"),
            num_clips=10,
            crop="three",
            crop_size=256,
            three_crop_order="mmaction2",
        ),
        # mmaction2 0.x (v0.6.0, when 73.92 / 91.59 was published): the same geometry and
        # normalisation, the old test sampler, and tools/test.py's default
        # --average-clips score (the mean of raw scores, PR #232 made 'prob' the default
        # only on 2020-10-10)
        _MMACTION2_VAL.replace(
            name="mmaction2_0x_test_10x3",
            source="mmaction2 v0.6.0 configs/recognition/i3d/i3d_nl_dot_product_r50_32x2x1_100e_kinetics400_rgb.py "
            "test_pipeline (RawframeDataset); mmaction/datasets/pipelines/loading.py SampleFrames._get_test_clips; "
            "tools/test.py --average-clips score",
            sampler="mmaction2_0x",
            num_clips=10,
            crop="three",
            crop_size=256,
            three_crop_order="mmaction2",
            clip_combine="score",
            known_quirks=(
                "0.x decoded JPEG rawframes (extracted at short side 256, JPEG re-encoded), not video; here the "
                "video is decoded and resized to short side 256 (bilinear), so pixels differ by the JPEG round trip "
                "and the extraction's own resize",
                "0.x took total_frames from the rawframe list file (frames extracted per video), not from the "
                "decoder; a different frame count moves the clip offsets",
                "start_index=1 of the rawframes names files (img_00001.jpg), it is not a frame offset here",
            ),
        ),
        DataPreset(
            name="seed_eval",
            source="ZJUT-ERCISS/zjut_mindvideo mindvideo/config/nonlocal/nonlocal.yaml data_loader.eval "
            "(Kinetic400, seq_mode=interval; DatasetGenerator.__sampler__)",
            sampler="seed_interval",
            clip_len=32,
            frame_interval=6,
            num_clips=1,
            short_edge=256,
            interpolation="bicubic",
            size_rounding="round",
            crop="center",
            crop_size=256,
            crop_rounding="half_even",
            value_scale=1 / 255.0,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.255),
            clip_combine="score",
            label_order="train_csv",
            offset_seed=0,
            known_quirks=(
                SEED_STD_TYPO,
                "clip offset is random in the seed (global `random`); here seeded by offset_seed and video id",
                "class ids in order of first appearance in kinetics-400_train.csv",
            ),
        ),
        DataPreset(
            name="caffe2_test_10x3",
            source="facebookresearch/video-nonlocal-net caffe2_customized_ops/video/customized_video_io.cc "
            "(DecodeClipFromVideoFileFlex, ScaleTransform, ClipTransformFlex), lib/core/config.py, "
            "process_data/kinetics/create_video_lmdb_test_multicrop.py",
            sampler="caffe2_uniform",
            clip_len=32,
            frame_interval=2,
            num_clips=10,
            short_edge=256,
            interpolation="bilinear",
            size_rounding="floor",
            crop="three",
            crop_size=256,
            three_crop_order="caffe2",
            mean=(114.75, 114.75, 114.75),
            std=(57.375, 57.375, 57.375),
            normalize_op="multiply_inverse",
            clip_combine="prob",
            label_order="alphabetical",
            known_quirks=(
                "frames decoded with decord here; Caffe2 used its own FFmpeg decoder (RGB24 via swscale)",
                "the dataset preparation (ffmpeg scale=trunc(oh*a/2)*2:256, swscale bicubic in YUV, then an "
                "H.264 re-encode) is modelled as an OpenCV INTER_CUBIC resize of the decoded RGB frames: "
                "same sizes, pixels differ by the filter (swscale widens its bicubic kernel when it "
                "downscales, INTER_CUBIC does not), the colour space it runs in and the lost re-encode: "
                "mean |diff| 0.3-2.9 levels on 5 test clips, largest on a 1280x720 downscale "
                "(results/caffe2_prepare_bicubic_vs_swscale.json)",
                "every side ScaleTransform's float32 truncation leaves at 255 is set to 256 (the C++ would "
                "crop 256 out of 255, undefined behaviour): the short side of a non-square frame, both sides "
                "of a square one",
            ),
            pre_resize_height=256,
            pre_resize_interpolation="bicubic",
        ),
    )
}
DEFAULT_DATA_PRESET = "mmaction2_val"

# Training pipelines: kept apart from the evaluation presets above (evaluate offers those).
# Every random draw (clip offset, crop, flip) is seeded by offset_seed and a key the
# trainer gives each video of each epoch (``<video id>@<epoch>``), so both frameworks, any
# number of loader workers and a resumed run see the very same batches.
# seed_train is the seed's eval pipeline with its train block's crop and flip.
TRAIN_PRESETS: Dict[str, DataPreset] = {
    p.name: p
    for p in (
        PRESETS["seed_eval"].replace(
            name="seed_train",
            source="ZJUT-ERCISS/zjut_mindvideo mindvideo/config/nonlocal/nonlocal.yaml data_loader.train "
            "(Kinetic400 seq=32, seq_mode=interval, frame_interval=6; VideoShortEdgeResize(256, bicubic), "
            "VideoRandomCrop([224, 224]), VideoRandomHorizontalFlip(0.5), VideoRescale, VideoNormalize)",
            crop="random",
            crop_size=224,
            crop_rounding="floor",   # the field's default: a random crop has no centre to round
            flip_prob=0.5,
            known_quirks=(
                SEED_STD_TYPO,
                "clip offset, crop and flip are random in the seed (global generators); here seeded by "
                "offset_seed, the video id and the epoch",
                "the seed's crop is a 224 crop at a random position of the short-edge-256 frame "
                "(VideoRandomCrop), not a random *resized* crop: no scale or aspect jitter",
            ),
        ),
    )
}
DEFAULT_TRAIN_PRESET = "seed_train"


def get_train_preset(name: str = DEFAULT_TRAIN_PRESET, **overrides) -> DataPreset:
    """A training pipeline by name (see :data:`TRAIN_PRESETS`), optionally with fields changed."""
    return lookup(TRAIN_PRESETS, name, "train preset", overrides)  # harness.train prints its known_quirks


def get_data_preset(name: str, **overrides) -> DataPreset:
    """The named preset, optionally with fields changed (``offset_seed=3``, ``decoder='pyav'``).

    ``seed_eval`` emits a ``UserWarning`` about its std typo each time it is requested,
    so that no result built on it goes out without the caveat.
    """
    preset = lookup(PRESETS, name, "data preset", overrides)
    if SEED_STD_TYPO in preset.known_quirks:
        warnings.warn(f"data preset {name!r}: {SEED_STD_TYPO}", UserWarning, stacklevel=2)
    return preset


def canonical_json(obj) -> str:
    """The JSON every spec hash is taken over: sorted keys, no whitespace, tuples as lists."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)


def data_preset_hash(preset: DataPreset) -> str:
    """A short, stable digest of everything that defines the data pipeline."""
    return hashlib.sha256(canonical_json(preset.to_dict()).encode("utf-8")).hexdigest()[:16]


def spec_hash(arch_cfg, preset: DataPreset) -> str:
    """One digest of the graph and the data protocol a result was measured with."""
    from .arch import arch_hash

    return hashlib.sha256(f"{arch_hash(arch_cfg)}:{data_preset_hash(preset)}".encode()).hexdigest()[:16]
