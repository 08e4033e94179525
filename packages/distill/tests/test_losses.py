"""DLLM2Rec losses against hand-computed references (math.exp / math.log, not the code under
test)."""

import math

import pytest
import torch

from distill.losses import (
    CollaborativeEmbeddingDistillation,
    DLLM2RecLoss,
    importance_weights,
    ranking_distillation_loss,
    sample_negatives,
)

# One row, K=3, N=5. Column 0 (padding) scores highest on purpose: it must never count.
ITEMS = torch.tensor([[2, 5, 1]])
T_SCORES = torch.tensor([[3.0, 1.0, 0.5]])
# Student top-3 over items 1..5 = {2 (0.5), 3 (0.3), 5 (0.2)} -> overlap with teacher = {2, 5}.
# Had padding been ranked, the top-3 would be {0, 2, 3} and item 5 would not overlap.
S_SCORES = torch.tensor([[9.0, 0.1, 0.5, 0.3, -1.0, 0.2]])

ONLY_P = {"gamma_position": 1.0, "gamma_confidence": 0.0, "gamma_consistency": 0.0}
ONLY_C = {"gamma_position": 0.0, "gamma_confidence": 1.0, "gamma_consistency": 0.0}
ONLY_S = {"gamma_position": 0.0, "gamma_confidence": 0.0, "gamma_consistency": 1.0}


def _w(items=ITEMS, t=T_SCORES, s=S_SCORES, **kw):
    return importance_weights(items, t, s, **kw)


def _close(actual, expected, tol=1e-6):
    assert torch.allclose(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol), actual


def _norm(xs):
    z = sum(xs)
    return [x / z for x in xs]


# --- importance weights ------------------------------------------------------------------


def test_position_weight_alone():
    _close(_w(**ONLY_P), [_norm([1.0, math.exp(-1), math.exp(-2)])])
    _close(_w(**ONLY_P, lambda_position=2.0), [_norm([1.0, math.exp(-0.5), math.exp(-1)])])


def test_confidence_weight_alone():
    _close(_w(**ONLY_C), [_norm([math.exp(3.0), math.exp(1.0), math.exp(0.5)])])


def test_consistency_weight_alone_excludes_padding_column():
    _close(_w(**ONLY_S), [[0.5, 0.5, 0.0]])


def test_combined_default_weights():
    wp = _norm([1.0, math.exp(-1), math.exp(-2)])
    wc = _norm([math.exp(3.0), math.exp(1.0), math.exp(0.5)])
    ws = [0.5, 0.5, 0.0]
    # Each component sums to 1, so the final normaliser is 0.3 + 0.5 + 0.1 = 0.9.
    expected = [(0.3 * p + 0.5 * c + 0.1 * s) / 0.9 for p, c, s in zip(wp, wc, ws, strict=True)]
    w = _w()
    _close(w, [expected])
    _close(w.sum(-1), [1.0])


def test_original_consistency_weight_is_one_per_agreeing_item_before_the_final_normalisation():
    """DLLM2Rec's code adds gamma_s * 1 per agreeing item, so the consistency mass grows with the
    overlap (here 2 items: 0.2 of 1.0 instead of 0.1 of 0.9)."""
    wp = _norm([1.0, math.exp(-1), math.exp(-2)])
    wc = _norm([math.exp(3.0), math.exp(1.0), math.exp(0.5)])
    expected = [
        0.3 * p + 0.5 * c + 0.1 * s for p, c, s in zip(wp, wc, [1.0, 1.0, 0.0], strict=True)
    ]
    _close(_w(consistency="original"), [_norm(expected)])
    with pytest.raises(ValueError, match="consistency form"):
        _w(consistency="sum")


def test_consistency_can_read_another_score_matrix():
    """With item 2 masked (history) the student's top-3 is {3, 5, 1}: the overlap is {5, 1}."""
    masked = S_SCORES.clone()
    masked[0, 2] = -math.inf
    _close(_w(**ONLY_S, consistency_scores=masked), [[0.0, 0.5, 0.5]])


