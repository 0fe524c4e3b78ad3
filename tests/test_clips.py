"""Clip sampling against its oracles: mmaction2 1.x ``SampleFrames`` (imported here, and
only here, as the reference), and hand-computed indices for the seed and Caffe2 rules."""
import random

import numpy as np
import pytest

from frameworks.spec import clips

SampleFrames = pytest.importorskip("mmaction.datasets.transforms.loading").SampleFrames

# lengths around every boundary of a 32x2 clip (span 63) and of 10 clips, plus a video
# shorter than a clip (loops) and a one-frame video
LENGTHS = [1, 5, 31, 32, 62, 63, 64, 65, 72, 100, 250, 300, 301, 1000]
CONFIGS = [(32, 2, 1), (32, 2, 10), (8, 8, 1), (16, 4, 3), (32, 6, 1), (4, 1, 5)]


def _oracle(num_frames, clip_len, interval, num_clips, test_mode=True):
    op = SampleFrames(clip_len=clip_len, frame_interval=interval, num_clips=num_clips, test_mode=test_mode)
    out = op(dict(total_frames=num_frames, start_index=0))
    return out["frame_inds"].reshape(num_clips, clip_len)


@pytest.mark.parametrize("clip_len,interval,num_clips", CONFIGS)
def test_test_mode_matches_mmaction2(clip_len, interval, num_clips):
    for n in LENGTHS:
        ours = clips.sample_clip_indices(n, clip_len, interval, num_clips, test_mode=True)
        assert ours.shape == (num_clips, clip_len)
        np.testing.assert_array_equal(ours, _oracle(n, clip_len, interval, num_clips), err_msg=f"N={n}")


@pytest.mark.parametrize("clip_len,interval,num_clips", CONFIGS)
def test_train_mode_matches_mmaction2_with_same_seed(clip_len, interval, num_clips):
    for n in LENGTHS:
        for seed in (0, 1, 7):
            np.random.seed(seed)
            ref = _oracle(n, clip_len, interval, num_clips, test_mode=False)
            ours = clips.sample_clip_indices(
                n, clip_len, interval, num_clips, test_mode=False, rng=np.random.RandomState(seed)
            )
            np.testing.assert_array_equal(ours, ref, err_msg=f"N={n} seed={seed}")


def test_hand_computed_mmaction2_val_and_10_clips():
    # N=300, 32x2: span 63, max_offset 237; one clip is centred at 237 // 2 = 118
    val = clips.sample_clip_indices(300, 32, 2, 1)
    assert val[0, 0] == 118 and val[0, -1] == 118 + 62
    # ten clips: round(i * 237 / 9) -> 0, 26, 53, 79, 105, 132, 158, 184, 211, 237
    ten = clips.sample_clip_indices(300, 32, 2, 10)
    assert ten[:, 0].tolist() == [0, 26, 53, 79, 105, 132, 158, 184, 211, 237]
    assert ten[-1, -1] == 299  # the last clip ends on the last frame


def test_short_video_loops_instead_of_padding():
    # 40 frames, 32x2: every clip starts at 0 and wraps: 0, 2, ..., 38, 0, 2, ...
    inds = clips.sample_clip_indices(40, 32, 2, 1)
    assert inds[0].tolist() == [(2 * i) % 40 for i in range(32)]
    assert clips.is_short(40, 32, 2) and clips.is_short(62, 32, 2) and not clips.is_short(63, 32, 2)
    assert clips.clip_span(32, 2) == 63 and clips.clip_span(32, 6) == 187


def test_rejects_impossible_inputs():
    with pytest.raises(ValueError):
        clips.sample_clip_indices(0, 32, 2)
    with pytest.raises(ValueError):
        clips.sample_clip_indices(10, 0, 2)
    with pytest.raises(NotImplementedError):
        clips.sample_clip_indices(10, 1, 1, 8)


def test_seed_interval_offset_is_the_seeds_draw():
    # the seed: region = 32 * 6 + 1 = 193; offset = random.sample(range(|N - 193| + 1), 1)
    for n in (300, 193, 194, 100, 20):
        expected_offset = random.Random(1234).sample(range(abs(n - 193) + 1), 1)[0]
        inds = clips.seed_interval_indices(n, 32, 6, rng=random.Random(1234))
        assert inds[0].tolist() == [(expected_offset + 6 * i) % n for i in range(32)], n
    # a full-length video never wraps: the last index is at most N - 7
    for seed in range(50):
        inds = clips.seed_interval_indices(300, 32, 6, rng=random.Random(seed))
        assert inds.max() <= 300 - 7 and np.all(np.diff(inds[0]) == 6)


def test_seed_interval_multi_clip_rule():
    # avg = |300 - (32*6 + 3)| / 3 = 35; offsets int(i * 35 + 17.5) = 17, 52, 87
    inds = clips.seed_interval_indices(300, 32, 6, 3, rng=random.Random(0))
    assert inds[:, 0].tolist() == [17, 52, 87]


