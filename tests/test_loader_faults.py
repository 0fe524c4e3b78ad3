"""The loader over a made dataset with one of each planted fault: every count asserted,
order deterministic whatever the number of workers, crashes and hangs survived.

Workers are spawned, never forked, also here: forking a process that has imported torch
and mmaction2 (as other test modules do) deadlocks the child."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from frameworks.spec.data_presets import get_data_preset
from harness.data import loader as loader_mod
from harness.data.index import read_kinetics_csv
from harness.data.loader import ClipLoader, LoaderStartupError, process_video
from harness.data.synthetic import make_dataset

PLANTED = ("missing_file", "empty_file", "truncated", "not_a_video", "short_video", "unknown_label", "bad_row")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    # 3 classes x 2 val videos of 75 frames (>= 63, one 32x2 clip without looping), 64x48
    summary = make_dataset(root, classes=3, videos_per_class=1, val_videos_per_class=2, seconds=2.5,
                           size=(64, 48), seed=3, faults=True)
    return root, summary


@pytest.fixture(scope="module")
def preset():
    return get_data_preset("mmaction2_val").replace(crop_size=32, short_edge=48)  # small, same code path


def _run(root, preset, **kw):
    loader = ClipLoader(read_kinetics_csv(root, "val"), preset, **kw)
    items = list(loader)
    return loader, items


def _good_ids(summary_root):
    import csv

    with open(summary_root / "kinetics-400_val.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if not r["youtube_id"].startswith("fault")]
    return [f"{r['youtube_id']}_{int(r['time_start']):06d}_{int(r['time_end']):06d}" for r in rows]


def test_every_planted_fault_is_counted(dataset, preset):
    root, summary = dataset
    assert set(summary.faults) == set(PLANTED)
    loader, items = _run(root, preset, workers=0)
    counts = loader.faults.counts()
    for kind in PLANTED:
        assert counts[kind] == 1, (kind, counts)
    assert sum(counts.values()) == len(PLANTED)  # nothing else went wrong
    for kind in PLANTED:
        if kind != "bad_row":  # a bad row has no video id, only its line
            assert loader.faults.ids(kind) == summary.faults[kind]
    assert loader.faults.ids("bad_row") == ["kinetics-400_val.csv:14"]
    # the short video is used (its clips loop, as mmaction2 loops them); the rest are skipped
    short_id = summary.faults["short_video"][0]
    assert [it.video_id for it in items] == _good_ids(root) + [short_id]
    assert [it.short for it in items] == [False] * 6 + [True]
    assert [it.label for it in items] == [0, 0, 1, 1, 2, 2, 0]
    report = loader.summary()
    assert report["n_videos"] == 7 and report["n_skipped"] == 6 and report["counts"]["short_video"] == 1
    assert {f["id"] for f in report["faults"] if not f["skipped"]} == {short_id}


def test_two_spawned_workers_give_identical_output(dataset, preset):
    root, _ = dataset
    serial, a = _run(root, preset, workers=0)
    parallel, b = _run(root, preset, workers=2, prefetch=3)
    assert [x.video_id for x in a] == [y.video_id for y in b]
    for x, y in zip(a, b):
        assert x.clips.shape == (1, 3, 32, 32, 32) and x.clips.dtype == np.float32
        np.testing.assert_array_equal(x.clips, y.clips)
    assert parallel.faults.counts() == serial.faults.counts()
    assert parallel.stats["restarts"] == 0


def test_short_policy_skip(dataset, preset):
    root, summary = dataset
    loader, items = _run(root, preset, short_policy="skip")
    assert summary.faults["short_video"][0] not in [it.video_id for it in items] and len(items) == 6
    (fault,) = [f for f in loader.faults.faults if f.kind == "short_video"]
    assert fault.skipped and "short_policy=skip" in fault.reason


def test_batches_and_uint8_views(dataset, preset):
    root, _ = dataset
    loader = ClipLoader(read_kinetics_csv(root, "val"), preset)
    batches = list(loader.batches(3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert batches[0].clips.shape == (3, 1, 3, 32, 32, 32) and batches[0].flat().shape == (3, 3, 32, 32, 32)
    assert batches[0].labels.tolist() == [0, 0, 1] and batches[0].labels.dtype == np.int64
    raw = next(iter(ClipLoader(read_kinetics_csv(root, "val"), preset, normalize=False)))
    assert raw.clips.dtype == np.uint8 and raw.clips.shape == (1, 32, 32, 32, 3)
    np.testing.assert_array_equal(preset.normalize(raw.clips), batches[0].clips[0])


# --- failure injection: spawned workers import these module-level process_fn hooks ------
VICTIM = "NLPARITY_TEST_VICTIM"


def crash_on_victim(path, video_id, preset, decoder, threads=1):
    if video_id == os.environ.get(VICTIM):
        os._exit(3)  # as a decoder segfault would end the worker
    return process_video(path, video_id, preset, decoder, threads)


def hang_on_victim(path, video_id, preset, decoder, threads=1):
    if video_id == os.environ.get(VICTIM):
        time.sleep(60)
    return process_video(path, video_id, preset, decoder, threads)


def slow_on_victim(path, video_id, preset, decoder, threads=1):
    if video_id == os.environ.get(VICTIM):
        time.sleep(0.5)
    return process_video(path, video_id, preset, decoder, threads)


class KillsWhenPickled:
    """Pickling this SIGKILLs the process: a worker killed (the OOM killer, say) while it sends
    its result, the moment its memory peaks (a 10x3 test video is ~180 MB of uint8 views)."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # pragma: no cover - the signal ends the process first


