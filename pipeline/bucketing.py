"""Length bucketing: sort items by prompt length and cut batches by a token budget and a size cap."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Bucket:
    """Indices (into the caller's item list) of one batch, longest prompt first."""

    indices: tuple[int, ...]
    max_len: int
    real_tokens: int

    @property
    def padded_tokens(self) -> int:
        return self.max_len * len(self.indices)


def bucket_by_length(lengths: list[int], max_batch_tokens: int, max_batch_size: int,
                     cost: Callable[[int], int] | None = None) -> list[Bucket]:
    """Sort by length (descending, ties by index so the result is deterministic) and cut greedily: a batch grows
    while ``len(batch) * cost(longest) <= max_batch_tokens`` and ``len(batch) <= max_batch_size``. ``cost``: the
    tokens a batch holds per item of that prompt length (every item is sized like the longest), default the prompt
    length itself. An item over the budget gets a batch of its own. Neighbours in the sorted order have similar
    lengths, so padding stays small."""
    if max_batch_tokens < 1 or max_batch_size < 1:
        raise ValueError("max_batch_tokens and max_batch_size must be >= 1")
    cost = cost or (lambda n: n)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    buckets: list[Bucket] = []
    current: list[int] = []
    for i in order:
        if current:
            longest = lengths[current[0]]  # descending order: the first is the longest
            if len(current) + 1 > max_batch_size or (len(current) + 1) * cost(longest) > max_batch_tokens:
                buckets.append(_make(current, lengths))
                current = []
        current.append(i)
    if current:
        buckets.append(_make(current, lengths))
    return buckets


def _make(indices: list[int], lengths: list[int]) -> Bucket:
    return Bucket(tuple(indices), max(lengths[i] for i in indices), sum(lengths[i] for i in indices))


def padded_in_groups(lengths: list[int], group: int) -> int:
    """Padded prompt tokens when consecutive ``group``-sized runs of ``lengths`` (sorted, as a bucket's) are
    prefilled together: how a continuous stream admits its prompts when every slot frees at once (an upper bound;
    newcomers that join one by one carry no padding)."""
    return sum(max(lengths[i : i + group]) * len(lengths[i : i + group]) for i in range(0, len(lengths), group))


def padding_waste(real_tokens: int, padded_tokens: int) -> float:
    """Fraction of the padded batch tokens that are padding (0 = none), from the sums of ``Bucket.real_tokens`` and
    ``Bucket.padded_tokens`` over the batches: the one definition behind the run report's and the dry run's
    ``padding_waste``."""
    return 0.0 if padded_tokens == 0 else 1.0 - real_tokens / padded_tokens
