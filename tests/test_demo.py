"""`tox -e demo`: its files are kept (runs/demo-<date>-<time>/ or --workdir), its last lines
name the report page, the plots and the GIF, each existing, and tox passes options through."""
from __future__ import annotations

import configparser
import datetime
import json
import os
import re

import pytest

from harness import demo
from tests.conftest import ROOT


def _fake_run(work, fws, missing=()):
    """What run_demo returns, with the files written (the real steps take minutes)."""
    outputs = [("the report page", os.path.join(work, "report.html")),
               ("a plot", os.path.join(work, "plots", "parity_layers.png")),
               ("the GIF", os.path.join(work, "result.gif"))]
    for _, path in outputs:
        if path not in missing:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").write("x")
    return outputs


def test_the_default_folder_is_kept_under_runs_and_the_last_lines_name_what_to_open(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "run_demo", _fake_run)
    assert demo.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    (work,) = os.listdir(tmp_path / "runs")
    assert re.fullmatch(r"demo-\d{8}-\d{6}", work)
    last = out[-3:]
    assert [ln.split(": ")[0] for ln in last] == ["the report page", "a plot", "the GIF"]
    for line in last:   # each path printed exists after the demo has returned
        path = line.split(": ", 1)[1]
        assert os.path.isabs(path) and os.path.isfile(path) and path.startswith(str(tmp_path / "runs" / work))
    assert f"kept in {os.path.join('runs', work)}" in out[-4]


def test_a_missing_output_is_an_error_not_a_line(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "run_demo", lambda work, fws: _fake_run(work, fws, missing=(
        os.path.join(work, "result.gif"),)))
    with pytest.raises(SystemExit, match="result.gif was not written"):
        demo.main(["--workdir", str(tmp_path / "w")])


def test_a_non_empty_workdir_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "run_demo", lambda *a: pytest.fail("the demo ran"))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.html").write_text("an earlier demo")
    with pytest.raises(SystemExit) as exc:
        demo.main(["--workdir", str(tmp_path / "old")])
    assert exc.value.code == 2 and "not empty" in capsys.readouterr().err
    assert (tmp_path / "old" / "report.html").read_text() == "an earlier demo"
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        demo.main(["--workdir", str(tmp_path / "file")])


def test_default_workdir_names_the_date_and_time():
    when = datetime.datetime(2026, 11, 26, 14, 5, 9)
    assert demo.default_workdir(when) == os.path.join("runs", "demo-20261126-140509")


def test_tox_passes_its_arguments_to_the_demo():
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(os.path.join(ROOT, "tox.ini"))
    assert ini["testenv:demo"]["commands"].split() == ["python", "-m", "harness.demo", "{posargs}"]


def test_every_child_runs_with_one_thread_and_torch_deterministic(monkeypatch):
    seen = []

    class Done:
        returncode = 0

    monkeypatch.setattr(demo.subprocess, "run", lambda cmd, env: seen.append((cmd, env)) or Done())
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("NLPARITY_TORCH_DETERMINISTIC", raising=False)
    demo._step("t", "harness.train", "--x", "1", framework="torch")
    demo._step("m", "harness.train", "--x", "1", framework="ms")
    demo._step("e", "harness.evaluate", "--y", one_thread=True)
    demo._step("r", "harness.report")
    (train, env), (_, env_ms), (evaluate, env_eval), (_, env_report) = seen
    assert train[1:] == ["-m", "harness.train", "--x", "1"] and evaluate[1:] == ["-m", "harness.evaluate", "--y"]
    # the torch runner's deterministic switch (TorchRunner.deterministic_env), for torch only
    assert env["NLPARITY_TORCH_DETERMINISTIC"] == "1" and "NLPARITY_TORCH_DETERMINISTIC" not in env_ms
    assert env["OMP_NUM_THREADS"] == "1" and env["MKL_NUM_THREADS"] == "1" and env_eval["OMP_NUM_THREADS"] == "1"
    assert env_ms["OMP_NUM_THREADS"] == "1" and "OMP_NUM_THREADS" not in env_report


def test_the_torch_runner_turns_on_deterministic_algorithms_when_asked():
    import subprocess
    import sys

    code = ("import torch; from harness.runners import make_runner; make_runner('torch', threads=1); "
            "print(torch.are_deterministic_algorithms_enabled())")
    for env, expected in (({"NLPARITY_TORCH_DETERMINISTIC": "1"}, "True"), ({}, "False")):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                             env={**{k: v for k, v in os.environ.items() if k != "NLPARITY_TORCH_DETERMINISTIC"},
                                  **env}).stdout.strip()
        assert out == expected, (env, out)


@pytest.mark.slow
def test_the_whole_demo(tmp_path):
    """The real job (some 5 minutes on two cores): every step passes, the files it names exist."""
    from tests.conftest import run_cli

    proc = run_cli("harness.demo", "--workdir", tmp_path / "demo", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith(("the report page:", "a plot:", "the GIF:"))]
    assert len(last) >= 3 and proc.stdout.strip().splitlines()[-1].startswith("the GIF:")
    assert all(os.path.isfile(ln.split(": ", 1)[1]) for ln in last)


def test_the_verdict_asks_for_clearly_better_than_chance(tmp_path, capsys):
    """A top-1 that guessing reaches with p >= 0.001 is not a learned model."""
    assert demo.chance_probability(0, 33, 0.25) == pytest.approx(1.0)
    assert demo.chance_probability(33, 33, 0.25) == pytest.approx(0.25 ** 33)
    # against scipy-free arithmetic: P(X >= 2) of 3 draws at 1/2 is 4/8
    assert demo.chance_probability(2, 3, 0.5) == pytest.approx(0.5)

    def summary(name, top1, n=33):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"top1": top1, "n_videos": n}))
        return str(path)

    demo._verdict({"torch": summary("a", 18 / 33), "ms": summary("b", 18 / 33)}, None)
    assert "p = 0.0003" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not clearly better than chance"):
        demo._verdict({"torch": summary("c", 13 / 33)}, None)   # 39% of 33: guessing does that 5% of the time
