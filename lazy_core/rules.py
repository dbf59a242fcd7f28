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


class SlotRules:
    """The same rules for the rows of a slot-resident batch (lazy_core.continuous), on the device: each row looks at
    its own item's prompt and output, with no Python per row and no host sync; a free row's history is empty. The
    n-gram rule matches the row's last n-1 tokens against every n-gram of its history (O(history) device work a
    step, where :class:`LogitRules` keeps a Python table per item)."""

    def __init__(self, slots: int, eos: Sequence[int], repetition_penalty: float, no_repeat_ngram_size: int,
                 min_new_tokens: int, device: torch.device) -> None:
        self.penalty = float(repetition_penalty)
        self.ngram = int(no_repeat_ngram_size)
        self.min_new = int(min_new_tokens)
        self.eos = torch.tensor(list(eos), dtype=torch.long, device=device)
        self.history = torch.full((slots, 1), -1, dtype=torch.long, device=device)  # [S, T]: -1 = nothing
        self.length = torch.zeros(slots, dtype=torch.long, device=device)  # [S] tokens in each row's history
        self.steps = torch.zeros(slots, dtype=torch.long, device=device)  # [S] tokens each row's item has chosen
        self.rows = torch.arange(slots, device=device)

    @property
    def active(self) -> bool:
        return self.penalty != 1.0 or self.ngram > 0 or self.min_new > 0

    def place(self, row: int, ids: torch.Tensor, chosen: list[int], room: int) -> None:
        """Row ``row`` now holds an item with prompt ``ids`` [n] that has chosen ``chosen`` and may choose ``room``
        more tokens."""
        need = ids.shape[0] + len(chosen) + room
        if need > self.history.shape[1]:
            self.history = torch.nn.functional.pad(self.history, (0, need - self.history.shape[1]), value=-1)
        tokens = torch.cat([ids.to(self.history.device), torch.tensor(chosen, dtype=torch.long,
                                                                      device=self.history.device)])
        self.history[row] = -1
        self.history[row, : tokens.shape[0]] = tokens
        self.length[row] = tokens.shape[0]
        self.steps[row] = len(chosen)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [S, V] float32 -> the same with each row's rules applied (a new tensor)."""
        vocab = logits.shape[1]
        spare = torch.nn.functional.pad(logits, (0, 1))  # [S, V + 1]: banned or padding entries go to the spare column
        if self.min_new > 0 and self.eos.numel():
            early = (self.steps < self.min_new)[:, None]  # [S, 1]
            spare[:, self.eos] = torch.where(early, float("-inf"), spare[:, self.eos])
        if self.penalty != 1.0:
            seen = torch.where(self.history < 0, vocab, self.history)
            score = spare.gather(1, seen)
            score = torch.where(score < 0, score * self.penalty, score / self.penalty)
            spare.scatter_(1, seen, score)
        if self.ngram > 0 and self.history.shape[1] >= self.ngram:
            n = self.ngram
            windows = self.history.unfold(1, n, 1)  # [S, W, n]
            tail = self.length[:, None] - (n - 1) + torch.arange(n - 1, device=logits.device)  # [S, n-1]
            last = self.history.gather(1, tail.clamp(min=0))
            whole = torch.arange(windows.shape[1], device=logits.device)[None, :] + n <= self.length[:, None]
            match = (windows[:, :, : n - 1] == last[:, None, :]).all(-1) & whole
            match &= (self.length + 1 >= n)[:, None]
            banned = torch.where(match, windows[:, :, n - 1], vocab)  # [S, W]
            spare.scatter_(1, banned, float("-inf"))
        return spare[:, :vocab]

    def record(self, tokens: torch.Tensor, live: torch.Tensor) -> None:
        """tokens: [S] chosen this step; live: [S] bool, the rows whose item chose one."""
        at = self.length.clamp(max=self.history.shape[1] - 1)
        self.history[self.rows, at] = torch.where(live, tokens, self.history[self.rows, at])
        self.length += live.long()
        self.steps += live.long()
