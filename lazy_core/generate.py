"""``LazyLLM``: generation with LazyLLM pruning on an unmodified Hugging Face model.

1. validate and left-align the batch; 2. prefill with progressive pruning (the first token comes from it); 3. decode
step by step with Aux Cache revival; 4. lay the output out like ``model.generate`` and report per-item stats.
The model object is left as it was: its attention implementation is switched only while a call runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from lazy_core.arch import model_parts
from lazy_core.attention import attention_hook
from lazy_core.config import LazyConfig
from lazy_core.continuous import ContinuousResult, SlotCounters, SlotLoop
from lazy_core.decoding import DecodingOptions, token_chooser
from lazy_core.engine import BatchState, LayerLoop
from lazy_core.rules import LogitRules
from lazy_core.scoring import TokenPruner
from lazy_core.stats import FlopModel, GenerateOutput, ItemStats

_OFF = LazyConfig.off()


class LazyLLM:
    """LazyLLM dynamic token pruning (Fu et al. 2024, arXiv 2407.14057) around a causal LM of a supported family."""

    def __init__(
        self,
        model: nn.Module,
        config: LazyConfig | None = None,
        pruner: TokenPruner | None = None,
        keep_state: bool = False,
    ) -> None:
        """``pruner`` overrides the method ``config.method`` names (any :class:`TokenPruner`); ``keep_state`` keeps
        the caches of the last call in ``self.last_state`` for inspection (tests, debugging)."""
        self.model = model
        self.pruner = pruner
        self.keep_state = keep_state
        self.last_state: BatchState | None = None
        self.parts = model_parts(model)
        self.config = config if config is not None else LazyConfig.default_for(model)
        if not isinstance(self.config, LazyConfig):
            raise TypeError(f"config must be a LazyConfig, got {type(self.config).__name__}; use LazyConfig(**dict)")
        self.config.check_depth(self.parts.num_layers)
        self.config.check_layers(self.parts.sliding_windows)
        self.flops = FlopModel.from_config(model.config)

    # ---- public API ----------------------------------------------------------------------------------------------

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        options: DecodingOptions | None = None,
        *,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        **option_kwargs: Any,
    ) -> GenerateOutput:
        """input_ids: [B, T] (left or right padded, see attention_mask [B, T]). Returns sequences [B, T + new] and
        per-item stats. ``options`` (:class:`DecodingOptions`) or its fields as keyword arguments (``max_new_tokens=``,
        ``do_sample=``, ...; they override ``options``) say how tokens are chosen. Generation of an item stops at any
        of ``eos_token_id`` (default: the model's generation config), and it is padded with ``pad_token_id`` after
        that."""
        options = _options(options, option_kwargs)
        max_new_tokens = options.max_new_tokens
        input_ids, mask = self._check_batch(input_ids, attention_mask, max_new_tokens)
        eos = self._eos_ids(eos_token_id)
        pad = self._pad_id(pad_token_id, eos)
        choose = token_chooser(options, self.parts.device)
        rules = LogitRules(input_ids, mask, max_new_tokens, eos, options.repetition_penalty,
                           options.no_repeat_ngram_size, options.min_new_tokens)
        new, state, times = self._run(input_ids, mask, max_new_tokens, choose, eos, pad,
                                      rules=rules if rules.active else None)
        sequences = torch.cat([input_ids, new], 1)
        return GenerateOutput(sequences=sequences, stats=self._stats(state, new, eos, pad, times))

    def generate_continuous(
        self,
        prompts: Sequence[torch.Tensor | Sequence[int]],
        options: DecodingOptions | None = None,
        *,
        slots: int = 4,
        max_held_tokens: int | None = None,
        stop_after: Sequence[int] | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        compile_step: str = "off",
        **option_kwargs: Any,
    ) -> ContinuousResult:
        """Generate for a stream of prompts with continuous batching (:mod:`lazy_core.continuous`): ``slots`` items
        decode at once, and an item that ends gives its slot to the next prompt. ``prompts``: 1-D token ids each, no
        padding; ``stop_after``: per prompt, its own limit of new tokens (within ``max_new_tokens``). Returns each
        prompt's output in input order, laid out as :meth:`generate` lays out that prompt alone (greedy: the same
        tokens), and how full the slots were. ``compile_step``: how the steps in which no item revives run
        (:data:`lazy_core.plain_step.COMPILE_MODES`; 'off' = eager; a compiled step gives the same tokens in fp32)."""
        counters = SlotCounters(slots)
        outputs: list[GenerateOutput | None] = [None] * len(prompts)
        for index, out in self.stream_continuous(prompts, options, slots=slots, max_held_tokens=max_held_tokens,
                                                 stop_after=stop_after, eos_token_id=eos_token_id,
                                                 pad_token_id=pad_token_id, counters=counters,
                                                 compile_step=compile_step, **option_kwargs):
            outputs[index] = out
        return ContinuousResult(outputs, counters)

    def stream_continuous(
        self,
        prompts: Sequence[torch.Tensor | Sequence[int]],
        options: DecodingOptions | None = None,
        *,
        slots: int = 4,
        max_held_tokens: int | None = None,
        stop_after: Sequence[int] | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        counters: SlotCounters | None = None,
        compile_step: str = "off",
        **option_kwargs: Any,
    ) -> Iterator[tuple[int, GenerateOutput]]:
        """:meth:`generate_continuous` as an iterator: (prompt index, output) as each item ends. ``counters``, if
        given, is filled in as the stream runs."""
        options = _options(options, option_kwargs)
        eos = self._eos_ids(eos_token_id)
        loop = SlotLoop(self, slots, max_held_tokens, compile_step)
        return loop.run(prompts, options, eos, self._pad_id(pad_token_id, eos), counters, stop_after)

    def prefill_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits [B, V] (float32) after the pruned prefill: what the first new token is chosen from."""
        captured: list[torch.Tensor] = []

        def choose(logits: torch.Tensor) -> torch.Tensor:
            captured.append(logits)
            return logits.argmax(-1)

        input_ids, mask = self._check_batch(input_ids, attention_mask, 1)
        self._run(input_ids, mask, 1, choose, eos=[], pad=0)
        return captured[0]

    def loglikelihood(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, continuation_ids: Sequence[Sequence[int]]
    ) -> list[float]:
        """Teacher-forced Σ log p(continuation | prompt) per item, through the same prefill + decode path (pruning and
        revival included): the score of a gold answer under this engine. continuation_ids: one token list per item."""
        if len(continuation_ids) != input_ids.shape[0]:
            raise ValueError(
                f"continuation_ids has {len(continuation_ids)} entries for a batch of {input_ids.shape[0]} prompts"
            )
        if any(len(c) == 0 for c in continuation_ids):
            raise ValueError("every continuation needs at least one token")
        steps = max(len(c) for c in continuation_ids)
        input_ids, mask = self._check_batch(input_ids, attention_mask, steps)
        device = self.parts.device
        forced = torch.full((len(continuation_ids), steps), -1, dtype=torch.long, device=device)
        for b, cont in enumerate(continuation_ids):
            forced[b, : len(cont)] = torch.as_tensor(list(cont), dtype=torch.long)
        total = torch.zeros(len(continuation_ids), dtype=torch.float64, device=device)
        step = 0

        def choose(logits: torch.Tensor) -> torch.Tensor:
            nonlocal step
            target = forced[:, step]
            logp = torch.log_softmax(logits.double(), -1).gather(1, target.clamp(min=0)[:, None])[:, 0]
            total.add_(torch.where(target >= 0, logp, torch.zeros_like(logp)))
            step += 1
            return target.clamp(min=0)

        lengths = torch.tensor([len(c) for c in continuation_ids], device=device)
        self._run(input_ids, mask, steps, choose, eos=[], pad=0, stop_after=lengths)
        return total.tolist()

    # ---- the loop ------------------------------------------------------------------------------------------------

    def _run(self, input_ids, mask, max_new_tokens, choose, eos, pad, stop_after=None, rules=None):
        """Returns new tokens [B, N], the batch state and (ttft_s, decode_s). ``rules`` (LogitRules) adjust each
        step's logits before ``choose`` and see every token appended."""
        if rules is not None:
            inner_choose = choose

            def choose(logits: torch.Tensor) -> torch.Tensor:
                return inner_choose(rules.apply(logits))
        device = self.parts.device
        lengths = mask.sum(1)
        left = _left_align(input_ids, mask, lengths, pad)
        state = BatchState(self.parts, lengths, capacity=int(lengths.max()) + max_new_tokens)
        eos_t = torch.tensor(list(eos), dtype=torch.long, device=device)
        with torch.inference_mode(), attention_hook(self.model) as inner:
            loop = self.prefill_loop(state, inner)
            start = time.perf_counter()
            token = choose(loop.prefill(state, left))
            finished = torch.isin(token, eos_t)
            if rules is not None:
                rules.record(token)
            _sync(device)
            ttft = time.perf_counter() - start
            generated = [token]
            for i in range(1, max_new_tokens):
                if stop_after is not None:
                    finished = finished | (stop_after <= i)
                if bool(finished.all()):
                    break
                feed = torch.where(finished, torch.full_like(token, pad), token)
                logits = loop.decode(state, feed, lengths + i - 1, ~finished, step=i)
                token = torch.where(finished, torch.full_like(token, pad), choose(logits))
                finished = finished | torch.isin(token, eos_t)
                if rules is not None:
                    rules.record(token)
                generated.append(token)
            _sync(device)
            decode = time.perf_counter() - start - ttft
        if self.keep_state:
            self.last_state = state
        return torch.stack(generated, 1), state, (ttft, decode)

    def prefill_loop(self, state: BatchState, inner: str) -> LayerLoop:
        """The loop that prefills ``state``'s items, each under its own schedule: ``state.prunes`` marks the items the
        schedule prunes, and a batch of prompts all too short to prune (``min_prompt_tokens``) runs the plain loop."""
        state.prunes = [self.config.prunes(n) for n in state.host_lengths]
        return LayerLoop(self.parts, self.config if any(state.prunes) else _OFF, inner, self.pruner)

    # ---- inputs --------------------------------------------------------------------------------------------------

    def _check_batch(self, input_ids, attention_mask, max_new_tokens):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int, torch.int32):
            raise ValueError("input_ids must be an integer torch.Tensor [B, T] (tokenizer(..., return_tensors='pt'))")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
            attention_mask = attention_mask[None] if isinstance(attention_mask, torch.Tensor) else attention_mask
        if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
            shape = tuple(input_ids.shape)
            raise ValueError(f"input_ids must be [B, T] with B, T >= 1, got shape {shape}: empty prompt?")
        device = self.parts.device
        input_ids = input_ids.to(device=device, dtype=torch.long)
        if attention_mask is None:
            mask = torch.ones_like(input_ids)
        else:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
                shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask
                raise ValueError(
                    f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {shape}; pass the "
                    "attention_mask the tokenizer returned with these input_ids"
                )
            mask = attention_mask.to(device=device, dtype=torch.long)
            if bool(((mask != 0) & (mask != 1)).any()):
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        lengths = mask.sum(1)
        if bool((lengths == 0).any()):
            empty = (lengths == 0).nonzero()[:, 0].tolist()
            raise ValueError(f"empty prompt at batch index {empty}: every item needs at least one token")
        # real tokens must be one contiguous run (left or right padding)
        first = mask.argmax(1)
        span = torch.arange(mask.shape[1], device=device)[None, :]
        contiguous = ((span >= first[:, None]) & (span < (first + lengths)[:, None])).long()
        if not torch.equal(contiguous, mask):
            raise ValueError("attention_mask has holes: each row must be one run of 1s (left or right padding)")
        vocab = self.parts.embed.weight.shape[0]
        real = input_ids[mask.bool()]
        if bool(((real < 0) | (real >= vocab)).any()):
            raise ValueError(f"input_ids hold ids outside the model's vocabulary [0, {vocab}): wrong tokenizer?")
        limit = self.parts.max_positions
        longest = int(lengths.max())
        if limit and longest > limit:
            raise ValueError(
                f"prompt of {longest} tokens is longer than the model's context of {limit} tokens; truncate it "
                "(e.g. keep its start and end) before calling generate"
            )
        if limit and longest + max_new_tokens > limit:
            raise ValueError(
                f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the model's context of {limit} "
                "tokens; shorten the prompt or lower max_new_tokens"
            )
        return input_ids, mask

    def _model_default(self, name: str):
        """``name`` from the model's generation config, else from its config, else None."""
        value = getattr(getattr(self.model, "generation_config", None), name, None)
        return value if value is not None else getattr(self.model.config, name, None)

    def _eos_ids(self, eos_token_id) -> list[int]:
        if eos_token_id is None:
            eos_token_id = self._model_default("eos_token_id")
        if eos_token_id is None:
            return []
        return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(e) for e in eos_token_id]

    def _pad_id(self, pad_token_id, eos: list[int]) -> int:
        if pad_token_id is None:
            pad_token_id = self._model_default("pad_token_id")
        if pad_token_id is None:
            pad_token_id = eos[0] if eos else 0
        return int(pad_token_id)

    # ---- stats ---------------------------------------------------------------------------------------------------

    def _stats(self, state: BatchState, new: torch.Tensor, eos: list[int], pad: int, times) -> list[ItemStats]:
        ttft, decode = times
        kv_bytes = state.cache.nbytes_per_item().tolist()
        aux_bytes = state.aux.nbytes_per_item().tolist()
        return [self.item_stats(state, b, _until_eos(row, eos), ttft, decode, kv_bytes[b], aux_bytes[b])
                for b, row in enumerate(new.tolist())]

    def item_stats(self, state: BatchState, b: int, count: int, ttft_s: float, decode_s: float, kv_bytes: int,
                   aux_bytes: int) -> ItemStats:
        """The stats of item ``b`` of ``state`` once it generated ``count`` tokens (its end-of-sequence included)."""
        num_layers = self.parts.num_layers
        n = state.host_lengths[b]
        kept = state.kept_per_layer[:, b].tolist()
        computed = int(state.cache.computed[:, b].sum())  # token-layers over the whole generation
        fed = n + count - 1  # the last new token is never fed back
        full = self.flops.prefill([n] * num_layers)
        lazy = self.flops.prefill(kept) + self.flops.score_pairs(float(state.score_pairs[b]))
        return ItemStats(
            prompt_tokens=n,
            new_tokens=count,
            ttft_s=ttft_s,
            decode_s=decode_s,
            pruned=any(k < n for k in kept),
            kept_per_layer=kept,
            computed_token_fraction=sum(kept) / (num_layers * n),
            computed_token_fraction_total=computed / (num_layers * fed),
            revived_tokens=int(state.revived[b]),
            est_speedup=full / lazy,
            kv_cache_bytes=int(kv_bytes),
            aux_cache_bytes=int(aux_bytes),
        )


