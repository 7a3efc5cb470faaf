"""The scan engine in-process: rows and seconds, errors, resume, supersession, shards, disk full."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from quadvault_dali.errors import OutputError, QuadvaultError
from quadvault_dali.scan import SCHEMA_VERSION, ModelRef, combined_fingerprint
from quadvault_dali.scan.schema import SCHEMAS
from quadvault_dali.scan.runner import SCAN_MARKS, ScanOptions, in_shard, scan_library
from quadvault_dali.scan.shards import complete_shards, read_metadata, read_table, shard_name
from quadvault_dali.synth import SynthSpec, make_video

from _scan_helpers import BROKEN, GOOD, RetrainedStampScorer, StampScorer, WarmScorer, build_library, tree_hash

THRESHOLD = 0.3
SCORERS = [WarmScorer(), StampScorer()]
FINGERPRINT = combined_fingerprint([ModelRef(s.name, s.fingerprint) for s in SCORERS])


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_library(tmp_path_factory.mktemp("scanlib") / "Footage")


def _scan(library: Path, out: Path, **kw: object):
    return scan_library([library], ScanOptions(out_dir=out, threshold=THRESHOLD, device="cpu", streams=2,
                                               batch_size=4, **kw), scorers=SCORERS)  # type: ignore[arg-type]


def _scan_many(libraries: list[Path], out: Path, **kw: object):
    return scan_library(libraries, ScanOptions(out_dir=out, threshold=THRESHOLD, device="cpu", streams=2,
                                               batch_size=4, **kw), scorers=SCORERS)  # type: ignore[arg-type]


def _videos(out: Path) -> dict[str, dict]:
    rows = read_table(out, "videos").to_pylist()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a path appears twice among complete shards"
    return {r["path"]: r for r in rows}


def _seconds(out: Path) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for r in read_table(out, "seconds").to_pylist():
        by.setdefault(r["path"], []).append(r)
    return by


def _assert_rows_consistent(out: Path) -> None:
    """Every video row's path exists, its id is made from its path, size and mtime, and the seconds rows of
    its pair carry the same path and id, as many as it scored; no seconds row lacks its video."""
    from quadvault_dali.scan.schema import video_id

    for name in complete_shards(out):
        videos = pq.read_table(out / "videos" / name).to_pylist()
        seconds = pq.read_table(out / "seconds" / name).to_pylist()
        ids = {v["path"]: v["video_id"] for v in videos}
        for v in videos:
            assert os.path.exists(v["path"]), v["path"]
            assert v["video_id"] == video_id(v["path"], v["size_bytes"], v["mtime_ns"])
            assert v["real_path"] == os.path.realpath(v["path"])
            assert sum(1 for r in seconds if r["path"] == v["path"]) == v["frames_scored"]
        assert all(ids.get(r["path"]) == r["video_id"] for r in seconds), "a seconds row without its video"


def test_every_video_gets_its_rows(library: Path, tmp_path: Path) -> None:
    before = tree_hash(library)
    summary = _scan(library, tmp_path / "out", shard_videos=3)
    videos, seconds = _videos(tmp_path / "out"), _seconds(tmp_path / "out")
    assert len(videos) == len(GOOD) + len(BROKEN)  # readme.txt is not a video
    for rel, (spec, n_seconds) in GOOD.items():
        row = videos[str(library / rel)]
        assert row["status"] == "ok" and row["error_message"] is None, row
        assert row["frames_scored"] == n_seconds == len(seconds[row["path"]]) == row["frames_expected"]
        assert row["codec"] == spec.codec and row["fps"] == pytest.approx(spec.fps, rel=1e-3)
        assert (row["width"], row["height"], row["rotation"]) == (spec.width, spec.height, spec.rotation)
        assert row["model_fingerprint"] == FINGERPRINT
        for sec in seconds[row["path"]]:
            assert sec["video_id"] == row["video_id"]
            stamp_score = sec["model_scores"][1]  # the stamp the scorer read in this very frame
            assert stamp_score == pytest.approx(StampScorer.expected(spec.source_id, sec["timestamp_s"]), abs=2e-6)
            assert sec["score"] == pytest.approx(sum(sec["model_scores"]) / 2, abs=1e-6)
        times = [s["timestamp_s"] for s in seconds[row["path"]]]
        assert times == sorted(times) and [round(t) for t in times] == list(range(n_seconds))
        ens = [s["score"] for s in seconds[row["path"]]]
        assert row["score"] == pytest.approx(sum(ens) / len(ens), abs=1e-6)
        assert row["score_mean"] == row["score"] and row["score_max"] == pytest.approx(max(ens))
        assert row["score_top3_mean"] == pytest.approx(sum(sorted(ens)[-3:]) / min(3, len(ens)), abs=1e-6)
        assert row["frac_above_threshold"] == pytest.approx(sum(e >= THRESHOLD for e in ens) / len(ens))
        assert row["is_highlight"] == (row["score"] >= THRESHOLD) == (spec.style == "highlight")
        assert 0 < row["bytes_read"] and row["sampling_mode"] in ("keyframe", "exact")
        assert row["decoder"] == "pyav" and row["decoder_note"] is None  # the cpu backend never falls back
    for rel, (_, kind) in BROKEN.items():
        row = videos[str(library / rel)]
        assert row["status"] == "error" and row["error_kind"] == kind and row["frames_scored"] == 0
        assert row["error_message"].startswith(str(library / rel) + ": ")
        assert str(library / rel) not in seconds
    assert "empty file" in videos[str(library / "broken/empty.mp4")]["error_message"]
    assert "not a readable video container" in videos[str(library / "broken/notes.mp4")]["error_message"]
    # shards of at most 3 videos, every pair complete, metadata versioned with the model list
    names = complete_shards(tmp_path / "out")
    assert len(names) == 3 and all(pq.read_metadata(tmp_path / "out/videos" / n).num_rows <= 3 for n in names)
    meta = read_metadata(tmp_path / "out/seconds" / names[0])
    assert meta.schema_version == SCHEMA_VERSION and [m.name for m in meta.models] == ["warm", "stamp"]
    assert meta.threshold == THRESHOLD and meta.table == "seconds"
    # highlights.json: best first, exactly the highlight rows; the summary counts the folder
    doc = json.loads((tmp_path / "out/highlights.json").read_text())
    expected = sorted((r for r in videos.values() if r["is_highlight"]), key=lambda r: -r["score"])
    assert [h["path"] for h in doc["highlights"]] == [r["path"] for r in expected] and len(expected) == 3
    best = doc["highlights"][0]
    assert best["best_second"] in [s["timestamp_s"] for s in seconds[best["path"]]]
    assert summary.line == (f"Total scanned: 9 — Highlights found: 3 — Errors: 4 — "
                            f"Results saved to: {tmp_path / 'out'}")
    assert tree_hash(library) == before  # nothing written, touched or re-timed in the library
    # where the start-up went, in the order the scan got there (scorers were given: no models_loaded)
    at = summary.phases
    assert set(at) == {"files_found", "resume_planned", "scanning", *SCAN_MARKS, "scanned", "report_written"}, at
    assert list(at) == sorted(at, key=at.get) and 0 <= at["files_found"] and at["report_written"] <= summary.wall_s
    assert (at["files_found"] <= at["resume_planned"] <= at["scanning"] <= at["sampler_created"] <= at["first_batch"]
            <= min(at["first_frames_scored"], at["first_video_done"]) <= at["scanned"] <= at["report_written"])


def test_resume_skips_done_and_rescans_changed_files(library: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    out = tmp_path / "out"
    _scan(lib, out, shard_videos=2)
    first = _videos(out)
    again = _scan(lib, out, shard_videos=2)
    assert again.run.videos == 0 and again.skipped == len(first) and _videos(out) == first
    # one file replaced by different content: rescanned, its old rows retired, all others untouched
    changed = lib / "2024/calm_mjpeg_30.mkv"
    make_video(changed, SynthSpec(codec="mjpeg", width=96, height=64, fps=30, duration_s=3.0, source_id=9))
    third = _scan(lib, out, shard_videos=2)
    assert third.run.videos == 1 and third.superseded == 1
    now, seconds = _videos(out), _seconds(out)
    assert now[str(changed)]["frames_scored"] == 3 == len(seconds[str(changed)])
    assert now[str(changed)]["video_id"] != first[str(changed)]["video_id"]
    assert all(s["model_scores"][1] == pytest.approx(StampScorer.expected(9, s["timestamp_s"]), abs=2e-6)
               for s in seconds[str(changed)])
    assert {p: r for p, r in now.items() if p != str(changed)} == {
        p: r for p, r in first.items() if p != str(changed)}
    # other models: refused, as the rows they would retire are results too (a returning user's find: v2 scanned
    # into v1's folder deleted v1's rows, and an interrupted rescan left none), and nothing is touched
    kept = (_videos(out), _seconds(out), (out / "highlights.json").read_bytes())
    with pytest.raises(OutputError, match=r"holds the results of 5 videos of this library scored by other models "
                                          r"\(warm\+stamp \(ce84e2ac…\): 5 videos\); scanning with stamp would "
                                          r"replace them") as refused:
        scan_library([lib], ScanOptions(out_dir=out, threshold=THRESHOLD, device="cpu"), scorers=[StampScorer()])
    assert "--replace-models" in str(refused.value) and "another output folder" in str(refused.value)
    assert (_videos(out), _seconds(out), (out / "highlights.json").read_bytes()) == kept
    # asked for: every video is rescanned, with one score per frame per new model
    other = scan_library([lib], ScanOptions(out_dir=out, threshold=THRESHOLD, device="cpu", replace_models=True),
                         scorers=[RetrainedStampScorer()])
    assert other.run.videos == len(first) and other.superseded == len(first)
    assert {len(s["model_scores"]) for rows in _seconds(out).values() for s in rows} == {1}
    assert {r["model_fingerprint"] for r in _videos(out).values()} == {"stamp-v2"}
    # --no-resume redoes everything and still keeps each path once
    fourth = _scan(lib, out, resume=False, shard_videos=50, replace_models=True)
    assert fourth.run.videos == len(first) and set(_videos(out)) == set(first)
    assert sum(len(v) for v in _seconds(out).values()) == sum(n for _, n in GOOD.values()) + 1


def test_rows_of_other_models_in_the_folder_are_named_not_passed_off(library: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """One library scanned with model A, another into the same folder with model B: highlights.json named only
    B while ranking A's rows too (an exploratory tester's find). It now lists the other models' fingerprints
    and how many videos each scored, each highlight says which models scored it, and the scan warns."""
    out = tmp_path / "out"
    first = _scan(library / "2023", out)
    with caplog.at_level("WARNING"):
        second = scan_library([library / "2024"], ScanOptions(out_dir=out, threshold=THRESHOLD, device="cpu"),
                              scorers=[StampScorer()])
    assert second.totals.other_models == first.totals.total > 0
    assert f"{first.totals.total} of the {second.totals.total} videos in {out} were scored by other models" \
        in caplog.text
    doc = json.loads((out / "highlights.json").read_text())
    assert doc["models"] == [{"name": StampScorer.name, "fingerprint": "stamp-v1"}]
    assert doc["other_models"] == [{"fingerprint": FINGERPRINT, "name": "warm+stamp", "videos": first.totals.total}]
    by_path = _videos(out)
    assert doc["highlights"] and all(h["model_fingerprint"] == by_path[h["path"]]["model_fingerprint"]
                                     for h in doc["highlights"])
    caplog.clear()
    with caplog.at_level("WARNING"):  # one model for the whole folder: nothing to say
        alone = scan_library([library], ScanOptions(out_dir=out, threshold=THRESHOLD, device="cpu",
                                                    replace_models=True), scorers=[StampScorer()])
    assert alone.totals.other_models == 0 and "other models" not in caplog.text
    assert json.loads((out / "highlights.json").read_text())["other_models"] == []


@pytest.mark.parametrize("stopped_in", ["scan_files", "drop_superseded"])
def test_an_interrupted_replacement_leaves_no_highlights_of_retired_rows(library: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         stopped_in: str) -> None:
    """--replace-models retires the other model's rows before scoring again; stopped then, highlights.json listed
    the retired rows and a reel cut from them (a returning user's find), and it was rewritten only once every pair
    was rewritten: a SIGTERM while retiring 300 pairs left 61 listed highlights without a row (an adversarial
    tester's). It is written first, without the rows about to go."""
    from quadvault_dali.scan import runner

    out = tmp_path / "out"
    first = _scan(library / "2023", out)
    assert json.loads((out / "highlights.json").read_text())["total_scanned"] == first.totals.total > 0

    def stopped(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, stopped_in, stopped)
    with pytest.raises(KeyboardInterrupt):
        scan_library([library / "2023"], ScanOptions(out_dir=out, threshold=THRESHOLD, device="cpu",
                                                     replace_models=True), scorers=[RetrainedStampScorer()])
    doc = json.loads((out / "highlights.json").read_text())
    assert doc["total_scanned"] == 0 and doc["highlights"] == [] and doc["models"][0]["name"] == "stamp"
    assert len(read_table(out, "videos")) == (first.totals.total if stopped_in == "drop_superseded" else 0)


@pytest.mark.parametrize("models", [[StampScorer()], [StampScorer(), WarmScorer()]], ids=["one-of-two", "reordered"])
def test_a_subset_of_an_ensemble_is_rescored_from_stored_scores(library: Path, tmp_path: Path,
                                                                models: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """-m v1 after -m v1 -m v2 (or the same models in another order) rescanned every video, though the ensemble's
    rows hold each model's per-second scores: the rows are now rebuilt from them without decoding, equal to what a
    scan with these models writes, and a kill before the old rows are retired leaves each video's newer row."""
    from quadvault_dali.scan import runner

    out, fresh = tmp_path / "out", tmp_path / "fresh"
    first = _scan(library / "2023", out)
    good = first.totals.total - first.totals.errors
    assert good == 2
    with pytest.raises(OutputError, match="would replace them|given in another order") as refused:
        scan_library([library / "2023"], ScanOptions(out_dir=out, threshold=THRESHOLD, device="cpu"), scorers=models)
    assert "--replace-models" in str(refused.value)
    assert "; it rebuilds them from the per-model scores stored already, without decoding" in str(refused.value)
    options = {"threshold": THRESHOLD, "device": "cpu", "replace_models": True}
    monkeypatch.setattr(runner, "drop_superseded", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # stopped once the rebuilt rows are written, before the old go
        scan_library([library / "2023"], ScanOptions(out_dir=out, **options), scorers=models)
    assert json.loads((out / "highlights.json").read_text())["total_scanned"] == good  # the rebuilt rows
    monkeypatch.undo()
    again = scan_library([library / "2023"], ScanOptions(out_dir=out, **options), scorers=models)
    assert again.run.videos == 0 and again.run.frames == 0  # nothing decoded
    scan_library([library / "2023"], ScanOptions(out_dir=fresh, **options), scorers=models)
    volatile = {"scanned_at", "scan_seconds"}
    rebuilt, scanned = _videos(out), _videos(fresh)
    assert {p: {k: v for k, v in r.items() if k not in volatile} for p, r in rebuilt.items()} == {
        p: {k: v for k, v in r.items() if k not in volatile} for p, r in scanned.items()}
    assert _seconds(out) == _seconds(fresh)
    assert read_metadata(out / "videos" / complete_shards(out)[0]).models == tuple(
        ModelRef(m.name, m.fingerprint) for m in models)
    assert json.loads((out / "highlights.json").read_text())["highlights"] == \
        json.loads((fresh / "highlights.json").read_text())["highlights"]


def test_a_shard_job_warns_only_about_its_own_half(library: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A --shard 0/2 job saw the other half's deleted files as kept rows under an "empty folder", and, after a
    model change, the other half's rows (which their own job rescans) as another library's (a reviewer's find)."""
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    out = tmp_path / "out"
    _scan(lib, out)
    other_half = next(p for p in sorted(_videos(out)) if not in_shard(os.path.relpath(p, lib), (0, 2))
                      and Path(p).parent != lib)
    Path(other_half).unlink()
    with caplog.at_level("WARNING"):
        half = scan_library([lib], ScanOptions(out_dir=out, threshold=THRESHOLD, device="cpu", shard=(0, 2),
                                               replace_models=True), scorers=[StampScorer()])
    assert "rows are kept" not in caplog.text and "scored by other models" not in caplog.text
    assert half.totals.other_models == 0
    doc = json.loads((out / "highlights.json").read_text())
    assert doc["other_models"] and doc["other_models"][0]["fingerprint"] == FINGERPRINT  # listed all the same


def test_shard_halves_cover_library_once(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    a = _scan(library, out, shard=(0, 2))
    b = _scan(library, out, shard=(1, 2))
    assert a.run.videos > 0 and b.run.videos > 0 and a.run.videos + b.run.videos == 9
    names = complete_shards(out)
    assert {n.split("-")[1] for n in names} == {"s00of02", "s01of02"}
    videos = _videos(out)  # asserts no path twice
    assert len(videos) == 9 and b.totals.total == 9  # the last job reports the whole folder
    rel = lambda p: os.path.relpath(p, library)  # noqa: E731
    assert all(in_shard(rel(p), (0, 2)) != in_shard(rel(p), (1, 2)) for p in videos)
    again = _scan(library, out, shard=(0, 2))
    assert again.run.videos == 0


def test_shards_of_nested_library_arguments_still_cover_each_file_once(library: Path) -> None:
    """``scan lib lib/2023 --shard i/n``: a file reached twice must be in one shard only, whatever the path
    relative to each argument hashes to."""
    from quadvault_dali.scan.runner import select_files

    nested = [library, library / "2023", library / "2023" / "06"]
    for n in (2, 3, 4):
        picked = [str(f.path) for i in range(n) for f in select_files(nested, (i, n))]
        assert sorted(picked) == sorted(str(f.path) for f in select_files([library])), n


def test_output_inside_library_is_refused(library: Path) -> None:
    before = tree_hash(library)
    with pytest.raises(OutputError, match="inside the library"):
        _scan(library, library / "scan_out")
    assert tree_hash(library) == before


def test_a_scan_that_cannot_start_leaves_no_output_folder(library: Path, tmp_path: Path) -> None:
    """A model that does not load (or --device gpu where there is none) left an empty --out behind (a README
    review's find): the models are loaded before the folder is made."""
    from quadvault_dali.device import gpu_status

    with pytest.raises(QuadvaultError):
        scan_library([library], ScanOptions(out_dir=tmp_path / "out", device="cpu"),
                     model_paths=[tmp_path / "no_such_model"])
    assert not (tmp_path / "out").exists()
    if not gpu_status()[0]:
        with pytest.raises(QuadvaultError, match="no CUDA device"):
            scan_library([library], ScanOptions(out_dir=tmp_path / "out", device="gpu"),
                         model_paths=[tmp_path / "no_such_model"])
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sub", ["videos", "seconds", "videos/2024", "damaged"])
def test_a_library_in_the_folders_the_shards_go_to_is_refused(library: Path, tmp_path: Path, sub: str) -> None:
    """``scan ~/drone/videos --out ~/drone``: shard files would land among the user's clips."""
    footage = tmp_path / "drone" / sub
    shutil.copytree(library, footage)
    before = tree_hash(footage)
    with pytest.raises(OutputError, match=r"writes its shards into .*, which holds the library"):
        _scan(footage, tmp_path / "drone")
    assert tree_hash(footage) == before


def test_an_output_reaching_the_library_through_a_bind_mount_is_refused(tmp_path: Path) -> None:
    """``--out`` a bind mount (a Docker volume) of a folder inside the library, or a shard folder that is one of
    the library: real paths differ, so only comparing the folders themselves (device, inode) sees it."""
    import subprocess
    import sys
    import textwrap

    lib, out, aliased = tmp_path / "lib", tmp_path / "bindout", tmp_path / "o2"
    (lib / "scan_results").mkdir(parents=True)
    out.mkdir()
    (aliased / "videos").mkdir(parents=True)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from quadvault_dali.errors import OutputError
        from quadvault_dali.scan.runner import check_output_location
        for out, lib in ((Path({str(out)!r}), Path({str(lib)!r})), (Path({str(aliased)!r}), Path({str(lib)!r}))):
            try:
                check_output_location(out, [lib])
                print("allowed", out)
            except OutputError as exc:
                print("refused", out, exc)
        """)
    mounts = (f"mount --bind {lib / 'scan_results'} {out} && mount --bind {lib} {aliased / 'videos'} && "
              f"{sys.executable} -c \"$0\"")
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", mounts, script], capture_output=True, text=True,
                              timeout=60)
    except OSError as exc:
        pytest.skip(f"no unshare: {exc}")
    if done.returncode != 0 and "mount" in done.stderr:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"refused {out}") and "is inside the library" in lines[0]
    assert lines[1].startswith(f"refused {aliased}") and "which holds the library" in lines[1]
    assert not any((lib / "scan_results").iterdir())


def test_full_disk_stops_cleanly_and_resumes(library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import quadvault_dali.scan.shards as shards

    real_write = shards.pq.write_table
    calls = {"n": 0}

    def failing(table, where, **kw):  # third file (= second pair's seconds) hits a full disk
        calls["n"] += 1
        if calls["n"] == 3:
            Path(where).write_bytes(b"PAR1 half")
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real_write(table, where, **kw)

    monkeypatch.setattr(shards.pq, "write_table", failing)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="No space left on device") as info:
        _scan(library, out, shard_videos=2)
    assert "resumes" in str(info.value)
    assert complete_shards(out) == ["part-00000.parquet"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    assert len(read_table(out, "videos")) == 2
    monkeypatch.setattr(shards.pq, "write_table", real_write)
    resumed = _scan(library, out, shard_videos=2)
    assert resumed.skipped == 2 and resumed.run.videos == 7 and len(_videos(out)) == 9


def test_a_run_stopped_by_an_error_keeps_the_videos_it_finished(library: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure that stops sampling (a decode stream's bug, say) must not throw away the videos finished
    since the last shard: they are written before the error goes up, and the resumed run does the rest."""
    import quadvault_dali.scan.runner as runner
    from quadvault_dali.errors import BackendUnavailableError
    from quadvault_dali.sampling import create_sampler

    class StopsAfterThree:
        def __init__(self, **kw: object) -> None:
            self.inner = create_sampler("cpu", **kw)

        def iter_batches(self, videos):  # type: ignore[no-untyped-def]
            finished = 0
            for batch in self.inner.iter_batches(videos):
                yield batch
                finished += len(batch.completed)
                if finished >= 3:
                    raise BackendUnavailableError("a decode stream stopped: RuntimeError: boom")

        def close(self) -> None:
            self.inner.close()

    monkeypatch.setattr(runner, "create_sampler", lambda device, **kw: StopsAfterThree(**kw))
    out = tmp_path / "out"
    with pytest.raises(BackendUnavailableError, match="boom"):
        _scan(library, out, shard_videos=100)  # no shard would have been written before the end
    kept = _videos(out)
    assert len(kept) >= 3 and all(r["status"] in ("ok", "error") for r in kept.values())
    monkeypatch.undo()
    resumed = _scan(library, out)
    assert resumed.skipped == len(kept) and len(_videos(out)) == len(GOOD) + len(BROKEN)


def test_a_damaged_shard_is_moved_aside_and_its_videos_scanned_again(library: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A complete pair that no longer reads (a disk error): one bad file must not stop every later scan."""
    out = tmp_path / "out"
    first = _scan(library, out, shard_videos=3)
    names = sorted(os.listdir(out / "videos"))
    assert len(names) >= 2
    lost = {r["path"] for r in pq.read_table(out / "videos" / names[0]).to_pylist()}
    (out / "videos" / names[0]).write_bytes(b"PAR1 not really")
    with caplog.at_level("WARNING"):
        again = _scan(library, out, shard_videos=3)
    assert f"moved shard pair {names[0]} to {out / 'damaged'}" in caplog.text
    assert sorted(os.listdir(out / "damaged")) == [f"seconds-{names[0]}", f"videos-{names[0]}"]
    assert again.run.videos == len(lost)
    videos = _videos(out)  # no path twice
    assert set(videos) == {str(library / r) for r in [*GOOD, *BROKEN]}
    assert again.totals.total == first.totals.total == len(GOOD) + len(BROKEN)


def test_readers_skip_a_pair_retired_while_they_read(library: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers take no lock: another job may remove a pair between listing and reading it. The report reads the
    folder again (the next listing no longer has it); resume skips it."""
    import quadvault_dali.scan.resume as resume
    import quadvault_dali.scan.shards as shards
    from quadvault_dali.scan.report import highlights_document

    out = tmp_path / "out"
    _scan(library, out)
    real = shards.complete_shards
    listed: list[int] = []

    def ghost(d: Path) -> list[str]:  # listed once, then gone
        listed.append(1)
        return real(d) + (["part-99999.parquet"] if len(listed) == 1 else [])

    monkeypatch.setattr(shards, "complete_shards", ghost)
    doc, totals = highlights_document(out, threshold=THRESHOLD, models=())
    assert len(listed) > 1  # read again
    monkeypatch.setattr(resume, "complete_shards", lambda d: real(d) + ["part-99999.parquet"])
    assert totals.total == len(GOOD) + len(BROKEN)
    assert len(read_table(out, "videos")) == len(GOOD) + len(BROKEN)
    assert _scan(library, out).run.videos == 0


def test_an_output_folder_that_cannot_be_written_is_a_clear_error(library: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-only --out (root ignores chmod, so the refusal is simulated) and a disk full at the crash journal's
    first line: an OutputError naming the file, not a traceback."""
    import builtins

    import quadvault_dali.scan.crashguard as crashguard
    import quadvault_dali.scan.shards as shards

    out = tmp_path / "out"
    out.mkdir()
    real_open = os.open

    def read_only(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(path).parent == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(shards.os, "open", read_only)
        with pytest.raises(OutputError, match=r"out/\.\S+: cannot write scan results: Permission denied "
                                              r"\(check that --out is writable\)"):
            _scan(library, out)

    def full_disk(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(file).name.startswith(".inflight"):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(crashguard, "open", full_disk, raising=False)
    with pytest.raises(OutputError, match=r"cannot write scan results: No space left on device \(free space"):
        _scan(library, out)


def test_deleted_and_moved_videos_leave_the_results(library: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Totals and highlights describe the library as it is: a deleted file's rows go, a moved file is listed
    once under its new name; an empty library folder (an unmounted disk's mount point) retires nothing."""
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    out = tmp_path / "out"
    first = _scan(lib, out)
    deleted, moved = lib / "rotated_90.mp4", lib / "2024" / "calm_mjpeg_30.mkv"
    deleted.unlink()
    moved.rename(lib / "calm renamed.mkv")
    # a folder where a video was: the video is gone all the same (its row stayed, an error after a mid-scan swap)
    replaced = lib / "2023" / "06" / "trip" / "high_h264_30.mp4"
    replaced.unlink()
    replaced.mkdir()
    again = _scan(lib, out)
    videos = _videos(out)
    assert str(deleted) not in videos and str(moved) not in videos and str(lib / "calm renamed.mkv") in videos
    assert str(replaced) not in videos
    assert again.totals.total == first.totals.total - 2 == len(videos)
    assert again.run.videos == 1  # only the renamed file
    # a disk inside the library goes away (its mount point stays, empty), a linked folder's target too:
    # their videos still exist somewhere, so their rows stay
    usb = tmp_path / "usb"
    shutil.move(str(lib / "2024"), usb)
    (lib / "2024").symlink_to(usb)
    linked = _scan(lib, out)
    assert linked.totals.total == len(videos)
    disk2 = lib / "2023"
    kept = {p for p in _videos(out) if p.startswith(str(disk2)) or p.startswith(str(lib / "2024"))}
    assert kept
    shutil.rmtree(disk2)
    disk2.mkdir()  # the empty mount point
    usb.rename(tmp_path / "usb unplugged")  # the link now points nowhere
    caplog.clear()
    with caplog.at_level("WARNING"):
        partly = _scan(lib, out)
    assert kept <= set(_videos(out)) and partly.superseded == 0
    # said, with what to do if the clips were deleted rather than unplugged
    assert f"{len(kept)} scanned videos are missing, but their rows are kept" in caplog.text
    assert "delete the empty folder too and the next scan drops their rows" in caplog.text
    disk2.rmdir()  # they were deleted: the empty folder goes too, and the rows with it
    (lib / "2024").unlink()
    caplog.clear()
    with caplog.at_level("WARNING"):
        dropped = _scan(lib, out)
    assert not kept & set(_videos(out)) and dropped.superseded == len(kept) and "rows are kept" not in caplog.text
    # the whole disk goes away: its mount point is an empty folder; nothing is retired
    remaining = set(_videos(out))
    shutil.rmtree(lib)
    lib.mkdir()
    with caplog.at_level("WARNING"):
        empty = _scan(lib, out)
    assert empty.totals.total == len(_videos(out)) and empty.superseded == 0 and remaining == set(_videos(out))
    assert f"found no videos under {lib.resolve()} (is the disk mounted?)" in caplog.text


def test_seconds_that_do_not_decode_are_visible_in_an_ok_row(tmp_path: Path) -> None:
    """Two damaged keyframes of six: the video is scored from the four that decode, and its row says six
    were planned (before, only frames_scored against duration_s hinted at the loss)."""
    from quadvault_dali.probe import probe_video

    lib = tmp_path / "lib"
    clip = make_video(lib / "scratched.mp4", SynthSpec(duration_s=6.0, fps=10, keyframe_interval_s=1.0,
                                                       width=160, height=96, source_id=5))
    _, index = probe_video(clip, with_index=True)
    data = bytearray(clip.read_bytes())
    for row in np.flatnonzero(index.is_key & (np.abs(index.pts - 2.5) < 1.0)):  # the keyframes at 2 s and 3 s
        data[index.pos[row]:index.pos[row] + index.size[row]] = bytes(int(index.size[row]))
    clip.write_bytes(bytes(data))
    _scan(lib, tmp_path / "out", mode="keyframe")
    (row,) = _videos(tmp_path / "out").values()
    assert row["status"] == "ok" and (row["frames_scored"], row["frames_expected"]) == (4, 6)
    assert [round(s["timestamp_s"]) for s in _seconds(tmp_path / "out")[str(clip)]] == [0, 1, 4, 5]


def test_the_same_library_through_a_link_is_the_same_scan(library: Path, tmp_path: Path) -> None:
    """A library scanned as /footage, then through a link to it (or the other way round), scanned every
    video again and listed each highlight twice; so did a new link that met a file before its own name."""
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    out = tmp_path / "out"
    first = _scan(lib, out)
    (tmp_path / "footage").symlink_to(lib)
    again = _scan(tmp_path / "footage", out)
    assert again.run.videos == 0 and again.totals.total == first.totals.total
    (lib / "0_alias.mp4").symlink_to(lib / "2024" / "calm_mjpeg_30.mkv")
    linked = _scan(lib, out)
    assert linked.run.videos == 0 and linked.totals.total == first.totals.total
    assert all(str(lib) in p and "0_alias" not in p for p in _videos(out))
    # a folder first scanned through the link (rows keep the paths as given), then through the target
    out2 = tmp_path / "out2"
    assert _scan(tmp_path / "footage", out2).run.videos == first.run.videos
    again = _scan(lib, out2)
    assert again.run.videos == 0 and again.totals.total == first.totals.total == len(_videos(out2))
    touched = lib / "rotated_90.mp4"  # a changed file is rescanned under this run's path, its old row retired
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    changed = _scan(lib, out2)
    videos = _videos(out2)
    assert changed.run.videos == 1 and str(touched) in videos and len(videos) == first.totals.total
    deleted = lib / "2024" / "calm_mjpeg_30.mkv"  # deleted: its row under the link's path goes too
    assert [p for p in videos if os.path.realpath(p) == str(deleted.resolve())] != [str(deleted)]
    deleted.unlink()
    (lib / "0_alias.mp4").unlink()
    after = _scan(lib, out2)
    assert after.totals.total == first.totals.total - 1 == len(_videos(out2))
    # both paths at once: each file once
    both = _scan_many([tmp_path / "footage", lib], tmp_path / "out3")
    assert both.run.videos == both.totals.total == first.totals.total - 1
    # rows under the real paths, this run through the link: a deleted file's row still goes
    (lib / "rotated_90.mp4").unlink()
    via_link = _scan(tmp_path / "footage", out)
    assert via_link.run.videos == 0 and via_link.totals.total == len(_videos(out)) == first.totals.total - 2
    both = _scan_many([tmp_path / "footage", lib], tmp_path / "out3")
    assert both.run.videos == 0 and both.totals.total == first.totals.total - 2


def _scanned_through_a_link(library: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A copy of the library, a link to it, and a scan through the link: (copy, link, out folder, summary)."""
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    link = tmp_path / "footage"
    link.symlink_to(lib)
    out = tmp_path / "out"
    return lib, link, out, _scan(link, out)


def test_rows_scanned_through_a_link_removed_since_are_not_orphaned(library: Path, tmp_path: Path) -> None:
    """Rows keep the path a video was scanned under; once that link is gone, a scan of the real folder found
    no row by path or by resolving it, scanned everything again and counted the library twice. Rows now
    record their real path: the old rows are matched and moved to the live paths, nothing is scanned again."""
    lib, link, out, first = _scanned_through_a_link(library, tmp_path)
    table = read_table(out, "videos").to_pylist()
    assert all(r["path"].startswith(str(link) + os.sep) and r["real_path"] == os.path.realpath(r["path"])
               for r in table)
    link.unlink()
    again = _scan(lib, out)
    videos = _videos(out)
    assert again.totals.total == first.totals.total == len(videos)
    assert all(p.startswith(str(lib) + os.sep) for p in videos), "no row left under the removed link"
    assert again.run.videos == 0  # the rows moved to their live paths
    _assert_rows_consistent(out)
    assert all(str(link) not in (r["error_message"] or "") for r in read_table(out, "videos").to_pylist())
    assert _scan(lib, out).run.videos == 0


def test_a_library_mounted_under_another_name_keeps_its_results(library: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A card or drive mounted again as DRONE1 instead of DRONE (or footage moved to a NAS with ``rsync -a``):
    every video was scanned again and counted twice, once under the old, dead paths that reels and
    highlights.json then could not open, and no command could retire them. Rows of files found again (same
    name, size and mtime) now move to the new paths; nothing is scanned again."""
    mount = tmp_path / "media" / "DRONE"
    shutil.copytree(library, mount)
    out = tmp_path / "out"
    first = _scan(mount, out)
    before = {os.path.relpath(p, mount): (r["score"], r["status"], r["error_kind"]) for p, r in _videos(out).items()}
    seconds_before = {os.path.relpath(p, mount): [(r["timestamp_s"], r["score"]) for r in rows]
                      for p, rows in _seconds(out).items()}
    remounted = mount.rename(tmp_path / "media" / "DRONE1")
    with caplog.at_level("INFO"):
        again = _scan(remounted, out)
    assert again.run.videos == 0 and again.totals.total == first.totals.total
    assert f"{len(before)} scanned videos were found under another path" in caplog.text
    videos = _videos(out)
    assert {os.path.relpath(p, remounted): (r["score"], r["status"], r["error_kind"])
            for p, r in videos.items()} == before
    assert {os.path.relpath(p, remounted): [(r["timestamp_s"], r["score"]) for r in rows]
            for p, rows in _seconds(out).items()} == seconds_before
    _assert_rows_consistent(out)
    assert not any(str(mount) + os.sep in (r["error_message"] or "") for r in videos.values())
    assert any(str(remounted) in (r["error_message"] or "") for r in videos.values())  # the broken files' rows
    doc = json.loads((out / "highlights.json").read_text())
    assert doc["highlights"] and all(h["path"].startswith(str(remounted) + os.sep) for h in doc["highlights"])
    assert _scan(remounted, out).run.videos == 0


def test_a_moved_file_whose_row_another_job_retired_meanwhile_is_scanned(library: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A file moved into a folder of the other --shard half: that job, running at the same time, may retire its
    old row (deleted, as it sees it) before this one moves it. The file then has no row; it was counted as done
    and left out until the next run. Now it is scanned."""
    import quadvault_dali.scan.runner as runner
    from quadvault_dali.scan.resume import drop_superseded

    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    out = tmp_path / "out"
    _scan(lib, out)
    moved = lib / "moved" / "rotated_90.mp4"
    moved.parent.mkdir()
    (lib / "rotated_90.mp4").rename(moved)
    real = runner.relocate_rows

    def retired_first(out_dir, relocated, **kw):  # type: ignore[no-untyped-def]
        drop_superseded(out_dir, {shard: set(moves) for shard, moves in relocated.items()})
        return real(out_dir, relocated, **kw)

    monkeypatch.setattr(runner, "relocate_rows", retired_first)
    again = _scan(lib, out)
    assert again.run.videos == 1 and str(moved) in _videos(out)
    _assert_rows_consistent(out)


def test_a_moved_file_is_matched_only_when_one_old_row_fits_best(tmp_path: Path) -> None:
    """Two cards' DJI_0001.MP4 with the same size and mtime (copies) both gone, and one such file found under a
    new folder: the row whose path ends like the new one in more folders is the one moved; where two fit
    equally, neither is (the file is scanned again, never given another file's results)."""
    spec = SynthSpec(codec="h264", width=96, height=64, fps=30, duration_s=2.0, source_id=1)
    lib = tmp_path / "lib"
    for card in ("cardA", "cardB"):
        make_video(lib / card / "DCIM" / "DJI_0001.MP4", spec)
        os.utime(lib / card / "DCIM" / "DJI_0001.MP4", ns=(1_700_000_000_000_000_000,) * 2)
    out = tmp_path / "out"
    _scan(lib, out)
    assert (lib / "cardA" / "DCIM" / "DJI_0001.MP4").read_bytes() == (lib / "cardB" / "DCIM" / "DJI_0001.MP4").read_bytes()
    (lib / "cardA").rename(lib / "cardA-2023")  # the folder above DCIM renamed: the tail DCIM/DJI_0001.MP4 ties
    shutil.rmtree(lib / "cardB")
    again = _scan(lib, out)
    assert again.run.videos == 1  # a tie: scanned again
    assert list(_videos(out)) == [str(lib / "cardA-2023" / "DCIM" / "DJI_0001.MP4")]
    _assert_rows_consistent(out)
    (lib / "cardA-2023").rename(lib / "cardA")
    (lib / "elsewhere").mkdir()
    shutil.copy2(lib / "cardA" / "DCIM" / "DJI_0001.MP4", lib / "elsewhere" / "DJI_0001.MP4")
    assert _scan(lib, out).run.videos == 1  # one file moved back (a single fit), the copy is new
    _assert_rows_consistent(out)
    assert len(_videos(out)) == 2


def test_a_kill_between_moving_a_pairs_two_files_leaves_no_duplicate_seconds(library: Path, tmp_path: Path) -> None:
    """Moving rows rewrites a pair's seconds, then its videos. Killed between the two, the seconds hold the new
    path and the video row the old one: the next run scans that video again (its row has no seconds) and drops
    the seconds left without a video row, so the new path's seconds are not there twice."""
    from quadvault_dali.scan.shards import write_parquets_atomic

    mount = tmp_path / "DRONE"
    shutil.copytree(library, mount)
    out = tmp_path / "out"
    _scan(mount, out, shard_videos=100)
    remounted = mount.rename(tmp_path / "DRONE1")
    (name,) = complete_shards(out)
    seconds = pq.read_table(out / "seconds" / name)
    paths = [p.replace(str(mount), str(remounted), 1) for p in seconds["path"].to_pylist()]
    i = seconds.schema.get_field_index("path")
    write_parquets_atomic([(out / "seconds" / name, seconds.set_column(i, seconds.schema.field(i),
                                                                      pa.array(paths, pa.string())))])
    again = _scan(remounted, out)
    assert again.run.videos == len(GOOD)  # the error rows, without seconds, moved; the others scanned again
    _assert_rows_consistent(out)
    assert {os.path.relpath(p, remounted): len(rows) for p, rows in _seconds(out).items()} == {
        rel: n for rel, (_, n) in GOOD.items()}


def test_a_recorded_real_path_counts_only_once_the_rows_own_path_is_gone(tmp_path: Path) -> None:
    """While a row's path still exists it stands for whatever that path reaches now: a link re-pointed to
    the next day's footage must not hand the old row to the new file (and retire it from the old one), nor
    may a link that followed its file to another disk get its row retired by a scan of the old disk."""
    spec = dict(codec="h264", width=96, height=64, fps=30)
    lib = tmp_path / "lib"
    make_video(lib / "day1" / "DJI_0001.mp4", SynthSpec(**spec, duration_s=2.0, source_id=1))
    make_video(lib / "day2" / "DJI_0001.mp4", SynthSpec(**spec, duration_s=3.0, source_id=2))
    (lib / "current").symlink_to("day1")
    out = tmp_path / "out"
    _scan(lib / "current", out)
    (lib / "current").unlink()
    (lib / "current").symlink_to("day2")
    _scan(lib, out)
    reals = sorted(os.path.realpath(p) for p in _videos(out))
    assert reals == [str((lib / d / "DJI_0001.mp4").resolve()) for d in ("day1", "day2")]
    assert _scan(lib, out).run.videos == 0

    old, new = tmp_path / "disk1" / "footage", tmp_path / "disk2" / "footage"
    make_video(old / "x.mp4", SynthSpec(**spec, duration_s=2.0, source_id=3))
    make_video(tmp_path / "disk1" / "other" / "y.mp4", SynthSpec(**spec, duration_s=2.0, source_id=4))
    link = tmp_path / "footage"
    link.symlink_to(old)
    out2 = tmp_path / "out2"
    _scan(link, out2)
    new.mkdir(parents=True)
    shutil.move(str(old / "x.mp4"), str(new / "x.mp4"))
    link.unlink()
    link.symlink_to(new)  # the link followed its file to another disk
    _scan(tmp_path / "disk1", out2)
    assert str(link / "x.mp4") in _videos(out2), "a row whose path still opens is not gone"


def test_a_library_of_links_to_files_elsewhere_is_not_an_empty_disk(library: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    curated = tmp_path / "best"
    curated.mkdir()
    for clip in sorted(library.rglob("*.mp4"))[:2]:
        (curated / clip.name).symlink_to(clip)
    with caplog.at_level("WARNING"):
        summary = _scan(curated, tmp_path / "out")
    assert summary.run.videos == 2 and "found no videos" not in caplog.text


def test_jobs_that_split_the_library_differently_cannot_share_a_folder(library: Path, tmp_path: Path) -> None:
    """A plain scan next to a --shard 0/2 job, or 0/2 next to 0/4, would scan some videos twice at once."""
    from quadvault_dali.scan.shards import LayoutLock

    out = tmp_path / "out"
    out.mkdir()
    running = LayoutLock(out, 2)  # a --shard 0/2 job at work
    assert running.acquire() is None
    try:
        with pytest.raises(OutputError, match=r"another scan is writing into this folder with --shard i/2"):
            _scan(library, out)
        with pytest.raises(OutputError, match=r"with --shard i/2 .*another --out .*--shard i/2"):
            _scan(library, out, shard=(0, 4))
        assert _scan(library, out, shard=(1, 2)).run.videos > 0  # the same split: the other half
    finally:
        running.release()
    assert _scan(library, out).run.videos > 0  # that job is done: a plain scan may take the folder


def test_a_second_scan_into_a_busy_folder_is_told_to_wait_or_use_another_out(library: Path, tmp_path: Path) -> None:
    """The same folder busy with a scan of the same split: the hint said to give each job its own --shard,
    which, followed for another library, scanned half of it and exited 0 (an exploratory tester's find)."""
    from quadvault_dali.scan.shards import TagLock, shard_tag

    out = tmp_path / "out"
    out.mkdir()
    for shard in ((0, 1), (1, 2)):
        running = TagLock(out, shard_tag(shard))
        assert running.acquire()
        try:
            with pytest.raises(OutputError) as err:
                _scan(library, out, shard=shard)
        finally:
            running.release()
        said = str(err.value) + str(err.value.hint)
        assert "another scan is writing into this folder" in said and "another --out" in said
        assert ("with the same --shard 1/2" in said) == (shard == (1, 2))
        assert "give each job its own --shard" not in said


def test_partial_shards_from_a_crash_are_discarded(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _scan(library, out, shard_videos=4)
    # simulate a crash between the two renames and one during a write
    (out / "seconds/part-00007.parquet").write_bytes((out / "seconds/part-00000.parquet").read_bytes())
    (out / "videos/.tmp-part-00007.parquet.12345").write_bytes(b"partial")
    again = _scan(library, out)
    assert again.run.videos == 0 and not (out / "seconds/part-00007.parquet").exists()
    assert not (out / "videos/.tmp-part-00007.parquet.12345").exists()
    assert len(_videos(out)) == 9


def test_shards_of_schema_1_0_still_read_and_resume(library: Path, tmp_path: Path) -> None:
    """A folder scanned before 1.1 (no decoder or sampling_fps columns) reads as one table and resumes without
    rescanning (its rows count as 1 frame/s)."""
    out = tmp_path / "out"
    _scan(library, out, shard_videos=5)
    for name in complete_shards(out):
        path = out / "videos" / name
        table = pq.read_table(path)
        meta = dict(table.schema.metadata)
        meta[b"quadvault.schema_version"] = b"1.0"
        old = table.drop_columns(["decoder", "decoder_note", "sampling_fps"]).replace_schema_metadata(meta)
        pq.write_table(old, path)
    rows = read_table(out, "videos").to_pylist()
    assert len(rows) == 9 and {r["decoder"] for r in rows} == {None} and {r["sampling_fps"] for r in rows} == {None}
    again = _scan(library, out)
    assert again.run.videos == 0 and again.skipped == 9
    # ...and the scan rewrote them with today's columns: DuckDB and pyarrow take the first file's schema, so
    # old shards first in a folder hid every newer column of the later ones
    for name in complete_shards(out):
        for table in ("videos", "seconds"):
            assert pq.read_schema(out / table / name).names == SCHEMAS[table].names
            assert read_metadata(out / table / name).schema_version == SCHEMA_VERSION
    # the same values, the new columns null but sampling_fps: 1 frame/s was the only rate before 1.2 (an analytics
    # tester's find: frames_scored / sampling_fps missed the upgraded rows)
    assert read_table(out, "videos").to_pylist() == [{**r, "sampling_fps": 1.0} for r in rows]
    import duckdb

    got = duckdb.sql(f"SELECT count(*), count(decoder), count(sampling_fps) FROM "
                     f"read_parquet('{out}/videos/*.parquet')").fetchall()
    assert got == [(9, 0, 9)]


def test_rows_from_before_1_4_learn_their_real_path_when_upgraded(library: Path, tmp_path: Path) -> None:
    """A 1.3 folder has no real_path: the upgrade records it for rows whose path still opens, so removing the
    link they were scanned through afterwards does not count the library twice."""
    lib, link, out, first = _scanned_through_a_link(library, tmp_path)
    for name in complete_shards(out):
        path = out / "videos" / name
        table = pq.read_table(path)
        meta = dict(table.schema.metadata)
        meta[b"quadvault.schema_version"] = b"1.3"
        pq.write_table(table.drop_columns(["real_path"]).replace_schema_metadata(meta), path)
    assert _scan(link, out).run.videos == 0  # resumed as before; the shards upgraded on the way
    assert all(r["real_path"] == os.path.realpath(p) for p, r in _videos(out).items())
    link.unlink()
    after = _scan(lib, out)
    assert after.totals.total == first.totals.total == len(_videos(out))


def test_rows_from_before_1_5_learn_when_their_video_was_recorded(tmp_path: Path) -> None:
    """A folder scanned before 1.5 has no recorded_at: the upgrade reads it from each unchanged file, so
    analytics by flight date need no rescan; a file changed since is left to its rescan."""
    lib, out = tmp_path / "lib", tmp_path / "out"
    for name, tag in [("a.mp4", "2022-05-01T08:00:00Z"), ("b.mp4", "2022-07-09T18:30:00Z"), ("c.mp4", None)]:
        make_video(lib / name, SynthSpec(width=64, height=64, duration_s=1.0, recorded_at=tag))
    _scan(lib, out)
    recorded = {Path(p).name: r["recorded_at"] for p, r in _videos(out).items()}
    assert recorded["a.mp4"].isoformat() == "2022-05-01T08:00:00+00:00" and recorded["c.mp4"] is None
    for name in complete_shards(out):
        path = out / "videos" / name
        table = pq.read_table(path)
        meta = {**table.schema.metadata, b"quadvault.schema_version": b"1.4"}
        pq.write_table(table.drop_columns(["recorded_at"]).replace_schema_metadata(meta), path)
    assert {r["recorded_at"] for r in _videos(out).values()} == {None}
    os.utime(lib / "b.mp4", ns=(1, 1))  # changed: its row is rescanned, not upgraded from the file as it is now
    again = _scan(lib, out)
    assert again.run.videos == 1 and again.skipped == 2
    assert {Path(p).name: r["recorded_at"] for p, r in _videos(out).items()} == recorded


def test_rows_rescored_from_an_older_schemas_shards_get_what_its_upgrade_fills_in(tmp_path: Path) -> None:
    """Rows rebuilt from stored scores of a 1.4 (or 1.1) shard kept its nulls for good: the rebuilt pair is
    current, so no upgrade ever visited it (a reviewer's find). They get the recording time, real path and rate."""
    lib, out = tmp_path / "lib", tmp_path / "out"
    make_video(lib / "a.mp4", SynthSpec(width=64, height=64, duration_s=2.0, recorded_at="2022-05-01T08:00:00Z"))
    _scan(lib, out)
    for name in complete_shards(out):
        for table in ("videos", "seconds"):
            path = out / table / name
            data = pq.read_table(path)
            meta = {**data.schema.metadata, b"quadvault.schema_version": b"1.1"}
            dropped = ["recorded_at", "real_path", "sampling_fps", "frames_expected"] if table == "videos" else []
            pq.write_table(data.drop_columns(dropped).replace_schema_metadata(meta), path)
    again = scan_library([lib], ScanOptions(out_dir=out, threshold=THRESHOLD, device="cpu", replace_models=True),
                         scorers=[StampScorer()])
    assert again.run.frames == 0  # rescored from the stored scores
    row = _videos(out)[str(lib / "a.mp4")]
    assert row["model_fingerprint"] == "stamp-v1" and row["recorded_at"].year == 2022
    assert row["real_path"] == os.path.realpath(lib / "a.mp4") and row["sampling_fps"] == 1.0


def test_a_clip_still_being_copied_while_scanned_is_an_error_row_and_scanned_again(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that grew (a copy in progress) or was edited while decoded kept scores of its partial content under
    the stat discovery saw (a live-library tester's find). It is now an error row saying so; the next run, seeing
    the new size, scans the finished file."""
    import quadvault_dali.sampling._cpu as cpu

    lib, out = tmp_path / "lib", tmp_path / "out"
    growing = make_video(lib / "copying.mp4", SynthSpec(width=64, height=64, duration_s=2.0, source_id=3))
    make_video(lib / "done.mp4", SynthSpec(width=64, height=64, duration_s=2.0, source_id=4))
    decode = cpu.CpuSampler.decode_video

    def decode_while_copying(self, path, outcome, emit):  # type: ignore[no-untyped-def]
        decode(self, path, outcome, emit)
        if path == growing:
            with open(path, "ab") as fh:  # the copy goes on writing
                fh.write(b"\0" * 1024)

    monkeypatch.setattr(cpu.CpuSampler, "decode_video", decode_while_copying)
    first = _scan(lib, out)
    rows = _videos(out)
    assert rows[str(growing)]["status"] == "error" and "changed while it was being scanned" in \
        rows[str(growing)]["error_message"] and rows[str(lib / "done.mp4")]["status"] == "ok"
    assert first.run.errors == 1 and not _seconds(out).get(str(growing))
    monkeypatch.undo()
    again = _scan(lib, out)
    assert again.run.videos == 1 and _videos(out)[str(growing)]["status"] == "ok"


def test_resume_rescans_videos_sampled_another_way(library: Path, tmp_path: Path) -> None:
    """The folder must not mix rates silently: another --fps rescans; asking for exact rescans keyframe rows."""
    out = tmp_path / "out"
    first = _scan(library, out, mode="keyframe")
    assert first.run.videos == 9
    assert _scan(library, out, mode="auto").run.videos == 0  # keyframe rows serve auto
    exact = _scan(library, out, mode="exact")
    keyframe_rows = exact.superseded
    assert exact.run.videos == keyframe_rows > 0  # only the videos keyframe mode had sampled
    assert {r["sampling_mode"] for r in _videos(out).values() if r["status"] == "ok"} == {"exact"}
    twice = _scan(library, out, fps=2.0)
    assert twice.run.videos == 9
    videos, seconds = _videos(out), _seconds(out)
    assert {r["sampling_fps"] for r in videos.values()} == {2.0}
    for path, row in videos.items():
        assert len(seconds.get(path, [])) == row["frames_scored"]


def test_scan_records_which_decoder_ran(library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gpu backend's engine, run here with DALI's CPU decoder: the videos its decoder cannot take are
    decoded on the CPU, scanned all the same (the stamps prove the frames), and the rows and summary say so."""
    import quadvault_dali.scan.runner as runner
    from quadvault_dali.sampling._gpu import DaliSampler

    monkeypatch.setattr(runner, "create_sampler", lambda device, **kw: DaliSampler(**kw))
    summary = _scan(library, tmp_path / "out")
    videos, seconds = _videos(tmp_path / "out"), _seconds(tmp_path / "out")
    fallbacks = 0
    for rel, (spec, n_seconds) in GOOD.items():
        row = videos[str(library / rel)]
        assert row["status"] == "ok" and row["frames_scored"] == n_seconds, row
        dali_takes = spec.codec in ("vp9", "mjpeg")
        assert row["decoder"] == ("dali-cpu" if dali_takes else "pyav")
        assert (row["decoder_note"] is None) == dali_takes
        fallbacks += not dali_takes
        for sec in seconds[row["path"]]:
            assert sec["model_scores"][1] == pytest.approx(StampScorer.expected(spec.source_id, sec["timestamp_s"]),
                                                           abs=2e-6)
    assert fallbacks == 3 and summary.run.cpu_fallbacks == fallbacks


def test_a_scan_through_the_ffmpeg_decode_client(library: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The gpu backend's engine with the FFmpeg client (``decode_client="ffmpeg"``, its CPU stand-in here): H.264
    and HEVC decode on the client, VP9 and MJPEG on the CPU fallback, broken files are error rows, and every
    second's score is the stamp's (the right frame from the right second)."""
    import quadvault_dali.scan.runner as runner
    from quadvault_dali.sampling._gpu import DaliSampler

    made: list[DaliSampler] = []
    monkeypatch.setattr(runner, "create_sampler", lambda device, **kw: made.append(DaliSampler(**kw)) or made[-1])
    summary = _scan(library, tmp_path / "out", decode_client="ffmpeg")
    # the client ran (DALI's CPU decoder labels its videos alike): its decoders opened, and only the FFmpeg
    # client takes H.264 and HEVC here (DALI's CPU decoder would have sent them to the fallback)
    assert made and made[0].decode_stats.decoder_opens >= 1
    videos, seconds = _videos(tmp_path / "out"), _seconds(tmp_path / "out")
    for rel, (spec, n_seconds) in GOOD.items():
        row = videos[str(library / rel)]
        assert row["status"] == "ok" and row["frames_scored"] == n_seconds, row
        assert row["decoder"] == ("dali-cpu" if spec.codec in ("h264", "hevc") else "pyav"), row
        for sec in seconds[row["path"]]:
            assert sec["model_scores"][1] == pytest.approx(StampScorer.expected(spec.source_id, sec["timestamp_s"]),
                                                           abs=2e-6)
    assert summary.run.errors == len(BROKEN) and summary.run.cpu_fallbacks == 2


@pytest.mark.parametrize("engine", ["cpu", "dali"])
def test_a_permission_denied_file_is_an_error_row(library: Path, tmp_path: Path, engine: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod does not stop root (CI containers), so the denial is simulated where the file is opened."""
    import builtins

    import quadvault_dali.sampling._reader as reader
    import quadvault_dali.scan.runner as runner
    from quadvault_dali.sampling._gpu import DaliSampler

    locked = library / "2024/calm_mjpeg_30.mkv"

    def guarded_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(reader, "open", guarded_open, raising=False)
    if engine == "dali":
        monkeypatch.setattr(runner, "create_sampler", lambda device, **kw: DaliSampler(**kw))
    summary = _scan(library, tmp_path / "out")
    row = _videos(tmp_path / "out")[str(locked)]
    assert (row["status"], row["error_kind"]) == ("error", "FileAccessError")
    assert row["error_message"] == f"{locked}: permission denied (check the file's read permission)"
    assert summary.run.errors == len(BROKEN) + 1 and summary.run.videos == len(GOOD) + len(BROKEN)
    # the permission fixed (size and mtime unchanged), the same command scans it; the broken files stay done
    monkeypatch.undo()
    if engine == "dali":
        monkeypatch.setattr(runner, "create_sampler", lambda device, **kw: DaliSampler(**kw))
    again = _scan(library, tmp_path / "out")
    assert again.run.videos == 1 and again.run.errors == 0
    assert _videos(tmp_path / "out")[str(locked)]["status"] == "ok"


@pytest.mark.parametrize("engine,rel", [("cpu", "2023/06/trip/high_h264_30.mp4"), ("dali", "2024/a/b/high_vp9_60.webm")])
def test_a_disk_read_error_is_an_error_row_that_says_so(library: Path, tmp_path: Path, engine: str, rel: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing disk (EIO past the file's first 4 KiB): a specific error row, and the scan goes on."""
    import quadvault_dali.scan.runner as runner
    from quadvault_dali.sampling._gpu import DaliSampler
    from quadvault_dali.sampling._reader import CountingFile

    bad = library / rel
    real_readinto, real_read_at = CountingFile.readinto, CountingFile.read_at

    def failing(real):  # type: ignore[no-untyped-def]
        def read(self, *args):  # type: ignore[no-untyped-def]
            if Path(self._fh.name) == bad and self._fh.tell() + (args[0] if isinstance(args[0], int) else 0) > 4096:
                raise OSError(errno.EIO, "Input/output error")
            return real(self, *args)
        return read

    monkeypatch.setattr(CountingFile, "readinto", failing(real_readinto))
    monkeypatch.setattr(CountingFile, "read_at", failing(real_read_at))
    if engine == "dali":
        monkeypatch.setattr(runner, "create_sampler", lambda device, **kw: DaliSampler(**kw))
    summary = _scan(library, tmp_path / "out")
    videos = _videos(tmp_path / "out")
    row = videos[str(bad)]
    assert row["status"] == "error", row
    assert "Input/output error (the disk or the file may be damaged" in row["error_message"], row["error_message"]
    assert summary.run.errors == len(BROKEN) + 1
    assert all(videos[str(library / r)]["status"] == "ok" for r in GOOD if r != rel)


def test_a_name_that_is_not_utf8_is_skipped_with_a_warning(library: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A Latin-1 name from an old NAS copy used to crash every run (and every --shard job) on hashing."""
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    latin1 = lib / os.fsdecode(b"caf\xe9.mp4")
    shutil.copy(lib / "rotated_90.mp4", latin1)
    with caplog.at_level("WARNING"):
        summary = _scan(lib, tmp_path / "out")
        halves = [_scan(lib, tmp_path / f"half{i}", shard=(i, 2)).run.videos for i in range(2)]
    assert summary.run.videos == len(GOOD) + len(BROKEN) and sum(halves) == len(GOOD) + len(BROKEN)
    assert "caf\\xe9.mp4: its path is not valid UTF-8; rename the file (or its folder) to scan it" in caplog.text
    assert [name.rsplit("/", 1)[-1] for name in summary.not_utf8] == ["caf\\xe9.mp4"]  # the CLI's summary says so


def test_a_new_threshold_on_a_finished_folder_rewrites_the_highlights(library: Path, tmp_path: Path) -> None:
    """Resume skips every video (scores do not depend on the threshold), so the highlights must be decided
    again by the new one, not taken from the stored flags."""
    out = tmp_path / "out"
    first = _scan(library, out)
    assert first.totals.highlights == 3
    strict = scan_library([library], ScanOptions(out_dir=out, threshold=0.99, device="cpu"), scorers=SCORERS)
    assert strict.run.videos == 0 and strict.totals.highlights == 0
    doc = json.loads((out / "highlights.json").read_text())
    assert doc["threshold"] == 0.99 and doc["count"] == 0 and doc["highlights"] == []
    lenient = scan_library([library], ScanOptions(out_dir=out, threshold=0.0, device="cpu"), scorers=SCORERS)
    assert lenient.totals.highlights == len(GOOD)  # every scored video, none of the error rows
    # each highlight's fraction of seconds above the threshold is for the new one, not the scan's: pick a
    # threshold at which some highlight's fraction differs from the stored one
    seconds, videos = _seconds(out), _videos(out)

    def frac(path: str, t: float) -> float:
        scores = [r["score"] for r in seconds[path]]
        return sum(x >= np.float32(t) for x in scores) / len(scores)

    ok = [v for v in videos.values() if v["status"] == "ok"]
    t = next(t for t in sorted({r["score"] for v in ok for r in seconds[v["path"]]}, reverse=True)
             if any(v["score"] >= t and frac(v["path"], t) != pytest.approx(v["frac_above_threshold"]) for v in ok))
    mid = scan_library([library], ScanOptions(out_dir=out, threshold=float(t), device="cpu"), scorers=SCORERS)
    doc = json.loads((out / "highlights.json").read_text())
    assert mid.run.videos == 0 and doc["highlights"]
    for h in doc["highlights"]:
        assert h["frac_above_threshold"] == pytest.approx(frac(h["path"], float(t)), abs=1e-6)


def test_rows_of_another_tags_pair_are_dropped_only_under_its_lock(library: Path, tmp_path: Path) -> None:
    """Two --shard jobs superseding rows of one pair a plain run wrote must not overwrite each other's edit."""
    from quadvault_dali.scan.resume import drop_superseded
    from quadvault_dali.scan.shards import TagLock

    out = tmp_path / "out"
    _scan(library, out, shard_videos=50)  # tag "" (main): one pair holds every video
    (name,) = complete_shards(out)
    victim = str(library / "rotated_90.mp4")
    other_job = TagLock(out, "")
    assert other_job.acquire()  # another job is rewriting the main pair right now
    try:
        assert drop_superseded(out, {name: {victim}}, own_tag="s00of02", lock_timeout_s=0.5) == 0
        assert victim in _videos(out)  # left alone, for the next run
    finally:
        other_job.release()
    assert drop_superseded(out, {name: {victim}}, own_tag="s00of02", lock_timeout_s=0.5) == 1
    assert victim not in _videos(out) and victim not in _seconds(out) and len(_videos(out)) == 8


def test_a_video_row_whose_seconds_were_lost_is_rescanned(library: Path, tmp_path: Path) -> None:
    """Killed between rewriting a pair's seconds and its videos file: the row's seconds are gone. Even when
    the skip condition matches again, the video is scanned again rather than kept without seconds."""
    out = tmp_path / "out"
    _scan(library, out, shard_videos=50)
    (name,) = complete_shards(out)
    victim = str(library / "2023/11/calm_hevc_24.mp4")
    seconds = pq.read_table(out / "seconds" / name)
    pq.write_table(seconds.filter(pc.not_equal(seconds["path"], victim)), out / "seconds" / name)
    again = _scan(library, out)
    assert again.run.videos == 1 and again.skipped == len(GOOD) + len(BROKEN) - 1
    assert len(_seconds(out)[victim]) == _videos(out)[victim]["frames_scored"] == 3


def test_decoding_in_processes_gives_the_same_rows(library: Path, tmp_path: Path) -> None:
    """``--processes 2``: the videos are decoded in two child processes; every row and second is the same."""
    _scan(library, tmp_path / "one")
    _scan(library, tmp_path / "two", processes=2)
    one, two = _videos(tmp_path / "one"), _videos(tmp_path / "two")
    keep = ("status", "error_kind", "error_message", "frames_scored", "score", "score_max", "bytes_read",
            "sampling_mode", "decoder", "codec", "duration_s")
    assert {p: {k: r[k] for k in keep} for p, r in two.items()} == {p: {k: r[k] for k in keep} for p, r in one.items()}
    pairs = lambda out: {p: [(s["timestamp_s"], s["score"]) for s in rows] for p, rows in _seconds(out).items()}
    assert pairs(tmp_path / "two") == pairs(tmp_path / "one")


def test_a_full_disk_while_resume_rewrites_a_pair_leaves_the_pair_as_it_was(library: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed video's old rows are dropped from their pair before it is scanned again: the seconds file was
    replaced, then the videos file hit the full disk, leaving ``ok`` rows without their seconds until the next
    run. Both files are now written before either is renamed."""
    import quadvault_dali.scan.shards as shards

    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    out = tmp_path / "out"
    _scan(lib, out)
    pair = {sub: (out / sub / "part-00000.parquet").read_bytes() for sub in ("seconds", "videos")}
    changed = lib / "rotated_90.mp4"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    real_write = shards.pq.write_table

    def full_on_videos(table, where, **kw):  # type: ignore[no-untyped-def]
        if Path(where).parent.name == "videos":
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real_write(table, where, **kw)

    monkeypatch.setattr(shards.pq, "write_table", full_on_videos)
    with pytest.raises(OutputError, match="No space left on device"):
        _scan(lib, out)
    assert {sub: (out / sub / "part-00000.parquet").read_bytes() for sub in ("seconds", "videos")} == pair
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    seconds = _seconds(out)
    assert all(r["frames_scored"] == len(seconds.get(path, [])) for path, r in _videos(out).items())
    monkeypatch.setattr(shards.pq, "write_table", real_write)
    resumed = _scan(lib, out)
    assert resumed.run.videos == 1 and len(_videos(out)) == len(GOOD) + len(BROKEN)


def test_special_files_named_like_videos_are_error_rows_that_say_what_they_are(library: Path,
                                                                              tmp_path: Path) -> None:
    """A named pipe or a link to a device under a video's name was an error row saying "empty file (0 bytes)";
    none is ever opened (reading a pipe waits for a writer)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(library / "rotated_90.mp4", lib / "good.mp4")
    os.mkfifo(lib / "pipe.mp4")
    (lib / "zero.mov").symlink_to("/dev/zero")
    _scan(lib, tmp_path / "out")
    rows = {Path(p).name: r for p, r in _videos(tmp_path / "out").items()}
    assert rows["good.mp4"]["status"] == "ok"
    assert rows["pipe.mp4"]["status"] == "error" and "is a named pipe, not a video file" in rows["pipe.mp4"]["error_message"]
    assert "is a character device, not a video file" in rows["zero.mov"]["error_message"]


def test_jobs_sharing_a_folder_write_the_highlights_one_at_a_time(library: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """--shard jobs each write highlights.json from every shard at their end; a job that read the shards first
    could replace a later job's complete document. The read and the write are under one lock now."""
    import quadvault_dali.scan.runner as runner
    from quadvault_dali.scan.shards import TagLock

    out = tmp_path / "out"
    out.mkdir()
    other = TagLock(out, "report")
    assert other.acquire()
    monkeypatch.setattr(runner, "REPORT_LOCK_WAIT_S", 0.5)
    with caplog.at_level("WARNING"):
        _scan(library, out, shard=(0, 2))
    other.release()
    assert "held the report lock" in caplog.text and (out / "highlights.json").exists()
    caplog.clear()
    with caplog.at_level("WARNING"):
        _scan(library, out, shard=(1, 2))
    assert "held the report lock" not in caplog.text
    assert json.loads((out / "highlights.json").read_text())["total_scanned"] == len(GOOD) + len(BROKEN)


def _scores_by_row(out: Path) -> tuple[dict, dict]:
    """What a scan folder says, without what a rewrite may change (shard names, row order)."""
    videos = {p: (r["status"], r["score"], r["frames_scored"], r["model_fingerprint"]) for p, r in _videos(out).items()}
    seconds = {p: sorted((s["timestamp_s"], s["score"]) for s in rows) for p, rows in _seconds(out).items()}
    return videos, seconds


def test_small_shards_are_merged_at_the_end_of_a_run(library: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A scan closing a pair every few seconds (a CPU scan closes one a minute) left one pair per few videos, and
    every later resume, reel and query opened each: an 18,000-video folder of 9,000 pairs took 51 s to resume with
    nothing to do (a scale test's find). At a run's end its small pairs are merged, up to --shard-videos each."""
    reference = tmp_path / "reference"
    _scan(library, reference)
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        _scan(library, out, shard_seconds=0.0, shard_videos=4)  # a pair after every batch
    assert "small shard pairs into" in caplog.text
    names = complete_shards(out)
    assert len(names) == 3  # 9 videos (3 broken) in pairs of at most 4
    assert all(len(read_table(out, "videos", [n])) <= 4 for n in names)
    assert _scores_by_row(out) == _scores_by_row(reference)
    _assert_rows_consistent(out)
    again = _scan(library, out, shard_videos=4)  # a resume finds everything, in the merged pairs
    assert again.run.videos == 0 and again.skipped == 9 and complete_shards(out) == names


def test_a_crash_while_merging_shards_loses_and_keeps_twice_nothing(library: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The group's first pair is rewritten with all its rows before the others are retired: a crash between
    leaves some videos in two complete pairs (never in none), and the next scan keeps one copy of each."""
    from quadvault_dali.scan import compact

    reference = tmp_path / "reference"
    _scan(library, reference)
    out = tmp_path / "out"
    real_retire = compact.retire_pair

    def crash_after_the_rewrite(out_dir: Path, name: str) -> None:
        raise KeyboardInterrupt  # the process stops here (a kill -9 would too)

    monkeypatch.setattr(compact, "retire_pair", crash_after_the_rewrite)
    with pytest.raises(KeyboardInterrupt):
        _scan(library, out, shard_seconds=0.0, shard_videos=4)
    monkeypatch.setattr(compact, "retire_pair", real_retire)
    rows = read_table(out, "videos").column("path").to_pylist()
    assert set(rows) == set(_videos(reference)) and len(rows) > len(set(rows))  # twice, never missing
    again = _scan(library, out, shard_videos=4)
    assert again.run.videos == 0
    assert _scores_by_row(out) == _scores_by_row(reference)  # once each, as scanned
    _assert_rows_consistent(out)


def test_a_kill_between_a_merges_two_renames_leaves_no_second_copy_of_any_second(library: Path, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    """The merged seconds file is renamed before the merged videos file: killed between them, the first pair's
    seconds held every video of the group while its videos file listed one, and the next merge added those seconds
    a second time (a reviewer's find). Merging takes each pair's own seconds, and a resume rewrites such a pair."""
    from quadvault_dali.scan import compact

    reference = tmp_path / "reference"
    _scan(library, reference)
    out = tmp_path / "out"
    real_write = compact.write_parquets_atomic

    def killed_between_the_renames(files: list) -> None:
        real_write(files[:1])  # the seconds file only
        raise KeyboardInterrupt

    monkeypatch.setattr(compact, "write_parquets_atomic", killed_between_the_renames)
    with pytest.raises(KeyboardInterrupt):
        _scan(library, out, shard_seconds=0.0, shard_videos=4)
    monkeypatch.setattr(compact, "write_parquets_atomic", real_write)
    again = _scan(library, out, shard_videos=4)
    assert again.run.videos == 0
    seconds = read_table(out, "seconds").to_pylist()
    assert len(seconds) == len({(r["path"], r["timestamp_s"]) for r in seconds})  # no second twice
    assert _scores_by_row(out) == _scores_by_row(reference)
    _assert_rows_consistent(out)


def test_a_reader_during_a_merge_sees_every_video(library: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A reel or a report reading while a scan merged its pairs missed the videos of the pairs merged away
    (reel: 2 scored, 7 counted failed; a reviewer's find). A reader whose listed pair went reads again."""
    from quadvault_dali.reel.scores import load_scores
    from quadvault_dali.scan import compact, runner, shards
    from quadvault_dali.scan.report import highlights_document

    out = tmp_path / "out"
    monkeypatch.setattr(runner, "compact_shards", lambda *a, **k: 0)  # left unmerged, to merge under the readers
    _scan(library, out, shard_seconds=0.0, shard_videos=4)
    assert len(complete_shards(out)) > 3
    real_read = shards.read_shard
    for read in (lambda: load_scores(out).videos,
                 lambda: highlights_document(out, threshold=THRESHOLD, models=[ModelRef("stamp", "x")])[1]):
        merged: list[int] = []

        def read_then_merge(path: Path, columns: object = None) -> object:
            table = real_read(path, columns=columns)  # type: ignore[arg-type]
            if not merged:  # the scan merges right after the reader's first file
                merged.append(compact.compact_shards(out, [""], 200))
            return table

        monkeypatch.setattr(shards, "read_shard", read_then_merge)
        result = read()
        monkeypatch.setattr(shards, "read_shard", real_read)
        assert merged and merged[0] > 0
        if isinstance(result, list):
            assert len(result) == 5  # every good video, with its seconds
        else:
            assert result.total == 9
        monkeypatch.setattr(runner, "compact_shards", lambda *a, **k: 0)
        shutil.rmtree(out)
        _scan(library, out, shard_seconds=0.0, shard_videos=4)


def test_merging_stays_within_a_job_and_one_kind_of_pair(library: Path, tmp_path: Path) -> None:
    """Only this job's tags (its own and its GPU workers', never a --shard sibling's), a worker tag whose writer is
    running is left alone, and pairs written with other metadata (another threshold here) are not merged."""
    from quadvault_dali.scan import compact
    from quadvault_dali.scan.shards import TagLock

    out = tmp_path / "out"
    out.mkdir()
    for tag in ("", "g0", "g12", "s00of02", "s00of02-g1", "gx"):
        name = shard_name(tag, 0)
        for table in ("videos", "seconds"):
            (out / table).mkdir(exist_ok=True)
            (out / table / name).write_bytes(b"PAR1")
    assert compact.job_tags(out, "") == ["", "g0", "g12"]
    assert compact.job_tags(out, "s00of02") == ["s00of02", "s00of02-g1"]
    shutil.rmtree(out)
    from quadvault_dali.scan import runner

    real = runner.compact_shards
    runner.compact_shards = lambda *a, **k: 0  # type: ignore[assignment]
    try:
        _scan(library / "2023", out, shard_seconds=0.0, shard_videos=50)
        scan_library([library / "2024"], ScanOptions(out_dir=out, threshold=0.5, device="cpu", streams=2, batch_size=4,
                                                     shard_seconds=0.0, shard_videos=50), scorers=SCORERS)
    finally:
        runner.compact_shards = real  # type: ignore[assignment]
    by_threshold: dict[float, int] = {}
    for name in complete_shards(out):
        meta = read_metadata(out / "videos" / name)
        by_threshold[meta.threshold] = by_threshold.get(meta.threshold, 0) + 1
    assert min(by_threshold.values()) >= 2 and len(by_threshold) == 2
    busy = TagLock(out, "")
    assert busy.acquire()
    try:
        assert compact.compact_shards(out, [""], 50, held=None, lock_timeout_s=0.1) == 0  # its writer runs
    finally:
        busy.release()
    before = _scores_by_row(out)
    assert compact.compact_shards(out, [""], 50) > 0
    after = {read_metadata(out / "videos" / n).threshold for n in complete_shards(out)}
    assert len(complete_shards(out)) == 2 and after == set(by_threshold)  # one pair per kind
    assert _scores_by_row(out) == before


def test_the_same_ensemble_in_another_order_is_named_so(library: Path, tmp_path: Path) -> None:
    """-m m2 -m m1 over a folder scanned with -m m1 -m m2 was refused as "another version of the model" (an
    adversarial tester's find): it is the same models, and the message gives the earlier order."""
    out = tmp_path / "out"
    _scan(library / "2023", out)
    with pytest.raises(OutputError) as refused:
        scan_library([library / "2023"], ScanOptions(out_dir=out, threshold=THRESHOLD, device="cpu"),
                     scorers=list(reversed(SCORERS)))  # type: ignore[arg-type]
    text = str(refused.value)
    assert "the same models given in another order" in text
    assert " ".join(f"-m {s.name}" for s in SCORERS) in text


def test_stop_signals_inside_a_deferred_block_take_effect_at_its_end() -> None:
    import signal

    from quadvault_dali._lifetime import stop_signals_deferred

    seen: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda n, f: seen.append("handled"))
    try:
        with stop_signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            seen.append("block went on")
        seen.append("after")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == ["block went on", "handled", "after"]


def test_error_rows_are_no_other_models_scores(library: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The warning about other models' rows counted broken files' error rows, which no model scored; the refusal
    and the reel did not (an adversarial tester's find: 17 against 16)."""
    out = tmp_path / "out"
    _scan(library / "broken", out)
    assert _videos(out) and all(r["status"] == "error" for r in _videos(out).values())
    with caplog.at_level("WARNING"):
        second = scan_library([library / "2024"], ScanOptions(out_dir=out, threshold=THRESHOLD, device="cpu"),
                              scorers=[StampScorer()])
    assert second.totals.other_models == 0 and "scored by other models" not in caplog.text
    assert json.loads((out / "highlights.json").read_text())["other_models"] == []  # nor does the document count them
