"""benchmarks/ab.py: a lease's layouts against the baseline row of the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import import_benchmark


@pytest.fixture(scope="module")
def ab():
    return import_benchmark("ab")


def test_sampling_layouts_are_ratios_to_the_baseline_of_their_clip(ab, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rows = [{"backend": "gpu", "mode": "keyframe", "clip": c, "layout": layout, "sampled_fps": fps,
             "decoder_util_mean": 30.0, "cpu_cores_busy": 3.5, "errors": []}
            for c, layout, fps in (("a", "4x4x4", 1000.0), ("a", "4p4x4x4", 2500.0), ("a", "4x4x4i", 1040.0),
                                   ("b", "4x4x4", 500.0), ("b", "4x4x4s", 400.0))]
    rows.append({"backend": "cpu", "mode": "keyframe", "clip": "a", "sampled_fps": 50.0})
    got = {(r["clip"], r["row"]): r for r in ab.sampling_rows({"results": rows}, "4x4x4")}
    assert len(got) == 5  # gpu rows only
    assert got[("a", "4p4x4x4")]["vs_baseline"] == 2.5 and got[("a", "4p4x4x4")]["verdict"] == "better"
    assert got[("a", "4x4x4i")]["verdict"] == "same" and got[("b", "4x4x4s")]["verdict"] == "worse"
    assert got[("a", "4x4x4")]["vs_baseline"] is None and "NVDEC 30 %, cores 3.5" in got[("a", "4x4x4")]["why"]
    path = tmp_path / "sampling_x.json"
    path.write_text(json.dumps({"benchmark": "sampling", "machine": {"gpu": "H"}, "results": rows}))
    assert ab.main([str(path)]) == 0
    assert "2.50x better" in capsys.readouterr().out


def test_scan_rows_against_cat_and_the_keyframe_scan(ab) -> None:  # type: ignore[no-untyped-def]
    doc = {"cat_read": {"wall_s": 8.0}, "scan": {"wall_s": 32.0}, "scan_keyframe": {"wall_s": 8.0},
           "scan_layouts": [{"layout": "4x4k", "wall_s": 4.0, "decoder_util_mean": 90.0}]}
    got = {r["row"]: r for r in ab.scan_rows(doc)}
    assert got["keyframe"]["vs_cat"] == 1.0 and got["keyframe"]["vs_keyframe"] is None
    assert got["4x4k"]["vs_cat"] == 0.5 and got["4x4k"]["vs_keyframe"] == 2.0 and got["4x4k"]["verdict"] == "better"
    assert got["auto (default)"]["verdict"] == "worse"


def test_a_row_that_shared_the_host_says_so(ab) -> None:  # type: ignore[no-untyped-def]
    """Stop 31's sampling rows ran beside the scan library's background build: the row now says how many cores
    others kept busy (host - this row's own), and the disk wait."""
    shared = ab._why({"cpu_cores_busy": 2.4, "host_cores_busy": 9.0, "host_cores_iowait": 1.2})
    assert "cores 2.4" in shared and "OTHERS ON THE HOST 6.6 cores" in shared and "iowait 1.2 cores" in shared
    alone = ab._why({"cpu_cores_busy": 2.4, "host_cores_busy": 2.6, "host_cores_iowait": 0.0})
    assert "OTHERS" not in alone and "iowait" not in alone