def test_invalid_slots_masked_before_normalisation():
    mask = torch.tensor([[True, False, True]])
    _close(
        _w(**ONLY_P, valid_mask=mask),
        [[1 / (1 + math.exp(-2)), 0.0, math.exp(-2) / (1 + math.exp(-2))]],
    )
    e3, e05 = math.exp(3.0), math.exp(0.5)
    _close(_w(**ONLY_C, valid_mask=mask), [[e3 / (e3 + e05), 0.0, e05 / (e3 + e05)]])
    _close(_w(**ONLY_S, valid_mask=mask), [[1.0, 0.0, 0.0]])  # item 5 masked out
    # Item id 0 is padding whatever the mask says.
    padded = torch.tensor([[2, 0, 1]])
    _close(
        _w(items=padded, **ONLY_P),
        [[1 / (1 + math.exp(-2)), 0.0, math.exp(-2) / (1 + math.exp(-2))]],
    )


def test_zero_guards_give_zeros_not_nan():
    no_overlap = torch.tensor([[0.0, 9.0, 0.0, 0.0, 8.0, 7.0]])  # student top-3 = {1, 4, 5}
    items = torch.tensor([[2, 3, 2]])
    _close(_w(items=items, s=no_overlap, **ONLY_S), [[0.0, 0.0, 0.0]])
    zero_g = {"gamma_position": 0.0, "gamma_confidence": 0.0, "gamma_consistency": 0.0}
    _close(_w(**zero_g), [[0.0, 0.0, 0.0]])
    all_invalid = torch.zeros(1, 3, dtype=torch.bool)
    _close(_w(valid_mask=all_invalid), [[0.0, 0.0, 0.0]])
    # A fully padded row next to a normal one: its zeros must not disturb the other row.
    w = _w(
        items=torch.tensor([[2, 5, 1], [0, 0, 0]]), t=T_SCORES.repeat(2, 1), s=S_SCORES.repeat(2, 1)
    )
    assert torch.isfinite(w).all()
    _close(w[1:], [[0.0, 0.0, 0.0]])
    _close(w[:1].sum(-1), [1.0])


def test_confidence_direction_and_position_monotone():
    # Teacher list deliberately NOT sorted, to isolate the direction of the confidence weight.
    w = _w(t=torch.tensor([[0.1, 2.0, 1.0]]), **ONLY_C)[0]
    assert w[1] > w[2] > w[0]
    w = _w(t=torch.zeros(1, 3), **ONLY_P)[0]
    assert w[0] > w[1] > w[2]


def test_weights_are_not_differentiable():
    s = S_SCORES.clone().requires_grad_(True)
    t = T_SCORES.clone().requires_grad_(True)
    w = importance_weights(ITEMS, t, s)
    assert not w.requires_grad


def test_importance_weights_validation():
    with pytest.raises(ValueError, match="lambda_position"):
        _w(lambda_position=0.0)
    with pytest.raises(ValueError, match=r"\(B,K\)"):
        importance_weights(ITEMS, T_SCORES[:, :2], S_SCORES)


# --- ranking losses ------------------------------------------------------------------------


def _logsig(x):
    return math.log(1.0 / (1.0 + math.exp(-x)))


S2 = [[9.0, 0.1, 0.5, 0.3, -1.0, 0.2], [0.0, 1.0, -2.0, 0.5, 0.0, 1.5]]
W2 = torch.tensor([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]])
ITEMS2 = torch.tensor([[2, 5, 1], [3, 1, 5]])
NEG2 = torch.tensor([[3, 4, 4], [2, 4, 2]])


def test_pointwise_loss_hand_computed():
    s = torch.tensor(S2, requires_grad=True)
    loss = ranking_distillation_loss(s, ITEMS2, W2, NEG2, form="pointwise")
    row0 = -(
        0.5 * (_logsig(0.5) + _logsig(-0.3))
        + 0.3 * (_logsig(0.2) + _logsig(1.0))
        + 0.2 * (_logsig(0.1) + _logsig(1.0))
    )
    row1 = -(1.0 * (_logsig(0.5) + _logsig(2.0)))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    loss.backward()
    # d/ds_2 of row 0: -0.5 * (1 - sigmoid(0.5)) / B
    assert s.grad[0, 2].item() == pytest.approx(-0.5 * (1 - 1 / (1 + math.exp(-0.5))) / 2, rel=1e-6)
    assert s.grad[0, 0].item() == 0.0  # padding never touched


def test_listwise_loss_hand_computed():
    s = torch.tensor(S2, requires_grad=True)
    loss = ranking_distillation_loss(s, ITEMS2, W2, form="listwise")
    log_z0 = math.log(sum(math.exp(x) for x in S2[0][1:]))  # padding (9.0) excluded
    log_z1 = math.log(sum(math.exp(x) for x in S2[1][1:]))
    row0 = -(0.5 * (0.5 - log_z0) + 0.3 * (0.2 - log_z0) + 0.2 * (0.1 - log_z0))
    row1 = -(1.0 * (0.5 - log_z1))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    loss.backward()
    assert s.grad[:, 0].abs().sum().item() == 0.0
    assert s.grad[:, 1:].abs().sum().item() > 0


