"""test-video and scoring: a hand-built model whose score is a known function of colour.

``colour_model`` sets ResNet18's weights so that the network passes the normalised red and blue
planes through (every residual branch zeroed, downsampling convolutions as identities) and the head
computes ``k * (mean red - mean blue)``: warm frames score high, grey ones low, so the expected
ordering of scores is certain without training anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from quadvault_dali.cli.main import main
from quadvault_dali.model import build_network, load_model, save_model
from quadvault_dali.scoring import SAMPLING_SIZES, sampling_size, score_video, scoring_sampler

IMAGE_SIZE = 64


def build_colour_model(directory: Path, *, gain: float = 2.0, bias: float = 0.0, sign: float = 1.0,
                       name: str | None = None, image_size: int = IMAGE_SIZE) -> Path:
    """Saves a ResNet18 highlight model scoring ``sigmoid(sign * gain * (red - blue) + bias)``."""
    net = build_network("resnet18", image_size=image_size, pretrained="none")
    bb = net.backbone
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for m in bb.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        bb.conv1.weight[0, 0, 3, 3] = 1.0  # channel 0 = red (centre tap of the 7x7 kernel)
        bb.conv1.weight[1, 2, 3, 3] = 1.0  # channel 1 = blue
        bb.bn1.weight.fill_(1.0)
        bb.bn1.bias[:2] = 4.0  # keep both above zero through the ReLUs
        for layer in (bb.layer2, bb.layer3, bb.layer4):
            conv, bn = layer[0].downsample
            for i in range(conv.weight.shape[1]):
                conv.weight[i, i, 0, 0] = 1.0  # identity on the incoming channels
            bn.weight.fill_(1.0)
        net.head.weight[0, 0] = sign * gain
        net.head.weight[0, 1] = -sign * gain
        net.head.bias.fill_(bias)
    card = {"architecture": "resnet18", "image_size": image_size, "threshold": 0.5}
    if name:
        card["name"] = name
    return save_model(directory, net, card)


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_colour_model(tmp_path_factory.mktemp("models") / "warm")


@pytest.fixture(scope="module")
def cold_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_colour_model(tmp_path_factory.mktemp("models") / "cold", sign=-1.0)


@pytest.fixture(scope="module")
def clips(make_clip: Callable[..., Path]) -> dict[str, Path]:
    common = dict(width=160, height=96, fps=10, duration_s=4.0)
    return {
        "warm": make_clip("tv_warm.mp4", style="highlight", source_id=1, **common),
        "grey": make_clip("tv_grey.mp4", style="normal", source_id=2, **common),
        "mixed": make_clip("tv_mixed.mp4", segments=(("highlight", 2.0), ("normal", 2.0)), source_id=3, **common),
    }


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_score_orders_warm_above_grey(colour_model: Path, clips: dict[str, Path], device: str) -> None:
    model = load_model(colour_model, device="cuda" if device == "gpu" else "cpu")
    sampler = scoring_sampler([model], device=device)
    scores = {k: score_video(p, [model], sampler=sampler) for k, p in clips.items()}
    assert scores["warm"].score > 0.9
    assert scores["grey"].score < 0.5
    assert scores["grey"].score < scores["mixed"].score < scores["warm"].score
    # one score per sampled second, and the video score is their mean
    for result in scores.values():
        assert result.timestamps == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=0.051)
        assert result.score == pytest.approx(float(np.mean(result.frame_scores)))
    mixed = scores["mixed"].frame_scores
    assert min(mixed[:2]) > max(mixed[2:])  # highlight seconds first, then grey ones


def test_score_matches_model_on_sampled_frames(colour_model: Path, clips: dict[str, Path]) -> None:
    model = load_model(colour_model)
    sampler = scoring_sampler([model], device="cpu")
    frames, _, _ = sampler.sample_video(clips["mixed"])
    expected = model.score_frames(frames).numpy()
    assert score_video(clips["mixed"], [model], sampler=sampler).frame_scores == pytest.approx(expected, abs=1e-6)


def test_cli_prints_score_line(colour_model: Path, clips: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["test-video", str(clips["warm"]), str(colour_model), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    score = load_model(colour_model)
    value = score_video(clips["warm"], [score], device="cpu").score
    assert first == f"Highlight score: {value:.2f} ({round(float(f'{value:.2f}') * 100)}% confidence this is a highlight)"
    assert "Verdict: highlight (threshold 0.50; 4 frames at 1 fps)" in res.output


def test_the_score_line_does_not_contradict_a_tuned_threshold(colour_model: Path, clips: dict[str, Path],
                                                               tmp_path: Path, make_clip: Callable[..., Path]) -> None:
    """At a tuned threshold of 0.3, "41% confidence this is a highlight" beside "Verdict: highlight" read as a
    contradiction (a returning user's find): the line names the model's threshold instead."""
    import json
    import shutil

    model = tmp_path / "tuned"
    shutil.copytree(colour_model, model)
    card = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**card, "threshold": 0.3}))
    res = CliRunner().invoke(main, ["test-video", str(clips["warm"]), str(model), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert first.endswith("(this model calls 0.30 and above a highlight)") and "confidence" not in res.output
    odd = make_clip("tv_7333.mp4", duration_s=3.0, fps=7.333)  # frames at 0.1364 s steps: times off the second
    as_json = CliRunner().invoke(main, ["test-video", str(odd), str(model), "--device", "cpu", "--json"])
    times = [row["timestamp_s"] for row in json.loads(as_json.output)["timeline"]]
    sampler = scoring_sampler([load_model(model)], device="cpu")
    _, exact, _ = sampler.sample_video(odd)
    assert any(round(float(t), 3) != round(float(t), 6) for t in exact)  # 3 decimals would lose something here
    assert times == pytest.approx([round(float(t), 6) for t in exact], abs=1e-9)  # as the scan stores them


def test_cli_timeline_lists_every_second(colour_model: Path, clips: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["test-video", str(clips["mixed"]), str(colour_model), "--timeline",
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    rows = lines[lines.index("Timeline:") + 1:]
    assert [r.split()[0] for r in rows] == ["00:00", "00:01", "00:02", "00:03"]
    values = [float(r.split()[1]) for r in rows]
    assert min(values[:2]) > max(values[2:])
    # the best second and how many reach the threshold: a long flight's mean hides its great moments
    above = sum(v >= 0.5 for v in values)  # (the shown values are rounded: the best is one of the top ones)
    assert any(f"Best moment: {rows[i].split()[0]} scores {values[i]:.2f}; {above} of 4 frames score 0.50 or more"
               in lines for i in range(4) if values[i] == max(values))


def test_ensemble_averages_probabilities(colour_model: Path, cold_model: Path, clips: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["test-video", str(clips["warm"]), str(colour_model), "--model",
                                    str(cold_model), "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    warm, cold = (m["score"] for m in data["models"])
    assert warm > 0.9 and cold < 0.1  # the two models disagree ...
    assert data["score"] == pytest.approx((warm + cold) / 2, abs=1e-5)  # ... and their mean is reported
    assert len(data["timeline"]) == 4
    for row in data["timeline"]:
        assert row["score"] == pytest.approx(sum(row["model_scores"]) / 2, abs=1e-5)


def test_the_same_model_given_twice_is_warned_about(colour_model: Path, cold_model: Path, clips: dict[str, Path],
                                                     tmp_path: Path) -> None:
    """A copy of the model under another name, given beside it, counted twice in the ensemble's mean unsaid."""
    import shutil

    copy = tmp_path / "same again"
    shutil.copytree(colour_model, copy)
    res = CliRunner().invoke(main, ["test-video", str(clips["warm"]), str(colour_model), "--model", str(copy),
                                    "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "is the same model as" in res.output and "counts twice in the ensemble's mean" in res.output
    res = CliRunner().invoke(main, ["test-video", str(clips["warm"]), str(colour_model), "--model",
                                    str(cold_model), "--json", "--device", "cpu"])
    assert "is the same model as" not in res.output


def test_a_model_scores_the_same_frames_alone_and_in_an_ensemble(colour_model: Path, clips: dict[str, Path],
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames were sampled at the largest model's size, so a 64 px model scored other (twice resized) frames
    beside a 96 px one than alone: its scores depended on its companions."""
    small = load_model(colour_model)
    large = load_model(build_colour_model(tmp_path / "large", image_size=96))
    seen: list[torch.Tensor] = []
    real = type(small).score_frames

    def spy(self, frames, **kw):  # type: ignore[no-untyped-def]
        if self is small:
            seen.append(frames.clone())
        return real(self, frames, **kw)

    monkeypatch.setattr(type(small), "score_frames", spy)
    alone = score_video(clips["mixed"], [small], device="cpu")
    together = score_video(clips["mixed"], [small, large], device="cpu")
    assert len(seen) == 2 and torch.equal(seen[0], seen[1]) and seen[0].shape[-1] == SAMPLING_SIZES[0]
    assert together.model_scores[0] == pytest.approx(alone.model_scores[0], abs=1e-6)


def test_sampling_size_covers_the_largest_model() -> None:
    class M:
        def __init__(self, size: int) -> None:
            self.image_size = size

    assert sampling_size([M(64)]) == sampling_size([M(64), M(224)]) == 256
    assert sampling_size([M(300), M(96)]) == 512
    assert sampling_size([M(2048)]) == 2048
    with pytest.raises(ValueError):
        sampling_size([])


def test_cli_errors_are_one_line(colour_model: Path, tmp_path: Path, broken_clips: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["test-video", str(broken_clips["text"]), str(colour_model), "--device", "cpu"])
    assert res.exit_code == 1
    assert f"Error: {broken_clips['text']}" in res.output
    not_model = tmp_path / "nothing"
    not_model.mkdir()
    res = CliRunner().invoke(main, ["test-video", str(broken_clips["text"]), str(not_model)])
    assert res.exit_code == 1
    assert "model card" in res.output and str(not_model) in res.output


@pytest.mark.gpu
def test_cli_gpu_scores_equal_cpu_scores(colour_model: Path, clips: dict[str, Path]) -> None:
    """The same video through NVDEC + bf16 and through PyAV + float32: same seconds, scores within decode noise."""
    runs = {}
    for device in ("gpu", "cpu"):
        res = CliRunner().invoke(main, ["test-video", str(clips["mixed"]), str(colour_model), "--json",
                                        "--device", device])
        assert res.exit_code == 0, res.output
        runs[device] = json.loads(res.output)
    gpu, cpu = runs["gpu"], runs["cpu"]
    assert [r["timestamp_s"] for r in gpu["timeline"]] == [r["timestamp_s"] for r in cpu["timeline"]]
    assert [r["score"] for r in gpu["timeline"]] == pytest.approx([r["score"] for r in cpu["timeline"]], abs=0.1)
    assert gpu["score"] == pytest.approx(cpu["score"], abs=0.05)


def test_a_reader_that_stops_early_ends_the_command_quietly(colour_model: Path, clips: dict[str, Path]) -> None:
    """``quadvault test-video ... --timeline | head -1``: the reader closing the pipe is no error ("Error: Broken
    pipe" and exit 1 before); the command stops as cat does, 141. The pipe is closed before the command writes
    (a reader gone early), so the test does not race the command's output into the pipe's buffer."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run([sys.executable, "-m", "quadvault_dali", "test-video", str(clips["warm"]),
                              str(colour_model), "--timeline", "--device", "cpu"],
                             stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    err = run.stderr.decode()
    assert run.returncode == 141 and "Error" not in err and "Traceback" not in err, err


def test_timeline_times_line_up_at_any_rate() -> None:
    """At 4 fps 0.25 s was shown as ".3" and whole seconds without decimals, so the columns moved (a tester's
    find): every row now has the decimals the timeline needs."""
    from quadvault_dali.cli.test_video import _clock, timeline_decimals

    quarter = [0.0, 0.25, 0.5, 1.0, 61.75]
    assert [_clock(t, timeline_decimals(quarter)) for t in quarter] == ["00:00.00", "00:00.25", "00:00.50",
                                                                        "00:01.00", "01:01.75"]
    assert [_clock(t, timeline_decimals([0.0, 1.0, 3601.0])) for t in (0.0, 1.0, 3601.0)] == ["00:00", "00:01",
                                                                                               "1:00:01"]
    assert timeline_decimals([0.0, 1 / 3]) == 3
