"""evaluate on a prepared dataset and on a labels.json, with a hand-built colour model (known ordering)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from quadvault_dali.cli.main import main
from quadvault_dali.dataset import prepare_dataset, read_dataset
from quadvault_dali.evaluate import evaluate
from quadvault_dali.model import load_model
from quadvault_dali.scoring import score_video
from test_test_video import build_colour_model  # the shared hand-built model (tests/ is on sys.path)

CLIP = dict(width=160, height=96, fps=10, duration_s=4.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_models")
    # bias -1: warm frames ~0.99, grey frames ~0.16, a half-warm clip in between
    return {"warm": build_colour_model(root / "warm", bias=-1.0),
            "cold": build_colour_model(root / "cold", sign=-1.0, bias=-1.0)}


@pytest.fixture(scope="module")
def clips(make_clip: Callable[..., Path], broken_clips: dict[str, Path]) -> dict[str, Path]:
    made = {f"warm{i}": make_clip(f"ev_warm{i}.mp4", style="highlight", source_id=30 + i, seed=i, **CLIP)
            for i in range(4)}
    made |= {f"grey{i}": make_clip(f"ev_grey{i}.mp4", style="normal", source_id=40 + i, seed=i, **CLIP)
             for i in range(3)}
    made["mixed"] = make_clip("ev_mixed.mp4", segments=(("highlight", 2.0), ("normal", 2.0)), source_id=50, **CLIP)
    made["broken"] = broken_clips["no_index"]
    return made


@pytest.fixture(scope="module")
def labels_file(clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """warm3 is labelled normal on purpose (a labelling mistake the report must surface)."""
    path = tmp_path_factory.mktemp("eval_labels") / "labels.json"
    path.write_text(json.dumps({
        "highlights": [str(clips[k]) for k in ("warm0", "warm1", "warm2", "mixed", "broken")],
        "normal": [str(clips[k]) for k in ("grey0", "grey1", "grey2", "warm3")]}))
    return path


def test_labels_report(labels_file: Path, models: dict[str, Path], clips: dict[str, Path]) -> None:
    model = load_model(models["warm"])
    report = evaluate(labels_file, [model], device="cpu")
    scores = {Path(v.path).name: v.score for v in report.videos}
    assert len(scores) == 8 and report.kind == "labels"
    assert all(scores[f"ev_warm{i}.mp4"] > 0.9 for i in range(4))
    assert all(scores[f"ev_grey{i}.mp4"] < 0.3 for i in range(3))
    assert 0.5 <= scores["ev_mixed.mp4"] <= 0.7
    # the video score is the mean of the per-second scores, as test-video computes it
    assert scores["ev_mixed.mp4"] == pytest.approx(score_video(clips["mixed"], [model], device="cpu").score, abs=1e-6)
    v = report.video_metrics
    assert (v.tn, v.fp, v.fn, v.tp) == (3, 1, 0, 4)
    assert v.accuracy == pytest.approx(7 / 8) and v.precision == pytest.approx(4 / 5) and v.recall == 1.0
    pos = [scores[n] for n in ("ev_warm0.mp4", "ev_warm1.mp4", "ev_warm2.mp4", "ev_mixed.mp4")]
    neg = [scores[n] for n in ("ev_grey0.mp4", "ev_grey1.mp4", "ev_grey2.mp4", "ev_warm3.mp4")]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert v.roc_auc == pytest.approx(sum(pairs) / 16) and 12 / 16 <= v.roc_auc < 1.0
    assert report.frame_metrics.n == 8 * 4
    assert [Path(x.path).name for x in report.misclassified()] == ["ev_warm3.mp4"]
    assert [Path(x.path).name for x in report.uncertain()] == ["ev_mixed.mp4"]
    assert [Path(p).name for p, _ in report.failed] == [clips["broken"].name]
    # the uncertain band follows the threshold: a model tuned to 0.9 is unsure of the videos near 0.9
    high = evaluate(labels_file, [model], device="cpu", threshold=0.9)
    assert high.uncertain_range == pytest.approx((0.7, 1.0))
    assert {Path(x.path).name for x in high.uncertain()} >= {"ev_warm0.mp4", "ev_warm1.mp4", "ev_warm2.mp4"}
    assert "ev_mixed.mp4" not in {Path(x.path).name for x in high.uncertain()}


def test_dataset_val_split_uses_stored_frames(labels_file: Path, models: dict[str, Path],
                                              tmp_path: Path) -> None:
    out = tmp_path / "ds"
    prepare_dataset(labels_file, out, size=64, device="cpu")
    model = load_model(models["warm"])
    report = evaluate(out, [model], device="cpu")
    rows = read_dataset(out).rows()
    val_videos = {r["video_path"] for r in rows if r["split"] == "val"}
    assert report.kind == "dataset" and report.split == "val"
    assert {v.path for v in report.videos} == val_videos
    assert report.frame_metrics.n == sum(1 for r in rows if r["split"] == "val")
    everything = evaluate(out / "dataset.parquet", [model], split="all", device="cpu")
    assert len(everything.videos) == 8
    # JPEG frames score like freshly sampled ones (same crop; JPEG q90 noise only)
    sampled = evaluate(labels_file, [model], device="cpu")
    by_path = {v.path: v.score for v in sampled.videos}
    for v in everything.videos:
        assert v.score == pytest.approx(by_path[v.path], abs=0.03)


def test_corrupt_jpeg_is_reported_not_fatal(labels_file: Path, models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ds"
    prepare_dataset(labels_file, out, size=64, device="cpu")
    rows = pq.read_table(out / "dataset.parquet").to_pylist()
    victim = out / rows[0]["frame_path"]
    victim.write_bytes(b"\xff\xd8 not really a jpeg")
    report = evaluate(out, [load_model(models["warm"])], split="all", device="cpu")
    assert report.bad_frames and report.bad_frames[0][0] == str(victim)
    assert "not a readable JPEG" in report.bad_frames[0][1]
    assert report.frame_metrics.n == len(rows) - 1 and len(report.videos) == 8


def test_cli_text_output(labels_file: Path, models: dict[str, Path], clips: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["-q", "evaluate", str(labels_file), str(models["warm"]), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1].startswith("Frame level  (n=32): accuracy ")
    assert lines[2].startswith("Video level  (n=8): accuracy 87.5% (balanced 87.5%) | precision 80.0% | recall 100.0% | F1 0.889 | "
                               "ROC-AUC 0.")
    i = lines.index("Confusion matrix (videos):")
    assert lines[i + 2].split() == ["true", "normal", "3", "1"]
    assert lines[i + 3].split() == ["true", "highlight", "0", "4"]
    j = lines.index("Misclassified videos (1):")
    assert lines[j + 1].endswith(f"labelled normal     {clips['warm3']}")
    k = lines.index("Uncertain videos (0.3–0.7), label these next (1):")
    assert lines[k + 1].endswith(str(clips["mixed"]))
    assert f"{clips['broken']}: " in res.output  # not scored, listed


def test_cli_json_ensemble(labels_file: Path, models: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["evaluate", str(labels_file), str(models["warm"]), "--model", str(models["cold"]),
                                    "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [m["name"] for m in data["models"]] == ["warm", "cold"]
    assert data["per_model_video_level"][0]["accuracy"] == pytest.approx(7 / 8)
    cold = data["per_model_video_level"][1]  # the inverted model calls no labelled highlight a highlight
    # and ranks every positive below every grey negative: only the warm clip labelled normal by mistake can rank
    # under positives (under the half-grey one and the three other warm ones at most: 4 of 16 pairs)
    assert (cold["tp"], cold["fn"], cold["tn"], cold["fp"]) == (0, 4, 4, 0) and cold["roc_auc"] <= 4 / 16
    for v in data["videos"]:
        assert v["score"] == pytest.approx(sum(v["model_scores"]) / 2, abs=1e-5)
    assert data["confusion_matrix"]["videos"] == [[data["video_level"]["tn"], data["video_level"]["fp"]],
                                                  [data["video_level"]["fn"], data["video_level"]["tp"]]]


def test_evaluating_videos_a_model_trained_on_warns(labels_file: Path, models: dict[str, Path], tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    out = tmp_path / "ds"
    prepare_dataset(labels_file, out, size=64, device="cpu")
    trained = tmp_path / "trained"
    shutil.copytree(models["warm"], trained)
    card = json.loads((trained / "model.json").read_text())
    card["dataset"] = str(out)  # as train wrote it before stop 30
    (trained / "model.json").write_text(json.dumps(card))
    model = load_model(trained)
    train_videos = {r["video_path"] for r in read_dataset(out).rows() if r["split"] == "train"}
    val_videos = {r["video_path"] for r in read_dataset(out).rows() if r["split"] == "val"}
    with caplog.at_level("WARNING"):
        on_val = evaluate(out, [model], device="cpu")  # the validation split: no warning
    assert "training split" not in caplog.text
    # ... but its best epoch and threshold were chosen on those videos: the report says how many were
    assert on_val.tuned_on == {model.name: len(val_videos)} and on_val.as_dict()["tuned_on"] == on_val.tuned_on
    with caplog.at_level("WARNING"):
        on_labels = evaluate(labels_file, [model], device="cpu")
    assert f"{len(train_videos)} of the 8 evaluated videos were in the training split of model" in caplog.text
    assert on_labels.tuned_on == {model.name: len(val_videos)} and 0 < len(val_videos) < 8
    assert "these metrics are optimistic" in caplog.text
    # renamed copies elsewhere are still the videos it trained on
    caplog.clear()
    copies = tmp_path / "copies"
    copies.mkdir()
    data = json.loads(labels_file.read_text())
    base = labels_file.parent
    renamed = {key: [str(shutil.copyfile(base / entry, copies / f"copy {i} of {key}.mp4"))
                     for i, entry in enumerate(entries)] for key, entries in data.items()}
    (copies / "labels.json").write_text(json.dumps(renamed))
    with caplog.at_level("WARNING"):
        evaluate(copies / "labels.json", [model], device="cpu")
    assert f"{len(train_videos)} of the 8 evaluated videos were in the training split of model" in caplog.text
    # the check reuses the content ids the dataset and the labels check already have: no video is read again
    import quadvault_dali.evaluate as evaluate_module

    def no_reading(paths):  # type: ignore[no-untyped-def]
        paths = list(paths)
        assert not paths, f"read again: {paths}"
        return {}

    monkeypatch.setattr(evaluate_module, "content_ids", no_reading)
    caplog.clear()
    with caplog.at_level("WARNING"):
        evaluate(out, [model], device="cpu", split="all")
        evaluate(copies / "labels.json", [model], device="cpu")
    assert caplog.text.count(f"{len(train_videos)} of the 8 evaluated videos were in the training split") == 2
    # the command says it (after the log checks: the command sets up its own logging)
    result = CliRunner().invoke(main, ["evaluate", str(out), str(trained), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"Note: all videos are those the best epoch and threshold of model '{model.name}' were chosen on" in result.output


def test_a_given_threshold_judges_every_member_too(labels_file: Path, models: dict[str, Path]) -> None:
    """``--threshold`` over an ensemble: the per-model lines were judged at each card's own threshold under a
    header naming the given one (a review helper's find)."""
    res = CliRunner().invoke(main, ["evaluate", str(labels_file), str(models["warm"]), "--model", str(models["cold"]),
                                    "--json", "--device", "cpu", "--threshold", "0.01"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["threshold"] == 0.01
    assert [m["threshold"] for m in data["per_model_video_level"]] == [0.01, 0.01]
    assert data["per_model_video_level"][0]["fn"] == 0  # at 0.01 the warm model misses no highlight


def test_the_header_says_how_many_labelled_videos_were_not_scored(labels_file: Path, models: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["-q", "evaluate", str(labels_file), str(models["warm"]), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert " on 8 of 9 (1 not scored, below) videos (32 frames)" in res.output.splitlines()[0]


def test_a_hand_edited_card_does_not_crash_the_training_overlap_check(labels_file: Path, models: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    import shutil

    for name, edit in (("ens_str", {"ensemble": "abc"}), ("ds_num", {"dataset": 5})):
        folder = tmp_path / name
        shutil.copytree(models["warm"], folder)
        card = json.loads((folder / "model.json").read_text())
        card.update(edit)
        (folder / "model.json").write_text(json.dumps(card))
        res = CliRunner().invoke(main, ["-q", "evaluate", str(labels_file), str(folder), "--device", "cpu"])
        assert res.exit_code == 0, (name, res.output)
        assert "Video level  (n=8): accuracy 87.5%" in res.output


def test_many_labels_warnings_are_counted_not_each_printed(labels_file: Path, models: dict[str, Path], tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """``--skip-missing`` over 50,000 missing entries printed a line each (a review helper's find)."""
    doc = json.loads(labels_file.read_text())
    key = next(k for k in doc if k.startswith("normal"))
    doc[key] = list(doc[key]) + [str(tmp_path / f"gone_{i}.mp4") for i in range(15)]
    many = tmp_path / "labels.json"
    many.write_text(json.dumps(doc))
    with caplog.at_level("WARNING", logger="quadvault_dali"):
        report = evaluate(many, [load_model(models["warm"])], device="cpu", skip_missing=True)
    assert len(report.videos) == 8
    shown = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "gone_" in r.getMessage()]
    assert len(shown) == 10
    assert any("… and 5 more warnings about" in r.getMessage() for r in caplog.records)


def test_recall_on_highlights_alone(clips: dict[str, Path], models: dict[str, Path], tmp_path: Path) -> None:
    """A labels file of new highlights only (no normal video): evaluate measures recall on them instead of
    refusing the file as prepare-dataset must (a review helper's find); ROC-AUC has no meaning without both."""
    only = tmp_path / "highlights_only.json"
    only.write_text(json.dumps({"highlights": [str(clips[k]) for k in ("warm0", "warm1", "mixed")]}))
    res = CliRunner().invoke(main, ["evaluate", str(only), str(models["warm"]), "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    video = json.loads(res.output)["video_level"]
    assert (video["tp"] + video["fn"], video["tn"], video["fp"]) == (3, 0, 0) and video["roc_auc"] is None
    text = CliRunner().invoke(main, ["-q", "evaluate", str(only), str(models["warm"]), "--device", "cpu"])
    assert text.exit_code == 0 and "Video level  (n=3)" in text.output, text.output
    none = tmp_path / "empty.json"
    none.write_text(json.dumps({"highlights": [], "normal": []}))
    res = CliRunner().invoke(main, ["evaluate", str(none), str(models["warm"]), "--device", "cpu"])
    assert res.exit_code == 1 and "is empty" in res.output


def test_printed_scores_compare_with_the_printed_threshold_as_the_values_do() -> None:
    """0.695 against 0.70 printed "0.70" and "0.70" beside "not a highlight"; a tuned threshold (a midpoint of
    validation scores) printed "0.61" over a score of 0.6124 that passed it."""
    from quadvault_dali.cli._numbers import score_text, threshold_text

    assert (threshold_text(0.7), threshold_text(0.5), threshold_text(0.61234)) == ("0.70", "0.50", "0.6123")
    assert score_text(0.6951, 0.7) == "0.695"
    assert score_text(0.6999, 0.7) == "0.6999"
    assert score_text(0.83, 0.7) == "0.83" and score_text(0.2, 0.7) == "0.20"  # far from it: two decimals
    assert score_text(0.6124, 0.61234) == "0.6124" and score_text(0.612, 0.61234) == "0.61"
    assert score_text(0.7, 0.7) == "0.70"


def test_the_videos_a_model_saw_are_those_its_card_records(labels_file: Path, models: dict[str, Path], tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """After prepare-dataset --merge put a new video into the validation split, evaluate said all the videos were
    ones the model had been tuned on (a returning user's find): the dataset as it is now was read as the model's.
    Cards record each split's content ids since; an older card's changed dataset is said to have changed."""
    import shutil

    out = tmp_path / "ds"
    prepare_dataset(labels_file, out, size=64, device="cpu")
    rows = list(read_dataset(out).rows())
    val_ids = sorted({r["video_id"] for r in rows if r["split"] == "val"})
    train_ids = sorted({r["video_id"] for r in rows if r["split"] == "train"})
    assert len(val_ids) >= 2
    trained = tmp_path / "trained"
    shutil.copytree(models["warm"], trained)
    card = json.loads((trained / "model.json").read_text())
    # trained before the merge: one of today's validation videos was not in the dataset then
    (trained / "model.json").write_text(json.dumps({**card, "dataset": str(out), "split_videos": {
        "train": train_ids, "val": val_ids[1:]}}))
    shutil.rmtree(out / "frames")  # the dataset need not be there any more: the card says it all
    model = load_model(trained)
    report = evaluate(labels_file, [model], device="cpu")
    assert report.tuned_on == {model.name: len(val_ids) - 1}
    # an older card (no split_videos) whose dataset changed since: judged from the dataset now, and said
    (trained / "model.json").write_text(json.dumps({**card, "dataset": str(out), "dataset_fingerprint": "0" * 16}))
    with caplog.at_level("WARNING"):
        older = evaluate(labels_file, [load_model(trained)], device="cpu")
    assert older.tuned_on == {model.name: len(val_ids)} and "has changed since" in caplog.text
