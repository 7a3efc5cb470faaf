"""The scan through its CLI and with a real model: kill -9 and resume, batch-classify, test-video parity,
the documented DuckDB queries, and the --gpus worker split (run with CPU workers here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from quadvault_dali.cli.main import main as cli
from quadvault_dali.errors import BackendUnavailableError
from quadvault_dali.model import build_network, load_model, save_model
from quadvault_dali.scan.parallel import parse_gpus, split_work
from quadvault_dali.scan.resume import FileState
from quadvault_dali.scan.runner import ScanOptions, scan_library
from quadvault_dali.scan.shards import complete_shards, read_table
from quadvault_dali.scoring import score_video
from quadvault_dali.synth import SynthSpec, make_video

from _scan_helpers import BROKEN, GOOD, WarmScorer, build_library, poison_env, tree_hash

DOCS = Path(__file__).resolve().parents[1] / "docs" / "scan.md"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_library(tmp_path_factory.mktemp("clilib") / "lib", extra=8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = build_network("efficientnet-lite0", image_size=64, pretrained="none").eval()
    return save_model(tmp_path_factory.mktemp("model") / "tiny", net,
                      {"architecture": "efficientnet-lite0", "image_size": 64, "name": "tiny"})


def _rows(out: Path) -> tuple[set, set]:
    videos = read_table(out, "videos").to_pylist()
    assert len({v["path"] for v in videos}) == len(videos), "duplicate video rows"
    seconds = read_table(out, "seconds").to_pylist()
    vkeys = {(v["path"], v["status"], v["frames_scored"], v["error_kind"], round(v["score"] or -1.0, 5))
             for v in videos}
    skeys = [(s["path"], s["timestamp_s"], round(s["score"], 5)) for s in seconds]
    assert len(skeys) == len(set(skeys)), "duplicate second rows"
    return vkeys, set(skeys)


def _cmd(library: Path, model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "quadvault_dali.cli.main", "-q", "scan", str(library), "-m", str(model),
            "-o", str(out), "--device", "cpu", "--streams", "1", "--batch-size", "1", "--shard-videos", "1",
            "--threshold", "0.5"]


def test_kill_9_then_resume_equals_a_clean_run(library: Path, model_dir: Path, tmp_path: Path) -> None:
    before = tree_hash(library)
    killed_out, clean_out = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(_cmd(library, model_dir, killed_out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(complete_shards(killed_out)) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the scan finished before it could be killed"
    done_before = len(complete_shards(killed_out))
    assert 3 <= done_before < len(GOOD) + len(BROKEN) + 8
    resumed = subprocess.run(_cmd(library, model_dir, killed_out), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"([\d,]+) already done", resumed.stdout).group(1) == str(done_before)  # one video a shard
    assert "Total scanned: 17 — " in resumed.stdout and "Errors: 4" in resumed.stdout
    # the folder's failed videos close the log, each with its reason (not only scattered warnings)
    listed = resumed.stdout.split("Failed videos (4 in ")[1].split("\nHighlights:")[0].splitlines()[1:]
    assert sorted(line.strip().split(": ")[0] for line in listed) == sorted(str(library / rel) for rel in BROKEN)
    clean = subprocess.run(_cmd(library, model_dir, clean_out), capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    assert _rows(killed_out) == _rows(clean_out)
    assert not [p for p in killed_out.rglob(".tmp-*")]
    assert tree_hash(library) == before


@pytest.fixture(scope="module")
def long_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """129 videos: a scan that is still running when a signal comes, however fast the machine and however
    loaded (49 were scanned in 1.1 s once sampling got faster, before a poller starved by a parallel job
    looked at the journal)."""
    return build_library(tmp_path_factory.mktemp("clilib_long") / "lib", extra=120)


def _scan_until_videos_finished(cmd: list[str], out: Path, videos: int = 2,
                                **popen: Any) -> tuple[subprocess.Popen[str], int]:
    """Starts ``cmd`` (a scan into ``out``) and returns once its crash journal's "F path" lines (videos done, held
    in the writer's buffer) number ``videos``, or it ended, or 2 minutes passed: (the process, videos seen done)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + 120

    def finished() -> int:
        try:
            return sum(("\n" + p.read_text()).count("\nF ") for p in out.glob(".inflight*"))
        except FileNotFoundError:
            return 0

    while time.monotonic() < deadline and proc.poll() is None and finished() < videos:
        time.sleep(0.005)
    return proc, finished()


def test_sigterm_stops_like_ctrl_c(long_library: Path, model_dir: Path, tmp_path: Path) -> None:
    """A batch system's preemption or time limit sends SIGTERM: finished videos are flushed and the exit
    says how to resume, instead of dying like kill -9."""
    out = tmp_path / "out"
    proc, seen = _scan_until_videos_finished(_cmd(long_library, model_dir, out) + ["--shard-videos", "100"], out)
    proc.send_signal(signal.SIGTERM)
    out_text, err = proc.communicate(timeout=120)
    # the signal must have found the scan running (127 of its 129 videos still to go): say so if it did not
    assert seen >= 2, f"the scan ended before the test could stop it ({seen} finished seen): {out_text} {err}"
    assert proc.returncode == 143, f"exit {proc.returncode} after SIGTERM with {seen} videos finished: {out_text} {err}"
    assert f"Stopped (SIGTERM). Finished videos are saved in {out}; run the same command to resume." in err
    assert len(read_table(out, "videos")) >= seen, "the buffered videos were not flushed"
    assert not [p for p in out.rglob(".tmp-*")]