def killed_while_sending(path, video_id, preset, decoder, threads=1):
    result = process_video(path, video_id, preset, decoder, threads)
    return result + (KillsWhenPickled(),) if video_id == os.environ.get(VICTIM) else result


def _slowly(value):
    time.sleep(0.5)
    return value


class SlowToUnpickle:
    """Unpickling this in the parent takes half a second: a large result still being read."""

    def __reduce__(self):
        return (_slowly, (None,))


def crash_on_victim_after_a_slow_result(path, video_id, preset, decoder, threads=1):
    if video_id == os.environ.get(VICTIM):
        os._exit(3)
    return process_video(path, video_id, preset, decoder, threads) + (SlowToUnpickle(),)


def sleep_on_every_video(path, video_id, preset, decoder, threads=1):
    time.sleep(1.0)
    return process_video(path, video_id, preset, decoder, threads)


def _children():
    """This process's child processes as (pid, state), multiprocessing's resource tracker aside."""
    me, found = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state, ppid = fh.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                tracker = b"resource_tracker" in fh.read()
        except OSError:
            continue
        if int(ppid) == me and not tracker:
            found.append((int(pid), state))
    return found


class DiesWhenUnpickled:
    """Unpickling this in a worker ends the worker before it reports ready."""

    def __reduce__(self):
        return (os._exit, (1,))


def test_worker_crash_is_a_fault_and_the_run_goes_on(dataset, preset, monkeypatch):
    root, _ = dataset
    victim = _good_ids(root)[2]
    monkeypatch.setenv(VICTIM, victim)
    loader, items = _run(root, preset, workers=2, process_fn=crash_on_victim)
    assert loader.faults.ids("worker_crash") == [victim]
    assert "code 3" in [f for f in loader.faults.faults if f.kind == "worker_crash"][0].reason
    assert [it.video_id for it in items] == [v for v in _good_ids(root) if v != victim] + [items[-1].video_id]
    assert loader.stats["restarts"] == 1


# Each is charged to its own video, the run goes on and finishes well inside its timeout:
# - killed while sending its result: each worker has a pipe of its own, so a worker killed
#   half-way through a send takes nothing with it (with one pipe and lock shared by all, as
#   pebble's ProcessPool has, the orphaned lock stalled the run 2 minutes, then lost every
#   remaining video);
# - dies as it starts a video while the parent still reads the result it sent before: the
#   finished result is kept (pebble's ProcessPool charged the crash to the previous, good video
#   and never resolved the victim's future: a run without timeout_s hung).
@pytest.mark.parametrize("process_fn, reason", [(killed_while_sending, "code -9"),
                                                (crash_on_victim_after_a_slow_result, "")],
                         ids=["killed while sending", "crash while its last result is read"])
