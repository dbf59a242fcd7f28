"""RULER items (benchmarks/ruler_tasks.py) on the real installed data, with the tiny byte-level tokenizer, and the
retention report of benchmarks/ruler.py on records written here."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import make_tiny_model

from benchmarks import ruler
from benchmarks.ruler_tasks import ENTITY_FACT, TASK_NAMES, build_item, build_items, score, task_configs, templates

LENGTH = 8192  # bytes = tokens with the tiny tokenizer; cwe's 30 repeats of 10 words need this much


@pytest.fixture(scope="module")
def items(tiny_tokenizer):
    return {task: build_item(tiny_tokenizer, task, LENGTH, 0, seed=0) for task in TASK_NAMES}


def _text(tok, item) -> str:
    return tok.decode(item.prompt_ids, skip_special_tokens=True)


def test_the_package_publishes_the_13_tasks_and_their_templates():
    configs = task_configs()
    assert set(TASK_NAMES) <= set(configs)
    assert {configs[t]["task"] for t in TASK_NAMES} <= set(templates())


@pytest.mark.parametrize("task", TASK_NAMES)
def test_each_task_fills_its_length_and_holds_its_answers(tiny_tokenizer, items, task):
    item = items[task]
    room = LENGTH - item.max_new_tokens
    assert len(item.prompt_ids) <= room
    assert len(item.prompt_ids) > 0.9 * room, "the haystack was sized by bisection: it fills the length"
    assert item.prompt_ids[0] == tiny_tokenizer.bos_token_id
    text = _text(tiny_tokenizer, item)
    assert item.answers and all(a in text for a in item.answers if task != "qa_2"), (task, item.answers)
    assert item.metric == ("part" if task.startswith("qa") else "all")


def test_niah_variants_follow_their_configs(tiny_tokenizer, items):
    single = _text(tiny_tokenizer, items["niah_single_1"])
    assert single.startswith("A special magic number is hidden") and single.endswith("provided text is")
    assert single.count("One of the special magic numbers for") == 1
    assert "The grass is green." in single  # the repeat haystack
    multikey = _text(tiny_tokenizer, items["niah_multikey_1"])
    assert multikey.count("One of the special magic numbers for") == 4 and len(items["niah_multikey_1"].answers) == 1
    assert len(items["niah_multivalue"].answers) == 4 and len(items["niah_multiquery"].answers) == 4
    assert re.search(r"for \S+, \S+, \S+, and \S+ mentioned", _text(tiny_tokenizer, items["niah_multiquery"]))
    uuid_item = items["niah_multikey_3"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid_item.answers[0])
    needles = _text(tiny_tokenizer, uuid_item).count("One of the special magic uuids for")
    assert needles > 10, "the 'needle' haystack is made of distractor needles"


def test_vt_chain_and_its_worked_example(tiny_tokenizer, items):
    item = items["vt"]
    text = _text(tiny_tokenizer, item)
    assert len(item.answers) == 5 and all(re.fullmatch(r"[A-Z]{5}", v) for v in item.answers)
    first, *rest = item.answers
    value = re.search(rf"VAR {first} = (\d{{5}})", text).group(1)
    for prev, var in zip(item.answers, rest, strict=False):
        assert f"VAR {var} = VAR {prev}" in text
    assert text.count("Memorize and track the chain(s)") == 2, "one worked example, then the task"
    assert text.endswith(f"5 variables are assgined the value {value}, they are: ")  # RULER's prefix ends in a space


def test_cwe_and_fwe_answers_are_the_most_frequent_words(tiny_tokenizer, items):
    cwe = _text(tiny_tokenizer, items["cwe"]).split("Question:")[-2]  # the task's list (after the worked example)
    counts = {w: len(re.findall(rf"\d+\. {re.escape(w)}\b", cwe)) for w in items["cwe"].answers}
    assert len(counts) == 10 and set(counts.values()) == {30}
    fwe_item = items["fwe"]
    words = _text(tiny_tokenizer, fwe_item).split("coded words. ", 1)[1].split("\nQuestion:")[0].split()
    ranked = sorted(set(words), key=words.count, reverse=True)
    assert ranked[0] == "..." and ranked[1:4] == fwe_item.answers


def test_items_are_seeded_per_task_length_and_index(tiny_tokenizer):
    a = build_item(tiny_tokenizer, "niah_single_2", 4096, 1, seed=3)
    assert a.prompt_ids == build_item(tiny_tokenizer, "niah_single_2", 4096, 1, seed=3).prompt_ids
    assert a.answers != build_item(tiny_tokenizer, "niah_single_2", 4096, 2, seed=3).answers
    assert a.id == "niah_single_2-4096-1-s3"
    listed = build_items(tiny_tokenizer, ["niah_single_1", "qa_1"], [2048], 2, seed=3)
    assert [i.id for i in listed] == ["niah_single_1-2048-0-s3", "qa_1-2048-0-s3", "niah_single_1-2048-1-s3",
                                      "qa_1-2048-1-s3"]
    # --ids: a run on some of them, the same items; an id the run does not build says how to reach it
    assert ruler.only_ids(listed, ["qa_1-2048-1-s3"]) == [listed[3]]
    with pytest.raises(SystemExit, match=r"\['qa_1-2048-5-s3'\] are not among the items.*raise --count"):
        ruler.only_ids(listed, ["qa_1-2048-1-s3", "qa_1-2048-5-s3"])


def test_entity_needles_share_a_haystack_and_ask_each_name(tiny_tokenizer):
    asked = [build_item(tiny_tokenizer, "entity_3", 4096, i) for i in range(4)]
    texts = [_text(tiny_tokenizer, it) for it in asked]
    bodies = [t.split("\n\nQuestion:")[0] for t in texts]
    assert bodies[0] == bodies[1] == bodies[2] != bodies[3]
    assert len({it.meta["query"] for it in asked[:3]}) == 3
    for item, text in zip(asked, texts, strict=True):
        assert text.count(item.answers[0]) == 1, "the code is written once"
        assert ENTITY_FACT.format(name=item.meta["query"], code=item.answers[0]) in text
        assert text.endswith(f"Answer: The access code that {item.meta['query']} chose for the archive is")
    assert sum(t.count("chose for the archive is") for t in bodies[:1]) == 3


def test_chat_prompts_use_the_chat_template(tiny_tokenizer):
    item = build_item(tiny_tokenizer, "niah_single_1", 4096, 0, chat=True)
    text = tiny_tokenizer.decode(item.prompt_ids)
    assert text.startswith("<|user|>") or "user" in text[:40]
    assert text.endswith("The special magic number for " + item.meta["query"] + " mentioned in the provided text is")


def test_bad_requests_name_the_fix(tiny_tokenizer):
    with pytest.raises(ValueError, match="unknown RULER task 'niah'.*entity_<k>"):
        build_item(tiny_tokenizer, "niah", 4096, 0)
    with pytest.raises(ValueError, match="cannot fit 200 tokens"):
        build_item(tiny_tokenizer, "niah_single_2", 200, 0)
    with pytest.raises(ValueError, match="'all' or 'part'"):
        score("any", "x", ["x"])


def test_score_is_rulers_string_match():
    assert score("all", "Codes: 12 and 34.", ["12", "34", "56"]) == pytest.approx(2 / 3)
    assert score("part", "It was the SONG dynasty", ["Yuan", "song"]) == 1.0
    assert score("part", "nothing", ["Yuan"]) == 0.0


def _record(task, index, method, value, ttft, model="m", length=4096):
    return {"model": model, "length": length, "task": task, "id": f"{task}-{length}-{index}", "method": method,
            "score": value, "ttft_s": ttft, "computed_token_fraction": 1.0 if method == "full" else 0.4}


def test_report_counts_retention_where_full_scores():
    records = []
    for i in range(2):
        records += [_record("niah_single_1", i, "full", 1.0, 10.0), _record("niah_single_1", i, "lazy", 1.0 - i, 4.0)]
        records += [_record("vt", i, "full", 0.6, 10.0), _record("vt", i, "lazy", 0.6, 5.0)]
        records += [_record("cwe", i, "full", 0.1, 10.0), _record("cwe", i, "lazy", 0.0, 5.0)]
    records.append(_record("qa_1", 0, "full", 1.0, 10.0))  # no lazy record: not compared
    s = ruler.summarize(records, "m", 4096, ["full", "lazy"])
    assert list(s["tasks"]) == ["niah_single_1", "vt", "cwe"]
    assert s["tasks"]["niah_single_1"]["lazy"] == 0.5 and s["tasks"]["niah_single_1"]["lazy_lost"] == 1
    assert s["tasks"]["niah_single_1"]["lazy_speedup"] == 2.5
    assert s["lazy"]["counted"] == 2 and s["lazy"]["retention"] == pytest.approx(0.75)
    assert s["lazy"]["worst"] == ("niah_single_1", 0.5)
    text = ruler.report_text(records, ["full", "lazy"])
    assert "| cwe | 2 | 10 | 0 | n/c |" in text and "not counted (full < 20 %): cwe (10)" in text
    # items resampled within each task: niah_single_1's two items give 0, 50 or 100 %, vt's always 100 %
    assert "retention 75.0 % (95 % bootstrap interval 50.0-100.0 %) averaged over the 2 tasks" in text
    assert "| niah_single_1 | 2 | 100 | 50 | 50 % [0, 100] | 1 |" in text
    assert "| vt | 2 | 60 | 60 | 100 % [100, 100] |" in text


def test_a_run_in_another_dtype_reports_as_one_more_method():
    """--dtype float32 records its methods as full@float32 (bf16, the job's dtype, the name alone), so the report
    sets the fp32 model beside the bf16 one like a candidate: what precision alone moves."""
    assert ruler.dtype_label("full", "bfloat16") == "full"
    assert ruler.dtype_label("full", "float32") == "full@float32"
    assert ruler.dtype_label("lazy+int8", "float32") == "lazy+int8@float32"
    records = []
    for i, (bf16, fp32) in enumerate([(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]):
        records += [_record("niah_single_1", i, "full", bf16, 10.0),
                    _record("niah_single_1", i, "full@float32", fp32, 40.0)]
    entry = ruler.summarize(records, "m", 4096, ["full", "full@float32"])["tasks"]["niah_single_1"]
    assert entry["full@float32_lost"] == entry["full@float32_gained"] == 1
    assert entry["full@float32_speedup"] == 0.25
    assert "| niah_single_1 | 4 | 75 | 75 | 100 % [" in ruler.report_text(records, ["full", "full@float32"])
    assert "| m | RULER 13 | 4096 | 0 | full@float32 | 4 | 75.0 | 75.0 | 1 | 1 |" in ruler.curve_text(records)
    # within fp32: its own methods against its own full model; records without a dtype are bf16 ones
    for r in records:
        r["dtype"] = "float32" if r["method"].endswith("@float32") else "bfloat16"
    records += [{**_record("niah_single_1", i, "lazy@float32", 1.0, 20.0), "dtype": "float32"} for i in range(4)]
    fp32 = ruler.within_dtype(records, "float32")
    assert {r["method"] for r in fp32} == {"full", "lazy"} and len(fp32) == 8
    assert ruler.summarize(fp32, "m", 4096, ["full", "lazy"])["tasks"]["niah_single_1"]["lazy_gained"] == 1
    assert len(ruler.within_dtype(records, "bfloat16")) == 4


def test_methods_resolve_and_reject_unknown_names():
    model = make_tiny_model("llama")
    assert not ruler.method_config("full", model).enabled
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        ruler.method_config("fast", model)
    # the candidate that became the default names the same config as lazy; the others stay as they ran
    assert ruler.method_config("mid17", 30) == ruler.method_config("lazy", 30)
    wide = ruler.method_config("first63_sink4", 30)
    assert wide.pool_kernels == [63, 31, 31] and wide.keep_head == 4 and wide.prune_layers == [7, 17, 21]
    assert wide.decode_pool_kernel is None
    narrow_revivals = ruler.method_config("first63_sink4_dec31", 30)
    assert narrow_revivals == wide.model_copy(update={"decode_pool_kernel": 31})


def test_measured_reads_every_file_a_run_resumes_from(tmp_path):
    """--measured-in: a new round's file skips the full model's records of an earlier round's file."""
    earlier, new = tmp_path / "round1.jsonl", tmp_path / "round2.jsonl"
    earlier.write_text("\n".join(json.dumps(r) for r in [_record("niah_single_1", 0, "full", 1.0, 10.0),
                                                         _record("niah_single_1", 1, "full", 0.0, 10.0)]) + "\n")
    new.write_text(json.dumps(_record("niah_single_1", 0, "cand", 1.0, 4.0)) + "\n")
    assert ruler.measured(new) == {("m", "niah_single_1-4096-0", "cand")}
    assert ruler.measured(new, earlier, tmp_path / "missing.jsonl") == {
        ("m", "niah_single_1-4096-0", "cand"), ("m", "niah_single_1-4096-0", "full"),
        ("m", "niah_single_1-4096-1", "full")}


def test_curve_lists_every_method_against_full_per_family():
    records = [_record("niah_single_1", 0, "full", 1.0, 10.0), _record("niah_single_1", 0, "lazy", 0.0, 4.0),
               _record("niah_single_1", 0, "win32", 1.0, 5.0), _record("entity_3", 0, "full", 1.0, 8.0),
               _record("entity_3", 0, "lazy", 1.0, 4.0), _record("entity_3", 1, "lazy", 1.0, 4.0)]
    for r in records[:2]:
        r["machine"] = {"torch_threads": 2}
    records[2]["machine"] = {"torch_threads": 1}  # win32 ran at 1 thread against full's 2: the table says so
    lines = ruler.curve_text(records).splitlines()
    assert lines[2:] == [
        "| m | entity_3 | 4096 | 0 | lazy | 1 | 100.0 | 100.0 | 0 | 0 | 100.0 % | 2.00 | 0.40 | ? |",
        "| m | RULER 13 | 4096 | 0 | lazy | 1 | 100.0 | 0.0 | 1 | 0 | 0.0 % | 2.50 | 0.40 | 2 |",
        "| m | RULER 13 | 4096 | 0 | win32 | 1 | 100.0 | 100.0 | 0 | 0 | 100.0 % | 2.00 | 0.40 | 2 / 1 |",
    ]


def test_retention_intervals_bootstrap_items_within_tasks():
    from benchmarks.ruler import retention_intervals

    kept = {"a": [(1.0, 1.0)] * 20, "b": [(1.0, 1.0)] * 10 + [(0.0, 0.0)] * 10}
    overall, per_task = retention_intervals(kept, reps=200)
    assert overall == (1.0, 1.0) and per_task == {"a": (1.0, 1.0), "b": (1.0, 1.0)}
    lost = {"a": [(1.0, 1.0)] * 18 + [(1.0, 0.0)] * 2}  # 2 of 20 lost: retention 90 %
    overall, per_task = retention_intervals(lost, reps=500)
    assert overall == per_task["a"] and overall[0] < 0.9 < overall[1] <= 1.0
    assert retention_intervals(lost, reps=500) == retention_intervals(lost, reps=500)  # seeded


def test_loss_analysis_finds_answers_and_what_each_layer_holds(tiny_tokenizer):
    """benchmarks.ruler_losses: an answer's token positions in the prompt, and a layer's held count of them."""
    from types import SimpleNamespace

    from benchmarks.ruler_losses import answer_positions, held

    prompt = tiny_tokenizer("The code for Ann is 4711. Other words follow here.")["input_ids"]
    where = answer_positions(tiny_tokenizer, prompt, ["4711", "9999"])
    assert where["9999"] == [] and where["4711"]
    n = len(where["4711"])
    assert tiny_tokenizer.decode([prompt[p] for p in where["4711"]]).strip() == "4711"
    positions = torch.arange(len(prompt))[None]
    valid = torch.ones_like(positions, dtype=torch.bool)
    valid[0, where["4711"][0]] = False  # the layer dropped the answer's first token
    layer = SimpleNamespace(positions=positions, valid=valid, length=len(prompt))
    state = SimpleNamespace(cache=SimpleNamespace(layers=[layer]))
    assert held(state, 0, where["4711"]) == n - 1


def test_bound_strings_name_the_asked_key_and_the_values_written_instead():
    """ruler_losses --bound: the asked key, and the numbers / UUIDs the output wrote that stand in the prompt (not the
    answer, not a number the prompt lacks)."""
    from benchmarks.ruler_losses import bound_strings
    from benchmarks.ruler_tasks import RulerItem

    prompt = ("One of the special magic numbers for mighty-shortwave is: 8790733. One of the special magic numbers "
              "for other-key is: 1700939. A uuid: 3b04c52d-2e9f-44b7-b67c-03ba6270f965.")
    item = RulerItem("niah_multikey_2", 4096, 3, 0, [], ["8790733"], "all", 64, {"query": "mighty-shortwave"})
    written = ": 1700939, 8790733, 5555555 and 3b04c52d-2e9f-44b7-b67c-03ba6270f965"
    assert bound_strings(item, written, prompt) == {"mighty-shortwave": "key", "1700939": "written",
                                                    "3b04c52d-2e9f-44b7-b67c-03ba6270f965": "written"}
    no_key = RulerItem("fwe", 4096, 0, 0, [], ["a"], "part", 64, {"query": 3})
    assert bound_strings(no_key, "nothing", prompt) == {}


def test_layer_profile_ranks_the_answer_at_every_layer(tiny_tokenizer):
    """benchmarks.ruler_losses.layer_profile: per answer standing in the prompt, its worst rank share at every prunable
    layer (lazy_core.profile); an answer not in the prompt is left out; the table counts per share."""
    from types import SimpleNamespace

    from benchmarks.ruler_losses import layer_profile, profile_table
    from lazy_core import LazyConfig
    from lazy_core.profile import answer_positions, worst_rank_shares

    model = make_tiny_model("llama", num_layers=6).float()
    config = LazyConfig(prune_layers=[2], keep_ratios=[0.5], min_keep_tokens=4, query_window=4)
    text = "Filler words here and there. The code for Ann is 4711. More filler follows, then a question: Ann?"
    item = SimpleNamespace(id="x-1-0", task="niah_single_1", prompt_ids=tiny_tokenizer(text)["input_ids"],
                           answers=["4711", "not there"])
    (prof,) = layer_profile(model, tiny_tokenizer, config, [item])
    shares = prof["worst_rank_share"]
    assert set(shares) == {"4711"} and sorted(shares["4711"]) == [0, 1, 2, 3, 4]
    positions = answer_positions(tiny_tokenizer, item.prompt_ids, "4711")
    assert shares["4711"] == worst_rank_shares(model, config, item.prompt_ids, [positions])[0]
    table = profile_table([prof, prof], shares=(1.01,))
    assert table.count("| 2/2 |") == 5  # every answer ranks below the whole prompt, at each of the 5 layers


def test_gentle_merge_keeps_the_larger_ratio_where_stages_meet():
    """On Gemma 3 270M's layout the middle and last stages meet at layer 11: the default keeps 10 % there, the
    candidate 20 %; on a model whose stages do not meet it is the default."""
    from transformers import Gemma3TextConfig

    gemma = Gemma3TextConfig(num_hidden_layers=18, sliding_window=512)
    default, gentle = ruler.method_config("mid17", gemma), ruler.method_config("gentle_merge", gemma)
    assert default.prune_layers == gentle.prune_layers == [5, 11]
    assert default.keep_ratios == [0.4, 0.1] and gentle.keep_ratios == [0.4, 0.2]
    assert gentle == default.model_copy(update={"keep_ratios": [0.4, 0.2]})
    assert ruler.method_config("gentle_merge", 30) == ruler.method_config("mid17", 30)


def test_first_stage_remedies_change_the_first_stage_of_gentle_merge_only():
    """first80 keeps 80 % at gentle_merge's first pruning layer, late_start drops that stage (Gemma 3 270M: layer 11
    keeping 20 %); every other field as gentle_merge's."""
    from transformers import Gemma3TextConfig

    gemma = Gemma3TextConfig(num_hidden_layers=18, sliding_window=512)
    gentle = ruler.method_config("gentle_merge", gemma)
    first80, late = ruler.method_config("first80", gemma), ruler.method_config("late_start", gemma)
    assert (first80.prune_layers, first80.keep_ratios) == ([5, 11], [0.8, 0.2])
    assert (late.prune_layers, late.keep_ratios) == ([11], [0.2])
    for cfg in (first80, late):
        assert cfg.model_copy(update={"prune_layers": [5, 11], "keep_ratios": [0.4, 0.2]}) == gentle
    assert ruler.method_config("late_start", 30).prune_layers == [17, 21]
