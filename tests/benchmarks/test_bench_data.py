"""Evaluation item builders (benchmarks/data.py) on the real installed data, with the tiny byte-level tokenizer."""

from __future__ import annotations

import pytest
from conftest import make_tiny_tokenizer
from pydantic import ValidationError

from benchmarks.data import (
    NEEDLE_QUESTION,
    QA_INSTRUCTION,
    SUMMARY_INSTRUCTION,
    SuiteSpec,
    build_suite,
    essay_prompt_ids,
    load_essays,
    load_hotpotqa,
    load_squad,
)

SPEC = SuiteSpec(
    needle_lengths=[1024, 2048],
    needle_depths=[0.0, 0.5, 1.0],
    multidoc_lengths=[8192],
    multidoc_items=2,
    single_lengths=[3072],
    single_items=2,
    summarize_lengths=[1024],
    summarize_items=2,
)


@pytest.fixture(scope="module")
def suite(tiny_tokenizer):
    return build_suite(tiny_tokenizer, SPEC)


def _text(tok, item) -> str:
    return tok.decode(item.prompt_ids)


def test_sources_are_the_installed_real_data():
    assert len(load_essays()) == 49
    assert len(load_hotpotqa()) > 1000 and {"question", "answer", "context"} <= set(load_hotpotqa()[0])
    assert len(load_squad()) > 10 and "paragraphs" in load_squad()[0]


def test_aclsum_papers_are_bodies_without_their_abstracts():
    from benchmarks.data import load_aclsum

    papers = load_aclsum()
    assert len(papers) == 250 and len({p["id"] for p in papers}) == 250
    for paper in papers[:20]:
        assert paper["abstract"] and paper["abstract"] not in paper["text"]
        assert paper["text"].startswith(paper["title"]) and "## " in paper["text"]


def test_counts_ids_and_lengths(suite):
    by_task = {t: [i for i in suite if i.task == t] for t in ("needle", "multidoc_qa", "single_qa", "summarize")}
    assert len(by_task["needle"]) == 2 * 3
    assert len(by_task["multidoc_qa"]) == 2
    assert len(by_task["single_qa"]) == 2
    assert len(by_task["summarize"]) == 2
    assert len({i.item_id for i in suite}) == len(suite)
    for item in suite:
        assert item.prompt_tokens <= item.target_tokens
    for item in by_task["needle"]:  # filled up to the target
        assert item.prompt_tokens >= item.target_tokens - 16
    for item in by_task["multidoc_qa"]:  # filled with whole paragraphs
        assert item.prompt_tokens >= 0.9 * item.target_tokens


def test_entity_needles_go_through_the_chat_template_and_score_by_code(suite, tiny_tokenizer):
    from benchmarks.metrics import task_score

    entity = [i for i in suite if i.task == "entity"]
    assert len(entity) == 2 * 2 * 2  # lengths x haystacks x names
    for item in entity:
        text = tiny_tokenizer.decode(item.prompt_ids)
        assert item.prompt_tokens <= item.target_tokens and text.startswith("<s>user\n")
        assert text.count(item.answers[0]) == 1 and item.meta["name"] in text.rsplit("Question:", 1)[1]
        assert task_score("entity", f"It is {item.answers[0]}.", item.answers) == 1.0
        assert task_score("entity", "It is 000000.", item.answers) == 0.0


def test_same_seed_same_items_other_seed_other_items(tiny_tokenizer, suite):
    again = build_suite(tiny_tokenizer, SPEC)
    assert [(i.item_id, i.prompt_ids, i.answers) for i in again] == [
        (i.item_id, i.prompt_ids, i.answers) for i in suite
    ]
    other = build_suite(tiny_tokenizer, SPEC.model_copy(update={"seed": 1, "tasks": ["needle"]}))
    assert [i.answers for i in other] != [i.answers for i in suite if i.task == "needle"]