def test_sighup_saves_what_was_finished(long_library: Path, model_dir: Path, tmp_path: Path) -> None:
    """A closed terminal or ssh session (SIGHUP) stops the scan as SIGTERM does: finished videos are flushed
    (it used to kill the scan outright, losing the shard in the writer), exit 129."""
    out = tmp_path / "out"
    proc, seen = _scan_until_videos_finished(_cmd(long_library, model_dir, out) + ["--shard-videos", "100"], out,
                                             start_new_session=True)
    os.killpg(proc.pid, signal.SIGHUP)  # a hangup reaches the whole job: the command and its scan
    out_text, err = proc.communicate(timeout=120)
    assert seen >= 2, f"the scan ended before the test could stop it: {out_text} {err}"
    assert proc.returncode == 129, f"exit {proc.returncode}: {out_text} {err}"
    assert err.count("Stopped (SIGHUP). Finished videos are saved") == 1, err
    assert len(read_table(out, "videos")) >= seen, "the buffered videos were not flushed"


def test_a_ctrl_c_while_the_scan_starts_gives_no_traceback(library: Path, model_dir: Path, tmp_path: Path) -> None:
    """The terminal's SIGINT reaches the scan child while it is still importing; the command's own copy must not
    come before the child can take it (two KeyboardInterrupt tracebacks, a review helper's find)."""
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(library, model_dir, out), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    os.killpg(proc.pid, signal.SIGINT)
    out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"exit {proc.returncode}: {err}"
    assert "Traceback" not in err and "Total scanned" not in out_text, err