def test_video_seed_is_stable_and_distinct():
    assert clips.video_seed(0, "abc") == clips.video_seed(0, "abc")
    assert clips.video_seed(0, "abc") != clips.video_seed(1, "abc")
    assert clips.video_seed(0, "abc") != clips.video_seed(0, "abd")
    # pinned: the value must never change between versions, or seed_eval results drift
    assert clips.video_seed(0, "h4_jTzO95DE_000068_000070") == 12685548797261404670


def test_caffe2_uniform_starts():
    inds = clips.caffe2_test_indices(300, 32, 2, 10)
    assert inds[:, 0].tolist() == [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]
    # clip 9 runs 270, 272, ..., 332 and wraps past frame 299 (Caffe2's periodic sampling)
    assert inds[9].tolist() == [(270 + 2 * i) % 300 for i in range(32)]


def test_caffe2_float32_start_equals_exact_floor():
    """The C++ computes ``(int)((float)N / 10.f * k)``; for every length a Kinetics clip
    can have this equals ``floor(k * N / 10)``, so the preset's documented rule is exact."""
    for n in range(1, 2001):
        starts = clips.caffe2_test_indices(n, 2, 1, 10)[:, 0]
        assert starts.tolist() == [(k * n // 10) % n for k in range(10)], n


def _mmaction2_0x_restated(num_frames, clip_len, interval, num_clips):
    """mmaction2 0.x ``SampleFrames._get_test_clips`` + ``__call__`` (loading.py@v0.6.0:114-122),
    re-typed with Python floats and lists: ``avg = (N - L*s + 1) / float(K)``; clip ``i`` at
    ``int(i * avg + avg / 2.0)`` when ``N > L*s - 1``, else 0; indices ``% N`` (loop)."""
    ori_clip_len = clip_len * interval
    avg = (num_frames - ori_clip_len + 1) / float(num_clips)
    if num_frames > ori_clip_len - 1:
        offsets = [int(i * avg + avg / 2.0) for i in range(num_clips)]
    else:
        offsets = [0] * num_clips
    return [[(o + j * interval) % num_frames for j in range(clip_len)] for o in offsets]


@pytest.mark.parametrize("num_clips", [1, 10])
def test_mmaction2_0x_sampler_equals_the_authors_rule_for_every_length(num_clips):
    for n in range(1, 1001):
        ours = clips.mmaction2_0x_test_indices(n, 32, 2, num_clips)
        assert ours.shape == (num_clips, 32) and ours.dtype == np.int64
        assert ours.tolist() == _mmaction2_0x_restated(n, 32, 2, num_clips), n


def test_mmaction2_0x_sampler_hand_computed_and_boundary():
    # N=300: avg = (300 - 64 + 1) / 10 = 23.7; offsets int(23.7 i + 11.85)
    assert clips.mmaction2_0x_test_indices(300, 32, 2, 10)[:, 0].tolist() == [
        11, 35, 59, 82, 106, 130, 154, 177, 201, 225]
    # the branch is N > L*s - 1 = 63: N=63 takes the zeros branch (and loops); N=64 computes
    # avg 0.1 -> int(0.1 i + 0.05) = 0 (so the branch point itself is unobservable by one frame);
    # N=84: avg 2.1 -> int(2.1 i + 1.05) = 1, 3, 5, ..., 19
    assert clips.mmaction2_0x_test_indices(63, 32, 2, 10)[:, 0].tolist() == [0] * 10
    assert clips.mmaction2_0x_test_indices(64, 32, 2, 10)[:, 0].tolist() == [0] * 10
    assert clips.mmaction2_0x_test_indices(84, 32, 2, 10)[:, 0].tolist() == list(range(1, 20, 2))
    # a clip never runs past the end once N >= 64 (the last index is at most N - 2)
    for n in range(64, 1001):
        assert clips.mmaction2_0x_test_indices(n, 32, 2, 10).max() <= n - 2


def test_mmaction2_0x_differs_from_1x_for_ten_clips_only():
    """One clip: 0.x's int((N-63)/2) is 1.x's max_offset // 2 for every N. Ten clips: the two
    rules differ for every length 64..1000 (the 1.x clips span first to last frame)."""
    for n in range(1, 1001):
        np.testing.assert_array_equal(clips.mmaction2_0x_test_indices(n, 32, 2, 1),
                                      clips.sample_clip_indices(n, 32, 2, 1), err_msg=str(n))
    differ = [n for n in range(64, 1001)
              if not np.array_equal(clips.mmaction2_0x_test_indices(n, 32, 2, 10),
                                    clips.sample_clip_indices(n, 32, 2, 10))]
    assert len(differ) == 1000 - 64 + 1
    assert "mmaction2_0x" in clips.SAMPLERS
