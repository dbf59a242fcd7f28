"""``calibrate``: choose a LazyLLM schedule for a model from the user's own sample prompts.

The paper (Fu et al. 2024, §4) tunes where and how much to prune per model by hand. Here the search is automatic:
candidate schedules are tried in order of their FLOP-model speedup (fastest first), each on every sample with greedy
decoding, and the first whose score stays within ``max_drop`` of the full model's is returned — so the result is the
fastest candidate that keeps the quality, measured on the user's data. Deterministic: greedy decoding, a fixed
candidate order, ties broken by that order.

Where to prune: the placements of ``PLACEMENTS``, and, when samples' references stand in their prompts (extractive
answers), the same schedules with each pruning layer moved to the nearby layer whose attention ranks those answers
high enough to keep them (:mod:`lazy_core.profile`; the evidence the default's placement was chosen on, BENCHMARKS.md
"Why the default loses facts"): one extra prefill per such sample. Each schedule also without its first stage (a
later start: Gemma 3 270M at 8K needs the whole prompt past its first pruning layer, BENCHMARKS.md "A later first
stage").

Score of one sample: word-level F1 (lower case, no punctuation or articles) of the generated text against the sample's
reference when given, else against the full model's own output (the full model then scores 1.0 by definition).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lazy_core.arch import model_depth, place_schedule
from lazy_core.config import PLACEMENTS, LazyConfig
from lazy_core.generate import LazyLLM
from lazy_core.profile import answer_positions, profiled_layers, worst_rank_shares
from lazy_core.stats import FlopModel

# where to prune (lazy_core.config.PLACEMENTS: fractions of the depth) x how much to keep (cumulative ratios)
KEEP_RATIOS: tuple[tuple[float, ...], ...] = (
    (0.8, 0.2, 0.1),  # a gentle first stage (Gemma 3 270M at 8K: BENCHMARKS.md "A later first stage")
    (0.5, 0.3, 0.2),
    (0.4, 0.2, 0.1),
    (0.3, 0.1, 0.05),
    (0.2, 0.07, 0.03),
)


@dataclass(frozen=True)
class Sample:
    """One calibration prompt (token ids, exactly as the model will see it) and an optional reference answer."""

    prompt_ids: list[int]
    reference: str | None = None


@dataclass
class CandidateResult:
    """How one schedule did on the samples."""

    config: LazyConfig
    predicted_speedup: float  # FLOP model from the schedule's keep budgets (what the search ranks by)
    est_speedup: float = math.nan  # mean of the engine's per-item est_speedup (scoring cost included)
    computed_token_fraction: float = math.nan
    score: float = math.nan  # mean sample score
    drop: float = math.nan  # full score - this score
    outputs: list[str] = field(default_factory=list)


@dataclass
class CalibrationResult:
    """The chosen config and every candidate that was run (fastest first), plus the full model's reference run."""

    config: LazyConfig
    full: CandidateResult
    tried: list[CandidateResult]
    answers_profiled: int = 0  # samples whose reference stood in the prompt: the layers were also placed by them


