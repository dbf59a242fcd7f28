"""benchmarks.quantized: quantized records paired with the dense record of the same method and item, found / lost /
gained counted per task, the totals, and items that differ refused."""

from __future__ import annotations

import json

import pytest

from benchmarks import quantized


def _eval(method, item, text, task="needle", prompt_tokens=2048):
    return {"method": method, "item_id": item, "task": task, "text": text, "answers": ["123456"],
            "prompt_tokens": prompt_tokens}


def _ruler(method, item, score, length=4096):
    return {"model": "gemma3-270m", "method": method, "id": item, "task": "niah_single_1", "length": length,
            "score": score, "text": str(score), "answers": ["x"], "prompt_tokens": length - 10}


def test_pairs_count_found_lost_gained_per_task_and_in_all(tmp_path):
    evals = [_eval("lazy", "a", "it is 123456"), _eval("lazy+int4", "a", "none"),
             _eval("lazy", "b", "no"), _eval("lazy+int4", "b", "123456"),
             _eval("lazy", "c", "123456"), _eval("lazy+int4", "c", "123456"),
             _eval("full+int4", "a", "123456"),  # no dense partner: left out
             _eval("lazy", "e", "123456", task="entity"), _eval("lazy+int4", "e", "123456", task="entity")]
    path = tmp_path / "quant-eval-smollm2.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in evals) + "\n")
    ruler = tmp_path / "quant-ruler-gemma.jsonl"
    ruler.write_text("\n".join(json.dumps(r) for r in (_ruler("full", "n1", 1.0), _ruler("full+int8", "n1", 0.5),
                                                        _ruler("full", "n2", 0.0), _ruler("full+int8", "n2", 0.0))))
    rows = quantized.compare(quantized.load_records([path, ruler]))
    by = {(r["model"], r["task"], r["method"], r["scheme"]): r for r in rows}
    needle = by[("smollm2-135m-instruct", "needle", "lazy", "int4")]
    assert (needle["items"], needle["found_dense"], needle["found_quantized"]) == (3, 2, 2)
    assert (needle["lost"], needle["gained"], needle["same_text"]) == (1, 1, pytest.approx(1 / 3))
    assert by[("smollm2-135m-instruct", "entity", "lazy", "int4")]["lost"] == 0
    gemma = by[("gemma3-270m", "niah_single_1", "full", "int8")]
    assert (gemma["length"], gemma["items"], gemma["found_dense"], gemma["lost"]) == (4096, 2, 1, 1)
    assert ("smollm2-135m-instruct", "needle", "full", "int4") not in by
    total = {(t["model"], t["method"]): t for t in quantized.totals(rows)}["smollm2-135m-instruct", "lazy"]
    assert (total["items"], total["lost"]) == (4, 1)
    text = quantized.markdown(rows)
    assert "| smollm2-135m-instruct | lazy | int4 | 4 | 3 | 3 | 1 | 1 | 33.3% |" in text


def test_items_that_differ_are_refused(tmp_path):
    path = tmp_path / "quant-eval-smollm2.jsonl"
    records = (_eval("lazy", "a", "x"), _eval("lazy+int8", "a", "x", prompt_tokens=9))
    path.write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(ValueError, match="differs between its dense and int8 records"):
        quantized.compare(quantized.load_records([path]))