def test_a_summary_the_terminal_cannot_take_does_not_fail_a_finished_scan(library: Path, model_dir: Path,
                                                                          tmp_path: Path) -> None:
    """A scan that outlived its terminal (its output closed) has saved everything: it exits 0, not 1 with an error
    about the print, and it is not started again."""
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(library, model_dir, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads the summary
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert len(read_table(out, "videos")) == 17 and "starting it again" not in err


def test_ctrl_c_in_a_terminal_stops_the_scan_once_and_is_not_a_crash(long_library: Path, model_dir: Path,
                                                                      tmp_path: Path) -> None:
    """Ctrl-C reaches the terminal's whole process group, the supervisor and the scan child alike: the child
    stops as before (flushes, says how to resume, exit 130) and the supervisor does not start it again."""
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(long_library, model_dir, out) + ["--shard-videos", "100"], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(out.glob(".inflight*")):
        time.sleep(0.01)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
    out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"exit {proc.returncode}: {out_text} {err}"
    assert err.count(f"Interrupted. Finished videos are saved in {out}; run the same command to resume.") == 1, err
    assert "starting it again" not in err
    assert not [p for p in out.rglob(".tmp-*")]


def test_batch_classify_never_replaces_a_file_it_did_not_write(library: Path, model_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.json"
    victim.write_text('{"my": "notes"}')
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 footage")
    for output, message in ((video, "give it a .json name"), (victim, "is not a highlights file this command wrote")):
        before = output.read_bytes()
        result = CliRunner().invoke(cli, ["-q", "batch-classify", str(library / "2024"), str(model_dir), str(output),
                                          "--device", "cpu"])
        assert result.exit_code == 1 and message in result.output, result.output
        assert output.read_bytes() == before


def test_without_threshold_the_scan_uses_the_models_own(library: Path, model_dir: Path, tmp_path: Path) -> None:
    """test-video and evaluate judge by the threshold training tuned; the scan must not use another."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    card = json.loads((model / "model.json").read_text())
    card["threshold"] = 0.61
    (model / "model.json").write_text(json.dumps(card))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["-q", "scan", str(library / "2024"), "-m", str(model), "-o", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "highlights.json").read_text())["threshold"] == pytest.approx(0.61)


def test_a_model_card_edited_to_score_differently_rescans_on_resume(library: Path, model_dir: Path,
                                                                     tmp_path: Path) -> None:
    """The same weights with another image_size in the card give other scores: resuming must rescan, not keep
    the old rows beside new ones (the fingerprint covered the weights alone)."""
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    out = tmp_path / "out"
    args = ["scan", str(library / "2024"), "-m", str(model), "-o", str(out), "--device", "cpu", "--threshold", "0.5"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    before = {v["path"]: v for v in read_table(out, "videos").to_pylist()}
    again = CliRunner().invoke(cli, ["-v", *args])
    assert "0 to scan" in again.output, again.output  # nothing changed: all kept
    card = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**card, "image_size": card["image_size"] * 2}))
    refused = CliRunner().invoke(cli, ["-v", *args])  # its rows are results of another version of the model
    assert refused.exit_code == 1 and "a model also named tiny (another model, or this one retrained or its card edited" in refused.output, refused.output
    edited = CliRunner().invoke(cli, ["-v", *args, "--replace-models"])
    assert edited.exit_code == 0 and f"{len(before)} to scan" in edited.output, edited.output
    after = {v["path"]: v for v in read_table(out, "videos").to_pylist()}
    assert after.keys() == before.keys()  # rescanned in place: one row per video
    assert all(after[p]["model_fingerprint"] != before[p]["model_fingerprint"] for p in after)
    # (that the scores differ is test_model's: this tiny untrained net scores every frame alike)


def test_what_discovery_could_not_read_is_said_at_the_end(library: Path, model_dir: Path, tmp_path: Path) -> None:
    """A link whose disk is not there (or a locked folder) was one WARNING line among the progress output."""
    import shutil

    lib = tmp_path / "lib"
    shutil.copytree(library / "2024", lib)
    (lib / "DJI_0099.MP4").symlink_to(tmp_path / "unplugged" / "DJI_0099.MP4")
    result = CliRunner().invoke(cli, ["-q", "scan", str(lib), "-m", str(model_dir), "-o", str(tmp_path / "out"),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (f"Warning: 1 folder or link could not be read, so their videos are not in this scan (earlier rows "
            f"kept): {lib.resolve() / 'DJI_0099.MP4'}") in result.output


def test_batch_classify_writes_output_json_and_shards(library: Path, model_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "results" / "highlights.json"
    result = CliRunner().invoke(cli, ["-q", "batch-classify", str(library), str(model_dir), str(output),
                                      "--device", "cpu", "--threshold", "0.0"])
    assert result.exit_code == 0, result.output
    doc = json.loads(output.read_text())
    scan_dir = tmp_path / "results" / "highlights.scan"
    videos = read_table(scan_dir, "videos").to_pylist()
    ok = sorted((v for v in videos if v["status"] == "ok"), key=lambda v: (-v["score"], v["path"]))
    assert doc["count"] == len(ok) == len(GOOD) + 8 and doc["errors"] == len(BROKEN)
    assert [h["path"] for h in doc["highlights"]] == [v["path"] for v in ok]
    assert not (scan_dir / "highlights.json").exists()
    assert f"Results saved to: {scan_dir}" in result.output


def test_scan_scores_equal_test_video(library: Path, model_dir: Path, tmp_path: Path) -> None:
    model = load_model(model_dir)
    out = tmp_path / "out"
    scan_library([library], ScanOptions(out_dir=out, device="cpu", batch_size=8), model_paths=[model_dir])
    # no threshold given: the card's, as the command and test-video use (the library's default was a fixed 0.7)
    assert json.loads((out / "highlights.json").read_text())["threshold"] == model.threshold != 0.7
    seconds = read_table(out, "seconds").to_pylist()
    videos = {v["path"]: v for v in read_table(out, "videos").to_pylist()}
    for rel in ("2023/06/trip/high_h264_30.mp4", "rotated_90.mp4", "2023/11/calm_hevc_24.mp4"):
        path = str(library / rel)
        ref = score_video(path, [model], device="cpu")
        mine = sorted((s["timestamp_s"], s["score"]) for s in seconds if s["path"] == path)
        assert [t for t, _ in mine] == ref.timestamps
        assert [s for _, s in mine] == pytest.approx(ref.frame_scores.tolist(), abs=1e-5)
        assert videos[path]["score"] == pytest.approx(ref.score, abs=1e-5)


def test_rows_decoded_on_nvdec_survive_the_scoring_version_bump(library: Path, model_dir: Path,
                                                                 tmp_path: Path) -> None:
    """SCORING_CODE_VERSION 2 moved the CPU paths' centre crop: rows PyAV decoded score other pixels now and are
    rescanned, but rows DALI decoded on NVDEC (cropped by DALI, as before) keep their scores: a reviewer's
    point, a GPU user's 9 TB library must not be decoded again for a CPU-side change. Kept rows get the
    current fingerprint."""
    from quadvault_dali.model._io import version1_fingerprint
    from quadvault_dali.scan.schema import ModelRef, combined_fingerprint
    from quadvault_dali.scan.shards import write_parquets_atomic

    model = load_model(model_dir)
    out = tmp_path / "out"
    options = dict(device="cpu", batch_size=8)
    scan_library([library], ScanOptions(out_dir=out, **options), model_paths=[model_dir])
    digest = json.loads((model_dir / "model.json").read_text())["weights_sha256"]
    old = combined_fingerprint([ModelRef(model.name, version1_fingerprint(model.card, digest))])
    assert old != model.fingerprint
    nvdec = set()
    for name in complete_shards(out):  # as a version-1 GPU scan wrote them: half decoded on NVDEC
        path = out / "videos" / name
        table = pq.read_table(path)
        rows = table.to_pylist()
        for i, row in enumerate(rows):
            row["model_fingerprint"] = old
            if row["status"] == "ok" and i % 2 == 0:
                row["decoder"] = "nvdec"
                nvdec.add(row["path"])
        write_parquets_atomic([(path, pa.Table.from_pylist(rows, schema=table.schema))])
    before = {v["path"]: v["score"] for v in read_table(out, "videos").to_pylist()}
    again = scan_library([library], ScanOptions(out_dir=out, **options), model_paths=[model_dir])
    assert nvdec and again.run.videos == len(before) - len(nvdec) and again.skipped == len(nvdec)
    after = {v["path"]: v for v in read_table(out, "videos").to_pylist()}
    assert {p: after[p]["score"] for p in nvdec} == {p: before[p] for p in nvdec}
    assert {v["model_fingerprint"] for v in after.values()} == {model.fingerprint}
    assert json.loads((out / "highlights.json").read_text())["other_models"] == []
    assert scan_library([library], ScanOptions(out_dir=out, **options), model_paths=[model_dir]).run.videos == 0


def test_documented_duckdb_queries(library: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    months = {"2023/06/trip/high_h264_30.mp4": (2023, 6), "2023/11/calm_hevc_24.mp4": (2023, 11),
              "2024/a/b/high_vp9_60.webm": (2024, 2), "rotated_90.mp4": (2024, 2)}
    # recorded in August 2021 (the container says; 2 a.m. UTC, so July 31st in New York), copied in February 2024
    # without keeping its time
    make_video(lib / "copied/flight.mp4", SynthSpec(width=64, height=64, duration_s=1.0, style="normal",
                                                    recorded_at="2021-08-01T02:00:00Z"))
    months["copied/flight.mp4"] = (2024, 2)
    for rel, (y, m) in months.items():
        ts = datetime(y, m, 15, tzinfo=timezone.utc).timestamp()
        os.utime(lib / rel, (ts, ts))
    out = tmp_path / "scan"
    scan_library([lib], ScanOptions(out_dir=out, device="cpu", threshold=0.7), scorers=[WarmScorer()])
    queries = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(queries) == 6
    target = str(lib / "2024/a/b/high_vp9_60.webm")

    def run(sql: str) -> list[tuple]:
        sql = sql.replace("'scan/", f"'{out}/").replace("/footage/2023/06/DJI_0042.MP4", target)
        return duckdb.sql(sql).fetchall()

    duckdb.sql("SET TimeZone = 'America/New_York'")  # a session's zone must not move a recording's month
    try:
        top, per_month, above, errors, moments, by_model = (run(q) for q in queries)
    finally:
        duckdb.sql("SET TimeZone = 'UTC'")
    ok = [v for v in read_table(out, "videos").to_pylist() if v["status"] == "ok"]
    assert [r[0] for r in top] == [v["path"] for v in sorted(ok, key=lambda v: (-v["score"], v["path"]))][:20]
    assert top[0][1] > 0.9 and len(top) == len(ok)
    by_month = {r[0]: (r[1], r[2]) for r in per_month}
    assert by_month["2024-02"] == (2, 2) and by_month["2023-06"] == (1, 1) and by_month["2023-11"] == (0, 1)
    assert by_month["2021-08"] == (0, 1)  # by the camera's date, not the copy's
    assert [r[0] for r in above] == [0.0, 1.0] and all(r[1] > 0.9 for r in above)
    assert errors == [("(unreadable)", "VideoOpenError", len(BROKEN))]
    assert [r[0] for r in moments] == [v["path"] for v in sorted(ok, key=lambda v: (-v["score_top3_mean"],
                                                                                    v["path"]))][:20]
    assert sorted(by_model) == sorted((v["path"], "warm", pytest.approx(v["model_means"][0])) for v in ok)
    # the README's four (a shorter variant of each) give the same answers
    readme = (DOCS.parents[1] / "README.md").read_text()
    statements = [q for q in re.findall(r"```sql\n(.*?)```", readme, flags=re.S)[0].split(";") if q.strip()]
    assert len(statements) == 4
    r_top, r_month, r_above, r_errors = (run(q) for q in statements)
    assert [r[0] for r in r_top] == [r[0] for r in top]
    assert {r[0]: r[1] for r in r_month} == {m: h for m, (h, _) in by_month.items()}
    assert r_above == above and r_errors == errors


def test_a_key_value_folder_above_the_output_is_warned_about(library: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """DuckDB took a folder named status=archive above --out for a Hive partition and answered every status query
    with 'archive' (an analytics tester's find): the scan warns, and the documented fix gives the real column."""
    out = tmp_path / "status=archive" / "scan"
    with caplog.at_level("WARNING"):
        scan_library([library / "broken"], ScanOptions(out_dir=out, device="cpu", threshold=0.7),
                     scorers=[WarmScorer()])
    assert "hive_partitioning = false" in caplog.text and "status=archive" in caplog.text
    files = f"{out}/videos/*.parquet"
    assert duckdb.sql(f"SELECT DISTINCT status FROM read_parquet('{files}')").fetchall() == [("archive",)]
    assert duckdb.sql(f"SELECT DISTINCT status FROM read_parquet('{files}', hive_partitioning = false)"
                      ).fetchall() == [("error",)]


def test_documented_python_readers(library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/scan.md's pandas, polars and pyarrow lines, run as written against a scan's output while a shard is
    being written (its temporary file beside the finished ones): each reader sees the finished rows, once. pandas
    and polars are not dependencies (the analytics extra): without them, the pyarrow line runs alone."""
    have = [_importable("pandas"), _importable("polars")]
    out = tmp_path / "scan"
    scan_library([library], ScanOptions(out_dir=out, device="cpu", threshold=0.7), scorers=[WarmScorer()])
    for table in ("videos", "seconds"):  # a shard being written: the readers must not see it
        finished = sorted((out / table).glob("part-*.parquet"))[0]
        shutil.copy(finished, out / table / f".tmp-{finished.name}.{os.getpid()}")
    block = re.search(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert block is not None and "pd.read_parquet" in block[1] and "pl.scan_parquet" in block[1]
    lines = block[1].splitlines()
    if not all(have):  # the import line without pandas and polars, and their lines left out
        lines = ["import pyarrow.dataset as ds"] + [line for line in lines[1:] if line.startswith("table =")]
    monkeypatch.chdir(tmp_path)
    names: dict[str, Any] = {}
    exec("\n".join(lines), names)  # noqa: S102 - the documentation's own lines
    expected_videos = read_table(out, "videos").to_pylist()
    expected_seconds = read_table(out, "seconds").to_pylist()
    table = names["table"]
    assert sorted(table.column("path").to_pylist()) == sorted(v["path"] for v in expected_videos
                                                              if v["is_highlight"])
    assert 0 < table.num_rows < len(expected_videos)
    if not all(have):
        return
    import pandas as pd
    import polars as pl

    videos, seconds = names["videos"], names["seconds"]
    assert isinstance(videos, pd.DataFrame) and len(videos) == len(expected_videos)
    assert sorted(videos["path"]) == sorted(v["path"] for v in expected_videos)
    assert isinstance(seconds, pl.DataFrame) and len(seconds) > 0
    assert sorted(zip(seconds["path"], seconds["timestamp_s"])) == sorted(
        (s["path"], s["timestamp_s"]) for s in expected_seconds if s["score"] > 0.9)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_gpu_option_parsing_and_work_split() -> None:
    assert parse_gpus("all", available=3) == [0, 1, 2] and parse_gpus("0,2", available=3) == [0, 2]
    for bad, avail in (("all", 0), ("0,5", 2), ("0,0", 2), ("x", 2)):
        with pytest.raises(BackendUnavailableError):
            parse_gpus(bad, available=avail)
    files = [FileState(Path(f"/v/{i:03d}.mp4"), size, 0) for i, size in enumerate([9, 1, 5, 5, 3, 7, 2, 8])]
    parts = split_work(files, 3)
    assert sorted(f.path for p in parts for f in p) == sorted(f.path for f in files)
    loads = [sum(f.size_bytes for f in p) for p in parts]
    assert max(loads) - min(loads) <= 2 and parts == split_work(files, 3)
    result = CliRunner().invoke(cli, ["scan", "/tmp", "-m", "/tmp", "-o", "/nonexistent/x", "--device", "cpu",
                                      "--gpus", "all"])
    assert result.exit_code == 1 and "--gpus needs the GPU backend" in result.output


def test_the_decoder_option_reaches_the_sampler_and_refuses_the_cpu_backend(library: Path, model_dir: Path,
                                                                            tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``--decoder ffmpeg`` (FFmpeg's NVDEC decoders, experimental) is a GPU decoder: asked for beside ``--device
    cpu`` it is a contradiction, said before anything runs; with ``auto`` it is handed to the scan's sampler."""
    result = CliRunner().invoke(cli, ["scan", str(library), "-m", str(model_dir), "-o", str(tmp_path / "cpu"),
                                      "--device", "cpu", "--decoder", "ffmpeg"])
    assert result.exit_code == 2 and "--decoder ffmpeg decodes on the GPU's NVDEC" in result.output
    assert not (tmp_path / "cpu").exists()
    import quadvault_dali.scan.runner as runner

    seen: list[Any] = []
    monkeypatch.setattr(runner, "scan_library", lambda files, options, **kw: seen.append(options) or _no_scan())
    result = CliRunner().invoke(cli, ["-q", "scan", str(library), "-m", str(model_dir), "-o", str(tmp_path / "out"),
                                      "--decoder", "ffmpeg", "--processes", "4", "--streams", "2", "--restarts", "0"])
    assert [(o.decode_client, o.processes, o.streams) for o in seen] == [("ffmpeg", 4, 2)], result.output


class _no_scan(Exception):
    """Raised by a stand-in scan: the options it was given are all a test wants."""


def test_worker_processes_split_the_work(library: Path, model_dir: Path, tmp_path: Path) -> None:
    """The --gpus machinery (spawned workers, own tags, merged stats) with CPU workers: no GPU here."""
    out = tmp_path / "out"
    summary = scan_library([library], ScanOptions(out_dir=out, device="cpu", threshold=0.5),
                           model_paths=[model_dir], gpus=[0, 1])
    names = complete_shards(out)
    assert {n.split("-")[1] for n in names} == {"g0", "g1"}
    videos = read_table(out, "videos").to_pylist()
    assert len(videos) == len({v["path"] for v in videos}) == 17 == summary.run.videos
    assert summary.run.errors == len(BROKEN)
    assert sum(v["frames_scored"] for v in videos) == len(read_table(out, "seconds"))


def test_a_worker_killed_by_a_decoder_crash_is_reported_as_a_crash(library: Path, model_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A --gpus worker dying by a signal is a crash (``WorkerCrashed``: the supervised command starts again), not
    an error that ends the command, and the worker's journal names the video it had in flight."""
    from quadvault_dali.scan.parallel import WorkerCrashed

    lib, env = _poisoned(library, tmp_path)
    for name in ("QV_TEST_POISON", "PYTHONPATH"):
        monkeypatch.setenv(name, env[name])  # the spawned workers start with this environment
    out = tmp_path / "out"
    with pytest.raises(WorkerCrashed, match="exited with code -11"):
        scan_library([lib], ScanOptions(out_dir=out, device="cpu", threshold=0.5), model_paths=[model_dir],
                     gpus=[0, 1])
    journals = "".join(p.read_text() for p in out.glob(".inflight*"))
    assert "poison.mp4" in journals


def _poisoned(library: Path, tmp_path: Path, **more: str) -> tuple[Path, dict[str, str]]:
    """A copy of the library with ``2023/06/poison.mp4``, and an environment whose decoder dies on it by SIGSEGV."""
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    shutil.copy(lib / "2023/06/trip/high_h264_30.mp4", lib / "2023/06/poison.mp4")
    return lib, poison_env(tmp_path, **more)


def _check_poisoned_scan(lib: Path, out: Path, stdout: str) -> None:
    assert "Total scanned: 18 — " in stdout and "Errors: 5" in stdout
    videos = {v["path"]: v for v in read_table(out, "videos").to_pylist()}
    assert len(videos) == 18
    poison = videos[str(lib / "2023/06/poison.mp4")]
    assert poison["status"] == "error" and poison["error_kind"] == "DecodeError"
    assert "the decoder crashed on this file (SIGSEGV)" in poison["error_message"]
    assert all(v["status"] == "ok" for p, v in videos.items() if "broken" not in p and "poison" not in p)
    assert not (out / ".inflight.log").exists()


def test_a_file_that_crashes_the_decoder_is_isolated_on_resume(library: Path, model_dir: Path,
                                                                tmp_path: Path) -> None:
    """Without restarts (``--restarts 0``) the first run dies with the decoder; the same command then checks the
    files that were in flight in a child process, records the crasher as an error row, and scans everything
    else: no crash loop."""
    lib, env = _poisoned(library, tmp_path)
    out = tmp_path / "out"
    first = subprocess.run(_cmd(lib, model_dir, out) + ["--restarts", "0"], capture_output=True, text=True,
                           timeout=300, env=env)
    assert first.returncode == -signal.SIGSEGV, first.stderr[-2000:]
    assert (out / ".inflight.log").is_file()
    done_before = len(complete_shards(out))
    second = subprocess.run(_cmd(lib, model_dir, out) + ["--restarts", "0"], capture_output=True, text=True,
                            timeout=300, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    _check_poisoned_scan(lib, out, second.stdout)
    assert len(complete_shards(out)) > done_before


def test_a_scan_killed_by_a_decoder_crash_starts_again_by_itself(library: Path, model_dir: Path,
                                                                 tmp_path: Path) -> None:
    """The default: the scan runs in a child that the command starts again after a native crash (stop 25: DALI
    aborted two of three scan calls on an H200 with CUDA_ERROR_ILLEGAL_ADDRESS). One command, one SIGSEGV, and
    the same result as two commands: the crasher an error row, everything else scanned once."""
    lib, env = _poisoned(library, tmp_path)
    out = tmp_path / "out"
    run = subprocess.run(_cmd(lib, model_dir, out) + ["--no-resume", "--retry-errors"], capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    _check_poisoned_scan(lib, out, run.stdout)
    assert "the scan process died by SIGSEGV" in run.stderr and "starting it again to resume (restart 1" in run.stderr
    assert "The scan process crashed 1 time (SIGSEGV) and was started again" in run.stderr
    assert "the decoder crashed on this file (SIGSEGV)" in run.stderr  # the suspects' check named the culprit


@pytest.mark.parametrize("sig", [signal.SIGABRT, signal.SIGKILL], ids=["abort", "kill"])
def test_a_crash_loop_is_given_up_with_the_reason(library: Path, model_dir: Path, tmp_path: Path,
                                                  sig: signal.Signals) -> None:
    """A process that dies at every start (here: the model cannot even load) is not restarted forever: after
    --restarts deaths without a new shard the command stops with the signal and says what to try. A SIGKILL is
    not called a decoder crash: the out-of-memory killer (or a kill -9) sends it."""
    lib, env = _poisoned(library, tmp_path)
    hook = tmp_path / "hook" / "sitecustomize.py"
    hook.write_text(hook.read_text() + "\nimport quadvault_dali.scan.runner as _r\n"
                    f"_r.scan_library = lambda *a, **k: os.kill(os.getpid(), {int(sig)})\n")
    out = tmp_path / "out"
    run = subprocess.run(_cmd(lib, model_dir, out) + ["--restarts", "2"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 128 + sig, run.stderr[-2000:]
    assert run.stderr.count("starting it again to resume") == 2  # --restarts 2: two restarts, then it stops
    assert (f"died 3 times in a row without finishing a shard (the last by {sig.name}); not starting it again"
            in run.stderr)
    assert ("out-of-memory killer" in run.stderr) == (sig == signal.SIGKILL)
    assert ("a crash in a decoder or driver" in run.stderr) == (sig != signal.SIGKILL)
    assert "try --processes 2;" in run.stderr  # not --device cpu: it is on the CPU already
    assert "the counts above" not in run.stderr


def test_a_scan_that_crashes_sooner_than_it_closes_a_shard_still_gets_through(library: Path, model_dir: Path,
                                                                             tmp_path: Path) -> None:
    """Only complete shards survive a crash: a process dying every few seconds while shards close every 30 s
    lost its work at every death and was given up as a crash loop. After a crash the next run closes its shards
    every third of the time the crashed one lived, so each run saves what it did before the next death."""
    lib, env = _poisoned(library, tmp_path, QV_TEST_POISON="none")
    hook = tmp_path / "hook" / "sitecustomize.py"
    hook.write_text(hook.read_text() + (
        "\nimport threading, time\n"
        "import quadvault_dali.scan.supervise as _sup\n"
        "_sup.MIN_SHARD_SECONDS = 1.0  # not the product's 5 s: a short test\n"
        "import quadvault_dali.scan.runner as _r\n"
        "import quadvault_dali.sampling._cpu as _cpu2\n"
        "_armed, _scan, _decode2 = [], _r.scan_library, _cpu2.CpuSampler.decode_video\n"
        "def _dying_scan(*a, **k):  # the scan process (not the suspects' checks) ...\n"
        "    _armed.append(1)\n"
        "    return _scan(*a, **k)\n"
        "def _slow_decode(self, *a, **k):  # ... dies 8 s after its first decode\n"
        "    if _armed == [1]:\n"
        "        _armed.append(2)\n"
        "        t = threading.Timer(8.0, lambda: os.kill(os.getpid(), signal.SIGABRT))\n"
        "        t.daemon = True\n"
        "        t.start()\n"
        "    time.sleep(0.6)\n"
        "    return _decode2(self, *a, **k)\n"
        "_r.scan_library, _cpu2.CpuSampler.decode_video = _dying_scan, _slow_decode\n"))
    out = tmp_path / "out"
    run = subprocess.run(_cmd(lib, model_dir, out) + ["--shard-videos", "1000", "--shard-seconds", "30"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "shards now close every" in run.stderr and "starting it again to resume" in run.stderr
    videos, _ = _rows(out)  # no duplicates
    assert len({v[0] for v in videos}) == 18
    assert "Total scanned: 18 — " in run.stdout


def test_a_crash_while_exiting_after_a_finished_scan_is_not_restarted(library: Path, model_dir: Path,
                                                                      tmp_path: Path) -> None:
    """DALI can crash while the interpreter exits: the scan has finished and said so, so the command ends with its
    result instead of scanning again (a helper saw 4 restarts and 5 summaries)."""
    lib, env = _poisoned(library, tmp_path, QV_TEST_POISON="none")
    hook = tmp_path / "hook" / "sitecustomize.py"
    hook.write_text(hook.read_text() + "\nimport atexit\n"
                    "if os.environ.get('QUADVAULT_SCAN_IN_PROCESS'):\n"
                    "    atexit.register(lambda: os.kill(os.getpid(), signal.SIGSEGV))\n")
    out = tmp_path / "out"
    run = subprocess.run(_cmd(lib, model_dir, out), capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("Total scanned: 18 — ") == 1 and "starting it again" not in run.stderr
    assert "the scan finished, then its process died by SIGSEGV while exiting" in run.stderr


def test_sigint_sent_to_the_command_alone_stops_the_scan(long_library: Path, model_dir: Path,
                                                         tmp_path: Path) -> None:
    """``kill -INT`` of the command (a process manager, ``Popen.send_signal``) stops the scan as Ctrl-C does.
    Each video's decode is slowed by 50 ms (a test hook), so the scan is still running when the signal comes
    however fast the machine, and however late a poller starved by a parallel job sees the journal (129 videos
    were once all scanned in 2 s under load, and the signal came after the end)."""
    out = tmp_path / "out"
    env = poison_env(tmp_path, QV_TEST_POISON="no such video.mp4")
    hook = tmp_path / "hook" / "sitecustomize.py"
    hook.write_text(hook.read_text() + (
        "\nimport time\n"
        "_slow = _cpu.CpuSampler.decode_video\n"
        "def _slowly(self, path, outcome, emit):\n"
        "    time.sleep(0.05)\n"
        "    return _slow(self, path, outcome, emit)\n"
        "_cpu.CpuSampler.decode_video = _slowly\n"))
    proc = subprocess.Popen(_cmd(long_library, model_dir, out) + ["--shard-videos", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(out.glob(".inflight*")):
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"exit {proc.returncode}: {out_text} {err}"
    assert "Total scanned" not in out_text and "Interrupted." in err


def test_a_background_scan_that_ignores_sigint_keeps_ignoring_it(library: Path, model_dir: Path,
                                                                 tmp_path: Path) -> None:
    """A shell script's ``quadvault scan ... &`` runs with SIGINT ignored: the Ctrl-C meant for the script must not
    stop the scan, as it did not before the scan had a supervisor."""
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(library, model_dir, out), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGINT)
    out_text, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "Total scanned: 17 — " in out_text


def test_prepare_processes_reach_the_gpu_backend_and_change_no_row(library: Path, model_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``scan --prepare-processes 2``: the gpu backend (DALI's CPU decoder here) cuts clips in 2 worker
    processes, and every video and second row is the one the prepare threads give."""
    import quadvault_dali.scan.runner as runner
    from quadvault_dali.sampling._gpu import DaliSampler

    made: list[DaliSampler] = []

    def dali(device: str, **kw: object) -> DaliSampler:
        made.append(DaliSampler(**kw))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(runner, "create_sampler", dali)
    from quadvault_dali.sampling._prepare_pool import PreparePool

    jobs: list[Path] = []
    real_job = PreparePool.job

    def counted(self: PreparePool, path: Path, *args: object, **kw: object) -> object:
        jobs.append(path)
        return real_job(self, path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(PreparePool, "job", counted)
    rows = []
    for workers in ("0", "2"):
        out = tmp_path / f"out{workers}"
        result = CliRunner().invoke(cli, ["-q", "scan", str(library), "-m", str(model_dir), "-o", str(out),
                                          "--device", "cpu", "--threshold", "0.5", "--prepare-processes", workers])
        assert result.exit_code == 0, result.output
        assert made[-1].config.prepare_processes == int(workers)
        rows.append(_rows(out))
        assert (len(jobs) > 0) == (workers == "2")  # the videos went to the workers
    assert rows[1] == rows[0]


def test_rows_of_an_older_scoring_version_are_rescanned_not_refused(library: Path, model_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal of other models' rows must not take the same model scored by older code for another model:
    after the next SCORING_CODE_VERSION bump, every folder would have been refused (a reviewer's find)."""
    from quadvault_dali.model import _io, load_model
    from quadvault_dali.scan.runner import ScanOptions, scan_library

    out = tmp_path / "out"
    options = dict(out_dir=out, threshold=0.5, device="cpu", streams=2, batch_size=8)
    first = scan_library([library / "2024"], ScanOptions(**options), scorers=[load_model(model_dir)])
    assert first.run.videos > 0
    monkeypatch.setattr(_io, "SCORING_CODE_VERSION", _io.SCORING_CODE_VERSION + 1)
    newer = load_model(model_dir)
    again = scan_library([library / "2024"], ScanOptions(**options), scorers=[newer])
    assert again.run.videos == first.run.videos  # rescored by the newer code, without --replace-models
    assert {r["model_fingerprint"] for r in read_table(out, "videos").to_pylist()} == {newer.fingerprint}


def test_an_unattended_scan_logs_progress_lines_and_names_its_failed_files(library: Path, model_dir: Path,
                                                                            tmp_path: Path) -> None:
    """Under nohup or cron (stderr a file) the bar was off: a 9-TB night logged nothing between its first and last
    line. It now writes whole progress lines (done/total, rate, ETA) every QUADVAULT_PROGRESS_SECONDS, no
    carriage returns; and -q, which keeps them out, still names each file that failed, not only their count."""
    log_file = tmp_path / "run.log"
    cmd = [c for c in _cmd(library, model_dir, tmp_path / "out") if c != "-q"]
    env = {**os.environ, "QUADVAULT_PROGRESS_SECONDS": "0.2"}
    with open(log_file, "w") as err:
        assert subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, timeout=300).returncode == 0
    text = log_file.read_text()
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("Scanning:")]
    assert lines and re.search(r"\d+/\d+ \[\d\d:\d\d<", lines[-1]), text
    quiet = subprocess.run(_cmd(library, model_dir, tmp_path / "quiet"), capture_output=True, text=True, env=env,
                           timeout=300)
    assert quiet.returncode == 0 and "Scanning:" not in quiet.stderr
    for name in BROKEN:
        assert name in quiet.stderr, quiet.stderr


def test_the_failed_videos_query_quotes_the_folder_as_sql_does(capsys: pytest.CaptureFixture[str]) -> None:
    """A scan folder named with a quote ("John's drive") printed a DuckDB query that does not parse."""
    from types import SimpleNamespace

    import duckdb

    from quadvault_dali.cli.scan import _print_summary
    from quadvault_dali.scan.report import FolderTotals

    out = Path("/media/John's drive/scan")
    run = SimpleNamespace(videos=30, errors=30, bytes_read=0, file_bytes=0, cpu_fallbacks=0)
    summary = SimpleNamespace(run=run, wall_s=1.0, skipped=0, unreadable=[], not_utf8=[], out_dir=out,
                              highlights_path=out / "highlights.json", line="Total scanned: 30",
                              totals=FolderTotals(30, 0, 30, failed=("/f/a.mp4: empty file (0 bytes)",)))
    _print_summary(summary)
    query = capsys.readouterr().out.split("more: ")[1].split(" (DuckDB)")[0]
    assert "'/media/John''s drive/scan/videos/*.parquet'" in query
    with pytest.raises(duckdb.IOException, match="No files found"):  # it parses; the folder is not there
        duckdb.sql(query)
