"""The GPU session's script runs where only torch and numpy are: nothing it imports, in any
of its processes, needs MindSpore, decord, OpenCV or mmaction2. A ``sitecustomize`` that
refuses those imports travels to every child process through ``PYTHONPATH``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSENT_ON_GPU_MACHINE = ("mindspore", "cv2", "decord", "mmaction", "mmcv", "mmengine", "av")
BLOCKER = f'''
import sys
class _Absent:
    names = {ABSENT_ON_GPU_MACHINE!r}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU machine)")
        return None
sys.meta_path.insert(0, _Absent())
'''


def _env(tmp_path, **extra):
    (tmp_path / "block").mkdir(exist_ok=True)
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), ROOT]), **extra}


def test_gpu_check_imports_nothing_the_gpu_machine_lacks(tmp_path):
    modules = ["harness.device_check", "harness.bench", "harness.runners.child", "harness.runners.torch_runner",
               "frameworks.torch.model", "frameworks.torch.fast", "frameworks.torch.train", "frameworks.spec.flops",
               "frameworks.spec.fold"]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        f"bad = [m for m in sys.modules if m.split('.')[0] in {ABSENT_ON_GPU_MACHINE!r}]\nassert not bad, bad\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # the blocker works: MindSpore really is refused
    proc = subprocess.run([sys.executable, "-c", "import mindspore"], cwd=ROOT, env=_env(tmp_path), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode != 0 and "absent on the GPU machine" in proc.stderr


@pytest.mark.slow
def test_gpu_check_script_end_to_end_on_the_cpu(tmp_path):
    """SMOKE=1: every step of scripts/gpu_check.sh on the CPU at a tiny size, with the GPU
    machine's missing modules refused in every process."""
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", str(out)], cwd=ROOT, text=True, timeout=1500,
                          env=_env(tmp_path, SMOKE="1", PYTHON=sys.executable, ITERS="1", WARMUP="0"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check = json.loads((out / "device_check.json").read_text())
    assert check["kind"] == "device_check" and check["parity"]["passed"] and check["fast_parity"]["passed"]
    assert check["dtypes"]["exact-bfloat16"]["top1_agreement"] >= 0
    for name, task in (("bench_gpu_infer.json", "infer"), ("bench_gpu_train.json", "train")):
        doc = json.loads((out / name).read_text())
        assert doc["kind"] == "bench_forward" and not doc["interleaved"]
        assert all(r["task"] == task and r["runs"] for r in doc["results"])
        assert all("clips_per_s" in run for r in doc["results"] for run in r["runs"]), name
    assert "exit 0" in (out / "gpu_check.log").read_text()
