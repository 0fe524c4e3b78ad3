"""Bad and hostile input through every command, as a new user would type it.

The contract (README, "Commands"): exit 2 and exactly one line on stderr for bad input,
never a traceback, and no file left behind; exit 1 where a check the command exists to
make fails. One table row per case; each case runs the real command in a process of
its own. Cases whose failure needs the machine in a state a test cannot make as root
(unreadable files, read-only folders) are unit tests below the table, on the same code.
"""
from __future__ import annotations

import json
import os
import unicodedata

import numpy as np
import pytest

from frameworks.spec.arch import get_preset, parameter_specs
from harness.checkpoints.io import write_npz
from tests.conftest import run_cli

CSV_HEADER = "label,youtube_id,time_start,time_end,split\n"
SMALL = ["--data-override", "clip_len=8", "--data-override", "short_edge=72", "--data-override", "crop_size=64"]


def _weights(dtype=np.float32, poison=None):
    cfg = get_preset("i3d_nl_dot_product_r50")
    arrays = {k: np.zeros(shape, dtype) for k, shape in parameter_specs(cfg).items()}
    for k in arrays:
        if k.endswith("running_var"):
            arrays[k][...] = 1
    if poison:
        name, value = poison
        arrays[name].flat[0] = value
    return arrays


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs shared by the table: an empty dataset, weight files of the wrong dtype or
    with a NaN, JSON files that are not what a command expects."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "empty_k400").mkdir()
    (root / "empty_k400" / "kinetics-400_val.csv").write_text(CSV_HEADER)
    write_npz(str(root / "f16.npz"), _weights(np.float16))
    write_npz(str(root / "i32.npz"), _weights(np.int32))
    write_npz(str(root / "nan.npz"), _weights(poison=("res3.1.non_local.g.weight", np.nan)))
    write_npz(str(root / "zeros.npz"), _weights())     # runnable weights: a refusal is the data's, not theirs
    (root / "list.json").write_text("[1, 2, 3]")
    (root / "adir").mkdir()
    # a dataset whose every row names a class the label map lacks, one with a terminal escape in it
    (root / "unknown_k400" / "val").mkdir(parents=True)
    (root / "unknown_k400" / "kinetics-400_val.csv").write_text(
        CSV_HEADER + '"\x1b[2J\x1b[31mred",aaaaaaaaaaa,0,10,val\n' + "juggling chainsaws,bbbbbbbbbbb,0,10,val\n")
    # one listed video (not decoded by a refused run)
    (root / "one_k400" / "val").mkdir(parents=True)
    (root / "one_k400" / "kinetics-400_val.csv").write_text(CSV_HEADER + "abseiling,aaaaaaaaaaa,0,10,val\n")
    (root / "one_k400" / "val" / "aaaaaaaaaaa_000000_000010.mp4").write_bytes(b"x")
    for vid in ("aaaaaaaaaaa", "bbbbbbbbbbb"):
        (root / "unknown_k400" / "val" / f"{vid}_000000_000010.mp4").write_bytes(b"x")
    # a dataset whose rows reach outside its root: by '..' in an id, and by a symbolic link
    (root / "outside").mkdir()
    (root / "outside" / "x_000000_000010.mp4").write_bytes(b"a file that is not the dataset's")
    (root / "escape_k400" / "val").mkdir(parents=True)
    (root / "escape_k400" / "kinetics-400_val.csv").write_text(
        CSV_HEADER + "abseiling,../../outside/x,0,10,val\n" + "abseiling,linkaaaaaaa,0,10,val\n")
    os.symlink(root / "outside" / "x_000000_000010.mp4", root / "escape_k400" / "val" / "linkaaaaaaa_000000_000010.mp4")
    # a CSV whose header holds a terminal escape
    (root / "escape_header").mkdir()
    (root / "escape_header" / "kinetics-400_val.csv").write_text("label,\x1b]0;owned\x07youtube_id\n")
    registry = root / "registry.toml"
    registry.write_text('[evil]\norigin = "x"\nurl = "http://127.0.0.1:9/x"\nfilename = "../x.pth"\n'
                        'format = "mmaction2"\narch = "i3d_r50"\ndata_preset = "mmaction2_val"\n'
                        'framework_row = "pytorch"\npublished = {}\n')
    return root


