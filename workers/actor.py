"""LazyWorker: one model per actor, one batch (or continuous stream) per call, shadow full-model runs on sampled
batches.

Ray's batch-inference pattern: load once in ``__init__``, infer per call under ``torch.inference_mode()``, return
plain columns. The class is plain Python (usable in-process, e.g. by the benchmark); ``pipeline`` wraps it in
``ray.remote`` with the resources of :func:`actor_options`.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

from lazy_core import LazyConfig, LazyLLM, load_model
from lazy_core.quantize import quantization_of
from lazy_core.slots import SlotPlan, plan_slots
from workers.rouge import rouge_l_f
from workers.schema import error_row, result_row
from workers.spec import WorkerSpec


class LazyWorker:
    """Holds the model, a LazyLLM with the run's schedule and one with ``LazyConfig.off()`` for shadow runs."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        if spec.num_threads is not None:
            torch.set_num_threads(spec.num_threads)
        device = spec.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        # "auto": lazy_core.precision and lazy_core.quantize
        self.model, self.tokenizer = load_model(spec.model, dtype=spec.dtype, device=device, quantize=spec.quantize)
        self.lazy_config = LazyConfig.resolve(spec.lazy, self.model)
        self.lazy = LazyLLM(self.model, self.lazy_config)
        self.full = LazyLLM(self.model, LazyConfig.off())
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.slot_steps = 0  # decode slot-steps of the last _generate call
        if spec.slots is None:  # planned from the device, now that the weights take their memory
            self.slot_plan = plan_slots(self.model, self.lazy_config, spec.prompt_tokens,
                                        spec.decoding.max_new_tokens, self.device, spec.memory_share)
        else:
            self.slot_plan = SlotPlan(spec.slots, spec.max_held_tokens or 0, "set by the run's max_batch_size")
        self.slots = self.slot_plan.slots
        self.max_held_tokens = spec.max_held_tokens if spec.slots is not None else self.slot_plan.max_held_tokens

    def ready(self) -> dict[str, Any]:
        """Liveness probe and identity: returned once the model is loaded."""
        lazy = self.lazy_config.model_dump()
        return {"worker": self.name, "pid": os.getpid(), "device": str(self.device), "lazy": lazy,
                "dtype": str(self.model.dtype).removeprefix("torch."),
                "quantize": quantization_of(self.model).describe(),
                "torch_threads": torch.get_num_threads(), "niceness": os.nice(0), "slots": self.slots,
                "max_held_tokens": self.max_held_tokens, "slots_reason": self.slot_plan.reason}

    def run_batch(self, input_ids: list[list[int]], sampled: bool, seed: int) -> list[dict[str, Any]]:
        """Generate for one batch. ``sampled``: also run the full model on the same batch (shadow baseline) and
        compare. A batch that raises is retried item by item, so one bad item becomes one error row.

        Returns one dict per item, in input order (plain columns, see pipeline's output schema)."""
        try:
            return self._run(input_ids, sampled, seed)
        except Exception as exc:  # noqa: BLE001 - isolate the failing item(s), each error becomes a row
            if len(input_ids) == 1:
                return [_error_row(exc, self.name)]
            rows = []
            for ids in input_ids:
                try:
                    rows.extend(self._run([ids], sampled, seed))
                except Exception as item_exc:  # noqa: BLE001 - per-item error capture
                    rows.append(_error_row(item_exc, self.name))
            return rows

    # ---- internals -----------------------------------------------------------------------------------------------

    def _generate(self, engine: LazyLLM, input_ids: list[list[int]], seed: int) -> tuple[list[list[int]], list[Any]]:
        """New token ids and ItemStats per item; ``self.slot_steps``: the decode slot-steps the call ran."""
        decoding = self.spec.decoding
        options = decoding.model_copy(update={"seed": seed}) if decoding.do_sample else decoding
        if self.spec.batching == "continuous":  # the task is a stream through the slots
            result = engine.generate_continuous(
                [torch.tensor(ids, dtype=torch.long, device=self.device) for ids in input_ids], options,
                slots=self.slots, max_held_tokens=self.max_held_tokens,
                eos_token_id=None, pad_token_id=self.pad_id, compile_step=self.spec.compile_step,
            )
            self.slot_steps = result.counters.slot_steps
            new = [o.sequences[0, len(ids) :].tolist() for o, ids in zip(result.outputs, input_ids, strict=True)]
            return new, [o.stats[0] for o in result.outputs]
        ids, mask = self._pad_left(input_ids)  # ids, mask: [B, T]
        with torch.inference_mode():
            out = engine.generate(
                ids,
                attention_mask=mask,
                options=options,
                eos_token_id=None,  # the model's generation config (chat models end turns with their own id)
                pad_token_id=self.pad_id,
            )
        prompt_len = ids.shape[1]
        new = []
        for row, stats in zip(out.sequences.tolist(), out.stats, strict=True):
            new.append(row[prompt_len : prompt_len + stats.new_tokens])
        # a batch smaller than the slots leaves the rest idle; a batch larger (a caller's choice) has its rows
        self.slot_steps = max(self.slots, len(input_ids)) * (max(st.new_tokens for st in out.stats) - 1)
        return new, out.stats

    def _run(self, input_ids: list[list[int]], sampled: bool, seed: int) -> list[dict[str, Any]]:
        new_ids, stats = self._generate(self.lazy, input_ids, seed)
        rows = [self._row(ids, st) for ids, st in zip(new_ids, stats, strict=True)]
        for row in rows:  # the pruned run's slots, shared by its items (shadow and fallback runs not counted)
            row["decode_slot_steps"] = self.slot_steps / len(rows)
        full: dict[int, tuple[list[int], Any]] = {}  # item -> the full model's (new ids, stats)
        if sampled:
            full_ids, full_stats = self._generate(self.full, input_ids, seed)
            full = dict(enumerate(zip(full_ids, full_stats, strict=True)))
            for row, lazy_new, (full_new, fst) in zip(rows, new_ids, full.values(), strict=True):
                row["baseline_ttft_s"] = fst.ttft_s
                row["measured_speedup"] = fst.ttft_s / row["ttft_s"] if row["ttft_s"] > 0 else None
                row["first_token_agrees"] = bool(lazy_new[:1] == full_new[:1])
                row["rouge_l_vs_baseline"] = rouge_l_f(lazy_new, full_new)
        empty = [i for i, row in enumerate(rows) if not row["generation"].strip()]
        rerun = [i for i in empty if i not in full and stats[i].pruned] if self.spec.fallback_on_empty else []
        if rerun:  # a fresh batch of the empty items, run with pruning off
            again = self._generate(self.full, [input_ids[i] for i in rerun], seed)
            full.update(zip(rerun, zip(*again, strict=True), strict=True))
        for i in empty:
            self._mark_empty(rows[i], new_ids[i], stats[i], full.get(i), i in rerun)
        return rows

    def _row(self, ids: list[int], st: Any) -> dict[str, Any]:
        return result_row(
            "ok",
            generation=self.tokenizer.decode(ids, skip_special_tokens=True),
            pruned=st.pruned,
            fallback=False,
            new_tokens=st.new_tokens,
            ttft_s=st.ttft_s,
            decode_s=st.decode_s,
            computed_token_fraction=st.computed_token_fraction,
            computed_token_fraction_total=st.computed_token_fraction_total,
            revived_tokens=st.revived_tokens,
            est_speedup=st.est_speedup,
            worker=self.name,
        )

    def _mark_empty(self, row: dict[str, Any], lazy_new: list[int], lazy_st: Any, full: Any, rerun: bool) -> None:
        """An empty lazy output: a warning, and the full model's output when it has one and the fallback is on (see
        docs/pipeline.md, 'Empty outputs')."""
        row["warning"] = "empty_generation"
        if full is None:
            return
        full_new, fst = full
        text = self.tokenizer.decode(full_new, skip_special_tokens=True)
        if text.strip():
            row["warning"] = "pruning_lost_output"
        if rerun:
            row["first_token_agrees"] = bool(lazy_new[:1] == full_new[:1])
            row["baseline_ttft_s"] = fst.ttft_s
        if not self.spec.fallback_on_empty or not text.strip():
            return
        # the row now carries the full model's output; its costs are those of both runs
        row.update(
            generation=text,
            fallback=True,
            new_tokens=fst.new_tokens,
            ttft_s=lazy_st.ttft_s + lazy_st.decode_s + fst.ttft_s,
            decode_s=fst.decode_s,
            computed_token_fraction=lazy_st.computed_token_fraction + 1.0,
            computed_token_fraction_total=lazy_st.computed_token_fraction_total + 1.0,
            est_speedup=1.0 / (1.0 + 1.0 / lazy_st.est_speedup),
        )

    def _pad_left(self, input_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left padding, as HF generate expects for decoder-only models. Returns ids, mask: [B, T_max]."""
        longest = max(len(x) for x in input_ids)
        ids = torch.full((len(input_ids), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(input_ids), longest), dtype=torch.long)
        for i, row in enumerate(input_ids):
            ids[i, longest - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, longest - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)


def _error_row(exc: BaseException, worker: str) -> dict[str, Any]:
    message = str(exc).splitlines()[0] if str(exc) else ""
    return error_row(f"engine_error: {type(exc).__name__}: {message}", worker)
