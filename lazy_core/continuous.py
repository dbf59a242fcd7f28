"""Continuous batching with LazyLLM pruning: a fixed number of slots, and a finished item's slot takes the next prompt.

A static batch decodes until its longest item ends, its finished rows fed a pad. Here the batch is a set of slots:

1. **Admit.** While a slot is free and prompts wait, the next prompts (in the caller's order, as many as slots are
   free and the held-token budget allows) are prefilled together, each pruned by its own schedule (a prompt under
   ``min_prompt_tokens`` is computed in full). Their first tokens come from that prefill.
2. **Join.** They take free rows of the slot-resident state (:meth:`lazy_core.engine.BatchState.place`): each
   item's per-layer K/V (its valid slots first, pads cut: the cache holds what the items keep), its Aux Cache entries
   and its counters are written into its row; no other row moves. A layer's buffers grow (by a quarter) only when a
   newcomer's slots plus the tokens it will decode do not fit.
3. **Decode.** One step for every row, each item at its own position and its own step number (revival stops after
   ``revive_steps`` of *its* steps; a free row computes a pad, masked and never used). A step in which no row
   revives is the fixed-shape plain step (:mod:`lazy_core.plain_step`, eager or compiled); a reviving step runs
   the engine's eager decode on the same rows.
4. **Leave.** An item that ends (end-of-sequence or ``max_new_tokens``) is emitted with its stats and its row is
   freed (:meth:`BatchState.free`) for step 1.

When to prefill: as soon as a slot is free (prefill first). An empty slot is throughput lost: where a step's rows
cost little more than one row (bf16 with 2 threads here, a GPU) its share of every step is wasted, and a static batch
keeps computing its finished rows besides. Prefill costs the same per token alone as in a group (or less: at 1 thread
here a 4K prompt alone took 3.9 s, in a group of 4 4.4 s each), so waiting to gather newcomers gains nothing. Every
prompt is admitted in the caller's order; callers sort by length (the pipeline's buckets do) so that the items of a
step are alike.

Each item's tokens equal its run alone through :meth:`LazyLLM.generate` (greedy; the logit rules of each item look
at its own prompt and output). Sampling draws from one generator for the whole stream, so a sampled item differs from
its run alone. This module knows nothing of Ray or of the pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch

from lazy_core.attention import attention_hook
from lazy_core.decoding import DecodingOptions, token_chooser
from lazy_core.engine import BatchState, LayerLoop
from lazy_core.plain_step import PlainStep
from lazy_core.rules import SlotRules
from lazy_core.stats import GenerateOutput


@dataclass
class SlotCounters:
    """How full the slots were over a stream's decoding steps."""

    slots: int
    steps: int = 0  # decoding steps run (each advances every running item by one token)
    busy_slot_steps: int = 0  # slot-steps that decoded an item
    plain_steps: int = 0  # of those, steps no row revived in: the fixed-shape step (lazy_core.plain_step)
    prefills: int = 0  # prefill calls (groups of newcomers)
    joins: int = 0  # times newcomers were placed into free rows
    prefill_s: float = 0.0  # wall time in newcomers' prefills (first tokens included)
    join_s: float = 0.0  # wall time placing newcomers (their caches written into free rows)

    @property
    def slot_steps(self) -> int:
        return self.slots * self.steps

    @property
    def idle_fraction(self) -> float:
        """Share of slot-steps with no item in them (0 when no step ran)."""
        return 0.0 if self.steps == 0 else 1.0 - self.busy_slot_steps / self.slot_steps


@dataclass
class ContinuousResult:
    """``outputs[i]`` is prompt i's output, laid out as ``generate`` lays out a batch of that prompt alone:
    ``sequences`` [1, n_i + new_i] and one :class:`ItemStats`."""

    outputs: list[GenerateOutput]
    counters: SlotCounters


@dataclass
class _Item:
    index: int
    ids: torch.Tensor  # [1, n]
    limit: int  # new tokens at most
    tokens: list[int] = field(default_factory=list)
    ttft_s: float = 0.0
    joined_at: float = 0.0  # perf_counter when its first token was chosen

    @property
    def length(self) -> int:
        return self.ids.shape[1]


