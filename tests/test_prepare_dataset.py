"""prepare-dataset on generated clips: frame counts, stamped times, the split, --merge, failures."""

from __future__ import annotations

import json
from collections import Counter
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from quadvault_dali.cli.main import main
from quadvault_dali.dataset import prepare_dataset, read_dataset, video_id
from quadvault_dali.errors import DatasetError, OutputError
from quadvault_dali.synth import read_stamp

SIZE = 64
CLIP = dict(width=160, height=96, fps=10)


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory, make_clip: Callable[..., Path],
            broken_clips: dict[str, Path]) -> Path:
    """A small library: 3 highlight clips (3, 4, 3 s), 3 normal (3 s each), one broken; ids = source ids."""
    root = tmp_path_factory.mktemp("footage")
    specs = {"h1.mp4": ("highlight", 3.0, 11), "h2.mp4": ("highlight", 4.0, 12), "h3.mp4": ("highlight", 3.0, 13),
             "n1.mp4": ("normal", 3.0, 21), "n2.mp4": ("normal", 3.0, 22), "n3.mp4": ("normal", 3.0, 23)}
    for name, (style, seconds, sid) in specs.items():
        shutil.copy(make_clip(f"pd_{name}", style=style, duration_s=seconds, source_id=sid, **CLIP), root / name)
    shutil.copy(broken_clips["truncated"], root / "broken.mp4")
    return root


def write_labels(path: Path, highlights: list[str], normal: list[str]) -> Path:
    path.write_text(json.dumps({"highlights": highlights, "normal": normal}))
    return path


HIGHLIGHTS, NORMAL = ("h1.mp4", "h2.mp4", "h3.mp4"), ("n1.mp4", "n2.mp4", "n3.mp4")


def copy_of(prepared: tuple[Path, object], tmp_path: Path) -> Path:
    """A copy of the module's dataset for a test to change; the module's stays as prepared."""
    out = tmp_path / "ds"
    shutil.copytree(prepared[0], out)
    return out


def label_all(tmp_path: Path, folder: Path, highlights: tuple[str, ...] = HIGHLIGHTS,
              normal: tuple[str, ...] = NORMAL) -> Path:
    """labels.json naming the footage's clips (by default all six) in ``folder``."""
    return write_labels(tmp_path / "labels.json", [str(folder / n) for n in highlights],
                        [str(folder / n) for n in normal])


def frame_files(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "frames").rglob("*.jpg")}


