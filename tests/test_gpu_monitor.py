"""The benchmarks' utilisation monitor: the evidence of whether NVDEC, not our code, limits a GPU row."""

from __future__ import annotations

import itertools
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from conftest import import_benchmark


@pytest.fixture(scope="module")
def monitor_module():
    return import_benchmark("_gpu_monitor")


FAKE_SMI = """#!/bin/sh
# answers like nvidia-smi on a driver that knows the decoder but not the JPEG engine; --loop-ms=N repeats
loop=""
for arg in "$@"; do
  case "$arg" in
    --query-gpu=*) query="${arg#--query-gpu=}" ;;
    --loop-ms=*) loop=1 ;;
  esac
  echo "$arg" >> "$(dirname "$0")/calls.log"
done
case "$query" in
  *utilization.jpeg*) echo "Field \\"utilization.jpeg\\" is not a valid field to query." >&2; exit 2 ;;
esac
out=""
for field in $(echo "$query" | tr ',' ' '); do
  case "$field" in
    utilization.gpu) value=40 ;;
    utilization.decoder) value=90 ;;
  esac
  out="${out:+$out, }$value"
done
echo "$out"
while [ -n "$loop" ]; do sleep 0.02; echo "$out"; done
"""


def test_nvidia_smi_values_are_averaged_and_an_unknown_field_left_out(monitor_module, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(monitor_module, "_nvml_reader", lambda index, metrics: None)
    with monitor_module.UtilisationMonitor(metrics=("gpu", "decoder", "jpeg"), interval_s=0.02) as busy:
        time.sleep(0.4)
    summary = busy.summary()
    assert summary["gpu_util_mean"] == summary["gpu_util_max"] == 40.0
    assert summary["decoder_util_mean"] == summary["decoder_util_max"] == 90.0
    assert not any(key.startswith("jpeg") for key in summary)
    assert summary["util_samples"] >= 2
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert sum(c.startswith("--loop-ms=") for c in calls) == 1  # one long-lived process, not one per sample


def test_mean_and_peak_per_engine(monitor_module) -> None:
    values = itertools.cycle([{"decoder": 20.0, "gpu": 5.0}, {"decoder": 60.0, "gpu": 15.0}])
    with monitor_module.UtilisationMonitor(reader=lambda: next(values), interval_s=0.01) as busy:
        while len(busy.samples) < 4:
            time.sleep(0.01)
    count = len(busy.samples)
    summary = busy.summary()
    assert summary["decoder_util_max"] == 60.0 and summary["gpu_util_max"] == 15.0
    expected = sum(s["decoder"] for s in busy.samples[:count]) / count
    assert summary["decoder_util_mean"] == pytest.approx(expected, abs=0.05)
    assert 20.0 < summary["decoder_util_mean"] < 60.0


def test_nothing_to_read_gives_an_empty_summary(monitor_module) -> None:
    with monitor_module.UtilisationMonitor(metrics=()) as busy:
        time.sleep(0.05)
    assert busy.summary() == {} and busy.samples == []


def test_cpu_share_counts_the_child_processes(monitor_module) -> None:
    """cpu_cores_busy covers the work of processes this one started (decoding children), not only its own."""
    import subprocess

    burn = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass"
    with monitor_module.UtilisationMonitor(metrics=(), cpu=True) as busy:
        subprocess.run([sys.executable, "-c", burn], check=True)
    with monitor_module.UtilisationMonitor(metrics=(), cpu=True) as idle:
        time.sleep(0.3)
    assert busy.summary()["cpu_cores_busy"] > 0.5 and busy.summary()["cpu_count"] == os.cpu_count()
    assert idle.summary()["cpu_cores_busy"] < 0.2


def test_the_host_share_shows_work_outside_the_process_tree(monitor_module) -> None:
    """Stop 31's sampling rows ran beside the background build of the scan library and no row could tell:
    host_cores_busy counts every process of the host, so a busy neighbour shows against cpu_cores_busy."""
    import subprocess

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat here")
    burn = "import time; end = time.process_time() + 0.8\nwhile time.process_time() < end: pass"
    # a neighbour outside this process tree: the shell that starts it exits, so it is nobody's child here
    started = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{burn}" >/dev/null 2>&1 & echo $!'],
                             capture_output=True, text=True, check=True)
    assert started.stdout.split()[-1].isdigit()  # it ends by itself after 0.8 s of CPU
    time.sleep(0.1)
    with monitor_module.UtilisationMonitor(metrics=(), cpu=True) as quiet_row:
        time.sleep(0.4)
    summary = quiet_row.summary()
    assert summary["cpu_cores_busy"] < 0.2  # the row itself slept
    assert summary["host_cores_busy"] - summary["cpu_cores_busy"] > 0.5, summary  # its neighbour burned a core
    assert summary["host_cores_iowait"] >= 0
