"""benchmarks/compare.py on small result files: best values per machine/device, projection, tolerance."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("qv_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["qv_compare"] = module
    spec.loader.exec_module(module)
    return module


H100 = {"gpu": "NVIDIA H100 80GB HBM3", "cpu": "AMD EPYC 9454", "cpu_count": 16}
LAPTOP = {"gpu": None, "cpu": "Intel Core i7-1260P", "cpu_count": 12}
RTX = {"gpu": {"name": "NVIDIA GeForce RTX 4090", "memory_gb": 24}, "cpu": "Ryzen 9 7950X", "cpu_count": 32}


def write(folder: Path, name: str, doc: object) -> None:
    (folder / name).write_text(json.dumps(doc) if not isinstance(doc, str) else doc, encoding="utf-8")


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """Files shaped like those of sampling_bench.py, train_bench.py and scan_bench.py, plus odd ones."""
    v = {"python": "3.12", "dali": "2.4.0"}
    h100_sampling = {"gpu": H100["gpu"], "cpu_model": H100["cpu"], "cpu_count": 16, "platform": "Linux"}
    write(tmp_path, "sampling_nvidia-h100.json", {"benchmark": "sampling", "quick": False, "machine": h100_sampling,
                                                  "versions": v, "config": {"fps": 1.0, "size": 224}, "results": [
        {"backend": "baseline-pyav-all-frames", "mode": "exact", "streams": 16, "sampled_fps": 5000.0},
        {"backend": "cpu", "mode": "keyframe", "streams": 16, "sampled_fps": 40.0, "codec": "h264"},
        {"backend": "cpu", "mode": "exact", "streams": 16, "sampled_fps": 12.0, "codec": "h264"},
        {"backend": "gpu", "mode": "keyframe", "streams": 4, "sampled_fps": 900.0, "codec": "h264"},
        {"backend": "gpu", "mode": "exact", "streams": 8, "sampled_fps": 321.0, "codec": "h264"}]})
    for backend, dali, base in (("gpu", 2500.0, 700.0), ("cpu", 30.0, 25.0)):
        write(tmp_path, f"train_h100_{backend}.json", {
            "benchmark": "train", "quick": False, "backend": backend, "machine": H100, "versions": v,
            "config": {"architecture": "resnet18", "batch_size": 256},
            "results": {"dali_loader_images_per_s": dali * 3, "baseline_loader_images_per_s": base * 2,
                        "model_step_images_per_s": dali * 1.05, "dali_train_images_per_s": dali,
                        "baseline_train_images_per_s": base}})
    scan_machine = {"host": "h100", "cpu_count": 16, "gpu": H100["gpu"], "dali": "2.4.0"}  # no CPU model
    write(tmp_path, "scan_gpu.json", {"benchmark": "scan", "quick": False, "machine": scan_machine,
                                      "cat_read": {"wall_s": 10.0, "mb_per_s": 2000.0},
                                      "scan": {"device": "gpu", "sampled_frames_per_s": 720.0, "videos_per_s": 3.0},
                                      "cpu_backend": {"device": "cpu", "sampled_frames_per_s": 14.4},
                                      "naive_baseline": {"tool": "DALI readers.video", "frames_per_s": 9000.0}})
    write(tmp_path, "scan_gpu_quick.json", {"benchmark": "scan", "quick": True, "machine": scan_machine,
                                            "scan": {"device": "gpu", "sampled_frames_per_s": 99999.0}})
    write(tmp_path, "sampling_laptop_quick.json", {"machine": LAPTOP, "versions": v, "quick": True,
                                                   "results": [{"sampled_frames_per_s": 20.0}]})  # kind from name
    write(tmp_path, "scan-rtx.json", {"benchmark": "scan_bench", "machine": RTX, "versions": v,
                                      "results": {"cuda": [{"scan_frames_per_s": 1000.0, "streams": 8}]}})
    write(tmp_path, "notes.json", {"hello": 1})  # not ours
    write(tmp_path, "broken.json", "{not json")
    write(tmp_path, "train_empty.json", {"machine": H100, "results": []})
    write(tmp_path, "sampling_only_baseline.json", {"machine": H100, "results": [
        {"backend": "baseline-pyav-all-frames", "sampled_fps": 50.0}]})
    return tmp_path


def test_rows_keep_the_best_configuration_per_machine_and_device(compare, results: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        rows, used = compare.load_rows(results)
    assert sorted(used) == ["sampling_laptop_quick.json", "sampling_nvidia-h100.json", "scan-rtx.json",
                            "scan_gpu.json", "scan_gpu_quick.json", "train_h100_cpu.json", "train_h100_gpu.json"]
    for name in ("notes.json", "broken.json", "train_empty.json", "sampling_only_baseline.json"):
        assert f"skipping {name}" in caplog.text
    table = {(r.machine.label(r.device), r.device): {k: b.value for k, b in r.best.items()} for r in rows}
    assert table == {
        # Baselines (5,000 and 9,000 frames/s) are not the product; the quick scan (99,999) loses to the full one.
        ("NVIDIA H100 80GB HBM3", "gpu"): {"sampling": 900.0, "train": 2500.0, "scan": 720.0},
        # The scan file names no CPU model: it joins the EPYC files of the same GPU machine.
        ("CPU: AMD EPYC 9454, 16 cores", "cpu"): {"sampling": 40.0, "train": 30.0, "scan": 14.4},
        ("CPU: Intel Core i7-1260P, 12 cores", "cpu"): {"sampling": 20.0},
        ("NVIDIA GeForce RTX 4090", "gpu"): {"scan": 1000.0},
    }
    # GPUs first, fastest first.
    assert [r.machine.label(r.device) for r in rows][:2] == ["NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3"]
    h100 = next(r for r in rows if r.device == "gpu" and r.machine.gpu.startswith("NVIDIA H100"))
    assert h100.best["sampling"].config == "mode=keyframe, codec=h264, streams=4"
    assert h100.best["train"].config == "batch_size=256, architecture=resnet18"
    assert h100.best["scan"].source == "scan_gpu.json" and not h100.quick


def test_projection_numbers(compare) -> None:
    p = compare.Projection()
    assert p.footage_s == pytest.approx(720_000)  # 9 TB * 8 / 100 Mbit/s
    assert p.frames == pytest.approx(720_000)
    assert compare.format_duration(720_000 / 720.0) == "17 min"
    assert compare.format_duration(720_000 / 40.0) == "5.0 h"
    assert compare.format_duration(720_000 / 2.0) == "100 h (4.2 days)"


def test_report_and_chart(compare, results: Path, tmp_path: Path) -> None:
    out = compare.compare(results, projection=compare.Projection(bitrate_mbps=100.0))
    text = out.read_text(encoding="utf-8")
    assert out == results / "REPORT.md"
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Machine | Device |"))
    assert "Sampled frames/s" in header and "Training images/s" in header and "18,000 videos / 9 TB" in header
    main_table = lines[lines.index(header) + 2:]
    main_table = main_table[: main_table.index("")]
    row = {line.split(" | ")[0].lstrip("| "): line for line in main_table}
    assert len(row) == 4
    assert row["NVIDIA H100 80GB HBM3"] == "| NVIDIA H100 80GB HBM3 | gpu | 900.0 | 2,500.0 | 720.0 | 17 min |"
    assert row["NVIDIA GeForce RTX 4090"].endswith("| — | — | 1,000.0 | 12 min |")
    assert row["CPU: AMD EPYC 9454, 16 cores"].endswith("| 40.0 | 30.0 | 14.4 | 13.9 h |")
    # No scan result: projected from sampling, marked *.
    assert row["CPU: Intel Core i7-1260P, 12 cores (quick run)"].endswith("| 20.0 | — | — | 10.0 h * |")
    assert "come from `--quick` runs" in text
    assert "720,000 sampled frames" in text and "How the time is projected" in text
    pytest.importorskip("matplotlib")
    png = results / "REPORT.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "![throughput chart](REPORT.png)" in text


def test_no_matplotlib_skips_the_chart(compare, results: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with caplog.at_level(logging.WARNING):
        out = compare.compare(results)
    assert "matplotlib is not installed" in caplog.text
    assert not (results / "REPORT.png").exists()
    assert "| NVIDIA H100 80GB HBM3 |" in out.read_text(encoding="utf-8")


def test_cli_and_empty_folder(compare, results: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    report = tmp_path / "custom" / "r.md"
    report.parent.mkdir()
    res = CliRunner().invoke(compare.main, ["--results", str(results), "--out", str(report), "--no-chart",
                                            "--bitrate-mbps", "50"])
    assert res.exit_code == 0, res.output
    assert "1,440,000 sampled frames" in report.read_text(encoding="utf-8")  # half the bit rate: twice the hours
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(compare.main, ["--results", str(empty)])
    assert res.exit_code == 1 and "no usable benchmark results" in res.output
