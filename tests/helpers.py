"""Helpers that test files of several modules share. tests/ is on ``sys.path`` (pytest puts it there for
tests/conftest.py), so a test file anywhere under tests/ imports them as ``from helpers import ...``."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lazy_core import AttentionPruner
from lazy_core.revival import SelectRevival, TopRevival

# ---- Parquet in and out (tests/pipeline/, tests/jobs/) -------------------------------------------------------------


def _write(path, **columns):
    pq.write_table(pa.table(columns), path)


def _read_all(paths: list[str]) -> list[dict]:
    return [row for p in paths for row in pq.read_table(p).to_pylist()]


# ---- pipeline runs (tests/pipeline/test_driver.py, test_dry_run.py) --------------------------------------------------


def make_corpus(root: Path, shards: int, rows: int, prefix: str = "doc") -> list[str]:
    """Shards of rows with varied lengths; returns the ids in input order."""
    root.mkdir(parents=True, exist_ok=True)
    all_ids = []
    for s in range(shards):
        ids = [f"{prefix}-{s}-{i}" for i in range(rows)]
        texts = [f"Document {s}.{i}. " + "lorem ipsum dolor " * (1 + (i * 7) % 11) for i in range(rows)]
        pq.write_table(pa.table({"id": ids, "text": texts, "title": [f"t{i}" for i in range(rows)]}),
                       root / f"part-{s:05d}.parquet")
        all_ids += ids
    return all_ids


def base_config(tiny_model_dir, tmp_path, **extra) -> dict:
    """A small run of the tiny model, in float32: runs are compared row by row (rerun == run, fallback == the full
    model's output), an equality bf16 ("auto" on a bf16 CPU) does not promise across batch shapes."""
    fields = dict(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=str(tiny_model_dir),
                  max_new_tokens=4, baseline_sample_rate=0.5, progress=False, num_workers=1, max_batch_size=3,
                  dtype="float32")
    fields.update(extra)
    return fields


# ---- BENCHMARKS.md sections (tests/benchmarks/: short_prompts, gemma_eval, benchmarks_md) ----------------------------


HAND_BEFORE = "## A section\n\nHow the items were built, written by hand."
HAND_AFTER = "- What the table shows, written by hand."


def _markdown(tmp_path, name):
    md = tmp_path / "B.md"
    md.write_text(f"# B\n\n{HAND_BEFORE}\n\n<!-- {name}:begin -->\nstale table\n<!-- {name}:end -->\n\n{HAND_AFTER}\n",
                  encoding="utf-8")
    return md


def _block(text, name):
    return text.split(f"<!-- {name}:begin -->", 1)[1].split(f"<!-- {name}:end -->", 1)[0]


def _check_hand_text_kept(md, name, runs):
    """Run ``runs`` twice: the second run changes nothing, the hand-written text is there once, outside the block."""
    runs()
    first = md.read_text(encoding="utf-8")
    runs()
    text = md.read_text(encoding="utf-8")
    assert text == first
    assert text.count(HAND_BEFORE) == 1 and text.count(HAND_AFTER) == 1
    assert text.index(HAND_BEFORE) < text.index(f"<!-- {name}:begin -->") < text.index(f"<!-- {name}:end -->")
    assert text.index(f"<!-- {name}:end -->") < text.index(HAND_AFTER)
    block = _block(text, name)
    assert "stale table" not in block and "by hand" not in block
    return block


# ---- the engine on tiny models: prompts, schedules, revival policies (tests/lazy_core/) ------------------------------


PROMPTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door.",
    "Short prompt.",
    "A medium length prompt that talks about pruning tokens in long contexts.",
]


PRUNE = dict(prune_layers=[0, 2], keep_ratios=[0.5, 0.25], min_keep_tokens=2, keep_tail=2)


def encode(tok, prompts=PROMPTS, side="left"):
    tok.padding_side = side
    try:
        return tok(prompts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = "left"


def full_last_logits(model, ids, mask):
    """Reference next-token logits of the unmodified model for each item run alone."""
    rows = []
    with torch.inference_mode():
        for b in range(ids.shape[0]):
            real = ids[b][mask[b].bool()][None]
            rows.append(model(real).logits[0, -1].float())
    return torch.stack(rows)


def batch_vs_alone(lazy, enc, max_new_tokens=10):
    """Generate the batch, then each item alone: yields (b, batch output, alone output) after checking the tokens of
    each item equal (the batch's row padded after the item's end)."""
    batch = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=max_new_tokens)
    width = enc.input_ids.shape[1]
    pad = lazy.model.config.pad_token_id
    for b in range(enc.input_ids.shape[0]):
        real = enc.input_ids[b][enc.attention_mask[b].bool()][None]
        alone = lazy.generate(real, max_new_tokens=max_new_tokens)
        mine, ref = batch.sequences[b, width:].tolist(), alone.sequences[0, real.shape[1]:].tolist()
        assert mine[: len(ref)] == ref and set(mine[len(ref):]) <= {pad}
        yield b, batch, alone


class RecordingPruner(AttentionPruner):
    """LazyLLM scoring that records what it saw and chose, per call."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = []

    def select(self, inputs, budget, forced):
        keep = super().select(inputs, budget, forced)
        self.calls.append(dict(inputs=inputs, scores=self.scores(inputs), keep=keep, budget=budget, forced=forced))
        return keep


# Every revival policy behind the one contract (LazyConfig.revival), each with revival that actually happens.
POLICIES = {
    "select": dict(revival=SelectRevival()),
    "select_cap": dict(revival=SelectRevival(per_step=1)),
    "select_hysteresis": dict(revival=SelectRevival(hysteresis=0.5)),
    "select_first_steps": dict(revival=SelectRevival(), revive_steps=3),
    "top": dict(revival=TopRevival(top=6)),
}
