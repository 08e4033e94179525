"""bench.quality.cold_channel's slot policy, as docs/llm_share.md reads it: per user, the cold item
the model scores highest takes the given place in that user's list (the items from there down move
one place), only when the model already ranks it within the gate, and nothing else changes."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cold_channel(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `bench` is a package at the repository root
    return importlib.import_module("bench.quality.cold_channel")


def reference_ranks(output, cold, exclude, slot, gate):
    """Each row's list built by hand: the ranked items in output order, the best cold item moved
    to 1-based ``slot`` when its own rank is within ``gate`` and below ``slot``; {item: 0-based}."""
    lists = []
    for row, skip in zip(output.tolist(), exclude.tolist(), strict=True):
        items = [i for i in range(1, len(row)) if not skip[i]]
        order = sorted(items, key=lambda i: -row[i])
        cold_in = [i for i in order if cold[i]]
        if cold_in:
            best = cold_in[0]
            own = order.index(best)
            if slot <= own < gate:
                order.remove(best)
                order.insert(slot - 1, best)
        lists.append({item: place for place, item in enumerate(order)})
    return lists


@pytest.mark.parametrize("slot,gate", [(1, math.inf), (3, math.inf), (2, 6), (5, 12), (10, 30)])
def test_the_best_cold_item_takes_its_slot_and_the_rest_move_down_by_one(cold_channel, slot, gate):
    from runkit.metrics import target_ranks

    generator = torch.Generator().manual_seed(slot)
    users, items = 40, 30
    output = torch.randn(users, items + 1, generator=generator)
    output[:, 0] = -torch.inf
    cold = torch.zeros(items + 1, dtype=torch.bool)
    cold[torch.randperm(items, generator=generator)[:6] + 1] = True
    output[:, cold] -= 1.0  # cold items score lower, as they do in a trained model
    exclude = torch.rand(users, items + 1, generator=generator) < 0.2
    exclude[:, 0] = False
    for target in range(1, items + 1):
        targets = torch.full((users,), target)
        ranked = exclude.clone()
        ranked[:, target] = False  # the target is always ranked (as in evaluation)
        moved = cold_channel.with_cold_slot(output, cold, ranked, slot, gate)
        wanted = reference_ranks(output, cold, ranked, slot, gate)
        assert target_ranks(moved, targets, ranked).tolist() == [w[target] for w in wanted]
        assert ((moved != output).sum(1) <= 1).all()  # only the moved item's score changes


def test_a_cold_item_outside_the_gate_or_already_above_its_slot_stays(cold_channel):
    output = torch.tensor([[-torch.inf, 5.0, 4.0, 3.0, 2.0, 1.0]])
    cold = torch.tensor([False, False, False, False, True, True])
    exclude = torch.zeros_like(output, dtype=torch.bool)
    assert torch.equal(cold_channel.with_cold_slot(output, cold, exclude, 2, 3), output)
    assert torch.equal(cold_channel.with_cold_slot(output, cold, exclude, 4, math.inf), output)
    moved = cold_channel.with_cold_slot(output, cold, exclude, 1, math.inf)
    assert moved.argmax().item() == 4 and (moved[0, :4] == output[0, :4]).all()


def test_a_user_without_a_rankable_cold_item_keeps_the_output(cold_channel):
    output = torch.tensor([[-torch.inf, 5.0, 4.0, 3.0, 2.0]])
    cold = torch.tensor([False, False, False, True, False])
    exclude = torch.tensor([[False, False, False, True, False]])  # the cold item is in the history
    assert torch.equal(cold_channel.with_cold_slot(output, cold, exclude, 1, math.inf), output)


def test_a_model_that_scores_every_cold_item_alike_picks_one_at_random(cold_channel):
    """A zero ID row gives every cold item the same score: the pick must not follow the ids."""
    users, items = 2000, 10
    output = torch.linspace(9.0, 1.0, items + 1).repeat(users, 1)
    output[:, 0] = -torch.inf
    cold = torch.zeros(items + 1, dtype=torch.bool)
    cold[[3, 7, 9]] = True
    output[:, cold] = 0.0  # all tied, below every warm item
    exclude = torch.zeros_like(output, dtype=torch.bool)
    moved = cold_channel.with_cold_slot(output, cold, exclude, 1, math.inf)
    picked = moved.argmax(1)
    counts = torch.bincount(picked, minlength=items + 1)[[3, 7, 9]]
    assert counts.sum() == users and (counts > users / 3 - 150).all()


def test_on_one_split_no_sample_is_placed_by_its_own_target(cold_channel):
    """The valid judgement of the calibrated slot calibrates each half on the other half: moving
    one sample's target changes the fit for other samples, never that sample's own list."""
    generator = torch.Generator().manual_seed(11)
    users, items = 400, 30
    output = torch.randn(users, items + 1, generator=generator) * 3
    output[:, 0] = -torch.inf
    cold = torch.zeros(items + 1, dtype=torch.bool)
    cold[1:6] = True
    exclude = torch.zeros(users, items + 1, dtype=torch.bool)
    targets = output[:, 1:].argmax(1) + 1  # the model's top item is the target: well calibrated
    scores = {"output": output, "exclude": exclude, "targets": targets}
    base = cold_channel.cross_fitted_scores(scores, cold)
    for row in (0, 1, 2, 3):
        changed = targets.clone()
        changed[row] = cold.nonzero()[0, 0]  # now a cold target
        again = cold_channel.cross_fitted_scores({**scores, "targets": changed}, cold)
        assert torch.equal(again[row], base[row])
        assert (again != base).any(1).sum() > 0  # the changed target did move the other half's fit