def candidate_schedules(model_or_num_layers: Any, answer_shares: Sequence[dict[int, float]] = ()) -> list[LazyConfig]:
    """The default search space for a model (or its config, or a depth): ``LazyConfig.default_for`` itself (on a
    hybrid model by prompt length: ``later_start_tokens``), then, for every prompt alike, its schedule and
    ``PLACEMENTS`` x ``KEEP_RATIOS`` with its scoring (query window, max over heads/queries, pooling, kept tail),
    plus the paper's own scoring (``LazyConfig.paper``). Every schedule is placed by ``place_schedule``, as the
    default is (on a hybrid model: at the nearest global layers, stages that meet keeping the larger ratio), and each
    of two or more stages also comes without its first (``LazyConfig.later_start``: slower, for models that need the
    whole prompt past their first pruning layer). With ``answer_shares`` (per answer standing in a sample's prompt,
    :func:`~lazy_core.profile.worst_rank_shares` under the default's scoring), each of those schedules also comes
    with its layers moved to where the model's attention ranks the answers high enough to keep them
    (:func:`~lazy_core.profile.profiled_layers`). Duplicates (shallow models, or placements that snap to the same
    layers) are dropped; order is deterministic."""
    default = LazyConfig.default_for(model_or_num_layers)
    base = default.model_copy(update={"later_start_tokens": None})  # every prompt takes each candidate's stages
    out: list[LazyConfig] = []
    if model_depth(model_or_num_layers) >= 4:
        out.append(base)
        for fractions in PLACEMENTS.values():
            for ratios in KEEP_RATIOS:
                layers, kept = place_schedule(model_or_num_layers, fractions, ratios, merge=max)
                out.append(base.rescheduled(layers, kept))
        # a later first stage: where the model needs the whole prompt deeper than the first pruning layer (Gemma 3
        # 270M at 8K loses single needles it holds at every layer to its first stage: BENCHMARKS.md "A later first
        # stage")
        out += [cfg.later_start() for cfg in out if len(cfg.prune_layers) >= 2]
        if answer_shares:
            out += [cfg.model_copy(update={"prune_layers": profiled_layers(cfg, model_or_num_layers, answer_shares)})
                    for cfg in out]
        out.append(LazyConfig.paper(model_or_num_layers))
        out.insert(0, default)  # on a hybrid model the default by length: long samples skip its first stage
    unique: list[LazyConfig] = []
    for cfg in out:
        if cfg not in unique:
            unique.append(cfg)
    return unique


def predicted_speedup(config: LazyConfig, flops: FlopModel, num_layers: int, prompt_tokens: Sequence[int]) -> float:
    """Full-prefill FLOPs / this schedule's prefill FLOPs, summed over prompts, from the keep budgets alone."""
    full = sum(flops.prefill([n] * num_layers) for n in prompt_tokens)
    lazy = sum(flops.prefill(config.kept_per_layer(num_layers, n)) for n in prompt_tokens)
    return full / lazy


def calibrate(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Any],
    max_drop: float = 0.01,
    candidates: Sequence[LazyConfig] | None = None,
    max_new_tokens: int = 16,
) -> LazyConfig:
    """The fastest schedule (by FLOP-model speedup) whose mean score is at most ``max_drop`` below the full
    model's on ``samples``; ``LazyConfig.off()`` if none qualifies.

    samples: prompts as strings (tokenized as given: apply the chat template first if the model will see one),
    token-id lists, or mappings ``{"prompt": str | list[int], "reference": str | None}``. candidates: schedules to
    try (default: ``candidate_schedules(model)``). See ``calibrate_report`` for every candidate's numbers."""
    return calibrate_report(model, tokenizer, samples, max_drop, candidates, max_new_tokens).config


