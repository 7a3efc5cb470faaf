"""How busy the GPU's engines were during a measurement: SM, hardware video decoder (NVDEC), JPEG engine.

A throughput number alone cannot say whether the hardware is the limit: 450 sampled frames/s is the
ceiling if NVDEC is 100 % busy and an overhead to remove if it is 20 % busy. So every GPU row carries the
mean and peak utilisation of the engines it uses, sampled every ``interval_s`` from NVML (``pynvml``) or,
without it, from one ``nvidia-smi --loop-ms`` process (not a process per sample: that would take the CPU being
measured). NVML averages each value over its own sample period (~1/6 s) and, on a card with several
decoders, over all of them: "decoder 100 %" means every NVDEC was busy. The GPU is named by its UUID, since
CUDA and NVML number GPUs differently once ``CUDA_VISIBLE_DEVICES`` or ``CUDA_DEVICE_ORDER`` is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from typing import Callable

from _cpu_usage import host_cpu_s, process_tree_cpu_s

#: what each metric is called in nvidia-smi's ``--query-gpu``
SMI_FIELDS = {"gpu": "utilization.gpu", "decoder": "utilization.decoder", "jpeg": "utilization.jpeg"}

Reader = Callable[[], dict[str, float]]


def device_key(index: int) -> str:
    """CUDA device ``index`` as NVML and nvidia-smi know it: ``GPU-<uuid>``, or the index without CUDA."""
    try:
        import torch

        if torch.cuda.is_available():
            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
            if uuid is not None:
                text = str(uuid)
                return text if text.startswith("GPU-") else f"GPU-{text}"
    except Exception:  # noqa: BLE001 - no CUDA: the index is all there is
        pass
    return str(index)


def _nvml_reader(key: str, metrics: tuple[str, ...]) -> Reader | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = (pynvml.nvmlDeviceGetHandleByUUID(key) if key.startswith("GPU-")
                  else pynvml.nvmlDeviceGetHandleByIndex(int(key)))
    except Exception:  # noqa: BLE001 - no NVML bindings or no driver: the CLI may still work
        return None
    getters: dict[str, Callable[[], float]] = {
        "gpu": lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
        "decoder": lambda: float(pynvml.nvmlDeviceGetDecoderUtilization(handle)[0]),
    }
    if hasattr(pynvml, "nvmlDeviceGetJpgUtilization"):
        getters["jpeg"] = lambda: float(pynvml.nvmlDeviceGetJpgUtilization(handle)[0])
    usable = {}
    for name in metrics:
        try:
            getters[name]()
            usable[name] = getters[name]
        except Exception:  # noqa: BLE001 - a metric this driver or binding lacks is left out
            pass
    return (lambda: {name: get() for name, get in usable.items()}) if usable else None


def _smi_command(key: str, names: list[str]) -> list[str] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    return [smi, f"--id={key}", f"--query-gpu={','.join(SMI_FIELDS[n] for n in names)}", "--format=csv,noheader,nounits"]


def _parse(line: str, names: list[str]) -> dict[str, float]:
    values = [v.strip() for v in line.strip().split(",")]
    if len(values) != len(names):
        return {}
    return {n: float(v) for n, v in zip(names, values) if v.replace(".", "", 1).isdigit()}


def _smi_fields(key: str, metrics: tuple[str, ...]) -> list[str]:
    """The metrics this nvidia-smi answers (one query each: an older one rejects a query with an unknown field)."""
    usable = []
    for name in metrics:
        cmd = _smi_command(key, [name])
        if cmd is None:
            return []
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and _parse(out.stdout, [name]):
            usable.append(name)
    return usable


class UtilisationMonitor:
    """Samples engine utilisation while the ``with`` block runs; ``summary()`` gives
    ``{"gpu_util_mean": .., "gpu_util_max": .., "decoder_util_mean": .., ...}`` or ``{}`` where nothing
    could be read (no GPU, no NVML, no nvidia-smi)."""

    def __init__(self, index: int = 0, metrics: tuple[str, ...] = ("gpu", "decoder"), interval_s: float = 0.1,
                 reader: Reader | None = None, cpu: bool = False) -> None:
        self.interval_s = interval_s
        self.cpu = cpu  # also the host's share: ``cpu_cores_busy`` of ``cpu_count`` for this process tree
        self._cpu_start: tuple[float, float] | None = None
        self._cpu_used: tuple[float, float] | None = None
        self._host_start: tuple[float, float] | None = None
        self._host_used: tuple[float, float] | None = None  # the whole host's busy and iowait CPU seconds
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        key = device_key(index) if metrics and reader is None else str(index)
        self._read = reader or (_nvml_reader(key, metrics) if metrics else None)
        self._smi = [] if self._read is not None or not metrics else _smi_fields(key, metrics)
        self._smi_cmd = _smi_command(key, self._smi) if self._smi else None

    def __enter__(self) -> "UtilisationMonitor":
        if self.cpu:
            self._cpu_start = (time.perf_counter(), process_tree_cpu_s())
            self._host_start = host_cpu_s()
        if self._read is not None:
            self._thread = threading.Thread(target=self._poll, name="utilisation-monitor", daemon=True)
        elif self._smi_cmd is not None:
            self._proc = subprocess.Popen(self._smi_cmd + [f"--loop-ms={max(50, int(self.interval_s * 1000))}"],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._follow, name="utilisation-monitor", daemon=True)
        if self._thread is not None:
            self._thread.start()
        return self

    def _poll(self) -> None:
        # the first sample waits one interval: NVML's value covers its last period, before the block began
        while not self._stop.wait(self.interval_s):
            try:
                self.samples.append(self._read())  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a failed sample is just missing
                pass

    def _follow(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        first = True
        for line in self._proc.stdout:
            if self._stop.is_set():
                return
            sample = _parse(line, self._smi)
            if sample and not first:  # the first line covers the time before the block began
                self.samples.append(sample)
            first = False

    def __exit__(self, *exc: object) -> None:
        if self._cpu_start is not None:
            wall0, cpu0 = self._cpu_start
            self._cpu_used = (time.perf_counter() - wall0, process_tree_cpu_s() - cpu0)
            host = host_cpu_s()
            if host is not None and self._host_start is not None:
                self._host_used = (host[0] - self._host_start[0], host[1] - self._host_start[1])
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        samples = list(self.samples)
        for name in sorted({name for sample in samples for name in sample}):
            values = [s[name] for s in samples if name in s]
            out[f"{name}_util_mean"] = round(sum(values) / len(values), 1)
            out[f"{name}_util_max"] = round(max(values), 1)
        if samples:
            out["util_samples"] = len(samples)
        if self._cpu_used is not None and self._cpu_used[0] > 0:
            out["cpu_cores_busy"] = round(self._cpu_used[1] / self._cpu_used[0], 2)
            out["cpu_count"] = os.cpu_count() or 0
            if self._host_used is not None:  # everything on the host, this row included: others = host - ours
                out["host_cores_busy"] = round(self._host_used[0] / self._cpu_used[0], 2)
                out["host_cores_iowait"] = round(self._host_used[1] / self._cpu_used[0], 2)
        return out
