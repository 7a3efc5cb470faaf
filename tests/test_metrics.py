"""Metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from quadvault_dali.metrics import best_threshold, binary_metrics, confusion_matrix, roc_auc, video_scores

SCORES = [0.9, 0.8, 0.4, 0.3, 0.6, 0.1]
LABELS = [1, 1, 1, 0, 0, 0]


def test_binary_metrics_hand_computed() -> None:
    m = binary_metrics(SCORES, LABELS, 0.5)
    # predicted [1,1,0,0,1,0] -> tp 2, fp 1, fn 1, tn 2
    assert (m.tp, m.fp, m.fn, m.tn) == (2, 1, 1, 2)
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 / 3)
    # positive/negative pairs ranked right: 0.9 beats 3, 0.8 beats 3, 0.4 beats 0.3 and 0.1 -> 8/9
    assert m.roc_auc == pytest.approx(8 / 9)
    assert m.confusion.tolist() == [[2, 1], [1, 2]]
    assert m.as_dict()["n"] == 6


def test_threshold_is_inclusive() -> None:
    assert confusion_matrix([0.5, 0.49], [1, 0], 0.5).tolist() == [[1, 0], [0, 1]]


def test_auc_ties_count_half() -> None:
    assert roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    # pos 0.5 vs neg 0.2 -> 1, vs neg 0.5 -> 0.5; pos 0.9 beats both -> 3.5 / 4
    assert roc_auc([0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(0.875)
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == pytest.approx(0.0)


def test_single_class_is_graceful() -> None:
    m = binary_metrics([0.7, 0.2, 0.9], [1, 1, 1])
    assert m.roc_auc is None
    assert m.recall == pytest.approx(2 / 3)
    assert m.precision == pytest.approx(1.0)
    empty = binary_metrics([], [])
    assert empty.n == 0 and empty.accuracy == 0.0 and empty.roc_auc is None


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        binary_metrics([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        binary_metrics([0.1, 0.2], [1, 2])


def test_video_scores_mean_of_frames() -> None:
    ids, scores, labels = video_scores([0.2, 0.4, 0.9, 0.7, 0.1], [0, 0, 1, 1, 0], ["a", "a", "b", "b", "c"])
    assert ids == ["a", "b", "c"]
    np.testing.assert_allclose(scores, [0.3, 0.8, 0.1])
    assert labels.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="both labels"):
        video_scores([0.2, 0.4], [0, 1], ["a", "a"])


def test_best_threshold_separates_when_possible() -> None:
    # at 0.5: 0.45 highlight is missed; a threshold between 0.4 and 0.45 makes everything right
    scores, labels = [0.1, 0.3, 0.4, 0.45, 0.8, 0.9], [0, 0, 0, 1, 1, 1]
    t = best_threshold(scores, labels)
    assert 0.4 < t <= 0.45
    assert binary_metrics(scores, labels, t).accuracy == 1.0
    assert best_threshold([0.2, 0.9], [1, 1]) == 0.5


def test_best_threshold_does_not_trade_rare_highlights_for_accuracy() -> None:
    """2 highlights among 33 videos (a review's case): plain accuracy was best calling nothing a highlight
    (0.700001: accuracy 0.94, recall 0), and that threshold went into the card, so scans flagged nothing.
    Balanced accuracy finds both highlights at the cost of three normal videos."""
    scores = [0.55, 0.35] + [0.1] * 28 + [0.4, 0.6, 0.7]
    labels = [1, 1] + [0] * 31
    t = best_threshold(scores, labels)
    m = binary_metrics(scores, labels, t)
    assert 0.1 < t <= 0.35 and m.recall == 1.0 and m.fp == 3
    assert m.balanced_accuracy == pytest.approx((1.0 + 28 / 31) / 2)
    assert m.balanced_accuracy > binary_metrics(scores, labels, 0.700001).balanced_accuracy == 0.5


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present() -> None:
    m = binary_metrics([0.9, 0.2, 0.8, 0.7, 0.1], [1, 1, 0, 0, 0], 0.5)
    assert (m.tp, m.fn, m.tn, m.fp) == (1, 1, 1, 2)
    assert m.balanced_accuracy == pytest.approx((1 / 2 + 1 / 3) / 2) and m.accuracy == pytest.approx(2 / 5)
    assert binary_metrics([0.9, 0.2], [1, 1], 0.5).balanced_accuracy == 0.5  # one class: its recall
    assert binary_metrics([], [], 0.5).balanced_accuracy == 0.0
