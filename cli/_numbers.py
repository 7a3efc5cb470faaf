"""Scores and thresholds printed so that the numbers a reader compares agree with the verdict beside them.

A tuned threshold is a midpoint between validation scores (``metrics.best_threshold``: 0.6123...), and at two
decimals a score of 0.6124 and that threshold both read "0.61", or 0.695 against 0.70 read "0.70" and "0.70" over
"not a highlight".
"""

from __future__ import annotations

#: The most decimals a score is printed with to tell it from the threshold
MAX_DECIMALS = 6


def threshold_text(threshold: float) -> str:
    """Two decimals when they are exact (0.5, 0.7), else four."""
    return f"{threshold:.2f}" if round(threshold, 2) == threshold else f"{threshold:.4f}"


def score_text(score: float, threshold: float) -> str:
    """``score`` with two decimals, or as many more as it takes for the printed score to compare with the printed
    threshold (``threshold_text``) the way the values compare."""
    shown_threshold = float(threshold_text(threshold))
    for decimals in range(2, MAX_DECIMALS + 1):
        text = f"{score:.{decimals}f}"
        if (float(text) >= shown_threshold) == (score >= threshold):
            return text
    return f"{score:.{MAX_DECIMALS}f}"
