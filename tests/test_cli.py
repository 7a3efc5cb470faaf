"""The CLI's promises that hold for every command: one-line errors, never a traceback, sensible exit codes."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Callable

import click
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


def test_probe_counts_missing_paths_and_bad_files_as_errors(make_clip: Callable[..., Path], tmp_path: Path) -> None:
    good = make_clip("cli_probe.mp4", duration_s=2.0, width=160, height=96, fps=10)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    missing = tmp_path / "nonexistent.mp4"
    result = CliRunner().invoke(cli, ["probe", str(missing), str(good), str(text)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert f"ERROR FileAccessError: {missing}: does not exist" in lines
    assert any(line.startswith("ERROR VideoOpenError:") and str(text) in line for line in lines)
    assert lines[-1] == "2 videos, 1 readable, 1 with errors, 1 paths not found or unreadable"
    assert not any("folder" in line for line in lines)
    clean = CliRunner().invoke(cli, ["probe", str(good)])
    assert clean.exit_code == 0 and clean.output.splitlines()[-1] == "1 videos, 1 readable, 0 with errors"


def test_evaluate_on_a_folder_that_is_no_dataset_says_so(tmp_path: Path) -> None:
    from quadvault_dali.model import build_network, save_model

    model = save_model(tmp_path / "model", build_network("efficientnet-lite0", image_size=32, pretrained="none"),
                       {"architecture": "efficientnet-lite0", "image_size": 32})
    folder = tmp_path / "footage"
    folder.mkdir()
    result = CliRunner().invoke(cli, ["evaluate", str(folder), str(model), "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {folder}: is a folder without dataset.parquet (give a prepare-dataset output folder, its "
        "dataset.parquet, or a labels.json)")


def test_every_python_example_in_the_help_texts_runs_as_printed() -> None:
    """A `python3 -c "..."` example in a command's --help is pasted into a shell as it is printed: the shell must
    hand Python the whole program, and the program must compile (the scan's DuckDB line once printed unescaped
    quotes across two lines)."""
    examples = []
    for name in cli.list_commands(click.Context(cli)):
        text = CliRunner().invoke(cli, [name, "--help"], terminal_width=200).output
        examples += [(name, line.strip()) for line in text.splitlines() if line.strip().startswith("python3 -c")]
    assert any(name == "scan" for name, _ in examples)
    for name, line in examples:
        words = shlex.split(line, comments=True)
        assert words[:2] == ["python3", "-c"] and len(words) == 3, (name, words)
        compile(words[2], f"{name} --help", "exec")


def test_a_log_files_progress_bar_writes_no_oftener_than_its_interval(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """Without a terminal the bar writes whole lines every QUADVAULT_PROGRESS_SECONDS; tqdm's set_postfix refreshes
    at once, which gave a GPU training log a line per batch (a reviewer's find)."""
    import time

    from quadvault_dali import progress

    monkeypatch.setenv("QUADVAULT_PROGRESS_SECONDS", "60")
    with progress.progress_bar(100, "Training") as bar:
        for i in range(100):
            bar.set_postfix(loss=i)
            bar.update(1)
    assert "Training" not in capsys.readouterr().err  # the run was shorter than the interval
    monkeypatch.setenv("QUADVAULT_PROGRESS_SECONDS", "0.05")
    with progress.progress_bar(30, "Training") as bar:
        for i in range(30):
            bar.set_postfix(loss=i)
            bar.update(1)
            time.sleep(0.01)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Training")]
    assert 1 <= len(lines) <= 12 and "\r" not in "".join(lines)


def test_log_options_are_taken_after_the_command_too(make_clip: Callable[..., Path]) -> None:
    """``quadvault scan ... -q`` was refused ("No such option: -q", exit 2, read as a failed overnight scan): -v and
    -q count before or after the command's name, and add up."""
    import logging

    from quadvault_dali.progress import is_quiet

    clip = make_clip("cli_log_options.mp4", duration_s=1.0, width=160, height=96, fps=10)
    ours = logging.getLogger("quadvault_dali")
    for args, level, quiet in ((["probe", str(clip), "-q"], logging.WARNING, True),
                               (["-v", "probe", "-v", str(clip)], logging.DEBUG, False),
                               (["probe", str(clip), "--verbose"], logging.INFO, False)):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
        assert ours.level == level and is_quiet() == quiet, args
    assert "-q, --quiet" not in CliRunner().invoke(cli, ["probe", "--help"]).output  # the group's --help lists them


def test_a_progress_interval_that_is_no_number_is_said_once(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """QUADVAULT_PROGRESS_SECONDS=1s fell back to 60 s without a word (a README review's find): "30s" now reads as
    30, and what is no number of seconds is warned about once."""
    import logging

    from quadvault_dali import progress

    monkeypatch.setenv("QUADVAULT_PROGRESS_SECONDS", "30s")
    assert progress._log_interval() == 30.0
    for text in ("every minute", "-5", "nan"):
        monkeypatch.setenv("QUADVAULT_PROGRESS_SECONDS", text)
        with caplog.at_level(logging.WARNING, logger="quadvault_dali"):
            assert progress._log_interval() == 60.0 and progress._log_interval() == 60.0
        said = [r.getMessage() for r in caplog.records if text in r.getMessage()]
        assert len(said) == 1 and "not a number of seconds" in said[0], said
        caplog.clear()


def test_a_log_files_bar_ends_with_one_line_of_its_last_state(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """A training log showed every epoch's 100 % line twice: the last refresh, then the bar's close. The close
    writes only what the log does not say yet (a postfix set after the last line, say)."""
    import time

    from quadvault_dali import progress

    monkeypatch.setenv("QUADVAULT_PROGRESS_SECONDS", "0.05")
    for late_postfix in (False, True):
        with progress.progress_bar(30, "Epoch") as bar:
            bar.update(29)  # within the bar's first 0.05 s: no line yet, whatever the machine's load
            time.sleep(0.06)
            bar.update(1)  # the interval passed: a line at 30/30
            if late_postfix:
                bar.set_postfix(val_acc=0.9, refresh=False)
        done = [line for line in capsys.readouterr().err.splitlines() if "30/30" in line]
        assert len(done) == (2 if late_postfix else 1), done
        assert ("val_acc=0.9" in done[-1]) == late_postfix
