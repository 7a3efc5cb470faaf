"""The CLI's promises that hold for every command: one-line errors, never a traceback, sensible exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from click.testing import CliRunner

from quadvault_dali.cli.main import main as cli


def test_an_output_path_through_a_file_is_one_line_not_a_traceback(make_clip: Callable[..., Path],
                                                                   tmp_path: Path) -> None:
    video = make_clip("cli_sample.mp4", duration_s=2.0, width=160, height=96, fps=10)
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(cli, ["sample", str(video), "--out", str(blocker / "frames"), "--device", "cpu"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    last = result.output.strip().splitlines()[-1]
    assert last == f"Error: {blocker / 'frames'}: Not a directory (check that the folder exists and can be written)"
