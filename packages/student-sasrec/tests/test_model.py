"""SASRec invariants: padding, causality, tied scores, the CE objective."""

import math

import pytest
import torch
import torch.nn.functional as F

from sasrec.model import SASRec, SASRecConfig, next_item_cross_entropy


@pytest.fixture
def model():
    torch.manual_seed(0)
    return SASRec(
        SASRecConfig(
            num_items=30, hidden_size=16, num_blocks=2, num_heads=2, dropout=0.0, max_seq_len=12
        )
    ).eval()


def left_pad(seq, width):
    return torch.tensor([[0] * (width - len(seq)) + list(seq)])


def test_scores_same_alone_and_batched_with_longer_sequences(model):
    short, long = [3, 7, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    alone = model.score(left_pad(short, 12))
    batch = torch.cat([left_pad(short, 12), left_pad(long, 12)])
    together = model.score(batch)
    narrow = model.score(left_pad(short, 4))  # less padding must not matter either
    torch.testing.assert_close(alone[0, 1:], together[0, 1:], rtol=0, atol=1e-5)
    torch.testing.assert_close(alone[0, 1:], narrow[0, 1:], rtol=0, atol=1e-5)


def test_later_items_never_change_earlier_outputs(model):
    seq = torch.tensor([[0, 0, 4, 8, 15, 16, 23, 29]])
    changed = seq.clone()
    changed[0, 6:] = torch.tensor([1, 2])
    a, b = model.encode(seq), model.encode(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_prefix_state_inside_a_training_sequence_equals_the_prefix_scored_alone(model):
    seq = [5, 6, 7, 8, 9]
    states = model.encode(left_pad(seq, 12))
    for t in range(1, len(seq) + 1):
        alone = model.encode(left_pad(seq[:t], 12))[:, -1]
        torch.testing.assert_close(states[:, 12 - len(seq) + t - 1], alone, rtol=0, atol=1e-5)


def test_scores_are_tied_to_the_item_table_and_padding_is_never_scored(model):
    history = left_pad([2, 4, 6], 12)
    scores = model.score(history)
    assert scores.shape == (1, 31) and scores[0, 0] == -math.inf
    manual = model.last_state(history) @ model.item_emb.weight.T
    torch.testing.assert_close(scores[0, 1:], manual[0, 1:])


def test_cross_entropy_ignores_padding_targets_and_never_predicts_padding():
    torch.manual_seed(1)
    states, table = torch.randn(2, 3, 4), torch.randn(6, 4)
    targets = torch.tensor([[0, 2, 5], [0, 0, 1]])
    loss = next_item_cross_entropy(states, targets, table)
    picked = [(0, 1, 2), (0, 2, 5), (1, 2, 1)]
    manual = sum(-F.log_softmax(states[b, t] @ table[1:].T, 0)[y - 1] for b, t, y in picked) / 3
    torch.testing.assert_close(loss, manual)


def test_bad_head_count_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        SASRec(SASRecConfig(num_items=5, hidden_size=10, num_heads=3))


def test_scores_stay_fp32_under_bf16_autocast_so_items_do_not_tie():
    """trainer.precision=bf16-mixed runs validation under autocast: bf16 scores over thousands of
    items tie, and ties count against the target."""
    torch.manual_seed(0)
    model = SASRec(
        SASRecConfig(num_items=3000, hidden_size=32, num_blocks=1, num_heads=1, max_seq_len=8)
    ).eval()
    history = torch.randint(1, 3001, (4, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model.score(history)
        rounded = model.last_state(history) @ model.item_table().T  # what autocast gives
    assert scores.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    assert all(len(row[1:].unique()) == 3000 for row in scores)
    assert all(len(row[1:].unique()) < 3000 for row in rounded)


def test_cross_entropy_in_row_blocks_equals_the_whole_matrix_with_its_gradients():
    """A catalogue too large for one scores matrix: the blocked loss and its gradients (states and
    item table) are the unblocked ones."""
    torch.manual_seed(3)
    states = torch.randn(4, 9, 8, requires_grad=True)
    table = torch.randn(31, 8, requires_grad=True)
    targets = torch.randint(0, 31, (4, 9))  # 0 = no target at that position
    whole = next_item_cross_entropy(states, targets, table)
    grads = torch.autograd.grad(whole, (states, table))
    blocked = next_item_cross_entropy(states, targets, table, budget=5 * 31)  # 5 rows per block
    torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-6)
    for got, want in zip(torch.autograd.grad(blocked, (states, table)), grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