@pytest.fixture(scope="module")
def prepared(footage: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    labels = write_labels(footage.parent / "labels.json", [f"{footage.name}/h*.mp4", f"{footage.name}/broken.mp4"],
                          [str(footage / "n1.mp4"), f"{footage.name}/n2.mp4", f"{footage.name}/n3.mp4"])
    out = tmp_path_factory.mktemp("dataset")
    before = sorted(p.name for p in footage.iterdir())
    result = prepare_dataset(labels, out, size=SIZE, device="cpu")
    assert sorted(p.name for p in footage.iterdir()) == before  # nothing written into the footage
    return out, result


def test_one_frame_per_second_with_matching_stamps(prepared: tuple[Path, object], footage: Path) -> None:
    out, result = prepared
    rows = pq.read_table(out / "dataset.parquet").to_pylist()
    per_video: dict[str, list[dict]] = {}
    for r in rows:
        per_video.setdefault(Path(r["video_path"]).name, []).append(r)
    assert {k: len(v) for k, v in per_video.items()} == {"h1.mp4": 3, "h2.mp4": 4, "h3.mp4": 3, "n1.mp4": 3,
                                                         "n2.mp4": 3, "n3.mp4": 3}
    source_ids = {"h1.mp4": 11, "h2.mp4": 12, "h3.mp4": 13, "n1.mp4": 21, "n2.mp4": 22, "n3.mp4": 23}
    for name, video_rows in per_video.items():
        assert [r["timestamp_s"] for r in video_rows] == pytest.approx(list(range(len(video_rows))), abs=0.051)
        for r in video_rows:
            assert r["video_id"] == video_id(footage / name)
            assert r["frame_path"].startswith(f"frames/{r['video_id']}/")
            assert r["label"] == (1 if name.startswith("h") else 0)
            assert r["label_name"] == ("highlight" if name.startswith("h") else "normal")
            image = np.asarray(Image.open(out / r["frame_path"]).convert("RGB"))
            assert min(image.shape[:2]) == SIZE and image.shape[1] > image.shape[0]  # short side, aspect kept
            stamp = read_stamp(image)
            assert stamp is not None, r["frame_path"]
            assert stamp.source_id == source_ids[name]
            assert stamp.time_s == pytest.approx(r["timestamp_s"], abs=0.011)
    assert result.frames == 19 and result.frames_by_label == {1: 10, 0: 9}


def test_broken_clip_is_listed_and_the_rest_kept(prepared: tuple[Path, object], footage: Path) -> None:
    _, result = prepared
    assert [p.name for p, _ in result.failed] == ["broken.mp4"]
    assert str(footage / "broken.mp4") in str(result.failed[0][1])
    assert len(result.extracted) == 6


def test_split_by_video_stratified(prepared: tuple[Path, object]) -> None:
    out, _ = prepared
    rows = read_dataset(out).rows()
    split_of: dict[str, set[str]] = {}
    for r in rows:
        split_of.setdefault(r["video_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())  # no video on both sides
    val_labels = sorted({(r["video_id"], r["label"]) for r in rows if r["split"] == "val"}, key=lambda x: x[1])
    assert [label for _, label in val_labels] == [0, 1]  # one val video per class (3 videos each)


def test_merge_keeps_frames_and_splits_moves_and_drops(prepared: tuple[Path, object], footage: Path,
                                                       make_clip: Callable[..., Path], tmp_path: Path) -> None:
    out = copy_of(prepared, tmp_path)
    before = read_dataset(out).rows()
    files_before = frame_files(out)
    split_before = {r["video_id"]: r["split"] for r in before}
    new_clip = footage / "h4.mp4"
    shutil.copy(make_clip("pd_h4.mp4", style="highlight", duration_s=2.0, source_id=14, **CLIP), new_clip)
    # n3 becomes a highlight, n2 is no longer labelled, h4 is new
    labels = write_labels(tmp_path / "labels.json", [str(footage / n) for n in ("h1.mp4", "h2.mp4", "h3.mp4", "h4.mp4", "n3.mp4")],
                          [str(footage / "n1.mp4")])
    result = prepare_dataset(labels, out, merge=True, size=SIZE, device="cpu")
    rows = read_dataset(out).rows()
    ids = {name: video_id(footage / name) for name in ("h1.mp4", "h4.mp4", "n1.mp4", "n2.mp4", "n3.mp4")}
    assert [p.name for p in result.extracted] == ["h4.mp4"]
    assert sorted(p.name for p in result.reused) == ["h1.mp4", "h2.mp4", "h3.mp4", "n1.mp4", "n3.mp4"]
    assert result.dropped == [str(footage / "n2.mp4")]
    assert [p.name for p in result.relabelled] == ["n3.mp4"]  # said in the summary ("relabelled 1")
    # kept frames are the very same files (not re-decoded); n2's frames are gone
    files_after = frame_files(out)
    for path, ident in files_before.items():
        if f"/{ids['n2.mp4']}/" in path:
            assert path not in files_after
        else:
            assert files_after[path] == ident
    assert not (out / "frames" / ids["n2.mp4"]).exists()
    assert sum(1 for r in rows if r["video_id"] == ids["h4.mp4"]) == 2
    # existing videos keep their split; n3 moved class
    for r in rows:
        if r["video_id"] in split_before:
            assert r["split"] == split_before[r["video_id"]]
    assert {r["label"] for r in rows if r["video_id"] == ids["n3.mp4"]} == {1}
    assert {r["label_name"] for r in rows if r["video_id"] == ids["n3.mp4"]} == {"highlight"}
    assert all(r["video_id"] != ids["n2.mp4"] for r in rows)
    assert result.frames == len(rows) == 3 + 4 + 3 + 2 + 3 + 3


def test_merge_after_the_library_moved_reuses_frames_and_splits(prepared: tuple[Path, object], footage: Path,
                                                                tmp_path: Path) -> None:
    """The same footage on another mount (copied, so new mtimes) is the same dataset, not a new split."""
    out = copy_of(prepared, tmp_path)
    moved = tmp_path / "nas" / "footage"
    shutil.copytree(footage, moved, copy_function=shutil.copyfile)  # mtimes not kept
    before = {(r["video_id"], r["timestamp_s"]): r for r in read_dataset(out).rows()}
    files_before = frame_files(out)
    labels = label_all(tmp_path, moved)
    result = prepare_dataset(labels, out, merge=True, size=SIZE, device="cpu")
    assert result.extracted == [] and len(result.reused) == 6 and result.dropped == []
    assert frame_files(out) == files_before  # not one frame decoded or deleted
    rows = read_dataset(out).rows()
    assert {(r["video_id"], r["timestamp_s"]) for r in rows} == set(before)
    for r in rows:
        old = before[(r["video_id"], r["timestamp_s"])]
        assert r["split"] == old["split"] and r["frame_path"] == old["frame_path"]
        assert Path(r["video_path"]).parent == moved  # rows point at the footage where it is now
        assert r["video_mtime_ns"] == (moved / Path(r["video_path"]).name).stat().st_mtime_ns


def test_merge_into_a_dataset_keyed_by_path_hashes(prepared: tuple[Path, object], footage: Path,
                                                   tmp_path: Path) -> None:
    """Datasets written before ids were content hashes are matched by path, size and mtime, not re-extracted."""
    out = copy_of(prepared, tmp_path)
    table = pq.read_table(out / "dataset.parquet")
    path_ids = {p: f"{i:016x}" for i, p in enumerate(sorted(set(table.column("video_path").to_pylist())))}
    old_ids = [path_ids[p] for p in table.column("video_path").to_pylist()]
    table = table.set_column(table.schema.get_field_index("video_id"), "video_id", pa.array(old_ids))
    moved = []  # frame folders were named by those ids too
    for frame_path, old_id in zip(table.column("frame_path").to_pylist(), old_ids):
        target = f"frames/{old_id}/{Path(frame_path).name}"
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        (out / frame_path).rename(out / target)
        moved.append(target)
    table = table.set_column(table.schema.get_field_index("frame_path"), "frame_path", pa.array(moved))
    for folder in (out / "frames").iterdir():
        if not any(folder.iterdir()):
            folder.rmdir()
    pq.write_table(table, out / "dataset.parquet")
    split_before = {r["video_path"]: r["split"] for r in table.to_pylist()}
    files_before = frame_files(out)
    labels = label_all(tmp_path, footage)
    result = prepare_dataset(labels, out, merge=True, size=SIZE, device="cpu")
    assert result.extracted == [] and len(result.reused) == 6
    assert frame_files(out) == files_before
    rows = read_dataset(out).rows()
    assert all(r["video_id"] == video_id(r["video_path"]) for r in rows)
    assert all(r["split"] == split_before[r["video_path"]] for r in rows)

    # a video dropped later still has its frames deleted, although they sit in a folder named by path id
    n1 = next(r for r in rows if r["video_path"].endswith("n1.mp4"))
    labels = label_all(tmp_path, footage, normal=NORMAL[1:])
    result = prepare_dataset(labels, out, merge=True, size=SIZE, device="cpu")
    assert result.dropped == [str(footage / "n1.mp4")]
    assert not (out / n1["frame_path"]).parent.exists()
    referenced = {r["frame_path"] for r in read_dataset(out).rows()}
    assert set(frame_files(out)) == referenced


def test_existing_dataset_needs_merge_or_overwrite(prepared: tuple[Path, object], footage: Path,
                                                   tmp_path: Path) -> None:
    out = copy_of(prepared, tmp_path)
    labels = write_labels(tmp_path / "labels.json", [str(footage / "h1.mp4")], [str(footage / "n1.mp4")])
    with pytest.raises(DatasetError, match="already exists.*--merge.*--overwrite"):
        prepare_dataset(labels, out, size=SIZE, device="cpu")
    with pytest.raises(DatasetError, match=r"other settings \(size 64 -> 48\)"):
        prepare_dataset(labels, out, merge=True, size=48, device="cpu")
    result = prepare_dataset(labels, out, overwrite=True, size=48, device="cpu")
    assert result.frames == 6 and result.reused == []
    assert sorted(p.name for p in (out / "frames").iterdir()) == sorted([video_id(footage / "h1.mp4"),
                                                                         video_id(footage / "n1.mp4")])


def test_overwrite_rebuilds_an_unreadable_dataset_and_merge_says_to(prepared: tuple[Path, object], footage: Path,
                                                                     tmp_path: Path) -> None:
    out = copy_of(prepared, tmp_path)
    (out / "dataset.parquet").write_text("garbage")
    labels = write_labels(tmp_path / "labels.json", [str(footage / "h1.mp4")], [str(footage / "n1.mp4")])
    with pytest.raises(DatasetError, match="it cannot be merged into .*rebuild it with --overwrite"):
        prepare_dataset(labels, out, merge=True, size=SIZE, device="cpu")
    result = prepare_dataset(labels, out, overwrite=True, size=SIZE, device="cpu")
    assert result.frames == 6
    # the old frame folders went with the unreadable table; only the two videos' remain
    assert sorted(p.name for p in (out / "frames").iterdir()) == sorted([video_id(footage / "h1.mp4"),
                                                                         video_id(footage / "n1.mp4")])


def test_merge_extracts_again_a_video_whose_frame_was_cut_short(prepared: tuple[Path, object], footage: Path,
                                                                tmp_path: Path) -> None:
    """evaluate tells the user to re-run --merge for unreadable frames: that must repair them."""
    out = copy_of(prepared, tmp_path)
    rows = read_dataset(out).rows()
    damaged = next(r for r in rows if r["video_path"].endswith("h2.mp4"))
    (out / damaged["frame_path"]).write_bytes((out / damaged["frame_path"]).read_bytes()[:100])
    labels = label_all(tmp_path, footage)
    result = prepare_dataset(labels, out, merge=True, size=SIZE, device="cpu")
    assert [p.name for p in result.extracted] == ["h2.mp4"]
    assert (out / damaged["frame_path"]).read_bytes()[-2:] == b"\xff\xd9"


def test_never_writes_into_the_footage(footage: Path, tmp_path: Path) -> None:
    labels = write_labels(tmp_path / "labels.json", [str(footage / "h1.mp4")], [str(footage / "n1.mp4")])
    for out in (footage, footage / "dataset", footage / "a" / "b"):
        with pytest.raises(OutputError, match="inside the footage folder"):
            prepare_dataset(labels, out, size=SIZE, device="cpu")
    assert not (footage / "dataset").exists() and not (footage / "a").exists()


def test_refuses_an_output_whose_frames_folder_holds_the_footage(footage: Path, tmp_path: Path) -> None:
    """OUT/frames is where frames go and stale frame folders are removed from: footage under it (OUT a
    parent of the library, ``prepare-dataset labels.json ~/drone`` for ``~/drone/frames/2024/...``) is refused
    before anything is written; an OUT beside the footage's folder is fine."""
    held = tmp_path / "drone" / "frames" / "2024"
    held.mkdir(parents=True)
    for name in ("h1.mp4", "n1.mp4"):
        (held / name).write_bytes((footage / name).read_bytes())
    labels = write_labels(tmp_path / "labels.json", [str(held / "h1.mp4")], [str(held / "n1.mp4")])
    with pytest.raises(OutputError, match=r"frames go into .*drone/frames, which holds the footage folder"):
        prepare_dataset(labels, tmp_path / "drone", size=SIZE, device="cpu")
    assert sorted(p.name for p in (tmp_path / "drone" / "frames").iterdir()) == ["2024"]
    assert not (tmp_path / "drone" / "dataset.parquet").exists()
    assert prepare_dataset(labels, tmp_path / "beside", size=SIZE, device="cpu").frames > 0


def test_cli_summary_and_failures(footage: Path, tmp_path: Path) -> None:
    labels = write_labels(tmp_path / "labels.json", [str(footage / "h2.mp4"), str(footage / "broken.mp4")],
                          [str(footage / "n1.mp4")])
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["-q", "prepare-dataset", str(labels), str(out), "--size", str(SIZE),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert f"Dataset prepared: 7 frames — Highlights: 4 — Normal: 3 — Saved to: {out.resolve() / 'dataset.parquet'}" \
        in res.output.splitlines()
    assert "Failed to decode 1 video (left out):" in res.output
    assert f"  {footage / 'broken.mp4'}: " in res.output
    for name in ("highlight", "normal"):  # one video per class: said now, not only when train refuses it
        assert f"only one {name} video: it trains, and validation has no {name}s to measure" in res.output
    model = tmp_path / "model"
    res = CliRunner().invoke(main, ["-q", "train", str(out), "--output-dir", str(model), "--device", "cpu",
                                    "--epochs", "1", "--backbone", "efficientnet-lite0"])
    assert res.exit_code == 1 and "no usable frames" in res.output, res.output
    assert not model.exists()  # a run that saved nothing leaves no empty model folder
    bad = write_labels(tmp_path / "bad.json", ["nope.mp4"], [])
    res = CliRunner().invoke(main, ["prepare-dataset", str(bad), str(tmp_path / "out2")])
    assert res.exit_code == 1
    assert "Error: " in res.output and "2 problems in labels file" in res.output  # missing + empty normal
    assert "nope.mp4 does not exist" in res.output and '"normal" is empty' in res.output
    assert not (tmp_path / "out2").exists()  # validation happens before any work


def _killed_after_manifests(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """The run is killed (KeyboardInterrupt) once ``count`` videos have all their frames written."""
    import quadvault_dali.dataset._prepare as prepare

    real, written = prepare._write_manifest, []

    def then_killed(*args: object) -> None:
        real(*args)  # type: ignore[arg-type]
        written.append(1)
        if len(written) >= count:
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "_write_manifest", then_killed)


def test_a_killed_run_keeps_the_videos_it_finished(footage: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """dataset.parquet is only written at the end, so a run killed at 95 % started over ("6 to extract, 0 already
    extracted"). Each finished video's folder has a manifest now; the same command again reuses those folders
    and the dataset comes out as one uninterrupted run's."""
    labels = label_all(tmp_path, footage)
    clean = prepare_dataset(labels, tmp_path / "clean", size=SIZE, device="cpu")
    _killed_after_manifests(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(labels, tmp_path / "out", size=SIZE, device="cpu")
    assert not (tmp_path / "out" / "dataset.parquet").exists()
    kept = frame_files(tmp_path / "out")
    monkeypatch.undo()
    result = prepare_dataset(labels, tmp_path / "out", size=SIZE, device="cpu")
    assert len(result.reused) == 3 and len(result.extracted) == 3
    assert all(frame_files(tmp_path / "out")[p] == ident for p, ident in kept.items()
               if (tmp_path / "out" / Path(p).parent / ".frames.json").exists())  # finished frames not redone
    columns = ("frame_path", "video_id", "timestamp_s", "label", "split")
    assert [tuple(r[c] for c in columns) for r in read_dataset(tmp_path / "out").rows()] == \
        [tuple(r[c] for c in columns) for r in read_dataset(tmp_path / "clean").rows()]
    assert clean.frames == result.frames


def test_an_interrupted_overwrite_never_leaves_the_old_table_on_new_frames(prepared: tuple[Path, object],
                                                                         footage: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """--overwrite --size 48 killed midway rewrote frames in place under the old table, whose settings still said
    64: a later --merge reused a dataset of mixed sizes without a word. The old table goes before any frame is
    rewritten; the command without --overwrite then goes on, and every frame is 48 px."""
    out = copy_of(prepared, tmp_path)
    labels = label_all(tmp_path, footage)
    _killed_after_manifests(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(labels, out, overwrite=True, size=48, device="cpu")
    assert not (out / "dataset.parquet").exists()
    monkeypatch.undo()
    result = prepare_dataset(labels, out, size=48, device="cpu")  # the same command, without --overwrite
    assert len(result.reused) == 2 and len(result.extracted) == 4
    rows = read_dataset(out).rows()
    assert result.frames == len(rows) == 3 + 4 + 3 + 3 + 3 + 3 and read_dataset(out).settings["size"] == 48
    assert {min(Image.open(out / r["frame_path"]).size) for r in rows} == {48}
    referenced = {r["frame_path"] for r in rows}
    assert {str(p.relative_to(out)) for p in (out / "frames").rglob("*.jpg")} == referenced  # no 64-px leftovers


def test_a_resumed_rebuild_with_the_same_settings_does_not_reuse_the_old_frames(prepared: tuple[Path, object],
                                                                                footage: Path, tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    """A rebuild is asked for because the old frames are not wanted (a decoder fixed since): stopped midway and
    resumed as told (without --overwrite), it took every old folder whose manifest matched the settings, and
    rebuilt nothing (a review helper's find). The rebuild retires the old manifests with the old table."""
    out = copy_of(prepared, tmp_path)
    labels = label_all(tmp_path, footage)
    _killed_after_manifests(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(labels, out, overwrite=True, size=SIZE, device="cpu")
    monkeypatch.undo()
    result = prepare_dataset(labels, out, size=SIZE, device="cpu")
    assert len(result.reused) == 2 and len(result.extracted) == 4


def test_frames_a_killed_merge_left_behind_go_on_the_next_run(prepared: tuple[Path, object], footage: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A --merge dropping n2 killed between the new table and the sweep left n2's frames for good: later runs only
    swept the videos they knew of. Every frame folder the table does not use is swept now."""
    import quadvault_dali.dataset._prepare as prepare

    out = copy_of(prepared, tmp_path)
    fewer = label_all(tmp_path, footage, normal=("n1.mp4", "n3.mp4"))
    monkeypatch.setattr(prepare, "_remove_stale_frames", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(fewer, out, merge=True, size=SIZE, device="cpu")
    n2 = out / "frames" / video_id(footage / "n2.mp4")
    assert n2.is_dir()  # the table no longer names it; its frames are still there
    monkeypatch.undo()
    prepare_dataset(fewer, out, merge=True, size=SIZE, device="cpu")
    assert not n2.exists()
    rows = read_dataset(out).rows()
    assert {str(p.relative_to(out)) for p in (out / "frames").rglob("*.jpg")} == {r["frame_path"] for r in rows}


def test_an_overwrite_that_cannot_start_keeps_the_dataset(prepared: tuple[Path, object], footage: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--overwrite removed the old table before the sampler was even built: --device gpu on a machine without
    one left no dataset at all. It goes only when the first new frame is written."""
    import quadvault_dali.dataset._prepare as prepare
    from quadvault_dali.errors import BackendUnavailableError

    out = copy_of(prepared, tmp_path)
    before = (out / "dataset.parquet").read_bytes()

    def no_gpu(*args: object, **kwargs: object) -> None:
        raise BackendUnavailableError("--device gpu: no CUDA GPU is visible")

    monkeypatch.setattr(prepare, "create_sampler", no_gpu)
    with pytest.raises(BackendUnavailableError):
        prepare_dataset(label_all(tmp_path, footage), out, overwrite=True, size=48, device="gpu")
    assert (out / "dataset.parquet").read_bytes() == before


@pytest.mark.parametrize("damage", ["doubled", "swapped", "nul"])
def test_a_damaged_manifest_is_not_taken_for_the_videos_rows(footage: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """A manifest's rows were trusted: a doubled row became a duplicate table row, swapped times named the wrong
    second, and a NUL byte in a path ended the run in a traceback. Such a video is extracted again."""
    labels = label_all(tmp_path, footage)
    _killed_after_manifests(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(labels, tmp_path / "out", size=SIZE, device="cpu")
    monkeypatch.undo()
    manifest = tmp_path / "out" / "frames" / video_id(footage / "h1.mp4") / ".frames.json"
    doc = json.loads(manifest.read_text())
    if damage == "doubled":
        doc["rows"].append(doc["rows"][0])
    elif damage == "swapped":
        doc["rows"][0]["timestamp_s"], doc["rows"][1]["timestamp_s"] = doc["rows"][1]["timestamp_s"], 0.0
    else:
        doc["rows"][0]["frame_path"] += "\0"
    manifest.write_text(json.dumps(doc))
    result = prepare_dataset(labels, tmp_path / "out", size=SIZE, device="cpu")
    assert [p.name for p in result.extracted] == ["h1.mp4"] and len(result.reused) == 5
    rows = [r for r in read_dataset(tmp_path / "out").rows() if r["video_path"].endswith("h1.mp4")]
    assert [r["timestamp_s"] for r in rows] == [0.0, 1.0, 2.0] and len({r["frame_path"] for r in rows}) == 3
    for r in rows:
        stamp = read_stamp(np.asarray(Image.open(tmp_path / "out" / r["frame_path"]).convert("RGB")))
        assert stamp is not None and abs(stamp.time_s - r["timestamp_s"]) < 0.06


def test_a_table_a_killed_run_was_writing_leaves_no_temporary(footage: Path, tmp_path: Path) -> None:
    """``.dataset.parquet.PID-THREAD.tmp`` of a killed run stayed in OUT through every later run."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".dataset.parquet.{gone.stdout.strip()}-1.tmp"
    stale.write_bytes(b"PAR1")
    prepare_dataset(label_all(tmp_path, footage), out, size=SIZE, device="cpu")
    assert not stale.exists()


def test_cli_interrupted_says_how_to_go_on(footage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C printed only click's "Aborted!"; it now says the finished videos are kept and how to go on."""
    import quadvault_dali.cli.prepare_dataset as command

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "run_prepare", interrupted)
    labels = label_all(tmp_path, footage)
    res = CliRunner().invoke(main, ["prepare-dataset", str(labels), str(tmp_path / "out"), "--overwrite"])
    assert res.exit_code == 130
    assert "Interrupted; the videos whose frames were all written are kept: run the same command without " \
           "--overwrite to go on." in res.output


def _poisoned_labels(footage: Path, tmp_path: Path, make_clip: Callable[..., Path]) -> tuple[Path, Path, dict]:
    """(library, labels naming the footage and ``poison.mp4``, an environment whose decoder dies on the poison)."""
    from _scan_helpers import poison_env

    lib = tmp_path / "lib"
    shutil.copytree(footage, lib)
    shutil.copy(make_clip("pd_poison.mp4", style="highlight", duration_s=3.0, source_id=14, **CLIP),
                lib / "poison.mp4")
    labels = write_labels(tmp_path / "labels.json", [str(lib / n) for n in (*HIGHLIGHTS, "poison.mp4")],
                          [str(lib / n) for n in NORMAL])
    return lib, labels, poison_env(tmp_path)


def test_a_file_that_crashes_the_decoder_costs_one_run_not_every_run(footage: Path, tmp_path: Path,
                                                                     make_clip: Callable[..., Path]) -> None:
    """A labelled file that kills the decoder in native code killed every run of prepare-dataset, for ever. The
    run after the crash checks the videos it had in flight alone, leaves the crasher out with the reason and
    keeps everything else; later runs leave it out without opening it, until the file changes."""
    import signal
    import subprocess
    import sys

    lib, labels, env = _poisoned_labels(footage, tmp_path, make_clip)
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "quadvault_dali.cli.main", "prepare-dataset", str(labels), str(out), "--size",
           str(SIZE), "--device", "cpu"]
    first = subprocess.run(cmd + ["--restarts", "0"], capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == -signal.SIGSEGV, first.stderr[-2000:]
    assert (out / ".inflight-prepare.log").is_file() and not (out / "dataset.parquet").exists()
    second = subprocess.run(cmd + ["--restarts", "0"], capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "were being decoded when the last prepare-dataset run died" in second.stderr
    assert f"{lib / 'poison.mp4'}: the decoder crashed on this file (SIGSEGV)" in second.stderr
    rows = read_dataset(out).rows()
    assert {Path(r["video_path"]).name for r in rows} == {*HIGHLIGHTS, *NORMAL}
    assert not (out / ".inflight-prepare.log").exists()
    # a --merge later: the crasher is left out unopened (opened, the hook would kill the run)
    third = subprocess.run(cmd + ["--merge"], capture_output=True, text=True, timeout=300, env=env)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "(in an earlier run; not opened again until the file changes)" in third.stderr
    assert "were being decoded" not in third.stderr
    # renamed, and labelled under its new name: still known by its content, still not opened
    (lib / "poison.mp4").rename(lib / "renamed.mp4")
    relabelled = write_labels(tmp_path / "labels.json", [str(lib / n) for n in (*HIGHLIGHTS, "renamed.mp4")],
                              [str(lib / n) for n in NORMAL])
    assert relabelled == labels
    moved = subprocess.run(cmd + ["--merge"], capture_output=True, text=True, timeout=300,
                           env={**env, "QV_TEST_POISON": "renamed.mp4"})
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert f"(in an earlier run as {lib / 'poison.mp4'}; not opened again" in moved.stderr
    (lib / "renamed.mp4").rename(lib / "poison.mp4")
    write_labels(tmp_path / "labels.json", [str(lib / n) for n in (*HIGHLIGHTS, "poison.mp4")],
                 [str(lib / n) for n in NORMAL])
    # the file changed (re-copied from a good source): tried again, and it is a good video now
    shutil.copy(make_clip("pd_poison_fixed.mp4", style="highlight", duration_s=2.0, source_id=15, **CLIP),
                lib / "poison.mp4")
    clean = {k: v for k, v in env.items() if k != "QV_TEST_POISON"}
    fourth = subprocess.run(cmd + ["--merge"], capture_output=True, text=True, timeout=300, env=clean)
    assert fourth.returncode == 0, fourth.stderr[-2000:]
    assert "poison.mp4" in {Path(r["video_path"]).name for r in read_dataset(out).rows()}
    assert not (out / ".decoder-crashes.json").exists()  # its one entry forgotten with the change


def test_a_decoder_crash_restarts_the_extraction_by_itself(footage: Path, tmp_path: Path,
                                                          make_clip: Callable[..., Path]) -> None:
    """By default the extraction runs in a child that is started again after a native crash: one command gives
    the dataset without the crasher. A rebuild (--overwrite) that crashed after its first frames goes on without
    --overwrite, as a user is told to, instead of starting over (or refusing the half-made folder)."""
    import subprocess
    import sys

    lib, labels, env = _poisoned_labels(footage, tmp_path, make_clip)
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "quadvault_dali.cli.main", "prepare-dataset", str(labels), str(out), "--size",
           str(SIZE), "--device", "cpu"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "the prepare-dataset process died by SIGSEGV" in run.stderr
    assert "The prepare-dataset process crashed 1 time (SIGSEGV) and was started again" in run.stderr
    assert {Path(r["video_path"]).name for r in read_dataset(out).rows()} == {*HIGHLIGHTS, *NORMAL}
    # a rebuild: the crasher is forgotten (--overwrite), found again, and the rebuild goes on after the crash
    rebuild = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, timeout=300, env=env)
    assert rebuild.returncode == 0, rebuild.stderr[-2000:]
    assert "crashed 1 time (SIGSEGV)" in rebuild.stderr
    assert "a dataset already exists here" not in rebuild.stderr
    assert {Path(r["video_path"]).name for r in read_dataset(out).rows()} == {*HIGHLIGHTS, *NORMAL}


def test_the_supervisor_keeps_the_users_overwrite_until_a_crash_began_the_rebuild(tmp_path: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch
                                                                                    ) -> None:
    """Dropped on the first start whenever no table was there, ``--overwrite`` kept the record of crashers it
    should forget; dropped after a crash that removed the old table, it lets the rebuild go on. A quoted
    ``'~/ds'`` is the folder prepare-dataset writes (a review helper's finds)."""
    from quadvault_dali.dataset._crashes import CRASHES_FILE, DecoderCrashes
    from quadvault_dali.dataset._supervise import PrepareSupervisor

    monkeypatch.setenv("HOME", str(tmp_path))
    argv = ["prepare-dataset", "labels.json", "~/ds", "--overwrite"]
    sup = PrepareSupervisor(argv, Path("~/ds"), restarts=3)
    assert sup.out_dir == tmp_path / "ds"
    assert sup.restart_argv(list(argv)) == argv  # the first start: as typed, table or not
    sup.after_crash(10.0, progressed=False)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.parquet").write_bytes(b"old")
    assert sup.restart_argv(list(argv)) == argv  # crashed before its first frame: the old table is still there
    (tmp_path / "ds" / "dataset.parquet").unlink()
    assert sup.restart_argv(list(argv)) == argv[:-1]  # the rebuild began: go on with it
    # --overwrite forgets the crashers' record, but on disk only once the old table goes
    record = tmp_path / "ds" / CRASHES_FILE
    record.write_text(json.dumps({"format": 1, "videos": {"/x.mp4": {"size_bytes": 1, "mtime_ns": 1,
                                                                       "reason": "crashed"}}}))
    crashes = DecoderCrashes(tmp_path / "ds", forget=True)
    assert crashes.known == {}
    crashes.save()
    assert record.exists()
    crashes.forget_on_disk()
    assert not record.exists()


def test_a_crash_after_the_table_was_written_goes_on_from_it(tmp_path: Path) -> None:
    """Killed after writing dataset.parquet (removing unused frames, printing), the restart was refused with "a
    dataset already exists here" and exit 1, or with --overwrite extracted everything again (an interrupting
    tester's find): it goes on with --merge from the table the crashed run wrote."""
    import os

    from quadvault_dali.dataset._supervise import PrepareSupervisor

    out = tmp_path / "ds"
    out.mkdir()
    for argv, restarted in (
            (["-v", "prepare-dataset", "labels.json", str(out)], ["-v", "prepare-dataset", "--merge", "labels.json",
                                                                  str(out)]),
            (["prepare-dataset", "labels.json", str(out), "--overwrite"], ["prepare-dataset", "--merge", "labels.json",
                                                                           str(out)]),
            (["prepare-dataset", "--merge", "labels.json", str(out)], ["prepare-dataset", "--merge", "labels.json",
                                                                       str(out)])):
        (out / "dataset.parquet").write_bytes(b"old")
        os.utime(out / "dataset.parquet", ns=(1, 1))
        sup = PrepareSupervisor(argv, out, restarts=3)
        sup.snapshot()  # the run starts
        sup.after_crash(5.0, progressed=False)
        assert sup.restart_argv(list(argv)) == argv  # the table as it was: the restart runs as typed
        sup.snapshot()
        (out / "dataset.parquet").write_bytes(b"new")  # the crashed run wrote it
        sup.after_crash(5.0, progressed=False)
        assert sup.restart_argv(list(argv)) == restarted


def test_the_stop_message_says_whether_the_rebuild_had_begun(prepared: tuple[Path, object], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped before --overwrite wrote its first frame, the old table is still there: "run the same command without
    --overwrite" then failed with "a dataset already exists here" (an exploratory helper's find)."""
    import quadvault_dali.cli.prepare_dataset as command

    out = copy_of(prepared, tmp_path)
    labels = write_labels(tmp_path / "labels.json", ["h.mp4"], ["n.mp4"])

    def stop(*args: object, remove_table: bool, **kwargs: object) -> None:
        if remove_table:
            (out / "dataset.parquet").unlink()
        raise KeyboardInterrupt

    for remove_table, hint in ((False, "run the same command to go on"),
                               (True, "run the same command without --overwrite to go on")):
        monkeypatch.setattr(command, "run_prepare", lambda *a, _r=remove_table, **k: stop(*a, remove_table=_r, **k))
        result = CliRunner().invoke(main, ["prepare-dataset", str(labels), str(out), "--overwrite", "--restarts", "0"])
        assert result.exit_code == 130 and hint in result.output, result.output
    # a child the supervisor restarted after a crash runs without --overwrite; the user typed it all the same
    monkeypatch.setenv("QUADVAULT_SCAN_IN_PROCESS", "1")
    monkeypatch.setenv("QUADVAULT_PREPARE_TYPED_OVERWRITE", "1")
    monkeypatch.setattr(command, "run_prepare", lambda *a, **k: stop(*a, remove_table=False, **k))
    result = CliRunner().invoke(main, ["prepare-dataset", str(labels), str(out)])
    assert result.exit_code == 130 and "run the same command without --overwrite to go on" in result.output


def test_a_labelled_file_whose_content_changed_is_extracted_again_not_dropped(
        prepared: tuple[Path, object], footage: Path, make_clip: Callable[..., Path], tmp_path: Path) -> None:
    """The summary said "dropped 1 no longer labelled" for a file still labelled whose content changed."""
    lib = tmp_path / "lib"
    shutil.copytree(footage, lib)
    out = tmp_path / "ds"
    labels = label_all(tmp_path, lib)
    prepare_dataset(labels, out, size=SIZE, device="cpu")
    shutil.copy(make_clip("pd_n1_new.mp4", style="normal", duration_s=2.0, source_id=31, **CLIP), lib / "n1.mp4")
    result = prepare_dataset(labels, out, merge=True, size=SIZE, device="cpu")
    assert result.dropped == [] and [p.name for p in result.extracted] == ["n1.mp4"]
    assert sum(1 for r in read_dataset(out).rows() if r["video_path"] == str(lib / "n1.mp4")) == 2


def test_the_crash_record_follows_content_and_sees_a_recopy(tmp_path: Path) -> None:
    """Keyed by content id alone, a crasher re-copied in place (damage away from the three blocks the id reads)
    was never tried again, and a crasher moved away while another video took its old name was forgotten (a
    review helper's finds)."""
    import os

    from quadvault_dali.dataset._crashes import DecoderCrashes

    p1, p2 = tmp_path / "a.mp4", tmp_path / "b.mp4"
    p1.write_bytes(b"a" * 100)
    crashes = DecoderCrashes(tmp_path)
    crashes.add(p1, "idA", "the decoder crashed on this file (SIGSEGV)")
    assert crashes.error_for(p1, "idA") is not None
    # moved to p2, another labelled video copied to p1: still known at p2
    p1.rename(p2)
    p1.write_bytes(b"b" * 100)
    crashes.forget_changed({p1: "idB", p2: "idA"})
    assert "idA" in crashes.known and "as " + str(p1) in str(crashes.error_for(p2, "idA"))
    # back where it was, then re-copied there (same id, new mtime): tried again, and forgotten
    p1.unlink()
    p2.rename(p1)
    assert crashes.error_for(p1, "idA") is not None
    os.utime(p1, ns=(p1.stat().st_atime_ns, p1.stat().st_mtime_ns + 10**9))
    assert crashes.error_for(p1, "idA") is None and "idA" not in crashes.known


def test_a_content_id_of_a_folder_is_an_error_without_a_leaked_descriptor(tmp_path: Path) -> None:
    import os

    from quadvault_dali.dataset._identity import content_id

    folder = tmp_path / "dir.mp4"
    folder.mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(OSError):
            content_id(folder)
    assert len(os.listdir("/proc/self/fd")) == before


def test_chunks_of_one_recording_stay_on_one_side_of_the_split(tmp_path: Path, make_clip: Callable[..., Path]) -> None:
    """A flight the camera split into DJI_0001..0003 (each file stamped as it closed, one chunk's length after
    the one before) was split by file: chunks on both sides, validation scoring footage training had all but
    seen. The chunks now go to one side together; separate flights are split as before."""
    import os

    from quadvault_dali.dataset._recordings import recording_groups
    from quadvault_dali.dataset._split import assign_splits

    flight = tmp_path / "footage" / "flight"
    flight.mkdir(parents=True)
    start = 1_700_000_000
    for k in range(3):  # 3-s chunks closed 3 s apart
        chunk = shutil.copy(make_clip(f"pd_chunk{k}.mp4", style="highlight", duration_s=3.0, source_id=31 + k, **CLIP),
                            flight / f"DJI_000{k + 1}.MP4")
        os.utime(chunk, (start + 3 * (k + 1), start + 3 * (k + 1)))
    others = tmp_path / "footage" / "other"
    others.mkdir()
    for k in range(4):  # separate clips, hours apart
        clip = shutil.copy(make_clip(f"pd_other{k}.mp4", style="highlight", duration_s=3.0, source_id=41 + k, **CLIP),
                           others / f"h{k}.mp4")
        os.utime(clip, (start + 3600 * (k + 1),) * 2)
    paths = {p.name: p for p in [*flight.iterdir(), *others.iterdir()]}
    groups = recording_groups(paths, {name: 3.0 for name in paths})
    assert {groups[f"DJI_000{k}.MP4"] for k in (1, 2, 3)} == {"DJI_0001.MP4"}
    assert len({groups[f"h{k}.mp4"] for k in range(4)}) == 4
    # whatever the hash order, the three chunks share a side, and training keeps a video of the class
    for salt in range(20):
        labels = {f"{salt}:{name}": 1 for name in paths}
        splits = assign_splits(labels, groups={f"{salt}:{n}": f"{salt}:{g}" for n, g in groups.items()})
        assert len({splits[f"{salt}:DJI_000{k}.MP4"] for k in (1, 2, 3)}) == 1
        assert "train" in splits.values() and "val" in splits.values()
    # end to end, with a normal class beside
    normal = tmp_path / "footage" / "normal"
    normal.mkdir()
    for k in range(3):
        shutil.copy(make_clip(f"pd_normal{k}.mp4", style="normal", duration_s=3.0, source_id=51 + k, **CLIP), normal / f"n{k}.mp4")
    labels = write_labels(tmp_path / "labels.json", [str(flight), str(others)], [str(normal)])
    prepare_dataset(labels, tmp_path / "ds", size=SIZE, device="cpu")
    rows = read_dataset(tmp_path / "ds").rows()
    sides = {r["split"] for r in rows if Path(r["video_path"]).parent.name == "flight"}
    assert len(sides) == 1


def test_a_second_run_into_the_same_folder_is_refused(footage: Path, tmp_path: Path) -> None:
    """Two runs into one folder removed each other's frames (530 of 770 rows named missing files) and both said
    they had succeeded (an interrupting tester's find): a run holds the folder's lock, a second is refused."""
    from quadvault_dali._files import FolderLock
    from quadvault_dali.dataset._prepare import LOCK_FILE

    out = tmp_path / "ds"
    labels = label_all(tmp_path, footage)
    out.mkdir()
    running = FolderLock(out / LOCK_FILE)
    assert running.acquire()
    try:
        with pytest.raises(OutputError, match="another prepare-dataset is writing into this folder"):
            prepare_dataset(labels, out, size=SIZE, device="cpu")
        assert not (out / "dataset.parquet").exists()
    finally:
        running.release()
    prepare_dataset(labels, out, size=SIZE, device="cpu")  # once it is done
    assert (out / "dataset.parquet").exists()


def test_a_video_changed_in_place_is_extracted_again(footage: Path, tmp_path: Path) -> None:
    """Damage away from the three pieces the content id reads keeps the id: a resumed or merged run reused the old
    frames of a changed file (an interrupting tester's find). Its size or mtime says it changed."""
    import os

    lib = tmp_path / "lib"
    shutil.copytree(footage, lib)
    out = tmp_path / "ds"
    labels = label_all(tmp_path, lib)
    prepare_dataset(labels, out, size=SIZE, device="cpu")
    split = {r["video_path"]: r["split"] for r in read_dataset(out).rows()}
    victim = lib / "h2.mp4"
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # re-copied: same bytes here, new mtime
    result = prepare_dataset(labels, out, merge=True, size=SIZE, device="cpu")
    assert [p.name for p in result.extracted] == ["h2.mp4"] and len(result.reused) == 5
    rows = [r for r in read_dataset(out).rows() if r["video_path"] == str(victim)]
    assert len(rows) == 4 and {r["video_mtime_ns"] for r in rows} == {victim.stat().st_mtime_ns}
    assert {r["split"] for r in rows} == {split[str(victim)]}  # it keeps its split


def test_a_full_disk_while_writing_frames_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's ENOSPC and EFBIG name no file: the error said "No space left on device" and nothing else (an
    interrupting tester's find). It names the frame and says the work so far is kept."""
    import errno

    from quadvault_dali.dataset._jpeg import write_atomic

    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    target = tmp_path / "frames" / "abc" / "000001.000.jpg"
    target.parent.mkdir(parents=True)
    with pytest.raises(OutputError) as caught:
        write_atomic(target, b"jpeg")
    assert str(target) in str(caught.value) and "No space left on device" in str(caught.value)
    assert "free space on that disk" in str(caught.value) and "the same command goes on" in str(caught.value)
    assert list(target.parent.iterdir()) == []  # no temporary left behind


def test_a_test_split_is_held_out_and_merge_starts_none_in_a_dataset_without_one(tmp_path: Path,
                                                                                   make_clip: Callable[..., Path]) -> None:
    """Ten clips a class get a held-out test split. --merge into a dataset without one put every newly labelled
    clip (often the hard ones) into validation and a new test split, none into training (a reviewer's find): it
    now starts none unless asked (--test-fraction)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(24):
        style = "highlight" if i % 2 else "normal"
        shutil.copy(make_clip(f"pd_split_{style}.mp4", style=style, duration_s=1.0, **CLIP), lib / f"c{i:02d}.mp4")
        with open(lib / f"c{i:02d}.mp4", "ab") as fh:  # a file of its own (a copy is one video by its content)
            fh.write(bytes(i + 1))
    names = sorted(p.name for p in lib.iterdir())

    def labels_of(count: int) -> Path:
        return write_labels(tmp_path / "labels.json", [str(lib / n) for n in names[1:count:2]],
                            [str(lib / n) for n in names[0:count:2]])

    def splits(out: Path) -> Counter:
        return Counter(dict(zip(*read_dataset(out).table.select(["video_id", "split"]).to_pydict().values())).values())

    held = prepare_dataset(labels_of(20), tmp_path / "held", size=SIZE, device="cpu")
    assert held.videos_by_split == {"train": 12, "val": 4, "test": 4} == splits(tmp_path / "held")
    plain = tmp_path / "plain"
    prepare_dataset(labels_of(20), plain, size=SIZE, device="cpu", test_fraction=0.0)
    merged = prepare_dataset(labels_of(24), plain, merge=True, size=SIZE, device="cpu")
    assert merged.videos_by_split["test"] == 0 and merged.videos_by_split["train"] > 12
    asked = prepare_dataset(labels_of(24), tmp_path / "held", merge=True, size=SIZE, device="cpu")
    assert asked.videos_by_split["test"] >= 4  # a dataset with a test split keeps filling it
