"""benchmarks/gpu_diagnose.py's own machinery, without a GPU: clips holding several videos' keyframes back to
back decode to the right frames in the right order on DALI's CPU decoder, and the colour comparison puts a
bias confined to the top rows where it belongs."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from quadvault_dali.pipelines import video_sampling_pipeline
from quadvault_dali.sampling._clip_decoder import feed_clips

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _diagnose_colour import compare  # noqa: E402
from _diagnose_media import Case, check_stamps, concat_keyframes, plan_cut  # noqa: E402


def test_concatenated_keyframes_decode_in_order(make_clip: Callable[..., Path]) -> None:
    path = make_clip("diag_vp9.mp4", codec="vp9", width=128, height=80, fps=10, duration_s=3.0, source_id=4)
    _, clips = plan_cut(path)
    assert [c.times for c in clips] == [[0.0, 1.0, 2.0]]
    clip, stamps = concat_keyframes(path, 3)
    assert len(clip) == 9 and clip.frames.tolist() == list(range(9))
    assert stamps == [0.0, 1.0, 2.0] * 3 and clip.times == sorted(set(clip.times))  # source times rise strictly
    pipe = video_sampling_pipeline(decoder_device="cpu", size=64, square=True, batch_size=2, num_threads=1,
                                   device_id=None)
    pipe.build()
    feed_clips(pipe, [clip] * 2)
    (out,) = pipe.run()
    case = Case("diag", clip, stamps, 4)
    for i in range(2):
        assert check_stamps(torch.from_dlpack(out[i]), case) == "ok"
    assert check_stamps(torch.from_dlpack(out[0])[1:], case).startswith("8 frames")
    shuffled = torch.from_dlpack(out[0])[[1, 0, 2, 3, 4, 5, 6, 7, 8]]
    assert check_stamps(shuffled, case).startswith("frame 0 shows")


def test_compare_locates_a_bias_in_the_top_rows() -> None:
    ref = np.full((2, 100, 40, 3), 100, np.uint8)
    shifted = ref.copy()
    shifted[:, :10, :, 1] += 5  # green +5 in the top 10 % of rows only
    row = compare(shifted, ref)
    assert row["top10"] == [0.0, 5.0, 0.0] and row["middle"] == row["bottom10"] == [0.0, 0.0, 0.0]
    assert row["bias"] == [0.0, 0.5, 0.0] and row["bands10"][0] == [0.0, 5.0, 0.0]


def test_scale_cells_add_up_the_frames_of_every_process(make_clip: Callable[..., Path]) -> None:
    """The scale section's worker processes (spawned, fed by pipe) decode the clip they are sent, together."""
    from _diagnose_scale import ProcessGrid  # noqa: E402
    from _gpu_monitor import UtilisationMonitor  # noqa: E402

    path = make_clip("diag_scale_vp9.mp4", codec="vp9", width=128, height=80, fps=10, duration_s=3.0, source_id=5)
    _, clips = plan_cut(path)
    case = Case("scale", clips[0], clips[0].times, 5)
    broken = Case("broken", replace(clips[0], _data=b"not a video at all"), clips[0].times, 5)
    idle = lambda: UtilisationMonitor(reader=None, metrics=())  # noqa: E731
    grid = ProcessGrid(2, "cpu", 0, 64, start_timeout_s=120)
    try:
        failed = grid.cell(broken, 2, 1, 2, 0.2, idle)  # both fail; the second's answer is left unread
        rows = [grid.cell(case, 2, 1, n, 0.2, idle) for n in (1, 2)]
    finally:
        grid.close()
    assert all(not p.is_alive() for p in grid.procs)
    assert "error" in failed and failed["processes"] == 2
    for row, n in zip(rows, (1, 2)):
        assert "error" not in row, row
        assert row["processes"] == n and len(row["per_process_frames_per_s"]) == n
        assert row["frames"] == row["runs"] * 2 * 3 and row["runs"] >= n  # 2 clips of 3 frames per run
        assert min(row["per_process_frames_per_s"]) > 0 and row["frames_per_s"] > 0


def test_stream_runner_decodes_the_clip_over_and_over_in_order(make_clip: Callable[..., Path]) -> None:
    """The "stream" case (fn.experimental.inputs.video, one decoder for a long clip) returns the clip's frames
    in order, clip after clip, partial batches at each clip's end included, and never runs dry."""
    from _diagnose_media import concat_keyframes
    from _diagnose_scale import StreamRunner, make_runner

    from quadvault_dali.synth import read_stamp

    path = make_clip("diag_stream_vp9.mp4", codec="vp9", width=128, height=80, fps=10, duration_s=3.0, source_id=6)
    clip, stamps = concat_keyframes(path, 4)  # 12 keyframes: 0, 1, 2 s, four times
    case = Case("x/stream", clip, stamps, 6)
    runner = make_runner("cpu", case, 2, 1, 64, 0)
    assert isinstance(runner, StreamRunner)
    seen = [read_stamp(image).time_s for _ in range(6) for seq in runner.run() for image in seq.numpy()]
    assert runner.frames_out == len(seen) >= 6 * 16 // 2
    assert seen == (stamps * (len(seen) // len(stamps) + 1))[: len(seen)]
