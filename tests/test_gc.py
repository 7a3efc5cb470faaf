"""Long jobs keep what startup built out of the cyclic garbage collector's passes (see quadvault_dali._gc)."""

from __future__ import annotations

import gc
import weakref

import pytest

import quadvault_dali._gc as qgc


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_startup_objects_are_frozen_once_and_new_garbage_is_still_collected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qgc, "_frozen", False)
    survivor = _Node()
    qgc.freeze_startup_objects()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert not gc.is_tracked(survivor) or not any(survivor is o for o in gc.get_objects(generation=2))
    qgc.freeze_startup_objects()  # the second call is a no-op: the objects of later jobs stay collectable
    assert gc.get_freeze_count() <= frozen  # (frozen objects a leftover thread of another test frees still go)
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a reference cycle made after the freeze
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def test_the_scan_command_freezes_before_the_scan_and_the_library_does_not(tmp_path, monkeypatch: pytest.MonkeyPatch
                                                                          ) -> None:
    """``quadvault scan`` owns its process and freezes once its libraries are imported, before scanning;
    ``scan_library`` itself (what a notebook would call) leaves the caller's garbage collector alone."""
    import torch
    from click.testing import CliRunner

    import quadvault_dali.scan.runner as runner
    from quadvault_dali.cli.main import main as cli
    from quadvault_dali.model import build_network, save_model
    from quadvault_dali.synth import SynthSpec, make_video

    events: list[str] = []
    monkeypatch.setattr(qgc, "freeze_startup_objects", lambda: events.append("freeze"))
    real_scan = runner.scan_library

    def scan_library(*args, **kw):  # type: ignore[no-untyped-def]
        events.append("scan")
        return real_scan(*args, **kw)

    monkeypatch.setattr(runner, "scan_library", scan_library)
    make_video(tmp_path / "lib" / "a.mp4", SynthSpec(width=64, height=64, fps=10, duration_s=2.0))
    torch.manual_seed(0)
    net = build_network("efficientnet-lite0", image_size=64, pretrained="none").eval()
    model = save_model(tmp_path / "model", net, {"architecture": "efficientnet-lite0", "image_size": 64, "name": "t"})
    result = CliRunner().invoke(cli, ["-q", "scan", str(tmp_path / "lib"), "-m", str(model), "-o",
                                      str(tmp_path / "out"), "--device", "cpu", "--streams", "1"])
    assert result.exit_code == 0, result.output
    assert events == ["freeze", "scan"]
    events.clear()
    runner.scan_library([tmp_path / "lib"], runner.ScanOptions(out_dir=tmp_path / "out2", device="cpu", streams=1),
                        model_paths=[model])
    assert events == ["scan"]  # the library function: no freeze
