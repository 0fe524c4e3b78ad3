"""python -m harness.data.synthetic (nlparity make_dataset): layout, determinism, decodable H.264, learnable motion, CLI contract."""
import csv
import json

import numpy as np
import pytest

from frameworks.spec.labels import K400_CLASSES
from harness.data.decoders import open_video
from harness.data.index import read_kinetics_csv
from harness.data.synthetic import class_motion, draw_params, main, make_dataset, render


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("made")
    summary = make_dataset(root, classes=3, videos_per_class=2, val_videos_per_class=1, seconds=1, size=(64, 48), seed=11)
    return root, summary


def test_layout_matches_the_seed(small):
    root, summary = small
    for split, n in (("train", 6), ("val", 3)):
        with open(root / f"kinetics-400_{split}.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["label", "youtube_id", "time_start", "time_end", "split"]
        assert len(rows) == n + 1 and {r[4] for r in rows[1:]} == {split}
        for label, yid, start, end, _ in rows[1:]:
            assert label in K400_CLASSES[:3] and len(yid) == 11
            assert int(end) - int(start) == 1
            assert (root / split / f"{yid}_{int(start):06d}_{int(end):06d}.mp4").is_file()
    assert summary.classes == list(K400_CLASSES[:3]) and summary.videos == {"train": 6, "val": 3}
    # both class numberings agree on a made dataset: class i is id i
    assert [r.label for r in read_kinetics_csv(root, "val")] == [0, 1, 2]
    assert [r.label for r in read_kinetics_csv(root, "val", label_order="train_csv")] == [0, 1, 2]


def test_videos_are_h264_of_the_requested_size(small):
    root, _ = small
    path = next((root / "train").glob("*.mp4"))
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    with open_video(path, "decord") as video:
        frames = video.get_frames(np.arange(video.num_frames))
    assert frames.shape == (30, 48, 64, 3)
    assert np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 1  # it moves


def test_deterministic_for_a_seed(small, tmp_path):
    root, _ = small
    again = tmp_path / "again"
    make_dataset(again, classes=3, videos_per_class=2, val_videos_per_class=1, seconds=1, size=(64, 48), seed=11)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            assert (again / path.relative_to(root)).read_bytes() == path.read_bytes(), path
    other = tmp_path / "other"
    make_dataset(other, classes=3, videos_per_class=2, val_videos_per_class=1, seconds=1, size=(64, 48), seed=12)
    assert (other / "kinetics-400_train.csv").read_text() != (root / "kinetics-400_train.csv").read_text()


def _mean_flow(frames):
    """Least-squares optical flow (vx, vy) of the whole clip, from brightness constancy."""
    f = frames.astype(np.float32).mean(-1)
    it, ix, iy = f[1:] - f[:-1], np.gradient(f[:-1], axis=2), np.gradient(f[:-1], axis=1)
    return -(ix * it).sum() / (ix * ix).sum(), -(iy * it).sum() / (iy * iy).sum()


def test_class_is_in_the_motion():
    """Classes 0 / 4 (and 1 / 5) differ only in the sign of their motion, and the sign can be
    read off the pixels: what a small 3D network must learn, and can."""
    assert class_motion(0) == (0, 1, 0) and class_motion(4) == (0, -1, 0) and class_motion(9) == (1, 1, 1)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        vx0, vy0 = _mean_flow(render(draw_params(0, rng), 12, 48, 64, 30, rng))
        vx4, _ = _mean_flow(render(draw_params(4, rng), 12, 48, 64, 30, rng))
        vx1, vy1 = _mean_flow(render(draw_params(1, rng), 12, 48, 64, 30, rng))
        _, vy5 = _mean_flow(render(draw_params(5, rng), 12, 48, 64, 30, rng))
        assert vx0 > 0.02 and vx4 < -0.02 and abs(vy0) < abs(vx0)
        assert vy1 > 0.02 and vy5 < -0.02 and abs(vx1) < abs(vy1)


def test_cli_writes_summary_and_plants_faults(tmp_path, capsys):
    out = tmp_path / "summary.json"
    code = main([str(tmp_path / "ds"), "--classes", "2", "--videos-per-class", "1", "--seconds", "1",
                 "--size", "32x32", "--faults", "--json", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary["videos"] == {"train": 2, "val": 2} and len(summary["faults"]) == 7
    assert (tmp_path / "ds" / "val" / "faultemptyf_000000_000010.mp4").stat().st_size == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--size", "65x48"], "even"),
        (["--size", "big"], "WxH"),
        (["--classes", "0"], "--classes"),
        (["--classes", "401"], "--classes"),
        (["--seconds", "-1"], "positive"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_cli_bad_input_is_exit_2_with_one_line(tmp_path, cli, args, message):
    result = cli("harness.data.synthetic", tmp_path / "x", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_cli_help(cli):
    result = cli("harness.data.synthetic", "--help")
    assert result.returncode == 0 and "--videos-per-class" in result.stdout and "Kinetics" in result.stdout
    same = cli("harness", "make_dataset", "--help")     # nlparity make_dataset: the same command
    assert same.returncode == 0 and same.stdout == result.stdout
