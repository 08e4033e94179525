"""Imitation losses and lambda decay against values worked out by hand (plain Python math)."""

from __future__ import annotations

import math

import pytest
import torch

from ilora.config import DECAY_TYPES, IMITATION_LOSSES
from ilora.imitation import EXP_FLOOR, DecaySchedule, decayed_lambda, imitation_loss

# Row 0 is padding with a huge difference: any leak of it into a loss would be obvious.
CUR = [[9.0, 9.0], [1.0, 2.0], [3.0, 2.0]]
REF = [[-9.0, -9.0], [2.0, 2.0], [3.0, 0.0]]
# kept rows 1, 2: differences cur - ref = (-1, 0) and (0, 2)


def tensors():
    return torch.tensor(CUR), torch.tensor(REF)


def cos(a, b):
    return (a[0] * b[0] + a[1] * b[1]) / (math.hypot(*a) * math.hypot(*b))


def info_nce(cur_rows, ref_rows, t):
    """Mean over rows of -log softmax(cos(c_i, r_j) / t)[i]."""
    total = 0.0
    for i, c in enumerate(cur_rows):
        logits = [cos(c, r) / t for r in ref_rows]
        total += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    return total / len(cur_rows)


HAND = {
    "mse": (1 + 0 + 0 + 4) / 4,
    "l1": (1 + 0 + 0 + 2) / 4,
    # delta=1: |d|<=1 -> d^2/2, else |d| - 1/2  =>  0.5, 0, 0, 1.5
    "huber": (0.5 + 0 + 0 + 1.5) / 4,
    "cosine": 1 - (6 / (math.sqrt(5) * math.sqrt(8)) + 9 / (math.sqrt(13) * 3)) / 2,
    "contrastive": info_nce([CUR[1], CUR[2]], [REF[1], REF[2]], 0.1),
}


@pytest.mark.parametrize("kind", IMITATION_LOSSES)
def test_imitation_loss_excludes_padding_row(kind):
    cur, ref = tensors()
    assert imitation_loss(cur, ref, kind).item() == pytest.approx(HAND[kind], rel=1e-5)


def test_contrastive_hand_value_and_temperature():
    cur, ref = tensors()
    # t = 0.1: row 1 logits cos(c1,r1)/t, cos(c1,r2)/t = 6/sqrt(40)/0.1, 1/sqrt(5)/0.1
    c1 = 6 / math.sqrt(40) / 0.1, 1 / math.sqrt(5) / 0.1
    c2 = 5 / math.sqrt(26) / 0.1, 3 / math.sqrt(13) / 0.1
    ce1 = -c1[0] + math.log(math.exp(c1[0]) + math.exp(c1[1]))
    ce2 = -c2[1] + math.log(math.exp(c2[0]) + math.exp(c2[1]))
    assert imitation_loss(cur, ref, "contrastive").item() == pytest.approx(
        (ce1 + ce2) / 2, rel=1e-5
    )
    t1 = imitation_loss(cur, ref, "contrastive", temperature=1.0).item()
    assert t1 == pytest.approx(info_nce([CUR[1], CUR[2]], [REF[1], REF[2]], 1.0), rel=1e-5)


# rows = {2} only (0 dropped, duplicates collapsed): difference (0, 2)
ROW2 = {
    "mse": (0 + 4) / 2,
    "l1": (0 + 2) / 2,
    "huber": (0 + 1.5) / 2,
    "cosine": 1 - 9 / (math.sqrt(13) * 3),
    "contrastive": 0.0,  # one item: its only candidate is itself -> CE = 0
}


@pytest.mark.parametrize("kind", IMITATION_LOSSES)
def test_rows_subset_drops_padding_and_duplicates(kind):
    cur, ref = tensors()
    rows = torch.tensor([[2, 0], [2, 2]])
    assert imitation_loss(cur, ref, kind, rows=rows).item() == pytest.approx(
        ROW2[kind], rel=1e-5, abs=1e-7
    )


