"""How busy the GPU's engines were during a measurement: SM, hardware video decoder (NVDEC), JPEG engine.

A throughput number alone cannot say whether the hardware is the limit: 450 sampled frames/s is the
ceiling if NVDEC is 100 % busy and an overhead to remove if it is 20 % busy. So every GPU row carries the
mean and peak utilisation of the engines it uses, sampled every ``interval_s`` from NVML (``pynvml``) or,
without it, from ``nvidia-smi``. NVML averages each value over its own sample period (~1/6 s) and, on a
card with several decoders, over all of them: "decoder 100 %" means every NVDEC was busy.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from typing import Callable

#: what each metric is called in nvidia-smi's ``--query-gpu``
SMI_FIELDS = {"gpu": "utilization.gpu", "decoder": "utilization.decoder", "jpeg": "utilization.jpeg"}

Reader = Callable[[], dict[str, float]]


def _nvml_reader(index: int, metrics: tuple[str, ...]) -> Reader | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
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


def _smi_reader(index: int, metrics: tuple[str, ...]) -> Reader | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None

    def query(names: list[str]) -> dict[str, float]:
        fields = ",".join(SMI_FIELDS[n] for n in names)
        out = subprocess.run([smi, f"--id={index}", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5)
        values = [v.strip() for v in out.stdout.strip().split(",")]
        if out.returncode != 0 or len(values) != len(names):
            raise RuntimeError(out.stderr.strip() or out.stdout.strip())
        return {n: float(v) for n, v in zip(names, values) if v.replace(".", "", 1).isdigit()}

    usable = []
    for name in metrics:  # one at a time first: an older nvidia-smi rejects the whole query for one unknown field
        try:
            if query([name]):
                usable.append(name)
        except Exception:  # noqa: BLE001
            pass
    return (lambda: query(usable)) if usable else None


class UtilisationMonitor:
    """Samples engine utilisation in a thread while the ``with`` block runs; ``summary()`` gives
    ``{"gpu_util_mean": .., "gpu_util_max": .., "decoder_util_mean": .., ...}`` or ``{}`` where nothing
    could be read (no GPU, no NVML, no nvidia-smi)."""

    def __init__(self, index: int = 0, metrics: tuple[str, ...] = ("gpu", "decoder"), interval_s: float = 0.1,
                 reader: Reader | None = None) -> None:
        self.interval_s = interval_s
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = reader or ((_nvml_reader(index, metrics) or _smi_reader(index, metrics)) if metrics else None)

    def __enter__(self) -> "UtilisationMonitor":
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, name="utilisation-monitor", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        # the first sample waits one interval: NVML's value covers its last period, before the block began
        while not self._stop.wait(self.interval_s):
            try:
                self.samples.append(self._read())  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a failed sample is just missing
                pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        names = sorted({name for sample in self.samples for name in sample})
        for name in names:
            values = [s[name] for s in self.samples if name in s]
            out[f"{name}_util_mean"] = round(sum(values) / len(values), 1)
            out[f"{name}_util_max"] = round(max(values), 1)
        if self.samples:
            out["util_samples"] = len(self.samples)
        return out


def monitor_for(device: str, metrics: tuple[str, ...] = ("gpu", "decoder")) -> UtilisationMonitor | None:
    """A monitor for a ``gpu`` measurement, ``None`` for the CPU (whose rows then carry no utilisation)."""
    return UtilisationMonitor(metrics=metrics) if device == "gpu" else None
