"""python -m harness.bench data: a tiny run writes the JSON contract; bad input is exit 2."""
import json

from harness.data import bench as bench_data


def test_tiny_run_writes_results_with_provenance(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench_data.main(["--seconds", "1", "--size", "64x48", "--videos", "2", "--warmup", "1",
                            "--workers", "1", "--json", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["data_preset"] == "mmaction2_val" and report["protocol"] == "1x1"
    assert report["video"]["synthetic"] and report["video"]["frames"] == 30 and report["video"]["size"] == [64, 48]
    assert [(r["decoder"], r["workers"]) for r in report["results"]] == [("decord", 1), ("pyav", 1)]
    for r in report["results"]:
        assert r["videos_timed"] == 2 and r["clips_per_s"] > 0 and r["decode_faults"] == 0
        assert r["clips_per_s_per_worker"] == r["clips_per_s"] and r["worker_ms_per_video"] > 0
        assert r["worker_cpu_ms_per_video"] > 0 and r["clips_per_cpu_s"] > 0
    prov = report["provenance"]
    assert prov["hardware"]["cpu_model"] and prov["hardware"]["logical_cpus"] >= 1
    assert prov["versions"]["decord"] == "0.6.0" and prov["versions"]["av"] and prov["date"]
    assert "clips/s" in capsys.readouterr().out


def test_bad_input_exits_2(tmp_path, cli):
    for args, message in [
        (["--decoders", "opencv"], "unknown decoder"),
        (["--video", str(tmp_path / "missing.mp4")], "missing.mp4: no such file"),
        (["--video", str(tmp_path)], "is a folder, not a file"),
        (["--video", __file__], "cannot use video"),
        (["--preset", "nope"], "unknown data preset"),
        (["--workers", "0"], "worker counts"),
    ]:
        result = cli("harness.bench", "data", *args)
        assert result.returncode == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_help(cli):
    result = cli("harness.bench", "data", "--help")
    assert result.returncode == 0 and "--decoders" in result.stdout and "clips/s" in result.stdout