def test_needle_is_inside_at_its_depth_and_asked_at_the_end(tiny_tokenizer, suite):
    for item in (i for i in suite if i.task == "needle"):
        text = _text(tiny_tokenizer, item)
        passkey = item.answers[0]
        assert len(passkey) == 6 and passkey.isdigit()
        assert text.count(passkey) == 2  # the needle sentence states it twice, nowhere else
        body = text[len("<s>user\n") : text.index(NEEDLE_QUESTION)]  # the haystack with the needle
        where = body.index(passkey) / len(body)
        assert abs(where - item.meta["depth"]) < 0.05 + 250 / len(body)  # snapped to a sentence boundary
        assert text.rstrip().endswith("assistant") and NEEDLE_QUESTION in text[-300:]
        assert text.startswith("<s>user\n")  # the chat template is applied


def test_multidoc_keeps_gold_paragraphs_and_pads_with_others(tiny_tokenizer, suite):
    data = {d["_id"]: d for d in load_hotpotqa()}
    for item in (i for i in suite if i.task == "multidoc_qa"):
        text = _text(tiny_tokenizer, item)
        record = data[item.meta["source_id"]]
        assert item.answers == [record["answer"]] and record["answer"].lower() not in ("yes", "no")
        for title in item.meta["gold_titles"]:
            assert f"Passage: {title}\n" in text
        own = {e[0] for e in record["context"]}
        titles = [line[len("Passage: ") :] for line in text.splitlines() if line.startswith("Passage: ")]
        assert any(t not in own for t in titles)  # padded with other questions' paragraphs
        assert text.rstrip().endswith("assistant") and record["question"].strip() in text[-400:]
        assert QA_INSTRUCTION in text


def test_single_qa_context_holds_the_answer(tiny_tokenizer, suite):
    for item in (i for i in suite if i.task == "single_qa"):
        text = _text(tiny_tokenizer, item)
        assert any(answer in text for answer in item.answers)
        assert item.meta["question"] in text[-400:]


def test_summarize_is_an_essay_prefix(tiny_tokenizer, suite):
    essays = load_essays()
    for item in (i for i in suite if i.task == "summarize"):
        text = _text(tiny_tokenizer, item)
        assert essays[item.meta["essay_index"]][:200] in text
        assert SUMMARY_INSTRUCTION in text[-200:]
        assert item.answers == []


@pytest.mark.parametrize("n", [300, 1000, 2500])
def test_timing_prompt_has_exact_length(tiny_tokenizer, n):
    ids = essay_prompt_ids(tiny_tokenizer, n)
    assert len(ids) == n
    assert SUMMARY_INSTRUCTION in tiny_tokenizer.decode(ids)
    with pytest.raises(ValueError, match="no room"):
        essay_prompt_ids(tiny_tokenizer, 10)


@pytest.mark.parametrize("n", [300, 2500])
def test_timing_prompt_of_a_base_model_is_plain_text_of_exact_length(n):
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = None  # a base model's tokenizer (Gemma 3 270M)
    ids = essay_prompt_ids(tokenizer, n)
    assert len(ids) == n
    assert ids[0] == tokenizer.bos_token_id
    text = tokenizer.decode(ids)
    assert SUMMARY_INSTRUCTION in text and load_essays()[0][:100] in text
    with pytest.raises(ValueError, match="no room"):
        essay_prompt_ids(tokenizer, 5)


def test_spec_rejects_bad_values():
    with pytest.raises(ValidationError, match=">= 256 tokens"):
        SuiteSpec(needle_lengths=[100])
    with pytest.raises(ValidationError, match="fractions in"):
        SuiteSpec(needle_depths=[1.5])
    with pytest.raises(ValidationError):
        SuiteSpec(tasks=["translate"])


def test_item_ids_are_unique_across_seeds(tiny_tokenizer, suite):
    """Results of several seeds can share one JSONL file (keyed by item id): seed 0 keeps the bare ids."""
    other = build_suite(tiny_tokenizer, SPEC.model_copy(update={"seed": 3}))
    assert len(other) == len(suite)
    assert not {i.item_id for i in other} & {i.item_id for i in suite}
    assert all(i.item_id.endswith("-s3") for i in other)
    assert suite[0].item_id == "needle-1024-d0.00-0"