@pytest.mark.parametrize("form", ["pointwise", "listwise"])
def test_gradient_reaches_scores_but_not_weights(form):
    s = S_SCORES.clone().requires_grad_(True)
    w = importance_weights(ITEMS, T_SCORES, s)
    loss = ranking_distillation_loss(s, ITEMS, w, torch.tensor([[3, 4, 4]]), form=form)
    loss.backward()
    assert not w.requires_grad and w.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("form", ["pointwise", "listwise"])
def test_zero_weight_slot_on_minus_inf_padding_stays_finite(form):
    s = torch.tensor([[float("-inf"), 0.1, 0.5, 0.3, -1.0, 0.2]], requires_grad=True)
    items = torch.tensor([[2, 0, 1]])
    w = importance_weights(items, T_SCORES, s)
    assert w[0, 1] == 0
    loss = ranking_distillation_loss(s, items, w, torch.tensor([[3, 4, 4]]), form=form)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_ranking_loss_validation():
    s = torch.tensor(S2)
    with pytest.raises(ValueError, match="pointwise.*listwise"):
        ranking_distillation_loss(s, ITEMS2, W2, NEG2, form="bpr")
    with pytest.raises(ValueError, match="one negative per teacher item"):
        ranking_distillation_loss(s, ITEMS2, W2, None, form="pointwise")
    with pytest.raises(ValueError, match="one negative per teacher item"):
        ranking_distillation_loss(s, ITEMS2, W2, NEG2[:, :2], form="pointwise")


# --- combined objective ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pointwise", "listwise"])
def test_dllm2rec_loss_combines_components(form):
    s = torch.tensor(S2, requires_grad=True)
    t = torch.tensor([[3.0, 1.0, 0.5], [2.0, 1.0, 0.0]])
    ce = torch.tensor(1.25)
    out = DLLM2RecLoss(form=form)(ce, s, ITEMS2, t, NEG2)
    w = importance_weights(ITEMS2, t, s)
    rank = ranking_distillation_loss(s, ITEMS2, w, NEG2, form=form)
    assert set(out) == {"ce", "rank", "total"}
    assert out["rank"].item() == pytest.approx(rank.item())
    assert out["total"].item() == pytest.approx(1.25 + 0.7 * rank.item())
    out["total"].backward()
    assert s.grad.abs().sum() > 0


def test_rank_average_over_all_samples_counts_unlabeled_ones_as_zero():
    """2 rows with a teacher list out of 8 CE samples: "all" = the per-sample mean where the 6
    unlabeled samples add 0; "labeled" ignores them; with full coverage the two agree."""
    s = torch.tensor(S2)
    t = torch.tensor([[3.0, 1.0, 0.5], [2.0, 1.0, 0.0]])
    ce = torch.tensor(1.0)
    labeled = DLLM2RecLoss(average="labeled")(ce, s, ITEMS2, t, NEG2, num_samples=8)
    every = DLLM2RecLoss(average="all")(ce, s, ITEMS2, t, NEG2, num_samples=8)
    per_row = ranking_distillation_loss(s, ITEMS2, importance_weights(ITEMS2, t, s), NEG2)
    assert labeled["rank"].item() == pytest.approx(per_row.item())
    assert every["rank"].item() == pytest.approx(per_row.item() * 2 / 8)
    assert every["total"].item() == pytest.approx(1.0 + 0.7 * per_row.item() / 4)
    full = DLLM2RecLoss(average="all")(ce, s, ITEMS2, t, NEG2, num_samples=2)
    assert full["rank"].item() == pytest.approx(labeled["rank"].item())
    with pytest.raises(ValueError, match="num_samples"):
        DLLM2RecLoss(average="all")(ce, s, ITEMS2, t, NEG2, num_samples=1)


def test_dllm2rec_loss_rejects_unknown_form_and_average():
    with pytest.raises(ValueError, match="pointwise.*listwise"):
        DLLM2RecLoss(form="pairwise")
    with pytest.raises(ValueError, match="labeled.*all"):
        DLLM2RecLoss(average="batch")


