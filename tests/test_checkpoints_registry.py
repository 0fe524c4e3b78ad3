"""The public-checkpoint registry: entries, fetch into the cache, verify a file you have."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from frameworks.spec.arch import get_preset, parameter_specs
from frameworks.spec.data_presets import PRESETS as DATA_PRESETS
from harness.checkpoints import load_weights
from harness.checkpoints.io import CheckpointError
from harness.checkpoints.mmaction2 import from_canonical
from harness.checkpoints.registry import cached_path, fetch, load_registry, resolve


def test_the_registry_has_the_three_framework_rows_with_published_numbers():
    registry = load_registry()
    rows = {e.framework_row for e in registry.values()}
    assert rows == {"caffe", "pytorch", "mindspore"}
    by_name = {name: e for name, e in registry.items()}
    assert by_name["i3d_nl_dot_product_r50_mmaction2_v0"].published["top1"] == 73.92
    assert by_name["i3d_nl_dot_product_r50_mmaction2"].sha256_prefix == "8e1f2148"
    assert by_name["i3d_nl_embedded_gaussian_r50_caffe2"].arch == "i3d_nl_caffe2_r50"
    assert by_name["i3d_nl_dot_product_r50_mindvideo"].published["val_videos"] == 19877
    for entry in registry.values():
        get_preset(entry.arch)  # every entry names a real preset
        assert entry.data_preset in DATA_PRESETS
        assert entry.url.startswith("https://") and entry.filename


def test_published_denominators_and_validation_set_sizes():
    """Caffe2 divides by its 19,761 listed videos and counts an unreadable one wrong;
    mmaction2 (19,796, 0.x and 1.x) and the seed (19,877) stop on an unreadable file, so
    their numbers also cover every listed video."""
    registry = load_registry()
    caffe2 = registry["i3d_nl_embedded_gaussian_r50_caffe2"]
    assert (caffe2.val_videos, caffe2.denominator, caffe2.unreadable) == (19761, "listed", "counted_wrong")
    mindvideo = registry["i3d_nl_dot_product_r50_mindvideo"]
    assert (mindvideo.val_videos, mindvideo.denominator, mindvideo.unreadable) == (19877, "listed", "stops_run")
    mm = [e for e in registry.values() if e.format == "mmaction2"]
    assert len(mm) == 5
    for e in mm:
        assert (e.val_videos, e.denominator, e.unreadable) == (19796, "listed", "stops_run"), e.name
    for e in registry.values():
        assert isinstance(e.published["val_videos"], int) and isinstance(e.published, dict)
    # the 0.x row is paired with the 0.x protocol; 8e1f2148's history is noted
    v0 = registry["i3d_nl_dot_product_r50_mmaction2_v0"]
    assert v0.data_preset == "mmaction2_0x_test_10x3" and "score" in v0.published["protocol"]
    assert "74.76 / 91.84" in registry["i3d_nl_dot_product_r50_mmaction2"].note


def test_caffe2_entry_is_named_embedded_gaussian_and_keeps_its_old_name(cli):
    registry = load_registry()
    old = "i3d_nl_dot_product_r50_caffe2"
    assert old in registry and registry[old] is registry["i3d_nl_embedded_gaussian_r50_caffe2"]
    assert registry.get(old).name == "i3d_nl_embedded_gaussian_r50_caffe2" == registry.canonical(old)
    assert old not in list(registry) and old not in registry.keys() and len(registry) == len(list(registry.values()))
    assert "dot_product" not in registry[old].name
    listed = cli("harness.checkpoints", "list")
    assert listed.returncode == 0
    entries = [ln.split()[0] for ln in listed.stdout.splitlines() if ln and not ln.startswith(" ")]
    assert "i3d_nl_embedded_gaussian_r50_caffe2" in entries and old not in entries   # listed once, by its name
    assert f"aliases:   {old}" in listed.stdout
    # what a user needs to find and check the file: name, URL, protocol and val count
    for needle in ("i3d_nonlocal_32x2_IN_pretrain_400k.pkl", "https://dl.fbaipublicfiles.com/video-nonlocal/",
                   "10 clips x 3 crops", "19,761 val videos", "19,796 val videos", "19,877 val videos"):
        assert needle in listed.stdout, needle


@pytest.fixture()
def small_mmaction2_file(tmp_path):
    cfg = get_preset("i3d_r50")
    rng = np.random.default_rng(0)
    state = {k: torch.from_numpy(rng.standard_normal(v).astype(np.float32))
             for k, v in from_canonical(parameter_specs(cfg), cfg).items()}
    path = tmp_path / "i3d_r50.pth"
    torch.save({"state_dict": state, "meta": {}}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    registry = tmp_path / "registry.toml"
    registry.write_text(f'''
[test_i3d_r50]
origin = "a test"
url = "{path.as_uri()}"
filename = "i3d_r50_{digest[:8]}.pth"
sha256 = "{digest}"
format = "mmaction2"
framework_row = "pytorch"
arch = "i3d_r50"
data_preset = "mmaction2_val"
published = {{ top1 = 1.0, top5 = 2.0, protocol = "none", val_videos = 7, denominator = "listed", unreadable = "stops_run" }}
aliases = ["test_old_name"]

[test_prefix]
origin = "a test"
url = "http://127.0.0.1:9/unreachable.pth"
filename = "unreachable.pth"
sha256_prefix = "{digest[:8]}"
format = "mmaction2"
framework_row = "pytorch"
arch = "i3d_r50"
data_preset = "mmaction2_val"
''')
    return path, registry, digest


def test_verify_accepts_the_file_and_rejects_a_one_byte_change(cli, small_mmaction2_file, tmp_path):
    path, registry, digest = small_mmaction2_file
    env = {"NLPARITY_REGISTRY": str(registry)}
    ok = cli("harness.checkpoints", "verify", path, "--name", "test_i3d_r50", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert digest in ok.stdout and "load strictly onto i3d_r50" in ok.stdout
    prefix_ok = cli("harness.checkpoints", "verify", path, "--name", "test_prefix", "--hash-only", env=env)
    assert prefix_ok.returncode == 0
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    changed = tmp_path / "changed.pth"
    changed.write_bytes(bytes(data))
    for name in ("test_i3d_r50", "test_prefix"):
        bad = cli("harness.checkpoints", "verify", changed, "--name", name, "--hash-only", env=env)
        assert bad.returncode == 1 and "FAILED" in bad.stdout


def test_fetch_downloads_verifies_and_resolves_by_name(small_mmaction2_file, tmp_path, monkeypatch):
    path, registry, digest = small_mmaction2_file
    monkeypatch.setenv("NLPARITY_REGISTRY", str(registry))
    monkeypatch.setenv("NLPARITY_CACHE", str(tmp_path / "cache"))
    entry = load_registry()["test_i3d_r50"]
    fetched = fetch(entry, progress=False)
    assert hashlib.sha256(open(fetched, "rb").read()).hexdigest() == digest
    loaded = load_weights("test_i3d_r50", get_preset("i3d_r50"))  # a registry name, from the cache
    assert loaded.sha256 == digest and loaded.scheme == "mmaction2"


def test_fetch_refuses_a_wrong_hash_and_reports_no_network_in_one_line(small_mmaction2_file, tmp_path,
                                                                       monkeypatch, cli):
    path, registry, _ = small_mmaction2_file
    monkeypatch.setenv("NLPARITY_CACHE", str(tmp_path / "cache"))
    bad_registry = tmp_path / "bad.toml"
    bad_registry.write_text(registry.read_text().replace('sha256 = "', 'sha256 = "0'))
    monkeypatch.setenv("NLPARITY_REGISTRY", str(bad_registry))
    with pytest.raises(CheckpointError, match="discarded"):
        fetch(load_registry()["test_i3d_r50"], progress=False)
    proc = cli("harness.checkpoints", "fetch", "test_prefix",
               env={"NLPARITY_REGISTRY": str(registry), "NLPARITY_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot download test_prefix" in proc.stderr
    missing = cli("harness.checkpoints", "fetch", "no_such_entry")
    assert missing.returncode == 2 and "unknown registry name" in missing.stderr


def test_unfetched_registry_name_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("NLPARITY_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="python -m harness.checkpoints fetch i3d_nl_dot_product_r50_mmaction2"):
        load_weights("i3d_nl_dot_product_r50_mmaction2", get_preset("i3d_nl_dot_product_r50"))


def test_an_alias_works_for_verify_fetch_and_resolve(cli, small_mmaction2_file, tmp_path, monkeypatch):
    path, registry, digest = small_mmaction2_file
    env = {"NLPARITY_REGISTRY": str(registry)}
    ok = cli("harness.checkpoints", "verify", path, "--name", "test_old_name", "--hash-only", env=env)
    assert ok.returncode == 0 and "matches test_i3d_r50" in ok.stdout, ok.stdout + ok.stderr
    monkeypatch.setenv("NLPARITY_REGISTRY", str(registry))
    monkeypatch.setenv("NLPARITY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="fetch test_old_name"):
        resolve("test_old_name")
    fetched = fetch("test_old_name", progress=False)
    assert fetched == cached_path(load_registry()["test_i3d_r50"])
    assert resolve("test_old_name") == resolve("test_i3d_r50") == fetched
    entry = load_registry()["test_old_name"]
    assert (entry.name, entry.aliases, entry.val_videos, entry.denominator) == (
        "test_i3d_r50", ("test_old_name",), 7, "listed")
    assert load_registry()["test_prefix"].val_videos is None and load_registry()["test_prefix"].denominator == ""
    proc = cli("harness.checkpoints", "fetch", "test_old_name",
               env={"NLPARITY_REGISTRY": str(registry), "NLPARITY_CACHE": str(tmp_path / "cache2")})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("i3d_r50_" + digest[:8] + ".pth")


def test_registry_rejects_clashing_aliases_and_unknown_denominators(small_mmaction2_file, tmp_path):
    _, registry, _ = small_mmaction2_file
    text = registry.read_text()
    clash = tmp_path / "clash.toml"
    clash.write_text(text.replace('aliases = ["test_old_name"]', 'aliases = ["test_prefix"]'))
    with pytest.raises(CheckpointError, match="test_prefix"):
        load_registry(str(clash))
    bad = tmp_path / "bad_denominator.toml"
    bad.write_text(text.replace('denominator = "listed"', 'denominator = "all"'))
    with pytest.raises(CheckpointError, match="denominator"):
        load_registry(str(bad))


def test_verify_says_failed_with_exit_1_when_the_structure_does_not_fit(cli, tmp_path):
    """A readable file that is not the entry's network is a failed check (exit 1), not bad input."""
    import numpy as np

    from frameworks.spec.arch import get_preset, parameter_specs
    from harness.checkpoints.io import write_npz

    cfg = get_preset("i3d_r50")  # no non-local blocks: not the mindvideo graph
    path = tmp_path / "other.npz"
    write_npz(str(path), {k: np.zeros(v, np.float32) for k, v in parameter_specs(cfg).items()})
    proc = cli("harness.checkpoints", "verify", path, "--name", "i3d_nl_dot_product_r50_mindvideo")
    assert proc.returncode == 1, proc.stderr
    assert "FAILED: structure" in proc.stdout and "missing" in proc.stdout and proc.stderr == ""
