"""`python -m harness.train_bench`: a failed run is a failed run (one line, exit 2, nothing
written, a good result file never replaced), --warmup 0 times the first step, and a casual
run writes under runs/, never over the committed results/."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from tests.conftest import ROOT, run_cli


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def one_error_line(proc, *needles) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_the_default_result_goes_under_runs_not_results():
    from harness.train_bench import build_parser, output_path

    assert output_path(build_parser().parse_args([])) == os.path.join("runs", "train_step_cpu.json")
    assert output_path(build_parser().parse_args(["--device", "gpu"])) == os.path.join("runs", "train_step_gpu.json")
    assert output_path(build_parser().parse_args(["--json", "x.json"])) == "x.json"


def test_no_gpu_is_one_line_and_the_committed_result_is_kept(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    committed = os.path.join(ROOT, "results", "train_step_cpu.json")
    good = tmp_path / "train_step_cpu.json"
    shutil.copy(committed, good)
    timed = sum("median_step_ms" in r for r in json.loads(good.read_text())["rows"])
    assert timed == 9
    before = digest(good)
    proc = run_cli("harness.train_bench", "--device", "gpu", "--variants", "torch", "--shapes", "2,3,8,32,32",
                   "--json", good)
    one_error_line(proc, "no configuration could be timed on --device gpu", f"nothing written to {good}",
                   "torch sees no CUDA device")
    assert digest(good) == before                      # was: replaced by a one-row error file, exit 0


def test_a_run_where_every_configuration_fails_writes_nothing(tmp_path):
    out = tmp_path / "r.json"
    # one clip of 8x32x32: training-mode BatchNorm gets one value per channel at res5 and refuses
    proc = run_cli("harness.train_bench", "--variants", "torch", "--shapes", "1,3,8,32,32", "--steps", "1",
                   "--json", out)
    one_error_line(proc, "no configuration could be timed", "Expected more than 1 value per channel")
    assert not out.exists()


def test_warmup_0_times_the_first_step(tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("harness.train_bench", "--warmup", "0", "--steps", "1", "--variants", "torch", "--shapes",
                   "2,3,8,32,32", "--threads", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]       # was: TypeError traceback (first step None)
    assert "no warm-up step" in proc.stdout and f"result: {out} (1 of 1 configurations timed)" in proc.stdout
    row = json.loads(out.read_text())["rows"][0]
    assert row["first_step_s"] is None and len(row["step_ms"]) == 1 and row["median_step_ms"] > 0


@pytest.mark.parametrize("argv,needle", [(["--num-classes", "1000000"], "the limit is 100,000"),
                                         (["--num-classes", "0"], "--num-classes"),
                                         (["--warmup", "-1"], "--warmup")])
def test_absurd_options_are_refused_in_the_parser(tmp_path, argv, needle):
    proc = run_cli("harness.train_bench", *argv, "--json", tmp_path / "r.json")
    one_error_line(proc, needle)
    assert not list(tmp_path.iterdir())