# --- negative sampling ----------------------------------------------------------------------


SEEN = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7], [0, 0, 0, 10]])


def test_negatives_avoid_seen_and_padding():
    neg = sample_negatives(SEEN, 10, 50, torch.Generator().manual_seed(0))
    assert neg.shape == (3, 50) and neg.dtype == torch.long
    assert ((neg >= 1) & (neg <= 10)).all()
    assert not (neg.unsqueeze(-1) == SEEN.unsqueeze(1)).any()


def test_negatives_reproducible_with_seed():
    a = sample_negatives(SEEN, 10, 20, torch.Generator().manual_seed(7))
    b = sample_negatives(SEEN, 10, 20, torch.Generator().manual_seed(7))
    c = sample_negatives(SEEN, 10, 20, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_negatives_fallback_path_and_uniformity():
    # rounds=0 forces the exact fallback; only item 5 is allowed in row 0.
    seen = torch.tensor([[1, 2, 3, 4], [1, 0, 0, 0]])
    neg = sample_negatives(seen, 5, 2000, torch.Generator().manual_seed(0), rounds=0)
    assert (neg[0] == 5).all()
    counts = torch.bincount(neg[1], minlength=6)
    assert counts[0] == 0 and counts[1] == 0
    assert ((counts[2:] - 500).abs() < 100).all()  # uniform over {2,3,4,5}: 500 +- ~22 sd


def test_negatives_errors():
    with pytest.raises(ValueError, match="every item"):
        sample_negatives(torch.tensor([[1, 2, 3]]), 3, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="0..3"):
        sample_negatives(torch.tensor([[1, 4]]), 3, 4)


# --- collaborative embedding distillation ---------------------------------------------------


def _ced(ed_weight=0.3):
    teacher = torch.tensor([[7.0, 7.0], [1.0, 2.0], [-1.0, 0.5]])  # row 0 padding (non-zero!)
    mod = CollaborativeEmbeddingDistillation(teacher, dim=2, ed_weight=ed_weight)
    with torch.no_grad():
        mod.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        mod.proj.bias.copy_(torch.tensor([0.5, -0.5]))
    student = torch.tensor([[0.0, 0.0], [0.1, 0.2], [0.3, -0.4]], requires_grad=True)
    return mod, student


def test_embedding_distillation_hand_computed_and_padding_row():
    mod, student = _ced()
    out = mod(student)
    # teacher rows 1,2 = [1, 2], [-1, 0.5]; mean [0, 1.25]; centred [1, 0.75], [-1, -0.75], each of
    # norm 1.25 -> standardised [0.8, 0.6], [-0.8, -0.6].
    # W t + b: row 1 = [0.8 + 0.5, 1.2 - 0.5] = [1.3, 0.7];
    #          row 2 = [-0.8 + 0.5, -1.2 - 0.5] = [-0.3, -1.7]
    _close(
        out, [[0.0, 0.0], [0.1 + 0.3 * 1.3, 0.2 + 0.3 * 0.7], [0.3 - 0.3 * 0.3, -0.4 - 0.3 * 1.7]]
    )
    assert torch.equal(out[0], torch.zeros(2))  # exactly zero despite bias and teacher row 0
    out.sum().backward()
    assert student.grad is not None and mod.proj.weight.grad is not None


def test_embedding_distillation_starts_at_the_plain_student():
    teacher = torch.randn(5, 3) * 40 + 30  # large shared offset, as LLM title states have
    mod = CollaborativeEmbeddingDistillation(teacher, dim=2, ed_weight=0.3)
    student = torch.randn(5, 2)
    assert torch.equal(mod(student), student)  # zero-initialised projection
    items = mod.teacher_items[1:]
    torch.testing.assert_close(items.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    assert items.norm(dim=1).mean().item() == pytest.approx(1.0)
    assert torch.equal(mod.teacher_items[0], torch.zeros(3))


def test_embedding_distillation_identity_fold_and_frozen_teacher():
    mod, student = _ced(ed_weight=0.0)
    assert torch.equal(mod(student), student)
    mod, student = _ced()
    folded = mod.fold(student)
    assert torch.equal(folded, mod(student)) and not folded.requires_grad
    assert "teacher_items" not in mod.state_dict()  # non-persistent buffer, not a parameter
    assert all(p is not mod.teacher_items for p in mod.parameters())
    with pytest.raises(ValueError, match="N\\+1"):
        mod(torch.zeros(4, 2))