def _tree(path):
    """Every file and folder under ``path``, with its size: a refused run may neither add,
    remove nor change any of them (an empty folder made on the way counts too)."""
    out = []
    for d, dirs, fs in os.walk(path):
        out += [os.path.relpath(os.path.join(d, x), path) + "/" for x in dirs]
        out += [(os.path.relpath(os.path.join(d, f), path), os.lstat(os.path.join(d, f)).st_size) for f in fs]
    return sorted(out, key=str)


EV = ["harness.evaluate", "--framework", "torch", "-q"]
DR = ["--from", "mmaction2_val", "--to", "mmaction2_test_10x3", "-q"]


# (command, argv with {in}/{tmp} placeholders, extra env, expected exit, text in the error line)
CASES = [
    # evaluate: argument values
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--batch-size", "0"], {}, 2,
     "--batch-size"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--workers", "-1"], {}, 2,
     "--workers"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--limit", "-1"], {}, 2,
     "--limit"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400"],
     {"RANK": "abc", "WORLD_SIZE": "2"}, 2, "RANK='abc'"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--data-override", "clip_len=0"],
     {}, 2, "clip_len"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--data-override", "crop_size=0"],
     {}, 2, "crop_size"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--data-override",
                          "decoder=bogus"], {}, 2, "decoder"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--data-override",
                          "mean=[1,2]"], {}, 2, "mean"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--out",
                          "{in}/list.json/x.json"], {}, 2, "is a file"),
    # evaluate: weights the models cannot run
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/one_k400", "--checkpoint", "{in}/f16.npz",
                          "--out", "{tmp}/r.json"], {}, 2, "float16"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/one_k400", "--checkpoint", "{in}/i32.npz",
                          "--out", "{tmp}/sub/r.json"], {}, 2, "int32"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/one_k400", "--checkpoint", "{in}/nan.npz",
                          "--out", "{tmp}/r.json"], {}, 2, "non-finite"),
    # evaluate: merge and compare
    ("harness.evaluate", ["--merge", "{in}/list.json", "--out", "{tmp}/m.json"], {}, 2, "not a harness.evaluate"),
    ("harness.evaluate", ["--compare", "{in}/list.json", "{in}/list.json"], {}, 2, "not a harness.evaluate"),
    ("harness.evaluate", ["--compare", "{in}/adir", "{in}/list.json"], {}, 2, "adir is a folder, not a file"),
    ("harness.evaluate", ["--merge", "{in}/adir", "--out", "{tmp}/m.json"], {}, 2, "holds no *.shard"),
    ("harness.evaluate", ["--merge", "{in}/nothing.json", "--out", "{tmp}/m.json"], {}, 2, "no such file"),
    # evaluate: nothing to run is a failed run (exit 2: the input has no video), refused before any file
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--checkpoint", "{in}/zeros.npz",
                          "--out", "{tmp}/sub/r.json"], {}, 2, "lists no video"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/unknown_k400", "--checkpoint", "{in}/zeros.npz",
                          "--out", "{tmp}/sub/r.json"], {}, 2, "unknown_label=2"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/unknown_k400", "--out", "{tmp}/r.json"], {}, 2,
     "\\x1b[2J\\x1b[31mred"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/escape_header"], {}, 2, "\\x1b]0;owned\\x07"),
    # evaluate: nothing is read from outside --data-root, by '..' or by a link
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/escape_k400", "--checkpoint", "{in}/zeros.npz",
                          "--out", "{tmp}/r.json"], {}, 2, "outside_root=2"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/escape_k400", "--out", "{tmp}/r.json"], {}, 2,
     "--allow-outside-root"),
    # evaluate: paths named for what they are
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/list.json"], {}, 2, "is a file, not a folder"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/nope"], {}, 2, "no such folder"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--annotations", "{in}/adir"], {},
     2, "--annotations {in}/adir is a folder, not a file"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--checkpoint", "{in}/adir"], {},
     2, "{in}/adir is a folder, not a file"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--checkpoint", "{in}/nope.npz"],
     {}, 2, "no such checkpoint"),
    ("harness.evaluate", ["--compare", "{in}/list.json", "{in}/list.json", "--json", "{in}/adir"], {}, 2,
     "is a folder, not a file"),
    # evaluate: an absurd classifier is refused by the parser, not by the allocator
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--num-classes", "1000000000"], {},
     2, "--num-classes"),
    ("harness.evaluate", ["--framework", "torch", "--data-root", "{in}/empty_k400", "--num-classes", "0"], {}, 2,
     "--num-classes"),
    # drift: inputs and outputs, checked before the plan is printed
    ("harness.drift", [*DR, "--checkpoint", "{in}/zeros.npz", "--data-root", "{in}/empty_k400", "--out",
                       "{tmp}/sub/d.json"], {}, 2, "lists no video"),
    ("harness.drift", [*DR, "--checkpoint", "{in}/zeros.npz", "--data-root", "{in}/escape_k400", "--out",
                       "{tmp}/d.json"], {}, 2, "--allow-outside-root"),
    ("harness.drift", [*DR, "--checkpoint", "{in}/adir", "--data-root", "{in}/empty_k400", "--out", "{tmp}/d.json"],
     {}, 2, "is a folder, not a file"),
    ("harness.drift", [*DR, "--checkpoint", "{in}/nope.npz", "--data-root", "{in}/empty_k400"], {}, 2,
     "no such checkpoint"),
    ("harness.drift", [*DR, "--checkpoint", "{in}/zeros.npz", "--data-root", "{in}/list.json"], {}, 2,
     "is a file, not a folder"),
    ("harness.drift", [*DR, "--checkpoint", "{in}/zeros.npz", "--data-root", "{in}/unknown_k400", "--out",
                       "{tmp}/d.json"], {}, 2, "\\x1b[2J"),
    ("harness.drift", [*DR, "--checkpoint", "{in}/zeros.npz", "--data-root", "{in}/empty_k400", "--out",
                       "{in}/list.json/d.json"], {}, 2, "is a file, not a folder"),
    ("harness.drift", [*DR, "--checkpoint", "{in}/zeros.npz", "--data-root", "{in}/empty_k400", "--out",
                       "{tmp}/d.json", "--plot", "{tmp}/d.svg"], {}, 2, "*.png"),
    ("harness.drift", [*DR, "--num-classes", "1000000000", "--list"], {}, 2, "--num-classes"),
    ("harness.drift", ["--merge", "{in}/adir", "--out", "{tmp}/m.json"], {}, 2, "holds no *.shard"),
    ("harness.drift", ["--merge", "{in}/list.json", "--out", "{tmp}/m.json"], {}, 2, "not a harness.drift result"),
    # parity
    ("harness.parity", ["--atol", "nan"], {}, 2, "--atol"),
    ("harness.parity", ["--atol", "inf"], {}, 2, "--atol"),
    ("harness.parity", ["--rtol", "nan"], {}, 2, "--rtol"),
    ("harness.parity", ["--atol", "-1"], {}, 2, "--atol"),
    ("harness.parity", ["--input-shape", "1,3,100000,224,224"], {}, 2, "limit"),
    ("harness.parity", ["--json", "{in}/list.json/dir/x.json"], {}, 2, "is a file, not a folder"),
    ("harness.parity", ["--frameworks", "torch", "--reference", "mmaction2", "--checkpoint", "{in}/adir"], {}, 2,
     "adir"),
    # convert
    ("harness.convert", ["{in}/nan.npz", "{in}/adir", "--to", "npz"], {}, 2, "is a folder, not a file"),
    ("harness.convert", ["{in}/nan.npz", "{in}/list.json/x.ckpt"], {}, 2, "is a file, not a folder"),
    # checkpoints
    ("harness.checkpoints", ["fetch", "evil"], {"NLPARITY_REGISTRY": "{in}/registry.toml"}, 2, "plain file name"),
    ("harness.checkpoints", ["fetch", "i3d_r50_mmaction2"], {"NLPARITY_CACHE": "{in}/list.json/cache"}, 2,
     "cannot download"),
    ("harness.checkpoints", ["list"], {"NLPARITY_REGISTRY": "{in}/list.json"}, 2, "registry"),
    ("harness.checkpoints", ["verify"], {}, 2, "path"),
    ("harness.checkpoints", ["bogus"], {}, 2, "invalid choice"),
    # report
    ("harness.report", ["--results", "{in}", "--out", "{in}/list.json/r.md"], {}, 2, "is a file, not a folder"),
    ("harness.report", ["--results", "{tmp}/none"], {}, 2, "no results folder"),
    ("harness.report", ["--format", "pdf"], {}, 2, "--format"),
    # device_check (refused before it looks for a GPU)
    ("harness.device_check", ["--frames", "100000"], {}, 2, "limit"),
    ("harness.device_check", ["--frames", "-1"], {}, 2, "--frames"),
    ("harness.device_check", ["--out", "{in}/list.json/x.json"], {}, 2, "is a file, not a folder"),
    # make_dataset
    ("harness.data.synthetic", ["{tmp}/ds", "--size", "100000x100000"], {}, 2, "--size"),
    ("harness.data.synthetic", ["{tmp}/ds", "--seconds", "inf"], {}, 2, "--seconds"),
    ("harness.data.synthetic", ["{tmp}/ds", "--classes", "0"], {}, 2, "--classes"),
    ("harness.data.synthetic", ["{tmp}/ds", "--size", "4096x4096", "--seconds", "600"], {}, 2, "GiB"),
    ("harness.data.synthetic", ["{in}/list.json"], {}, 2, "is a file, not a folder"),
    ("harness.data.synthetic", ["{tmp}/ds", "--json", "{in}/adir"], {}, 2, "is a folder, not a file"),
    ("harness.data.synthetic", ["{tmp}/ds", "--json", "{tmp}/ds/kinetics-400_val.csv"], {}, 2, "dataset itself"),
    # bench data: sizes refused by the parser, before any allocation
    ("harness.bench", ["data", "--size", "100000x100000"], {}, 2, "--size"),
    ("harness.bench", ["data", "--size", "0"], {}, 2, "--size"),
    ("harness.bench", ["data", "--size", "4096x4096", "--seconds", "600"], {}, 2, "GiB"),
    ("harness.bench", ["data", "--seconds", "100000"], {}, 2, "--seconds"),
    ("harness.bench", ["data", "--video", "{in}/adir"], {}, 2, "is a folder, not a file"),
    ("harness.bench", ["data", "--video", "{in}/list.json"], {}, 2, "cannot use video"),
    ("harness.bench", ["data", "--json", "{in}/adir"], {}, 2, "is a folder, not a file"),
    # bench
    ("harness.bench", ["forward", "--json", "{in}/list.json/x.json"], {}, 2, "is a file, not a folder"),
    ("harness.bench", ["forward", "--frameworks", "tf"], {}, 2, "unknown framework"),
    ("harness.bench", ["--frameworks", "torch"], {}, 2, "bench takes a subcommand first"),   # the form before them
    ("harness.bench", ["forward", "--no-such-flag"], {}, 2, "error:"),
    ("harness.bench", ["data", "--no-such-flag"], {}, 2, "error:"),
    # demo
    ("harness.demo", ["--frameworks", "bogus"], {}, 2, "unknown framework"),
]
# every command answers an unknown flag the same way
COMMANDS = ["harness.evaluate", "harness.parity", "harness.convert", "harness.checkpoints", "harness.report",
            "harness.device_check", "harness.data.synthetic", "harness.bench", "harness.demo",
            "harness.train", "harness.infer", "harness.drift"]
