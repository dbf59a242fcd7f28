"""pipeline.config: PipelineConfig from a dict, YAML or an object, its validation, the config hash (every setting is
hashed unless its class declares it run-only, and old outputs keep their hash), and the decoding options the settings
inherit and hand to the worker whole."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from lazy_core import DecodingOptions, LazyConfig
from pipeline import PipelineConfig, RayDataConfig
from pipeline.config import GenerationSettings
from pipeline.resources import WorkerPlan, worker_spec


def test_config_from_dict_yaml_and_object_agree(tmp_path):
    fields = {"input": "in/", "output": "out/", "task": "qa", "max_new_tokens": 8, "lazy": {"prune_layers": [1],
              "keep_ratios": [0.5]}, "passthrough_columns": ["title"]}
    yaml_path = tmp_path / "cfg.yaml"
    import yaml

    yaml_path.write_text(yaml.safe_dump(fields))
    a = PipelineConfig.from_any(fields)
    b = PipelineConfig.from_any(str(yaml_path))
    c = PipelineConfig.from_any(a)
    assert a == b == c
    assert isinstance(a.lazy, LazyConfig) and a.lazy.prune_layers == [1]
    assert a.required_columns == ["id", "text", "question", "title"]
    assert PipelineConfig.from_yaml(yaml_path, max_new_tokens=3, model=None).max_new_tokens == 3


def test_config_hash_tracks_outputs_not_parallelism():
    base = PipelineConfig(input="a", output="b")
    assert base.config_hash == PipelineConfig(input="x", output="y", num_workers=4, max_batch_size=2).config_hash
    assert base.config_hash != PipelineConfig(input="a", output="b", max_new_tokens=65).config_hash
    assert base.config_hash != PipelineConfig(input="a", output="b", lazy="off").config_hash
    assert base.config_hash != PipelineConfig(input="a", output="b", task="Summarize: {text}").config_hash


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": "translate"}, "template string containing '{text}'"),
        ({"task": "Use {text} and {title}"}, "unknown fields ['title']"),
        ({"truncate": "left"}, "truncate"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"baseline_sample_rate": 1.5}, "baseline_sample_rate"),
        ({"passthrough_columns": ["status"]}, "collide with output columns"),
        ({"lazy": {"prune_layers": [1], "keep_ratios": [2.0]}}, "keep_ratios must lie in (0, 1]"),
        ({"device": "tpu"}, "device must be"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_config_rejects_bad_fields(fields, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace("{", r"\{").replace("}", r"\}")):
        PipelineConfig(input="a", output="b", **fields)


def test_config_missing_yaml_says_what():
    with pytest.raises(FileNotFoundError, match="not found"):
        PipelineConfig.from_any("/nonexistent/cfg.yaml")


# ---- the config hash: every field hashed unless run-only -------------------------------------------------------------


BASE = {"input": "in", "output": "out"}
# a value other than the default for every field of PipelineConfig and RayDataConfig
OTHER: dict[str, Any] = {
    "max_new_tokens": 7, "do_sample": True, "temperature": 0.5, "top_p": 0.9, "seed": 5, "repetition_penalty": 1.2,
    "no_repeat_ngram_size": 3, "min_new_tokens": 2, "model": "elsewhere", "task": "qa", "id_column": "key",
    "text_column": "body", "question_column": "q", "lazy": LazyConfig(prune_layers=[1], keep_ratios=[0.5]),
    "fallback_on_empty": False, "chat_template": False, "system_prompt": "be brief", "baseline_sample_rate": 0.5,
    "max_prompt_tokens": 1024, "truncate": "error", "max_text_chars": 99, "dtype": "float32", "quantize": "int8",
    "max_batch_tokens": 99, "max_batch_size": 9, "batching": "static", "stream_batches": 2, "num_workers": 3,
    "cpus_per_worker": 2, "device": "cpu", "compile_step": "default", "gpu_memory_share": 0.5,
    "input": "in2", "output": "out2", "passthrough_columns": ["title"], "max_in_flight": 4, "max_retries": 5,
    "max_restarts": 7, "batch_timeout_s": 5.0, "overwrite": True, "progress": False, "batch_size": 3,
}


@pytest.mark.parametrize("cls", [PipelineConfig, RayDataConfig])
def test_every_field_is_hashed_unless_run_only(cls):
    base = {**BASE} if cls is PipelineConfig else {}
    assert set(cls.model_fields) <= set(OTHER), "give the new field a value in OTHER"
    reference = cls(**base).config_hash
    for name in cls.model_fields:
        changed = cls(**{**base, name: OTHER[name]}).config_hash
        if name in cls.RUN_ONLY:
            assert changed == reference, f"{name} is run-only but changes the hash"
        else:
            assert changed != reference, f"{name} changes what a row holds but not the hash"
    assert cls.RUN_ONLY <= set(cls.model_fields), "RUN_ONLY names a field that does not exist"


def test_a_new_field_is_hashed_unless_declared_run_only():
    class WithKnob(PipelineConfig):
        knob: int = 0

    class WithRunKnob(PipelineConfig):
        RUN_ONLY = PipelineConfig.RUN_ONLY | {"knob"}
        knob: int = 0

    assert WithKnob(**BASE, knob=1).config_hash != WithKnob(**BASE).config_hash
    assert WithRunKnob(**BASE, knob=1).config_hash == WithRunKnob(**BASE).config_hash


def test_hashes_of_earlier_outputs_are_unchanged():
    # the hashes these settings had before the decoding options were one model: an output directory written then
    # resumes, not "finished with a different config hash". Those outputs were not quantized (quantize="none"); the
    # default since is "auto", whose outputs differ, so it hashes apart (such a directory needs --overwrite)
    unquantized = {**BASE, "quantize": "none"}
    assert PipelineConfig(**unquantized).config_hash == "4b88cb3ab5b72adc"
    assert PipelineConfig(**unquantized, lazy="off", max_new_tokens=128, seed=3, passthrough_columns=["x"],
                          repetition_penalty=1.1, do_sample=True).config_hash == "7e355d2d389688df"
    assert PipelineConfig(**BASE).config_hash not in ("4b88cb3ab5b72adc",
                                                      PipelineConfig(**BASE, quantize="int4").config_hash)
    assert RayDataConfig().config_hash == PipelineConfig(**BASE).config_hash  # same rows, same hash
    assert RayDataConfig(quantize="none").config_hash == "4b88cb3ab5b72adc"
    assert issubclass(RayDataConfig, GenerationSettings)


# ---- the decoding options --------------------------------------------------------------------------------------------


def test_settings_inherit_every_option_and_the_worker_gets_them_whole():
    assert set(DecodingOptions.model_fields) <= set(PipelineConfig.model_fields)
    cfg = PipelineConfig(input="in", output="out", max_new_tokens=9, do_sample=True, top_p=0.5, seed=4,
                         min_new_tokens=2, lazy=LazyConfig(prune_layers=[1], keep_ratios=[0.5]))
    assert cfg.decoding == DecodingOptions(max_new_tokens=9, do_sample=True, top_p=0.5, seed=4, min_new_tokens=2)
    spec = worker_spec(cfg, WorkerPlan(workers=1, use_gpu=False, cpus_per_worker=2))
    assert spec.decoding == cfg.decoding and spec.lazy is cfg.lazy and spec.num_threads == 2


def test_gpu_workers_plan_their_slots_unless_the_run_sets_them():
    """Left unset, GPU workers size their slots (and held-token budget) from their memory; a CPU worker, or a run
    that sets max_batch_size / max_batch_tokens, gets those values."""
    gpu, cpu = WorkerPlan(workers=1, use_gpu=True, cpus_per_worker=1), WorkerPlan(workers=1, use_gpu=False,
                                                                                    cpus_per_worker=1)
    unset = PipelineConfig(**BASE)
    spec = worker_spec(unset, gpu)
    assert spec.slots is None and spec.max_held_tokens is None
    assert (spec.prompt_tokens, spec.memory_share) == (unset.max_prompt_tokens, unset.gpu_memory_share)
    assert worker_spec(unset, cpu).slots == unset.max_batch_size == 4
    assert worker_spec(unset, cpu).max_held_tokens == unset.max_batch_tokens
    fixed = worker_spec(PipelineConfig(**BASE, max_batch_size=16, max_batch_tokens=999), gpu)
    assert (fixed.slots, fixed.max_held_tokens) == (16, 999)
    budget_only = worker_spec(PipelineConfig(**BASE, max_batch_tokens=999), gpu)
    assert (budget_only.slots, budget_only.max_held_tokens) == (None, 999)


def test_tasks_are_planned_with_the_workers_slots():
    from pipeline.driver import _with_worker_slots

    cfg = PipelineConfig(**BASE)
    planned = _with_worker_slots(cfg, [{"slots": 64, "max_held_tokens": 200_000, "slots_reason": "cuda: ..."}])
    assert (planned.max_batch_size, planned.max_batch_tokens) == (64, 200_000)
    assert planned.config_hash == cfg.config_hash  # run-only fields
    assert _with_worker_slots(cfg, []) is cfg
