"""workers.rouge: ROUGE-L on token ids, against the reference implementation (rouge-score)."""

from __future__ import annotations

import random

import pytest

from workers import rouge_l_f


def test_rouge_l_matches_reference_implementation():
    from rouge_score import rouge_scorer  # the bench extra, installed by `make setup`

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng = random.Random(0)
    for _ in range(30):
        a = [rng.randint(0, 9) for _ in range(rng.randint(1, 15))]
        b = [rng.randint(0, 9) for _ in range(rng.randint(1, 15))]
        expected = scorer.score(" ".join(map(str, b)), " ".join(map(str, a)))["rougeL"].fmeasure
        assert rouge_l_f(a, b) == pytest.approx(expected)
    assert rouge_l_f([], []) == 1.0 and rouge_l_f([1], []) == 0.0 and rouge_l_f([1, 2, 3], [1, 2, 3]) == 1.0