@pytest.mark.parametrize("kind", IMITATION_LOSSES)
def test_only_padding_rows_gives_attached_zero(kind):
    cur, ref = tensors()
    cur.requires_grad_(True)
    loss = imitation_loss(cur, ref, kind, rows=torch.tensor([0, 0]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(cur.grad, torch.zeros_like(cur))


@pytest.mark.parametrize("kind", IMITATION_LOSSES)
def test_gradient_reaches_current_only(kind):
    cur, ref = tensors()
    cur.requires_grad_(True)
    ref.requires_grad_(True)
    imitation_loss(cur, ref, kind).backward()
    assert ref.grad is None
    assert torch.equal(cur.grad[0], torch.zeros(2))  # padding row untouched
    assert cur.grad[1:].abs().sum() > 0


def test_mse_gradient_by_hand():
    cur, ref = tensors()
    cur.requires_grad_(True)
    imitation_loss(cur, ref, "mse").backward()
    # d/dc mean(d^2) over 4 entries = 2 d / 4
    expected = [[0.0, 0.0], [2 * -1 / 4, 0.0], [0.0, 2 * 2 / 4]]
    assert torch.allclose(cur.grad, torch.tensor(expected))


def test_identical_tables_give_zero_for_distances():
    cur, _ = tensors()
    for kind in ("mse", "l1", "huber", "cosine"):
        assert imitation_loss(cur, cur.clone(), kind).item() == pytest.approx(0.0, abs=1e-6)


def test_imitation_loss_errors():
    cur, ref = tensors()
    with pytest.raises(ValueError, match="mse, cosine, l1, huber, contrastive"):
        imitation_loss(cur, ref, "kl")
    with pytest.raises(ValueError, match="shape"):
        imitation_loss(cur, ref[:2], "mse")
    with pytest.raises(ValueError, match="temperature"):
        imitation_loss(cur, ref, "contrastive", temperature=0.0)


# total_steps = 10; steps 0, 5, 10, 25 -> p = 0, 0.5, 1, 1 (clamped)
STEPS = (0, 5, 10, 25)
DECAY_HAND = {
    (0.1, "none"): [1.0, 1.0, 1.0, 1.0],
    (0.1, "linear"): [1.0, 1.0 - 0.9 * 0.5, 0.1, 0.1],
    (0.1, "cosine"): [1.0, 0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2, 0.1, 0.1],
    (0.1, "exponential"): [1.0, 0.1**0.5, 0.1, 0.1],
    (0.0, "none"): [1.0, 1.0, 1.0, 1.0],
    (0.0, "linear"): [1.0, 0.5, 0.0, 0.0],
    (0.0, "cosine"): [1.0, 0.5, 0.0, 0.0],
    # lambda_min 0 is lifted to 1e-8 * lambda0 on the way, then lands exactly on 0 at p = 1
    (0.0, "exponential"): [1.0, math.sqrt(1e-8), 0.0, 0.0],
}


@pytest.mark.parametrize(("lambda_min", "kind"), list(DECAY_HAND))
def test_decay_by_hand(lambda_min, kind):
    got = [decayed_lambda(s, 10, 1.0, lambda_min, kind) for s in STEPS]
    assert got == pytest.approx(DECAY_HAND[(lambda_min, kind)], rel=1e-9, abs=1e-12)


def test_exponential_floor_is_tiny_but_positive_before_the_end():
    assert EXP_FLOOR == 1e-8
    v = decayed_lambda(99, 100, 2.0, 0.0, "exponential")
    assert v == pytest.approx(2.0 * (1e-8) ** 0.99)
    assert 0 < v < 1e-7
    assert decayed_lambda(100, 100, 2.0, 0.0, "exponential") == 0.0


@pytest.mark.parametrize("kind", DECAY_TYPES)
def test_lambda0_zero_is_zero_everywhere(kind):
    assert all(decayed_lambda(s, 10, 0.0, 0.1, kind) == 0.0 for s in STEPS)


@pytest.mark.parametrize("kind", DECAY_TYPES)
def test_decay_is_monotone_non_increasing(kind):
    vals = [decayed_lambda(s, 50, 1.0, 0.05, kind) for s in range(60)]
    assert all(a >= b - 1e-12 for a, b in zip(vals, vals[1:], strict=False))


def test_decay_errors():
    with pytest.raises(ValueError, match="none, linear, cosine, exponential"):
        decayed_lambda(0, 10, 1.0, 0.1, "step")
    for bad in (0, -1):
        with pytest.raises(ValueError, match="total_steps"):
            decayed_lambda(0, bad, 1.0, 0.1, "linear")
    with pytest.raises(ValueError, match=">= 0"):
        decayed_lambda(0, 10, -1.0, 0.1, "linear")


def test_schedule_resolves_to_real_total_steps():
    sched = DecaySchedule(lambda0=1.0, lambda_min=0.1, kind="linear")
    with pytest.raises(ValueError, match="resolve"):
        sched(0)
    run = sched.resolve(20)  # e.g. trainer.estimated_stepping_batches
    assert run.decay_steps == 20 and sched.decay_steps is None
    assert [run(0), run(10), run(20), run(40)] == pytest.approx([1.0, 0.55, 0.1, 0.1])


def test_schedule_explicit_decay_steps_wins():
    run = DecaySchedule(1.0, 0.0, "cosine", decay_steps=4).resolve(1000)
    assert run.decay_steps == 4
    assert run(2) == pytest.approx(0.5)
    assert run(4) == pytest.approx(0.0, abs=1e-12)


def test_schedule_validation():
    with pytest.raises(ValueError, match="none, linear, cosine, exponential"):
        DecaySchedule(1.0, 0.1, "warmup")
    with pytest.raises(ValueError, match="decay_steps"):
        DecaySchedule(1.0, 0.1, "linear", decay_steps=0)
    with pytest.raises(ValueError, match=">= 0"):
        DecaySchedule(1.0, -0.1, "linear")
    sched = DecaySchedule(1.0, 0.1, "linear")
    for bad in (0, float("inf")):
        with pytest.raises(ValueError, match="total_steps"):
            sched.resolve(bad)
