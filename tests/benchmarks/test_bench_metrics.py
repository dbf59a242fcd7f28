"""Metrics of the evaluation (benchmarks/metrics.py): SQuAD normalisation, EM/F1, passkey, ROUGE-L, agreement."""

from __future__ import annotations

import pytest

from benchmarks.metrics import (
    exact_match,
    f1_score,
    first_line,
    first_token_agrees,
    normalize_answer,
    paired_bootstrap,
    passkey_found,
    rouge_l,
    rouge_scores,
    task_score,
)


def test_normalize_answer_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The  Song-Dynasty, an EMPIRE! ") == "songdynasty empire"
    assert normalize_answer("a cat and the hat") == "cat and hat"


def test_exact_match_is_max_over_golds_after_normalisation():
    assert exact_match("the Song dynasty.", ["Tang", "Song Dynasty"]) == 1.0
    assert exact_match("Song", ["Song Dynasty"]) == 0.0
    with pytest.raises(ValueError, match="at least one gold"):
        exact_match("x", [])


def test_f1_counts_token_overlap():
    # pred "song dynasty china" vs gold "song dynasty": P = 2/3, R = 1 -> F1 = 0.8
    assert f1_score("Song Dynasty China", ["the Song dynasty"]) == pytest.approx(0.8)
    assert f1_score("Ming", ["Song dynasty"]) == 0.0
    assert f1_score("Ming", ["Song dynasty", "Ming"]) == 1.0
    # only articles on both sides: both normalise to empty, which counts as a match
    assert f1_score("the", ["a"]) == 1.0
    assert f1_score("the", ["Ming"]) == 0.0


def test_passkey_found_needs_the_whole_number():
    assert passkey_found("The passkey is 123456.", "123456")
    assert passkey_found("It is 123,456", "123456")
    assert not passkey_found("It is 1234567", "123456")
    assert not passkey_found("It is 12345", "123456")
    with pytest.raises(ValueError, match="digits"):
        passkey_found("x", "12a")


def test_rouge_l_identical_disjoint_and_empty():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("dogs bark loudly", "the cat sat") == 0.0
    assert rouge_l("", "the cat") == 0.0
    partial = rouge_l("the cat sat", "the cat sat on the mat")
    assert 0.0 < partial < 1.0


def test_first_token_agreement_and_first_line():
    assert first_token_agrees([5, 6], [5, 9])
    assert not first_token_agrees([5], [6])
    assert first_token_agrees([], [])
    assert not first_token_agrees([], [1])
    assert first_line("\n  Paris \nbecause ...") == "Paris"


def test_task_score_dispatch():
    assert task_score("needle", "passkey 654321", ["654321"]) == 1.0
    assert task_score("single_qa", "Paris\nIt is the capital.", ["Paris"]) == 1.0
    assert task_score("summarize", "a b c", [], reference="a b c") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reference="):
        task_score("summarize", "a", [])
    with pytest.raises(ValueError, match="unknown task"):
        task_score("translate", "a", ["a"])


def test_rouge_scores_give_1_2_and_l():
    ref = "the model prunes tokens in the prefill"
    same = rouge_scores(ref, ref)
    assert same == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    shuffled = rouge_scores("prefill the in tokens prunes model the", ref)
    assert shuffled["rouge1"] == 1.0 and shuffled["rouge2"] < 0.5 and shuffled["rougeL"] < 1.0
    assert rouge_scores("", ref) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_paired_bootstrap_interval_covers_the_mean_and_is_seeded():
    a = [0.30, 0.25, 0.40, 0.35, 0.20, 0.33]
    b = [0.28, 0.27, 0.36, 0.30, 0.21, 0.30]
    mean, low, high = paired_bootstrap(a, b)
    assert mean == pytest.approx(sum(x - y for x, y in zip(a, b, strict=True)) / len(a))
    assert low <= mean <= high and low < high
    assert paired_bootstrap(a, b) == (mean, low, high)
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    assert paired_bootstrap([x + 1 for x in b], b)[1] == pytest.approx(1.0)  # a constant shift: a point interval
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap(a, b[:-1])