def calibrate_report(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Any],
    max_drop: float = 0.01,
    candidates: Sequence[LazyConfig] | None = None,
    max_new_tokens: int = 16,
) -> CalibrationResult:
    """``calibrate`` with the numbers: the full run, then candidates fastest first until one qualifies."""
    if not (0.0 <= max_drop <= 1.0) or math.isnan(max_drop):
        raise ValueError(f"max_drop is a score difference in [0, 1] (0.01 = one point), got {max_drop}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    parsed = _parse_samples(tokenizer, samples)
    shares = _answer_shares(model, tokenizer, parsed) if candidates is None else []
    cands = list(candidates) if candidates is not None else candidate_schedules(model, shares)
    for i, cfg in enumerate(cands):
        if not isinstance(cfg, LazyConfig):
            raise TypeError(f"candidates[{i}] is a {type(cfg).__name__}, expected a LazyConfig")
    num_layers = model.config.num_hidden_layers
    flops = FlopModel.from_config(model.config)
    lengths = [len(s.prompt_ids) for s in parsed]

    full = CandidateResult(config=LazyConfig.off(), predicted_speedup=1.0)
    _run(model, tokenizer, full, parsed, None, max_new_tokens)
    targets = [s.reference if s.reference is not None else out for s, out in zip(parsed, full.outputs, strict=True)]
    full.score = _mean([_word_f1(o, t) for o, t in zip(full.outputs, targets, strict=True)])
    full.drop = 0.0

    ranked = sorted(
        (CandidateResult(config=c, predicted_speedup=predicted_speedup(c, flops, num_layers, lengths)) for c in cands),
        key=lambda r: -r.predicted_speedup,  # stable: equal speedups keep the caller's order
    )
    tried: list[CandidateResult] = []
    chosen = LazyConfig.off()
    for result in ranked:
        if result.predicted_speedup <= 1.0:
            break  # nothing faster than the full model is left
        result.config.check_depth(num_layers)
        _run(model, tokenizer, result, parsed, targets, max_new_tokens)
        result.drop = full.score - result.score
        tried.append(result)
        if result.drop <= max_drop + 1e-12:
            chosen = result.config
            break
    return CalibrationResult(config=chosen, full=full, tried=tried, answers_profiled=len(shares))


# ---- internals -----------------------------------------------------------------------------------------------------


def _parse_samples(tokenizer: Any, samples: Sequence[Any]) -> list[Sample]:
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence) or len(samples) == 0:
        raise ValueError("samples must be a non-empty list of prompts (str, token ids, or {'prompt', 'reference'})")
    parsed = []
    for i, sample in enumerate(samples):
        reference = None
        prompt = sample
        if isinstance(sample, Mapping):
            if "prompt" not in sample:
                raise ValueError(
                    f"samples[{i}] has keys {sorted(sample)}; it needs 'prompt' (and may have 'reference')"
                )
            prompt, reference = sample["prompt"], sample.get("reference")
            if reference is not None and not isinstance(reference, str):
                raise ValueError(f"samples[{i}]['reference'] must be a string or None, got {type(reference).__name__}")
        if isinstance(prompt, str):
            ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        elif isinstance(prompt, Sequence) and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
        else:
            raise ValueError(f"samples[{i}]: a prompt is a string or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise ValueError(f"samples[{i}] is an empty prompt")
        parsed.append(Sample(prompt_ids=ids, reference=reference))
    return parsed


def _answer_shares(model: Any, tokenizer: Any, samples: list[Sample]) -> list[dict[int, float]]:
    """Per sample whose reference stands in its prompt: each layer's worst rank share of the reference's tokens under
    the default's scoring (lazy_core.profile)."""
    if model_depth(model) < 4:
        return []
    config = LazyConfig.default_for(model)
    shares = []
    for sample in samples:
        positions = answer_positions(tokenizer, sample.prompt_ids, sample.reference.strip()) if sample.reference else []
        if positions:
            shares += worst_rank_shares(model, config, sample.prompt_ids, [positions])
    return shares


def _run(
    model: Any,
    tokenizer: Any,
    result: CandidateResult,
    samples: list[Sample],
    targets: list[str] | None,
    max_new_tokens: int,
) -> None:
    lazy = LazyLLM(model, result.config)
    est, frac = [], []
    for sample in samples:
        ids = torch.tensor([sample.prompt_ids])  # [1, T]
        out = lazy.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        new = out.sequences[0, ids.shape[1] :].tolist()
        result.outputs.append(tokenizer.decode(new, skip_special_tokens=True))
        est.append(out.stats[0].est_speedup)
        frac.append(out.stats[0].computed_token_fraction)
    result.est_speedup = _mean(est)
    result.computed_token_fraction = _mean(frac)
    if targets is not None:
        result.score = _mean([_word_f1(o, t) for o, t in zip(result.outputs, targets, strict=True)])


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def _words(text: str) -> list[str]:
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def _word_f1(prediction: str, target: str) -> float:
    """Word-overlap F1 after SQuAD-style normalisation; two empty texts agree (1.0)."""
    pred, gold = _words(prediction), _words(target)
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