def test_a_worker_crash_is_charged_to_its_own_video(dataset, preset, monkeypatch, process_fn, reason):
    root, _ = dataset
    victim = _good_ids(root)[2]
    monkeypatch.setenv(VICTIM, victim)
    t0 = time.monotonic()
    loader, items = _run(root, preset, workers=2, timeout_s=20, process_fn=process_fn)
    assert time.monotonic() - t0 < 30
    assert loader.faults.ids("worker_crash") == [victim] and loader.faults.ids("timeout") == []
    assert reason in [f for f in loader.faults.faults if f.kind == "worker_crash"][0].reason
    assert [it.video_id for it in items][:5] == [v for v in _good_ids(root) if v != victim]
    assert loader.stats["restarts"] == 1


def test_hung_worker_times_out(dataset, preset, monkeypatch):
    root, _ = dataset
    victim = _good_ids(root)[0]
    monkeypatch.setenv(VICTIM, victim)
    t0 = time.monotonic()
    loader, items = _run(root, preset, workers=2, timeout_s=3.0, process_fn=hang_on_victim)
    assert time.monotonic() - t0 < 20
    assert loader.faults.ids("timeout") == [victim] and len(items) == 6


def test_order_is_index_order_when_results_arrive_out_of_order(dataset, preset, monkeypatch):
    root, _ = dataset
    monkeypatch.setenv(VICTIM, _good_ids(root)[0])
    seen = []
    real_submit = loader_mod._WorkerPool.submit

    def submit(self, position, record):  # runs in this process: the pool lives here
        seen.append(self.outstanding)
        return real_submit(self, position, record)

    monkeypatch.setattr(loader_mod._WorkerPool, "submit", submit)
    loader, items = _run(root, preset, workers=2, prefetch=3, process_fn=slow_on_victim)
    assert [it.video_id for it in items][:6] == _good_ids(root)
    assert max(seen) <= 2  # never more than prefetch (3) videos in flight


def test_worker_that_cannot_start_stops_the_run(dataset, preset):
    root, _ = dataset
    with pytest.raises(LoaderStartupError):
        _run(root, preset, workers=1, process_fn=DiesWhenUnpickled())


def test_ctrl_c_while_workers_start_leaves_none_behind(dataset, preset, monkeypatch):
    root, _ = dataset
    real_start, started = loader_mod._WorkerPool._start, []

    def start(self, wait=True):
        if started:
            raise KeyboardInterrupt  # Ctrl-C while the first worker imports
        started.append(real_start(self, wait))
        return started[-1]

    monkeypatch.setattr(loader_mod._WorkerPool, "_start", start)
    before = _children()
    with pytest.raises(KeyboardInterrupt):
        _run(root, preset, workers=2)
    assert started and [c for c in _children() if c not in before] == []


CTRL_C_RUN = """
import sys, time
from frameworks.spec.data_presets import get_data_preset
from harness.data.index import read_kinetics_csv
from harness.data.loader import ClipLoader
from tests.test_loader_faults import _children, sleep_on_every_video

preset = get_data_preset("mmaction2_val").replace(crop_size=32, short_edge=48)
loader = ClipLoader(read_kinetics_csv(sys.argv[1], "val"), preset, workers=2, process_fn=sleep_on_every_video)
try:
    for item in loader:
        print("first", flush=True)
        time.sleep(30)  # the model's forward pass, both workers busy: Ctrl-C lands here
except KeyboardInterrupt:
    print("interrupted", _children(), flush=True)
"""


def test_ctrl_c_stops_the_run_quietly_and_leaves_no_worker(dataset):
    """Ctrl-C reaches the whole process group: the parent stops its workers, and no worker
    prints a KeyboardInterrupt traceback of its own across the terminal."""
    root, _ = dataset
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_RUN, str(root)], cwd=repo, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "first"
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal delivers it
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert (out.strip(), proc.returncode) == ("interrupted []", 0), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
