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
    v = {"python": "3.12", "dali": "2.4.0"}
    write(tmp_path, "sampling_h100.json", {"benchmark": "sampling", "machine": H100, "versions": v, "results": [
        {"device": "gpu", "mode": "keyframe", "streams": 4, "sampled_frames_per_s": 900.0},
        {"device": "gpu", "mode": "exact", "streams": 4, "sampled_frames_per_s": 321.0},
        {"device": "cpu", "mode": "keyframe", "sampled_frames_per_s": 40.0}]})
    write(tmp_path, "train_h100.json", {"benchmark": "train", "machine": H100, "versions": v,
                                        "results": {"gpu": {"images_per_s": 2500.0, "batch_size": 128},
                                                    "cpu": {"images_per_s": 30.0}}})
    write(tmp_path, "scan_h100.json", {"benchmark": "scan", "machine": H100, "versions": v,
                                       "results": {"runs": [{"device": "gpu", "frames_per_s": 720.0, "videos_per_s": 3},
                                                            {"device": "gpu", "frames_per_s": 600.0}]}})
    write(tmp_path, "sampling_laptop.json", {"machine": LAPTOP, "versions": v, "quick": True,
                                             "results": [{"sampled_frames_per_s": 20.0}]})  # kind from file name
    write(tmp_path, "scan-rtx.json", {"benchmark": "scan_bench", "machine": RTX, "versions": v,
                                      "results": [{"device": "cuda", "scan_frames_per_s": 1000.0}]})
    write(tmp_path, "notes.json", {"hello": 1})  # not ours
    write(tmp_path, "broken.json", "{not json")
    write(tmp_path, "train_empty.json", {"machine": H100, "results": []})
    return tmp_path


def test_rows_keep_the_best_configuration_per_machine_and_device(compare, results: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        rows, used = compare.load_rows(results)
    assert sorted(used) == ["sampling_h100.json", "sampling_laptop.json", "scan-rtx.json", "scan_h100.json",
                            "train_h100.json"]
    for name in ("notes.json", "broken.json", "train_empty.json"):
        assert f"skipping {name}" in caplog.text
    table = {(r.machine.label(r.device), r.device): {k: b.value for k, b in r.best.items()} for r in rows}
    assert table == {
        ("NVIDIA H100 80GB HBM3", "gpu"): {"sampling": 900.0, "train": 2500.0, "scan": 720.0},
        ("CPU: AMD EPYC 9454, 16 cores", "cpu"): {"sampling": 40.0, "train": 30.0},
        ("CPU: Intel Core i7-1260P, 12 cores", "cpu"): {"sampling": 20.0},
        ("NVIDIA GeForce RTX 4090", "gpu"): {"scan": 1000.0},
    }
    # GPUs first, fastest first.
    assert [r.machine.label(r.device) for r in rows][:2] == ["NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3"]
    h100 = next(r for r in rows if r.device == "gpu" and r.machine.gpu.startswith("NVIDIA H100"))
    assert h100.best["sampling"].config == "mode=keyframe, streams=4"
    assert h100.best["train"].config == "batch_size=128"


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
    # No scan result: projected from sampling, marked *.
    assert row["CPU: AMD EPYC 9454, 16 cores"].endswith("| 40.0 | 30.0 | — | 5.0 h * |")
    assert "CPU: Intel Core i7-1260P, 12 cores (quick run)" in text
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
