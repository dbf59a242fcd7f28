"""benchmarks.ruler_margins: the full model's margin on its own answer, and the losses counted by it."""

from __future__ import annotations

import torch
from conftest import make_tiny_model

from benchmarks.ruler_margins import (
    answer_prefix,
    bucket_of,
    bucket_table,
    found_items,
    margin_rows,
    outcomes,
    token_margins,
)


def test_answer_prefix_ends_at_the_last_answer_written():
    assert answer_prefix(": 2927115.\n", ["2927115"]) == ": 2927115"
    assert answer_prefix("b then a, more", ["a", "b"]) == "b then a"
    assert answer_prefix(": 1000000", ["2927115"]) is None


def test_token_margins_are_each_tokens_lead_over_the_best_other():
    """Teacher-forced margins equal the log-softmax gap of a whole-sequence forward pass at the same rows; the
    greedy continuation's margins are >= 0, another token's < 0 where greedy would not write it."""
    model = make_tiny_model("llama", num_layers=2).float()
    prompt = list(range(5, 25))
    with torch.inference_mode():
        greedy, ids = [], torch.tensor([prompt])
        for _ in range(3):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            greedy.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)  # [T + 3, V]
    margins = token_margins(model, prompt, greedy)
    for k, token in enumerate(greedy):
        row = logp[len(prompt) - 1 + k].clone()
        lead = row[token] - row[torch.arange(row.numel()) != token].max()
        assert abs(margins[k] - float(lead)) < 1e-4 and margins[k] >= 0
    other = (greedy[0] + 1) % model.config.vocab_size
    assert token_margins(model, prompt, [other])[0] < 0


def test_found_items_and_the_bucket_table_count_losses_by_margin():
    def rec(item, method, score, text="x: 123"):
        return {"id": item, "method": method, "score": score, "text": text, "answers": ["123"]}

    records = [rec("a", "full", 1.0), rec("a", "lazy", 0.0), rec("b", "full", 1.0), rec("b", "lazy", 1.0),
               rec("c", "full", 0.0, "nothing"), rec("c", "lazy", 1.0), rec("a", "full", 1.0)]
    assert [r["id"] for r in found_items(records)] == ["a", "b"]  # once each, found ones only
    assert [bucket_of(m) for m in (-0.2, 0.5, 1.5, 7.0)] == ["< 0.5", "0.5-1", "1-2", ">= 2"]
    rows = [{"margin": 0.1, "full_score": 1.0, "scores": {"lazy": 0.0, "late": 1.0}},
            {"margin": 0.3, "full_score": 1.0, "scores": {"lazy": 1.0}},
            {"margin": 3.0, "full_score": 1.0, "scores": {"lazy": 1.0, "late": 1.0}}]
    lines = bucket_table(rows, ["lazy", "late"]).splitlines()
    assert lines[2].split("|")[1:-1] == [" < 0.5 ", " 2 ", " 1 / 2 ", " 0 / 1 "]
    assert lines[5].split("|")[1:-1] == [" >= 2 ", " 1 ", " 0 / 1 ", " 0 / 1 "]


def test_margin_rows_reuse_known_margins_and_compute_the_rest():
    """--margins-from: an item measured before keeps its margins (they depend on the full model's record only) and
    takes the scores of every method now in the results; only new items are computed."""
    def rec(item, method, score):
        return {"id": item, "task": "niah_single_1", "length": 8192, "method": method, "score": score,
                "text": ": 123.", "answers": ["123"]}

    records = [rec("a", "full", 1.0), rec("a", "lazy", 0.0), rec("a", "full@float32", 0.0),
               rec("b", "full", 1.0), rec("b", "lazy", 1.0)]
    known = {"a": {"id": "a", "answer_text": ": 123", "margins": [2.0, 0.25], "scores": {"lazy": 0.0}}}
    computed = []

    def compute(r):
        computed.append(r["id"])
        return ": 123", [1.5]

    rows = margin_rows(found_items(records), outcomes(records), known, compute)
    assert computed == ["b"]
    assert [(r["id"], r["margin"], r["scores"]) for r in rows] == [
        ("a", 0.25, {"lazy": 0.0, "full@float32": 0.0}), ("b", 1.5, {"lazy": 1.0})]