CASES += [(cmd, ["--no-such-flag"], {}, 2, "error:") for cmd in COMMANDS]


@pytest.mark.parametrize("module,argv,env,code,needle", CASES,
                         ids=[f"{c[0].split('.')[-1]}:{' '.join(c[1])[:60]}:{','.join(c[2])}" for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(module, argv, env, code, needle, files, tmp_path):
    fill = lambda text: text.replace("{in}", str(files)).replace("{tmp}", str(tmp_path))  # noqa: E731
    before_in, before_tmp = _tree(files), _tree(tmp_path)
    proc = run_cli(module, *[fill(a) for a in argv], env={k: fill(v) for k, v in env.items()}, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "[Errno" not in lines[0], lines[0]
    assert fill(needle) in lines[0], lines[0]
    # a name from a file never reaches the terminal raw: no control character at all
    assert not [c for c in proc.stderr + proc.stdout if unicodedata.category(c) == "Cc" and c != "\n"], proc.stderr
    if module == "harness.drift":   # refused before its plan is printed
        assert "distinct runs" not in proc.stdout and "differences (" not in proc.stdout, proc.stdout
    assert _tree(files) == before_in, "a refused run changed its inputs"
    assert _tree(tmp_path) == before_tmp, "a refused run left files or folders behind"


# ------------------------------------------------------------------ the same code, in process
def test_unreadable_checkpoint_is_a_checkpoint_error(tmp_path, monkeypatch):
    """chmod 000 cannot stop root, so the OS refusal is simulated where the file is opened."""
    from harness.checkpoints import io as ckpt_io
    from harness.checkpoints import formats as ckpt_formats

    path = tmp_path / "w.npz"
    write_npz(str(path), {"a": np.zeros(2, np.float32)})
    real_open = open

    def refusing_open(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(ckpt_io.CheckpointError, match="Permission denied"):
        ckpt_formats.read_raw(str(path))
    with pytest.raises(ckpt_io.CheckpointError, match="Permission denied"):
        ckpt_io.sha256_file(str(path))


def test_a_scores_folder_that_turns_read_only_stops_the_run_in_one_line(tmp_path, monkeypatch):
    from harness.errors import InputError
    from harness.scores import Chunk, ScoreStore

    store = ScoreStore(str(tmp_path / "run.json"))
    store.lock()
    store.begin({"framework": "torch"}, resume=False, num_classes=3)
    chunk = Chunk([0], ["v"], [1], [np.ones(3, np.float32)])
    store.write(chunk, 3)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(InputError, match="permission denied.*--resume"):
        store.write(chunk, 3)
    monkeypatch.undo()
    assert sorted(os.listdir(store.dir)) == [".lock", "chunk-000000.npz", "run.json"]  # no temp file left


def test_a_second_writer_of_one_scores_folder_is_refused(tmp_path, files):
    from harness.scores import ScoreStore

    out = tmp_path / "r.json"
    holder = ScoreStore(str(out))
    holder.lock()
    proc = run_cli("harness.evaluate", "--framework", "torch", "--data-root", files / "one_k400",
                   "--out", out)
    assert proc.returncode == 2 and f"pid {os.getpid()}" in proc.stderr and "another run" in proc.stderr
    holder.unlock()


def test_damaged_run_files_are_refused_on_resume_before_any_work(tmp_path, files):
    out = tmp_path / "r.json"
    scores = tmp_path / "r.scores"
    scores.mkdir()
    (scores / "run.json").write_text("{not json")
    proc = run_cli("harness.evaluate", "--framework", "torch", "--data-root", files / "one_k400",
                   "--out", out, "--resume")
    assert proc.returncode == 2 and "damaged" in proc.stderr and "Traceback" not in proc.stderr
    (scores / "run.json").write_text("{}")
    (scores / "chunk-000000.npz").write_bytes(b"PK\x03\x04 not really a zip")
    proc = run_cli("harness.evaluate", "--framework", "torch", "--data-root", files / "one_k400",
                   "--out", out, "--resume")
    assert proc.returncode == 2 and "chunk-000000.npz is damaged" in proc.stderr


def test_summaries_are_strict_json_without_scores_and_without_labels(tmp_path):
    """No scored video: null, not a bare NaN; an unlabelled split: no accuracy, not 0%."""
    from harness.scores import Chunk, ScoreStore, summarize

    store = ScoreStore(str(tmp_path / "empty.json"))
    store.lock()
    store.begin({"framework": "torch", "num_classes": 3}, resume=False, num_classes=3)
    doc = summarize(store.dir, {"num_classes": 3}, index_faults=[])
    text = json.dumps(doc, allow_nan=False)  # raises on NaN
    assert doc["top1"] is None and doc["n_videos"] == 0 and "no video" in doc["accuracy_note"]
    assert "NaN" not in text

    store = ScoreStore(str(tmp_path / "unlabelled.json"))
    store.lock()
    store.begin({"num_classes": 3}, resume=False, num_classes=3)
    store.write(Chunk([0, 1], ["a", "b"], [-1, -1], [np.array([1, 0, 0], np.float32)] * 2), 3)
    doc = summarize(store.dir, {"num_classes": 3}, index_faults=[])
    assert doc["top1"] is None and doc["accuracy_note"] == "the split has no labels"


def test_a_run_whose_scores_count_is_a_multiple_of_the_chunk_size_finishes(tmp_path):
    """The final chunk of such a run holds no video (only, perhaps, faults): it was written
    with an unshapeable (0, -1) score array and the run crashed at its very end."""
    from harness.scores import Chunk, read_scores, write_chunk

    write_chunk(str(tmp_path), 0, Chunk([0, 1], ["a", "b"], [0, 1], [np.eye(3, dtype=np.float32)[0]] * 2), 3)
    write_chunk(str(tmp_path), 1, Chunk(faults=[{"id": "c", "kind": "truncated", "position": 2}]), 3)
    saved = read_scores(str(tmp_path))
    assert saved.scores.shape == (2, 3) and saved.covered == {0, 1, 2}


def test_csv_rows_with_an_infinite_time_or_a_huge_field_are_bad_rows(tmp_path):
    from harness.data import read_kinetics_csv

    (tmp_path / "val").mkdir()
    (tmp_path / "kinetics-400_val.csv").write_text(
        CSV_HEADER + "abseiling,aaaaaaaaaaa,inf,10,val\n" + "abseiling,bbbbbbbbbbb,1," + "9" * 200_000 + ",val\n"
        + "abseiling,ccccccccccc,0,10,val\n")
    index = read_kinetics_csv(tmp_path, "val")
    kinds = [(f.video_id, f.kind) for f in index.faults.faults]
    assert kinds[:2] == [("kinetics-400_val.csv:2", "bad_row"), ("kinetics-400_val.csv:3", "bad_row")]
    assert kinds[2] == ("ccccccccccc_000000_000010", "missing_file")  # the row after them still counts


def test_list_files_give_videos_of_one_name_in_two_folders_two_ids(tmp_path):
    from harness.data import read_list_file

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.mp4").write_bytes(b"x")
    (tmp_path / "list.txt").write_text("a/same.mp4 0\nb/same.mp4 1\n")
    index = read_list_file(tmp_path / "list.txt")
    assert [r.video_id for r in index.records] == ["a/same", "b/same"]


def test_an_audio_only_mp4_is_not_a_video_and_decoder_noise_stays_off_the_terminal(tmp_path, capfd):
    av = pytest.importorskip("av")
    from frameworks.spec.data_presets import get_data_preset
    from harness.data.loader import process_video

    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)  # an MP4 header, nothing after it
    preset = get_data_preset("mmaction2_val")
    capfd.readouterr()
    for decoder in ("decord", "pyav"):
        status, kind, reason, *_ = process_video(str(path), "a", preset, decoder)
        assert (status, kind) == ("fault", "not_a_video"), (decoder, reason)
        status, kind, reason, *_ = process_video(str(garbage), "g", preset, decoder)
        assert (status, kind) == ("fault", "truncated"), (decoder, reason)
    out, err = capfd.readouterr()
    assert out == "" and err == "", err  # FFmpeg's and decord's complaints went into the fault records
