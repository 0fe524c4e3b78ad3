"""The Kinetics index: the seed's CSV layout, mmaction2's list files, faults as data."""
import logging

import pytest

from frameworks.spec.labels import K400_CLASSES
from harness.data.index import DatasetError, build_index, read_kinetics_csv, read_list_file

HEADER = "label,youtube_id,time_start,time_end,split\n"


def _touch(path, data=b"\x00not decoded by the index\x00"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def seed_layout(tmp_path):
    """Train CSV in non-alphabetical order; val CSV with one of each index-time fault."""
    (tmp_path / "kinetics-400_train.csv").write_text(
        HEADER
        + "zumba,t1aaaaaaaaa,1,11,train\n"
        + "abseiling,t2aaaaaaaaa,2,12,train\n"
        + '"passing American football (in game)",t3aaaaaaaaa,3,13,train\n'
        + "zumba,t4aaaaaaaaa,4,14,train\n"
    )
    val = tmp_path / "val"
    rows = [
        "abseiling,v1aaaaaaaaa,0,10,val",  # ok
        "zumba,v2aaaaaaaaa,14,24,val",  # ok
        '"passing American football (in game)",v3aaaaaaaaa,5,15,val',  # ok, quoted
        "passing_American_football_-in_game-,v4aaaaaaaaa,6.0,16.0,val",  # ok: other spelling, float times
        "abseiling,v5aaaaaaaaa,7,17,val",  # ok, stored as .mkv
        "abseiling,missingaaaa,0,10,val",  # missing_file
        "abseiling,emptyaaaaaa,0,10,val",  # empty_file
        "juggling chainsaws,unknownaaaa,0,10,val",  # unknown_label
        "abseiling,tooshort",  # bad_row (too few columns)
        "abseiling,badtimeaaaa,zero,ten,val",  # bad_row (times)
        "zumba,v2aaaaaaaaa,14,24,val",  # duplicate_row
        "",  # blank line: ignored
    ]
    (tmp_path / "kinetics-400_val.csv").write_text(HEADER + "\n".join(rows) + "\n")
    for vid in ["v1aaaaaaaaa_000000_000010", "v2aaaaaaaaa_000014_000024", "v3aaaaaaaaa_000005_000015",
                "v4aaaaaaaaa_000006_000016", "unknownaaaa_000000_000010"]:
        _touch(val / f"{vid}.mp4")
    _touch(val / "v5aaaaaaaaa_000007_000017.mkv")
    _touch(val / "emptyaaaaaa_000000_000010.mp4", b"")
    return tmp_path


def test_seed_layout_records_and_faults(seed_layout):
    index = read_kinetics_csv(seed_layout, "val")
    assert [r.video_id for r in index] == [
        "v1aaaaaaaaa_000000_000010", "v2aaaaaaaaa_000014_000024", "v3aaaaaaaaa_000005_000015",
        "v4aaaaaaaaa_000006_000016", "v5aaaaaaaaa_000007_000017",
    ]
    assert [r.label for r in index] == [0, 399, 208, 208, 0]  # alphabetical Kinetics-400 ids
    assert index.records[4].path.endswith(".mkv")
    assert index.records[3].label_name == "passing American football (in game)"
    counts = index.faults.counts()
    assert counts == {
        "missing_file": 1, "empty_file": 1, "truncated": 0, "not_a_video": 0, "decode_error": 0,
        "unknown_label": 1, "bad_row": 2, "duplicate_row": 1, "worker_crash": 0, "timeout": 0, "outside_root": 0,
        "short_video": 0,
    }
    assert index.faults.ids("missing_file") == ["missingaaaa_000000_000010"]
    assert index.faults.ids("unknown_label") == ["unknownaaaa_000000_000010"]
    assert index.faults.ids("bad_row") == ["kinetics-400_val.csv:10", "kinetics-400_val.csv:11"]
    assert all(f.skipped for f in index.faults.faults)
    d = index.to_dict()
    assert d["n_videos"] == 5 and d["faults"]["n_skipped"] == 6 and d["label_order"] == "alphabetical"


def test_seed_first_appearance_order(seed_layout):
    index = read_kinetics_csv(seed_layout, "val", label_order="train_csv")
    assert index.label_map.names == ("zumba", "abseiling", "passing American football (in game)")
    assert [r.label for r in index] == [1, 0, 2, 2, 1]
    assert index.faults.counts()["unknown_label"] == 1


def test_unlabelled_csv_gives_minus_one(tmp_path, caplog):
    (tmp_path / "kinetics-400_test.csv").write_text("youtube_id,time_start,time_end,split\nx1aaaaaaaaa,0,10,test\n")
    _touch(tmp_path / "test" / "x1aaaaaaaaa_000000_000010.mp4")
    with caplog.at_level(logging.INFO):
        index = read_kinetics_csv(tmp_path, "test")
    assert [(r.video_id, r.label) for r in index] == [("x1aaaaaaaaa_000000_000010", -1)]
    assert "no label column" in caplog.text


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda root: None, "does not exist"),  # no CSV
        (lambda root: (root / "kinetics-400_val.csv").write_text(""), "empty"),
        (lambda root: (root / "kinetics-400_val.csv").write_text("label,youtube\nabseiling,x\n"), "lacks columns"),
        (lambda root: (root / "kinetics-400_val.csv").mkdir(), "is a folder, not a file"),
        (lambda root: (root / "kinetics-400_val.csv").write_bytes(b"\xff\xfe\x00bad"), "cannot be read"),
    ],
)
def test_unreadable_annotation_raises(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DatasetError, match=message):
        read_kinetics_csv(tmp_path, "val")


