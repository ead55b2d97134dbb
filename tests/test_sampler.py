"""The training sampler: length-grouped optimizer steps, in random order."""

from __future__ import annotations

import itertools

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from qwen3_lora.training.trainer import ShuffledLengthGroupedSampler

STEP = 8  # samples per optimizer step (batch 4 x 2 accumulation)


def _lengths() -> list[int]:
    # Four tasks whose samples differ in length as the built-in ones do: one-word labels, a
    # two-way label, file names, long QA answers.
    sizes = {"scene": (296, 30), "type": (134, 34), "extract": (186, 42), "qa": (149, 80)}
    gen = torch.Generator().manual_seed(0)
    lengths = []
    for count, base in sizes.values():
        lengths += (base + torch.randint(0, 6, (count,), generator=gen)).tolist()
    return lengths


def _steps(indices: list[int]) -> list[list[int]]:
    return [indices[i : i + STEP] for i in range(0, len(indices), STEP)]


def _longest_run_of_one_task(steps: list[list[int]], lengths: list[int]) -> int:
    """The most consecutive steps whose samples all come from one task (length band)."""
    band = [{lengths[i] // 10 for i in step} for step in steps]
    kinds = [next(iter(b)) if len(b) == 1 else None for b in band]
    return max(len(list(g)) for k, g in itertools.groupby(kinds) if k is not None)


def test_steps_keep_length_groups_but_not_their_order():
    lengths = _lengths()
    grouped = list(LengthGroupedSampler(STEP, lengths=lengths, generator=_generator(0)))
    ours = list(ShuffledLengthGroupedSampler(STEP, lengths=lengths, seed=0))

    assert sorted(ours) == list(range(len(lengths)))  # every sample once per epoch
    # The same steps (same samples, so the same padding) as transformers' sampler...
    assert sorted(map(sorted, _steps(ours))) == sorted(map(sorted, _steps(grouped)))
    assert max(lengths) in [lengths[i] for i in ours[:STEP]]  # the longest step still first
    # ...but not swept from the longest to the shortest: no long run of one task's steps.
    swept = _longest_run_of_one_task(_steps(grouped), lengths)
    assert swept >= 10
    assert _longest_run_of_one_task(_steps(ours), lengths) <= swept // 2


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _order(seed: int, epoch: int) -> list[int]:
    sampler = ShuffledLengthGroupedSampler(STEP, lengths=_lengths(), seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_the_order_follows_the_seed_and_the_epoch_alone():
    torch.manual_seed(1)
    first = _order(seed=1, epoch=1)
    torch.manual_seed(2)  # torch's global generator elsewhere: a resumed run's, say
    torch.rand(100)
    assert _order(seed=1, epoch=1) == first
    assert _order(seed=1, epoch=0) != first != _order(seed=2, epoch=1)
    # One sampler across epochs gives each epoch's order, and again when an epoch is repeated.
    sampler = ShuffledLengthGroupedSampler(STEP, lengths=_lengths(), seed=1)
    seen = []
    for epoch in (0, 1, 1):
        sampler.set_epoch(epoch)
        seen.append(list(sampler))
    assert seen == [_order(seed=1, epoch=0), first, first]