def _until_eos(row: list[int], eos: list[int]) -> int:
    """Tokens of ``row`` up to and including its first end-of-sequence (all of them when it has none)."""
    for i, t in enumerate(row):
        if t in eos:
            return i + 1
    return len(row)


def _options(options: DecodingOptions | None, overrides: dict[str, Any]) -> DecodingOptions:
    """``options`` with the keyword arguments of ``generate`` applied (validated as DecodingOptions fields)."""
    unknown = sorted(set(overrides) - set(DecodingOptions.model_fields))
    if unknown:
        raise TypeError(
            f"generate() got unknown argument(s) {unknown}; decoding options are {sorted(DecodingOptions.model_fields)}"
        )
    if options is None:
        return DecodingOptions(**overrides)
    if not isinstance(options, DecodingOptions):
        raise TypeError(f"options must be a DecodingOptions, got {type(options).__name__}")
    return DecodingOptions(**{**options.model_dump(), **overrides}) if overrides else options


def _left_align(input_ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """[B, T] with each item's tokens moved to columns 0..n_b-1, cut to the longest item."""
    order = torch.sort(1 - mask, dim=1, stable=True).indices[:, : int(lengths.max())]
    left = input_ids.gather(1, order)
    span = torch.arange(left.shape[1], device=left.device)[None, :]
    return torch.where(span < lengths[:, None], left, torch.full_like(left, pad))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
