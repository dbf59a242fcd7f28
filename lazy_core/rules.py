"""Logit rules of Hugging Face ``generate`` that summarization users expect: ``repetition_penalty``,
``no_repeat_ngram_size`` and ``min_new_tokens``, with the same semantics (so pruning off equals ``model.generate``).

The history they look at is the prompt as the caller laid it out followed by the tokens generated so far; as in
``generate``, the repetition penalty skips the prompt's padding and the n-gram rule does not. The n-gram table is built
from the prompt once and grows by one n-gram a step, so a step costs O(batch) Python, not O(prompt) as a rescan
would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class LogitRules:
    """Applied to each step's logits [B, V] before the token is chosen (greedy or sampled)."""

    def __init__(self, input_ids: torch.Tensor, mask: torch.Tensor, capacity: int, eos: Sequence[int],
                 repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0, min_new_tokens: int = 0) -> None:
        """input_ids, mask: [B, T] as the caller passed them (mask 0 = padding); ``capacity``: new tokens at most."""
        batch, width = input_ids.shape
        self.penalty = float(repetition_penalty)
        self.ngram = int(no_repeat_ngram_size)
        self.min_new = int(min_new_tokens)
        self.eos = torch.tensor(list(eos), dtype=torch.long, device=input_ids.device)
        self.steps = 0  # tokens chosen so far
        self.width = width
        self.history = torch.empty(batch, width + capacity, dtype=torch.long, device=input_ids.device)
        self.history[:, :width] = torch.where(mask.bool(), input_ids, -1)  # -1: padding, never penalized
        self.seen: list[dict[tuple[int, ...], set[int]]] = []  # per item: (n-1)-gram -> tokens that followed it
        self.rows: list[list[int]] = []  # per item: history as Python ints (only for the n-gram rule)
        if self.ngram > 0:
            for row in input_ids.tolist():
                table: dict[tuple[int, ...], set[int]] = {}
                for i in range(len(row) - self.ngram + 1):
                    table.setdefault(tuple(row[i : i + self.ngram - 1]), set()).add(row[i + self.ngram - 1])
                self.seen.append(table)
                self.rows.append(row)

    @property
    def active(self) -> bool:
        return self.penalty != 1.0 or self.ngram > 0 or self.min_new > 0

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [B, V] float32 -> the same with the rules applied (a new tensor)."""
        logits = logits.clone()
        if self.min_new > 0 and self.steps < self.min_new and self.eos.numel():
            logits[:, self.eos] = float("-inf")
        if self.penalty != 1.0:
            vocab = logits.shape[1]
            seen = self.history[:, : self.width + self.steps]
            seen = torch.where(seen < 0, vocab, seen)  # padding goes to a spare column, dropped below
            spare = torch.nn.functional.pad(logits, (0, 1))
            score = spare.gather(1, seen)
            score = torch.where(score < 0, score * self.penalty, score / self.penalty)
            logits = spare.scatter_(1, seen, score)[:, :vocab]
        if self.ngram > 0:
            length = self.width + self.steps
            if length + 1 >= self.ngram:
                for b, row in enumerate(self.rows):
                    banned = self.seen[b].get(tuple(row[length - self.ngram + 1 :]), ())
                    if banned:
                        logits[b, list(banned)] = float("-inf")
        return logits

    def record(self, token: torch.Tensor) -> None:
        """token: [B] the tokens chosen this step (pads for finished items, as ``generate`` appends them)."""
        self.history[:, self.width + self.steps] = token
        self.steps += 1
        if self.ngram > 0:
            for b, t in enumerate(token.tolist()):
                row = self.rows[b]
                row.append(t)
                if len(row) >= self.ngram:
                    self.seen[b].setdefault(tuple(row[-self.ngram : -1]), set()).add(t)
