"""Inference batches by tokens (`token_batches`): sorted by length, at most `max_examples` examples
and `max_tokens` padded tokens (examples x the longest length) a batch, every example exactly once;
long examples get small batches, short ones big ones."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from headkit.data.batching import EncodedData, LengthGroupedBatches, collate, data_batches, token_batches
from headkit.errors import DataError, UsageError


def random_lengths(seed: int, n: int = 300) -> list[int]:
    """Lengths as real texts have them: many short, some long, ties."""
    rng = random.Random(seed)
    return [max(1, int(rng.lognormvariate(3.5, 0.9))) for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("max_tokens", "max_examples"), [(512, 64), (2048, 16), (100, 1000), (None, 7)])
def test_every_index_once_sorted_and_within_both_limits(seed, max_tokens, max_examples):
    lengths = random_lengths(seed)
    batches = token_batches(lengths, max_tokens, max_examples)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))  # every example exactly once
    assert flat == sorted(range(len(lengths)), key=lambda i: lengths[i])  # shortest first, ties in input order
    for batch in batches:
        assert 1 <= len(batch) <= max_examples
        padded = len(batch) * max(lengths[i] for i in batch)
        assert max_tokens is None or padded <= max_tokens or len(batch) == 1  # alone: longer than the budget
    for batch, after in itertools.pairwise(batches):  # each batch as full as the limits let it be
        grown = [*batch, after[0]]
        assert len(grown) > max_examples or (max_tokens is not None and len(grown) * lengths[after[0]] > max_tokens)


def test_long_examples_get_small_batches_and_short_ones_big_ones():
    lengths = [8] * 100 + [128] * 10 + [1000]
    batches = token_batches(lengths, max_tokens=512, max_examples=32)
    # 8 tokens: 32 a batch (the count caps); 128 tokens: 4 (the budget caps); 1000 tokens: alone
    assert [[lengths[i] for i in b] for b in batches] == [[8] * 32] * 3 + [
        [8] * 4,
        [128] * 4,
        [128] * 4,
        [128] * 2,
        [1000],
    ]


def test_without_a_budget_it_is_the_fixed_count_batching_of_before():
    lengths = random_lengths(7, n=101)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    assert token_batches(lengths, None, 16) == [order[i : i + 16] for i in range(0, len(order), 16)]
    assert LengthGroupedBatches(lengths, 16, seed=0, shuffle=False).batches() == token_batches(lengths, None, 16)
    assert token_batches([], 512, 16) == []


def test_preference_pairs_count_two_rows_each():
    """A pair pads its chosen and rejected texts into two rows of the longer one's length."""
    ids = [[1] * n for n in (4, 4, 4, 4)]
    pairs = EncodedData(ids, more_ids=[[[2] * 6]] * 4)
    assert data_batches(pairs, max_tokens=24, max_examples=64) == [[0, 1], [2, 3]]  # 2 pairs x 2 rows x 6
    assert data_batches(EncodedData(ids), max_tokens=24, max_examples=64) == [[0, 1, 2, 3]]  # 4 x 4 = 16


def test_choices_count_a_row_each_and_are_laid_out_choice_by_choice():
    """B examples of 3 choices are 3B rows, every example's first choice first, with each row's own
    segment ids; a batch whose examples have different choice counts is refused in one line."""
    data = EncodedData(
        [[1, 1], [2, 2]],
        {"c": np.array([2, 0])},
        more_ids=[[[1, 3], [1, 4, 4]], [[2, 5], [2, 6]]],
        token_type_ids=[[0, 1], [0, 1]],
        more_types=[[[0, 1], [0, 1, 1]], [[0, 1], [0, 1]]],
    )
    assert data.rows_per_example == 3 and data.lengths() == [3, 2]
    assert data_batches(data, max_tokens=9, max_examples=64) == [[1], [0]]  # 3 rows x 3 tokens: one per batch
    batch = collate([data[0], data[1]], 0, {"c": "classification"}, {})
    assert batch["input_ids"].tolist() == [[1, 1, 0], [2, 2, 0], [1, 3, 0], [2, 5, 0], [1, 4, 4], [2, 6, 0]]
    assert batch["token_type_ids"].tolist()[4] == [0, 1, 1]
    assert batch["labels"]["c"].tolist() == [2, 0]
    uneven = EncodedData([[1], [2]], more_ids=[[[3]], [[4], [5]]])
    with pytest.raises(DataError, match="same number of choices"):
        collate([uneven[0], uneven[1]], 0, {}, {})


@pytest.mark.parametrize(("max_tokens", "max_examples"), [(0, 8), (512, 0)])
def test_a_budget_with_no_room_for_one_example_is_a_usage_error(max_tokens, max_examples):
    with pytest.raises(UsageError, match="at least one example"):
        token_batches([3, 4], max_tokens, max_examples)


@pytest.mark.parametrize("group", [True, False])
def test_under_several_processes_the_short_batch_comes_last_and_every_example_is_dealt(group):
    """accelerate deals batches to processes a round at a time and drops a round that a short
    batch ends before the last: with the short batch last, each process gets ceil(7 / 2) = 4
    batches and every example is seen (the last round filled from the start)."""
    from accelerate.data_loader import BatchSamplerShard

    for seed in range(6):
        sampler = LengthGroupedBatches([10] * 100, 16, seed=seed, group=group, short_last=True)
        assert [len(b) for b in sampler.batches()] == [16] * 6 + [4]
        shards = [list(BatchSamplerShard(sampler, 2, p, split_batches=False, even_batches=True)) for p in range(2)]
        assert [len(s) for s in shards] == [4, 4]
        assert {i for shard in shards for b in shard for i in b} == set(range(100))
    plain = LengthGroupedBatches([10] * 100, 16, seed=0, group=group)  # one process: the order as it was
    assert sorted(map(len, plain.batches())) == [4] + [16] * 6
