"""Nothing lost, nothing false, no input harmed: the data path and the evaluate / drift /
make_dataset commands under hostile or broken conditions.

* nothing outside ``--data-root`` is read (``..`` in an id, an absolute list path, a link);
* a name from a file never reaches the terminal raw;
* "no accuracy" is a failed run (2: nothing to run; 1: ran and scored nothing);
* a write past ``ulimit -f`` leaves no partial file and says so in one line;
* a killed run's temporaries are gone at the next start; a refused resume is one line.

Test-sized throughout: 64x48 videos of one second, 8-frame clips at 64 px, all-zero weights
(every score finite, the same for every video: these tests are about files and lines, not
accuracy)."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from harness.data.index import DatasetError, read_kinetics_csv, read_list_file
from tests.conftest import ROOT, run_cli

HEADER = "label,youtube_id,time_start,time_end,split\n"
SMALL = ["--data-override", "clip_len=8", "--data-override", "short_edge=64", "--data-override", "crop_size=64"]
EV = ["--framework", "torch", "--workers", "0", "--threads", "1", "-q", *SMALL]


def lines_of(text: str):
    return [ln for ln in text.splitlines() if ln.strip()]


def controls(text: str):
    return [c for c in text if unicodedata.category(c) == "Cc" and c != "\n"]


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def run_limited(module, *args, kib=64, env=None, timeout=600):
    """``python -m module args`` with a file-size limit of ``kib`` KiB (``ulimit -f``)."""
    limit = kib * 1024
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          env={**os.environ, **(env or {})},
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))


# ----------------------------------------------------------------------------- the root
def _touch(path, data=b"\x00some bytes\x00"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_an_id_that_climbs_out_of_the_root_is_refused_before_the_file_system_is_asked(tmp_path):
    root = tmp_path / "k400"
    (root / "val").mkdir(parents=True)
    (root / "kinetics-400_val.csv").write_text(HEADER + "abseiling,../../outside/x,0,10,val\n")
    index = read_kinetics_csv(root, "val")
    # no file there: still outside_root, not missing_file (nothing was looked up outside the root)
    assert [(f.kind, f.video_id) for f in index.faults.faults] == [("outside_root", "../../outside/x_000000_000010")]
    assert "--allow-outside-root" in index.faults.faults[0].reason and not index.records
    _touch(tmp_path / "outside" / "x_000000_000010.mp4")
    index = read_kinetics_csv(root, "val")
    assert [f.kind for f in index.faults.faults] == ["outside_root"] and not index.records
    with pytest.raises(DatasetError, match="outside_root=1.*--allow-outside-root"):
        index.require_videos()
    allowed = read_kinetics_csv(root, "val", allow_outside_root=True)   # the explicit opt-in reads it
    assert [os.path.realpath(r.path) for r in allowed.records] == [
        os.path.realpath(tmp_path / "outside" / "x_000000_000010.mp4")]


def test_a_symbolic_link_out_of_the_root_is_refused_and_a_linked_root_is_not(tmp_path):
    outside = tmp_path / "elsewhere"
    _touch(outside / "secret_000000_000010.mp4")
    root = tmp_path / "k400"
    _touch(root / "val" / "inside00000_000000_000010.mp4")
    os.symlink(outside / "secret_000000_000010.mp4", root / "val" / "linked00000_000000_000010.mp4")
    os.symlink(root / "val" / "inside00000_000000_000010.mp4", root / "val" / "alias000000_000000_000010.mp4")
    (root / "kinetics-400_val.csv").write_text(
        HEADER + "abseiling,inside00000,0,10,val\nabseiling,linked00000,0,10,val\nabseiling,alias000000,0,10,val\n")
    index = read_kinetics_csv(root, "val")
    assert [r.video_id for r in index.records] == ["inside00000_000000_000010", "alias000000_000000_000010"]
    assert [(f.kind, f.video_id) for f in index.faults.faults] == [("outside_root", "linked00000_000000_000010")]
    assert str(outside) in index.faults.faults[0].reason and "symbolic link" in index.faults.faults[0].reason
    assert len(read_kinetics_csv(root, "val", allow_outside_root=True).records) == 3
    # the root given through a link of its own is the same root
    os.symlink(root, tmp_path / "k400_link")
    assert len(read_kinetics_csv(tmp_path / "k400_link", "val").records) == 2
    # a split folder that is a link to another disk: refused video by video, with the way out named
    other = tmp_path / "k400b"
    (other).mkdir()
    os.symlink(root / "val", other / "val")
    (other / "kinetics-400_val.csv").write_text(HEADER + "abseiling,inside00000,0,10,val\n")
    with pytest.raises(DatasetError, match="outside_root=1.*--allow-outside-root"):
        read_kinetics_csv(other, "val").require_videos()


def test_list_file_paths_that_leave_the_prefix_are_refused(tmp_path):
    _touch(tmp_path / "prefix" / "a" / "ok.mp4")
    _touch(tmp_path / "out.mp4")
    ann = tmp_path / "prefix" / "list.txt"
    ann.write_text(f"a/ok.mp4 0\n../out.mp4 1\n{tmp_path / 'out.mp4'} 2\na/../a/ok.mp4 3\n")
    index = read_list_file(ann, tmp_path / "prefix")
    assert [r.video_id for r in index.records] == ["a/ok", "a/../a/ok"]
    assert [f.kind for f in index.faults.faults] == ["outside_root", "outside_root"]
    assert len(read_list_file(ann, tmp_path / "prefix", allow_outside_root=True).records) == 4


# ----------------------------------------------------------------------------- names from files
def test_names_from_the_annotation_file_are_escaped_in_reasons_and_errors(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "kinetics-400_val.csv").write_text(HEADER + '"\x1b[2J\x1b]0;title\x07",aaaaaaaaaaa,0,10,val\n'
                                                   + "abseiling,bbbb\x1b[31m,x,10,val\n")
    index = read_kinetics_csv(tmp_path, "val")
    assert [f.kind for f in index.faults.faults] == ["unknown_label", "bad_row"]
    for fault in index.faults.faults:
        assert not controls(fault.reason), fault.reason
    assert "\\x1b[2J" in index.faults.faults[0].reason
    with pytest.raises(DatasetError) as err:
        index.require_videos()
    assert not controls(str(err.value)) and "\\x1b[2J" in str(err.value)
    (tmp_path / "kinetics-400_val.csv").write_text("label,\x1b[2Jyoutube_id\n")
    with pytest.raises(DatasetError) as err:
        read_kinetics_csv(tmp_path, "val")
    assert "lacks columns" in str(err.value) and not controls(str(err.value))


def test_an_index_with_nothing_to_run_says_why(tmp_path):
    (tmp_path / "kinetics-400_val.csv").write_text(HEADER)
    with pytest.raises(DatasetError, match="lists no video"):
        read_kinetics_csv(tmp_path, "val").require_videos()
    (tmp_path / "kinetics-400_val.csv").write_text(HEADER + "no such class,aaaaaaaaaaa,0,10,val\n"
                                                   "abseiling,bbbbbbbbbbb,0,10,val\n")
    with pytest.raises(DatasetError, match=r"2 rows listed, all refused \(missing_file=1, unknown_label=1; "
                                           r"first: aaaaaaaaaaa_000000_000010: label 'no such class'"):
        read_kinetics_csv(tmp_path, "val").require_videos()


# ----------------------------------------------------------------------------- make_dataset
MAKE = ["--classes", "2", "--videos-per-class", "1", "--val-videos-per-class", "1", "--seconds", "3",
        "--size", "340x256", "--no-progress"]


def test_make_dataset_past_the_file_size_limit_leaves_nothing_and_says_so_in_one_line(tmp_path):
    fresh = tmp_path / "fresh"
    proc = run_limited("harness.data.synthetic", fresh, *MAKE, kib=64)
    assert proc.returncode == 2, proc.stderr
    assert lines_of(proc.stderr) == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "file too large (the file-size limit, ulimit -f)" in proc.stderr and ".mp4" in proc.stderr
    assert not fresh.exists()   # not a truncated video, not an empty folder
    kept = tmp_path / "kept"
    _touch(kept / "mine.txt", b"the user's own file")
    proc = run_limited("harness.data.synthetic", kept, *MAKE, kib=64)
    assert proc.returncode == 2 and files_under(kept) == ["mine.txt"]
    assert (kept / "mine.txt").read_bytes() == b"the user's own file"
    # the same command without the limit makes the dataset: the limit was the only problem
    proc = run_cli("harness.data.synthetic", fresh, *MAKE, "--json", tmp_path / "new" / "folder" / "made.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "new" / "folder" / "made.json").read_text())["videos"] == {"train": 2, "val": 2}
    assert not [f for f in files_under(fresh) if f.endswith(".tmp") or "/." in f]


def test_make_dataset_that_fails_midway_removes_what_it_made(tmp_path, monkeypatch):
    from harness.data import synthetic

    real, calls = synthetic.write_video, []

    def failing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(synthetic, "write_video", failing)
    _touch(tmp_path / "ds" / "train" / "old.mp4", b"an older file")
    with pytest.raises(OSError):
        synthetic.make_dataset(tmp_path / "ds", classes=2, videos_per_class=1, seconds=1, size=(64, 48))
    assert files_under(tmp_path / "ds") == ["train/old.mp4"] and not (tmp_path / "ds" / "val").exists()


def test_make_dataset_terminated_midway_removes_what_it_made_and_says_so(tmp_path):
    """``kill`` (SIGTERM) and ``timeout`` end a command as Ctrl-C does: its temporaries and
    the folders it made are removed, one line says it, exit 143 (was: Python's default, no
    cleanup, half a dataset left)."""
    import time

    root = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-m", "harness.data.synthetic", str(root), "--classes", "4",
                             "--videos-per-class", "40", "--seconds", "3", "--size", "340x256", "--no-progress"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(files_under(root) if root.exists() else []) < 3:
        time.sleep(0.05)
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip() == "error: terminated"
    assert not root.exists()


# ----------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from harness.checkpoints.io import write_npz
    from harness.data.synthetic import make_dataset
    from tests.test_bad_input import _weights

    root = tmp_path_factory.mktemp("safety")
    make_dataset(root / "ds", classes=2, videos_per_class=1, val_videos_per_class=2, seconds=1, size=(64, 48))
    write_npz(str(root / "zeros.npz"), _weights())
    return root


def _copy_dataset(data, dest, extra_rows=(), garbage=0):
    import shutil

    shutil.copytree(data / "ds", dest)
    with open(dest / "kinetics-400_val.csv", "a") as f:
        for row in extra_rows:
            f.write(row)
        for i in range(garbage):
            f.write(f"abseiling,g{i:010d},0,10,val\n")
            (dest / "val" / f"g{i:010d}_000000_000010.mp4").write_bytes(b"not a video")
    return dest


def test_a_summary_past_the_file_size_limit_is_not_written_and_resume_finishes_it(data, tmp_path):
    ds = _copy_dataset(data, tmp_path / "many", [f"abseiling,m{i:010d},0,10,val\n" for i in range(1500)])
    out = tmp_path / "run" / "r.json"
    proc = run_limited("harness.evaluate", *EV, "--data-root", ds, "--checkpoint", data / "zeros.npz",
                       "--out", out, kib=64)
    assert proc.returncode == 2, proc.stderr
    assert lines_of(proc.stderr) == [f"error: cannot write {out}: file too large (the file-size limit, ulimit -f); "
                                     f"the scores saved so far are kept in {tmp_path / 'run' / 'r.scores'}: "
                                     "run again with --resume"]
    assert not out.exists()
    assert files_under(tmp_path / "run") == ["r.scores/.lock", "r.scores/chunk-000000.npz", "r.scores/run.json"]
    proc = run_cli("harness.evaluate", *EV, "--data-root", ds, "--checkpoint", data / "zeros.npz", "--out", out,
                   "--resume")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert summary["n_videos"] == 4 and summary["faults"]["counts"] == {"missing_file": 1500}


def test_a_score_chunk_past_the_file_size_limit_leaves_nothing(data, tmp_path):
    ds = _copy_dataset(data, tmp_path / "garbage", garbage=300)   # 300 fault records: a chunk over 64 KiB
    out = tmp_path / "run" / "r.json"
    proc = run_limited("harness.evaluate", *EV, "--data-root", ds, "--checkpoint", data / "zeros.npz",
                       "--out", out, kib=64)
    assert proc.returncode == 2, proc.stderr
    assert lines_of(proc.stderr) == [f"error: cannot write scores to {tmp_path / 'run' / 'r.scores'}: file too large "
                                     "(the file-size limit, ulimit -f); no video's scores were saved"]
    assert not (tmp_path / "run").exists()


def test_seeded_weights_past_the_file_size_limit_leave_nothing(data, tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "run" / "r.json"
    for kib in (64, 4096):   # the calibration clip, then the weights file itself
        proc = run_limited("harness.evaluate", *EV, "--data-root", data / "ds", "--out", out, kib=kib,
                           env={"NLPARITY_CACHE": str(cache), "TMPDIR": str(tmp_path)})
        assert proc.returncode == 2, proc.stderr
        assert len(lines_of(proc.stderr)) == 1 and "file too large (the file-size limit, ulimit -f)" in proc.stderr
        assert "[Errno" not in proc.stderr and ".tmp" not in proc.stderr
        assert not (tmp_path / "run").exists() and files_under(cache) == []
    assert "seeded weights" in proc.stderr


def test_no_video_scored_is_exit_1_with_the_faults_named(data, tmp_path):
    ds = tmp_path / "undecodable"
    (ds / "val").mkdir(parents=True)
    (ds / "kinetics-400_val.csv").write_text(HEADER + "abseiling,aaaaaaaaaaa,0,10,val\nabseiling,bbbbbbbbbbb,0,10,val\n")
    for vid in ("aaaaaaaaaaa", "bbbbbbbbbbb"):
        (ds / "val" / f"{vid}_000000_000010.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "r.json"
    proc = run_cli("harness.evaluate", *EV, "--data-root", ds, "--checkpoint", data / "zeros.npz", "--out", out)
    assert proc.returncode == 1, proc.stderr
    [line] = lines_of(proc.stderr)
    assert line.startswith("error: no video was scored: every one of the 2 listed videos failed (not_a_video 2; "
                           "first: aaaaaaaaaaa_000000_000010") and line.endswith(f"summary {out}")
    summary = json.loads(out.read_text())
    assert summary["n_videos"] == 0 and summary["top1"] is None and summary["faults"]["counts"] == {"not_a_video": 2}
    # a shard that got no video (1 of 2 on a one-video index) is not a failure: the merge judges
    one = tmp_path / "one"
    (one / "val").mkdir(parents=True)
    (one / "kinetics-400_val.csv").write_text(HEADER + "abseiling,aaaaaaaaaaa,0,10,val\n")
    os.link(ds / "val" / "aaaaaaaaaaa_000000_000010.mp4", one / "val" / "aaaaaaaaaaa_000000_000010.mp4")
    proc = run_cli("harness.evaluate", *EV, "--data-root", one, "--checkpoint", data / "zeros.npz", "--out",
                   tmp_path / "s.json", "--shard", "1/2")
    assert proc.returncode == 0 and "note: this shard scored no video" in proc.stdout, proc.stderr
    proc = run_cli("harness.evaluate", *EV, "--data-root", one, "--checkpoint", data / "zeros.npz", "--out",
                   tmp_path / "s.json", "--shard", "0/2")
    assert proc.returncode == 0, proc.stderr   # its video fails: a shard still exits 0 ...
    merged = run_cli("harness.evaluate", "--merge", tmp_path / "s.shard0of2.json", tmp_path / "s.shard1of2.json",
                     "--out", tmp_path / "m.json")
    assert merged.returncode == 1 and lines_of(merged.stderr)[0].startswith("error: no video was scored")  # ... the run fails


def test_a_resume_that_does_not_match_is_one_line_on_stderr(data, tmp_path):
    out = tmp_path / "r.json"
    first = run_cli("harness.evaluate", *EV, "--data-root", data / "ds", "--checkpoint", data / "zeros.npz",
                    "--out", out, "--limit", "1")
    assert first.returncode == 0, first.stderr
    for extra, needle in ((["--decoder", "pyav"], "decoder ('decord' -> 'pyav')"), ([], "pass --resume")):
        proc = run_cli("harness.evaluate", *EV, "--data-root", data / "ds", "--checkpoint", data / "zeros.npz",
                       "--out", out, "--limit", "1", *(["--resume"] if extra else []), *extra)
        assert proc.returncode == 2 and len(lines_of(proc.stderr)) == 1 and needle in proc.stderr, proc.stderr


def test_a_killed_runs_temporaries_are_removed_when_the_next_process_takes_the_lock(tmp_path):
    from harness.scores import Chunk, ScoreStore

    store = ScoreStore(str(tmp_path / "r.json"))
    store.lock()
    store.begin({"framework": "torch"}, resume=False, num_classes=3)
    store.write(Chunk([0], ["v"], [1], [np.ones(3, np.float32)]), 3)
    store.unlock()
    stale = [tmp_path / "r.scores" / ".chunk-000001.npz.k1ll3d.npz.tmp", tmp_path / "r.scores" / ".run.json.abc.tmp",
             tmp_path / ".r.json.xyz.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (tmp_path / ".other.json.q.tmp").write_bytes(b"another run's")
    again = ScoreStore(str(tmp_path / "r.json"))
    again.lock()
    assert not [p for p in stale if p.exists()] and (tmp_path / ".other.json.q.tmp").exists()
    assert sorted(os.listdir(tmp_path / "r.scores")) == [".lock", "chunk-000000.npz", "run.json"]
    again.unlock()


def test_compare_prints_ids_and_classes_escaped_and_makes_the_json_folder(tmp_path, capsys):
    from harness.evaluate import main
    from harness.scores import Chunk, ScoreStore, summarize

    paths = []
    for name, top in (("a", 0), ("b", 1)):
        store = ScoreStore(str(tmp_path / f"{name}.json"))
        store.lock()
        identity = {"framework": name, "num_classes": 3}
        store.begin(identity, resume=False, num_classes=3)
        store.write(Chunk([0], ["\x1b[2Jvideo\x07"], [0], [np.eye(3, dtype=np.float32)[top]]), 3)
        store.unlock()
        doc = summarize(store.dir, identity, index_faults=[])
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
        paths.append(tmp_path / f"{name}.json")
    out = tmp_path / "new" / "agreement.json"
    assert main(["--compare", str(paths[0]), str(paths[1]), "--json", str(out)]) == 0
    said = capsys.readouterr()
    assert "\\x1b[2Jvideo\\x07" in said.out and not controls(said.out + said.err)
    assert json.loads(out.read_text())["n_top1_differ"] == 1


# ----------------------------------------------------------------------------- drift
DRIFT = ["--from", "mmaction2_val", "--to", "mmaction2_val", "--to-override", "std=[58.395, 57.12, 65.025]",
         "--workers", "0", "--threads", "1", "-q", *SMALL]


def test_drift_removes_a_killed_sessions_temporaries_and_makes_its_output_folders(data, tmp_path):
    out = tmp_path / "new" / "drift.json"
    plot = tmp_path / "plots" / "w.png"
    args = [*DRIFT, "--checkpoint", data / "zeros.npz", "--data-root", data / "ds", "--limit", "2", "--out", out,
            "--plot", plot]
    proc = run_cli("harness.drift", *args)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and plot.read_bytes()[:4] == b"\x89PNG"
    steps = tmp_path / "new" / "drift.steps"
    # what a SIGKILL in the middle of a write leaves: a temporary beside each kind of file
    stale = [steps / "00-FROM-mmaction2_val.scores" / ".chunk-000001.npz.dead.npz.tmp",
             steps / ".00-FROM-mmaction2_val.json.dead.tmp", tmp_path / "new" / ".drift.json.dead.tmp",
             tmp_path / "plots" / ".w.png.dead.png.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    resumed = run_cli("harness.drift", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not [p for p in stale if p.exists()]
    assert not [f for f in files_under(tmp_path) if f.endswith(".tmp")]
    # a resume that does not match: one line, before the plan is printed, nothing changed
    def contents():   # every file but the locks (which hold the pid of their last holder)
        return {f: (tmp_path / f).read_bytes() for f in files_under(tmp_path) if not f.endswith(".lock")}

    before = contents()
    proc = run_cli("harness.drift", *args, "--resume", "--data-override", "crop_size=32")
    assert proc.returncode == 2 and len(lines_of(proc.stderr)) == 1 and "--resume: the saved run differs" in proc.stderr
    assert "distinct runs" not in proc.stdout
    assert contents() == before


def test_drift_whose_from_scores_nothing_is_exit_1(data, tmp_path):
    ds = tmp_path / "undecodable"
    (ds / "val").mkdir(parents=True)
    (ds / "kinetics-400_val.csv").write_text(HEADER + "abseiling,aaaaaaaaaaa,0,10,val\n")
    (ds / "val" / "aaaaaaaaaaa_000000_000010.mp4").write_bytes(b"not a video at all")
    proc = run_cli("harness.drift", *DRIFT, "--checkpoint", data / "zeros.npz", "--data-root", ds, "--no-plot",
                   "--out", tmp_path / "d.json")
    assert proc.returncode == 1, proc.stderr
    [line] = lines_of(proc.stderr)
    assert line.startswith("error: no video was scored on FROM") and "not_a_video" in line
