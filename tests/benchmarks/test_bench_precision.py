"""benchmarks.precision: bf16 records paired with the fp32 record of the same method and item."""

from __future__ import annotations

import pytest

from benchmarks.precision import compare


def _rec(method, item, text, task="needle", loglik=None, prompt_tokens=100):
    return {"method": method, "item_id": item, "task": task, "text": text, "answers": ["123456"],
            "prompt_tokens": prompt_tokens, "gold_loglik": loglik}


def test_compare_counts_lost_and_gained_passkeys_and_loglik_change():
    fp32 = {("lazy", i): _rec("lazy", i, t) for i, t in (("a", "123456"), ("b", "no"), ("c", "123,456"))}
    fp32[("lazy", "q")] = _rec("lazy", "q", "x", task="multidoc_qa", loglik=-2.0)
    bf16 = {("lazy", "a"): _rec("lazy", "a", "none"), ("lazy", "b"): _rec("lazy", "b", "it is 123456"),
            ("lazy", "c"): _rec("lazy", "c", "123,456"), ("lazy", "q"): _rec("lazy", "q", "x", "multidoc_qa", -2.5),
            ("full", "a"): _rec("full", "a", "123456")}  # no fp32 partner: left out
    rows = {r["task"]: r for r in compare(fp32, bf16, ["lazy", "full"])}
    needle, qa = rows["needle"], rows["multidoc_qa"]
    assert (needle["task"], needle["items"], needle["found_fp32"], needle["found_bf16"]) == ("needle", 3, 2, 2)
    assert (needle["lost"], needle["gained"], needle["same_text"]) == (1, 1, pytest.approx(1 / 3))
    assert qa["task"] == "multidoc_qa" and qa["loglik_change"] == pytest.approx(-0.5) and qa["same_text"] == 1.0


def test_compare_refuses_items_that_differ():
    fp32 = {("full", "a"): _rec("full", "a", "1", prompt_tokens=100)}
    with pytest.raises(ValueError, match="differ between the fp32 and bf16"):
        compare(fp32, {("full", "a"): _rec("full", "a", "1", prompt_tokens=99)}, ["full"])
