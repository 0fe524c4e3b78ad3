"""Training parity catches the bugs ports really have: each is one line planted in a copy of
the project (in one framework's trainer or model, as a port would have it), and
``python -m harness.parity --train-steps 3 --frameworks torch,ms`` must fail (exit 1) with
the check and the family that locate it named first. The unmutated code must pass at every
seed and thread count (no false alarm). Slow: each run trains three processes.

Each mutant's margin (its error as a multiple of the tolerance it breaks) is printed, so
``pytest -m slow -s tests/test_train_parity_mutants.py`` shows the table the closing note
quotes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.mindspore]

MS_TRAIN, MS_MODEL = "frameworks/mindspore/train.py", "frameworks/mindspore/model.py"
TORCH_TRAIN = "frameworks/torch/train.py"

# id -> (file, line as written, the line with the bug, (check, family, quantity) named first)
MUTANTS = {
    "momentum -0.05": (MS_TRAIN, "momentum=float(recipe.momentum),", "momentum=float(recipe.momentum) - 0.05,",
                       ("optimizer", "conv", "buf")),
    "momentum +0.05": (TORCH_TRAIN, "momentum=recipe.momentum, dampening=0.0",
                       "momentum=recipe.momentum + 0.05, dampening=0.0", ("optimizer", "conv", "buf")),
    "dampening 0.1": (MS_TRAIN, "dampening=0.0, nesterov=False)", "dampening=0.1, nesterov=False)",
                      ("optimizer", "conv", "buf")),
    "Nesterov": (MS_TRAIN, "dampening=0.0, nesterov=False)", "dampening=0.0, nesterov=True)",
                 ("optimizer", "conv", "param")),
    "weight decay x2": (MS_TRAIN, '"weight_decay": float(decay)}', '"weight_decay": float(decay) * 2}',
                        ("optimizer", "conv", "decay")),
    "decay on BN": (TORCH_TRAIN, "for decay, names in decay_groups(recipe, self.cfg).items():",
                    "for decay, names in decay_groups(recipe.replace(no_decay=()), self.cfg).items():",
                    ("optimizer", "bn", "decay")),
    "no decay on biases": (MS_TRAIN, "for decay, names in decay_groups(recipe, self.cfg).items():",
                           'for decay, names in decay_groups(recipe.replace(no_decay=("bn", "bias")), '
                           'self.cfg).items():', ("optimizer", "bias", "decay")),
    "lr x1.02": (MS_TRAIN, "learning_rate=ms.Tensor(self.lrs),", "learning_rate=ms.Tensor(self.lrs * 1.02),",
                 ("optimizer", "lr", "schedule")),
    "warm-up off by one step": (MS_TRAIN, "self.lrs = lr_schedule(recipe, steps_per_epoch, total_steps)",
                                "self.lrs = lr_schedule(recipe, steps_per_epoch, (total_steps or recipe.epochs * "
                                "steps_per_epoch) + 1)[1:]", ("optimizer", "lr", "schedule")),
    "cosine per step": (TORCH_TRAIN, "self.lrs = lr_schedule(recipe, steps_per_epoch, total_steps)",
                        'self.lrs = lr_schedule(recipe.replace(cosine_granularity="step"), steps_per_epoch, '
                        'total_steps)', ("optimizer", "lr", "schedule")),
    "BN momentum x1.1": (MS_MODEL, "momentum=1.0 - cfg.bn_momentum)", "momentum=1.0 - cfg.bn_momentum * 1.1)",
                         ("components", "bn", "running_mean")),
    "BN eps 1e-3": (MS_MODEL, "eps=cfg.bn_eps, momentum=1.0", "eps=1e-3, momentum=1.0",
                    ("components", "bn", "train_output")),
    "label smoothing 0.1": (TORCH_TRAIN, "self.criterion = nn.CrossEntropyLoss()",
                            "self.criterion = nn.CrossEntropyLoss(label_smoothing=0.1)",
                            ("components", "loss", "cross_entropy")),
    "dropout p 0.4": (MS_MODEL, "self.dropout = nn.Dropout(p=cfg.dropout)",
                      "self.dropout = nn.Dropout(p=cfg.dropout * 0.8)", ("components", "dropout", "p")),
    "clips out of order with their labels": (
        MS_TRAIN, "out = self.train_step(ms.Tensor(np.ascontiguousarray(x, dtype=np.float32)),",
        "out = self.train_step(ms.Tensor(np.ascontiguousarray(x[::-1], dtype=np.float32)),",
        ("step", "loss", "loss")),
    "gradient clipping at 40": (TORCH_TRAIN, "        lr = self._update()\n",
                                "        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 40.0); "
                                "lr = self._update()\n", ("step", "conv", "grad")),
}


def _copy_project(dst) -> str:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, check=True).stdout.split("\n")
    for rel in filter(None, files):
        if rel.startswith(("results/", "tests/")) or not os.path.isfile(os.path.join(ROOT, rel)):
            continue
        os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), os.path.join(dst, rel))
    return str(dst)


def _parity(project: str, out, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": project, "TMPDIR": os.path.dirname(str(out))}
    return subprocess.run([sys.executable, "-m", "harness.parity", "--train-steps", "3", "--frameworks", "torch,ms",
                           "--num-classes", "4", "--json", str(out), "-q", *args], cwd=project, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=3600)


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_a_planted_bug_fails_the_check_that_locates_it(tmp_path, mutant):
    rel, line, bug, (rung, family, quantity) = MUTANTS[mutant]
    project = _copy_project(tmp_path / "project")
    path = os.path.join(project, rel)
    with open(path) as f:
        text = f.read()
    assert text.count(line) == 1, f"{rel} no longer holds the line this mutant replaces: {line!r}"
    with open(path, "w") as f:
        f.write(text.replace(line, bug))
    out = tmp_path / "mutant.json"
    proc = _parity(project, out)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    first = doc["first_failure"]
    share = first["error"] / first["tolerance"]
    print(f"\n{mutant}: {first['rung']} / {first['family']} / {first['quantity']} {first['name']} "
          f"({first['framework']}): {share:.3g}x the tolerance")
    assert doc["verdict"] == "FAIL"
    assert (first["rung"], first["family"], first["quantity"]) == (rung, family, quantity), first
    assert share > 1


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threads", [1, 2])
def test_the_unmutated_code_passes_at_every_seed_and_thread_count(tmp_path, seed, threads):
    out = tmp_path / "clean.json"
    proc = _parity(ROOT, out, "--seed", str(seed), "--threads", str(threads))
    doc = json.loads(out.read_text())
    assert proc.returncode == 0 and doc["verdict"] == "PASS", (doc["first_failure"], proc.stdout[-3000:])
