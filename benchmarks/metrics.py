"""Scores of the evaluation: passkey found, SQuAD-style exact match and F1, ROUGE-L, first-token agreement.

Answer normalisation follows the SQuAD evaluation's definition (lower case, no punctuation, no English articles,
single spaces), written here from that definition.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def first_line(text: str) -> str:
    """The answer part of a generation: its first non-empty line, stripped."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    if not golds:
        raise ValueError("exact_match needs at least one gold answer")
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """Token-overlap F1 of the normalised prediction, max over gold answers (SQuAD definition)."""
    if not golds:
        raise ValueError("f1_score needs at least one gold answer")
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        gold_tokens = normalize_answer(gold).split()
        if not pred_tokens or not gold_tokens:
            best = max(best, float(pred_tokens == gold_tokens))
            continue
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if common == 0:
            continue
        precision = common / len(pred_tokens)
        recall = common / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


_DIGIT_GROUP_SEP = re.compile(r"(?<=\d)[,\s](?=\d)")


def passkey_found(prediction: str, passkey: str) -> bool:
    """True if ``passkey`` appears in ``prediction`` as a whole number ("123,456" and "123 456" count)."""
    if not passkey.isdigit():
        raise ValueError(f"a passkey is a string of digits, got {passkey!r}")
    numbers = re.findall(r"\d+", _DIGIT_GROUP_SEP.sub("", prediction))
    return passkey in numbers


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("ROUGE-L needs the rouge-score package: `.venv/bin/pip install rouge-score`") from err
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of ``prediction`` against ``reference`` (0 when either is empty)."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1 / ROUGE-2 / ROUGE-L F-measures (rouge-score, stemmed) of ``prediction`` against ``reference``; all 0
    when either is empty."""
    if not prediction.strip() or not reference.strip():
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    scores = _rouge_scorer().score(reference, prediction)
    return {name: float(scores[name].fmeasure) for name in ("rouge1", "rouge2", "rougeL")}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the paired differences a - b and its percentile bootstrap interval (items resampled with
    replacement, ``resamples`` times, fixed seed)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_bootstrap needs two equally long, non-empty score lists, got {len(a)} and {len(b)}")
    import random

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    low, high = means[int(tail * resamples)], means[min(resamples - 1, int((1 - tail) * resamples))]
    return sum(diffs) / n, low, high


def first_token_agrees(new_ids: Sequence[int], reference_new_ids: Sequence[int]) -> bool:
    """True if both generations start with the same token (both empty also agree)."""
    if not new_ids or not reference_new_ids:
        return len(new_ids) == len(reference_new_ids)
    return int(new_ids[0]) == int(reference_new_ids[0])


def task_score(task: str, prediction: str, answers: Sequence[str], reference: str | None = None) -> float:
    """The headline score of one item: needle, entity -> passkey / code found (0/1); QA -> F1 of the first line;
    summarize -> ROUGE-L against ``reference`` (the full model's summary)."""
    if task in ("needle", "entity"):
        return float(passkey_found(prediction, answers[0]))
    if task in ("multidoc_qa", "single_qa"):
        return f1_score(first_line(prediction), answers)
    if task == "summarize":
        if reference is None:
            raise ValueError("summarize is scored against the full model's summary: pass reference=")
        return rouge_l(prediction, reference)
    raise ValueError(f"unknown task {task!r}; tasks are needle, entity, multidoc_qa, single_qa, summarize")