class SlotLoop:
    """The continuous decode loop of one :class:`~lazy_core.generate.LazyLLM` (its model, schedule and pruner)."""

    def __init__(self, lazy, slots: int, max_held_tokens: int | None = None, compile: str = "off") -> None:
        """``slots``: items decoded at once at most. ``max_held_tokens``: a newcomer waits while the running items'
        held tokens (:meth:`LazyConfig.held_tokens`: K/V rows per layer once ``max_new_tokens`` are decoded) plus its
        own would pass this; None = only ``slots`` bounds the batch. A lone item always runs. ``compile``: how the
        plain steps run (:data:`lazy_core.plain_step.COMPILE_MODES`; 'off' = eager)."""
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {slots!r}")
        if max_held_tokens is not None and max_held_tokens < 1:
            raise ValueError(f"max_held_tokens must be >= 1 or None, got {max_held_tokens!r}")
        self.lazy = lazy
        self.slots = slots
        self.max_held_tokens = max_held_tokens
        self.compile = compile

    def run(self, prompts: Sequence[torch.Tensor | Sequence[int]], options: DecodingOptions, eos: list[int],
            pad: int, counters: SlotCounters | None = None,
            stop_after: Sequence[int] | None = None) -> Iterator[tuple[int, GenerateOutput]]:
        """Yields (prompt index, its output) as items end. ``prompts``: 1-D token ids each (no padding);
        ``stop_after``: per prompt, new tokens at most (each within 1..``options.max_new_tokens``)."""
        lazy, parts = self.lazy, self.lazy.parts
        counters = counters if counters is not None else SlotCounters(self.slots)
        max_new = options.max_new_tokens
        limits = _limits(stop_after, len(prompts), max_new)
        waiting = [self._item(i, p, options, limits[i]) for i, p in enumerate(prompts)]
        waiting.reverse()  # pop() takes the next prompt
        eos_set = set(eos)
        choose = token_chooser(options, parts.device)
        make_rules = partial(SlotRules, eos=eos, repetition_penalty=options.repetition_penalty,
                             no_repeat_ngram_size=options.no_repeat_ngram_size,
                             min_new_tokens=options.min_new_tokens, device=parts.device)
        rules = make_rules(self.slots)
        held = self._held_cost(max_new)
        slots: list[_Item | None] = [None] * self.slots  # the item in each row of ``state``
        state = BatchState.slots(parts, self.slots)
        device = parts.device
        with torch.inference_mode(), attention_hook(lazy.model) as inner:
            decoder = LayerLoop(parts, lazy.config, inner, lazy.pruner)
            plain = PlainStep(parts, inner, self.compile)
            while waiting or any(it is not None for it in slots):
                # 1. admit and prefill newcomers; those that end at their first token never join
                running = [it for it in slots if it is not None]
                newcomers = self._admit(waiting, running, held)
                if newcomers:
                    group = self._prefill(newcomers, inner, choose, make_rules(len(newcomers)), max_new, pad)
                    counters.prefills += 1
                    counters.prefill_s += newcomers[0].ttft_s
                    done = [b for b, it in enumerate(newcomers) if _ended(it, eos_set)]
                    yield from self._emit(group, [(b, newcomers[b]) for b in done], eos)
                    joining = [b for b in range(len(newcomers)) if b not in done]
                    # 2. the others take free rows; nobody else's caches move
                    if joining:
                        rows = [r for r, it in enumerate(slots) if it is None][: len(joining)]
                        start = time.perf_counter()
                        state.place(rows, group, joining, _headroom([newcomers[b] for b in joining]))
                        counters.join_s += time.perf_counter() - start
                        counters.joins += 1
                        for r, b in zip(rows, joining, strict=True):
                            slots[r] = newcomers[b]
                            if rules.active:
                                it = newcomers[b]
                                rules.place(r, it.ids[0], it.tokens, it.limit - len(it.tokens))
                rows = [r for r, it in enumerate(slots) if it is not None]
                if not rows:
                    continue
                # 3. one decoding step for every row, each item at its own position and step (free rows: a pad)
                steps = [len(it.tokens) if it is not None else 1 for it in slots]
                feed = torch.tensor([it.tokens[-1] if it is not None else pad for it in slots], dtype=torch.long,
                                    device=device)
                positions = torch.tensor([it.length + s - 1 if it is not None else 0
                                          for it, s in zip(slots, steps, strict=True)], dtype=torch.long, device=device)
                live = torch.tensor([it is not None for it in slots], dtype=torch.bool, device=device)
                if any(decoder.reviving_rows(state, steps)):
                    logits = decoder.decode(state, feed, positions, live, step=steps)
                else:
                    logits = plain(state, feed, positions, live)
                    counters.plain_steps += 1
                items = [slots[r] for r in rows]
                if rules.active:  # every row's rules on the device, then the live rows' choice: one host sync
                    logits = rules.apply(logits)
                picked = choose(logits[rows] if len(rows) < self.slots else logits)
                if rules.active:
                    rules.record(torch.zeros_like(feed).index_copy_(0, torch.tensor(rows, device=device), picked),
                                 live)
                chosen = picked.tolist()
                counters.steps += 1
                counters.busy_slot_steps += len(rows)
                for it, t in zip(items, chosen, strict=True):
                    it.tokens.append(t)
                # 4. the items that ended leave; their rows are free for step 1
                done = [r for r in rows if _ended(slots[r], eos_set)]
                if done:
                    yield from self._emit(state, [(r, slots[r]) for r in done], eos)
                    state.free(done)
                    for r in done:
                        slots[r] = None

    # ---- the steps -----------------------------------------------------------------------------------------------

    def _item(self, index: int, prompt, options: DecodingOptions, limit: int) -> _Item:
        ids = prompt if isinstance(prompt, torch.Tensor) else torch.as_tensor(list(prompt), dtype=torch.long)
        if ids.dim() != 1:
            raise ValueError(f"prompt {index} must be 1-D token ids (no batch dimension, no padding), got shape "
                             f"{tuple(ids.shape)}")
        ids, _ = self.lazy._check_batch(ids[None], None, options.max_new_tokens)  # [1, n], validated
        return _Item(index=index, ids=ids, limit=limit)

    def _held_cost(self, max_new: int):
        config, layers = self.lazy.config, self.lazy.parts.num_layers
        return lambda it: config.held_tokens(layers, it.length, max_new)

    def _admit(self, waiting: list[_Item], running: list[_Item], held) -> list[_Item]:
        """The next waiting items that fit the free slots and the held-token budget (in the caller's order)."""
        taken: list[_Item] = []
        total = sum(held(it) for it in running)
        while waiting and len(running) + len(taken) < self.slots:
            cost = held(waiting[-1])
            alone = not running and not taken
            if not alone and self.max_held_tokens is not None and total + cost > self.max_held_tokens:
                break
            taken.append(waiting.pop())
            total += cost
        return taken

    def _prefill(self, items: list[_Item], inner: str, choose, rules: SlotRules, max_new: int, pad: int) -> BatchState:
        """Prefill ``items`` as one group (each pruned by its own schedule); their first tokens (``rules``: the logit
        rules of as many rows as items) go into ``tokens``."""
        lazy, parts = self.lazy, self.lazy.parts
        lengths = [it.length for it in items]
        left = torch.full((len(items), max(lengths)), pad, dtype=torch.long, device=parts.device)
        for b, it in enumerate(items):
            left[b, : it.length] = it.ids[0]
        state = BatchState(parts, torch.tensor(lengths, device=parts.device), capacity=max(lengths) + max_new)
        loop = lazy.prefill_loop(state, inner)
        start = time.perf_counter()
        logits = loop.prefill(state, left)
        if rules.active:
            for b, it in enumerate(items):
                rules.place(b, it.ids[0], [], it.limit)
            logits = rules.apply(logits)
        first = choose(logits).tolist()
        now = time.perf_counter()
        for it, t in zip(items, first, strict=True):
            it.tokens.append(t)
            it.ttft_s, it.joined_at = now - start, now
        return state

    def _emit(self, state: BatchState, rows: list[tuple[int, _Item]], eos: list[int]):
        """Outputs of the items at ``rows`` of ``state`` (they ended)."""
        if not rows:
            return
        kv_bytes = state.cache.nbytes_per_item().tolist()
        aux_bytes = state.aux.nbytes_per_item().tolist()
        now = time.perf_counter()
        for b, it in rows:
            new = torch.tensor([it.tokens], dtype=torch.long, device=it.ids.device)
            stats = self.lazy.item_stats(state, b, len(it.tokens), it.ttft_s, now - it.joined_at, kv_bytes[b],
                                         aux_bytes[b])
            yield it.index, GenerateOutput(sequences=torch.cat([it.ids, new], 1), stats=[stats])

def _headroom(items: list[_Item]) -> int:
    """Free K/V slots per layer a join makes room for: the most tokens a newcomer still decodes (revival beyond it
    grows the layer, as in a static batch)."""
    return max((it.limit - len(it.tokens) for it in items), default=0)


def _ended(item: _Item, eos: set[int]) -> bool:
    return item.tokens[-1] in eos or len(item.tokens) >= item.limit


def _limits(stop_after: Sequence[int] | None, count: int, max_new: int) -> list[int]:
    if stop_after is None:
        return [max_new] * count
    limits = list(stop_after)
    if len(limits) != count:
        raise ValueError(f"stop_after has {len(limits)} entries for {count} prompts")
    bad = [(i, n) for i, n in enumerate(limits)
           if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_new]
    if bad:
        raise ValueError(f"stop_after entries must be ints in 1..max_new_tokens ({max_new}); got {bad[:3]} (index, "
                         "value)")
    return limits