def test_unreadable_root_raises(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_kinetics_csv(tmp_path / "nope", "val")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        read_kinetics_csv(tmp_path / "file", "val")
    (tmp_path / "kinetics-400_val.csv").write_text(HEADER)
    with pytest.raises(DatasetError, match="kinetics-400_train.csv"):
        read_kinetics_csv(tmp_path, "val", label_order="train_csv")  # the seed's order needs the train CSV


def test_mmaction2_list_file(tmp_path):
    videos = tmp_path / "videos_val"
    for name in ["a.mp4", "b.mp4", "c.mp4"]:
        _touch(videos / name)
    _touch(videos / "empty.mp4", b"")
    ann = tmp_path / "kinetics400_val_list_videos.txt"
    ann.write_text("a.mp4 0\nb.mp4 399\n\nc.mp4 400\nmissing.mp4 3\nempty.mp4 3\nnolabel.mp4\nx.mp4 1 2\ny.mp4 one\na.mp4 0\n")
    index = read_list_file(ann, videos)
    assert [(r.video_id, r.label, r.label_name) for r in index] == [("a", 0, "abseiling"), ("b", 399, "zumba")]
    counts = {k: v for k, v in index.faults.counts().items() if v}
    assert counts == {"unknown_label": 1, "missing_file": 1, "empty_file": 1, "bad_row": 3, "duplicate_row": 1}
    assert index.faults.ids("unknown_label") == ["c"]
    with pytest.raises(DatasetError, match="does not exist"):
        read_list_file(tmp_path / "nope.txt", videos)


def test_build_index_dispatch(seed_layout, tmp_path):
    assert build_index(seed_layout, "val").source == "kinetics_csv"
    lst = seed_layout / "val_list.txt"
    lst.write_text("val/v1aaaaaaaaa_000000_000010.mp4 7\n")
    index = build_index(seed_layout, "val", annotations=lst)
    assert index.source == "mmaction2_list" and [r.label_name for r in index] == [K400_CLASSES[7]]
    assert len(build_index(seed_layout, "val").limit(2)) == 2


def test_seed_class_cache_wins_over_train_csv(seed_layout):
    """The seed caches its first-appearance order as cls2index.json and trusts it after."""
    (seed_layout / "cls2index.json").write_text('{"abseiling": 0, "zumba": 1, "passing American football (in game)": 2}')
    index = read_kinetics_csv(seed_layout, "val", label_order="train_csv")
    assert index.label_map.names[:2] == ("abseiling", "zumba")
    assert [r.label for r in index] == [0, 1, 2, 2, 0]
    (seed_layout / "cls2index.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match="cls2index.json"):
        read_kinetics_csv(seed_layout, "val", label_order="train_csv")
