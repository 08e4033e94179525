"""runkit.new_items: the calibrated new-item slot puts a model's best-scored new item where it adds
most expected NDCG@10 under a logistic calibration of the model's own output, or nowhere; the fit
recovers known weights, works batch by batch, and round-trips through its JSON form."""

from __future__ import annotations

import math

import torch

from runkit import new_items


def expected_dcg(order, probability, k=10):
    return sum(probability[item] / math.log2(place + 2) for place, item in enumerate(order[:k]))


def test_the_calibrated_slot_is_the_place_of_most_expected_ndcg_or_none():
    """Per row, by hand: every list the pick can be promoted to (places 1..10 above its own) and
    the output itself; the chosen one has the largest expected DCG@10 under the calibration."""
    generator = torch.Generator().manual_seed(7)
    users, items = 60, 40
    output = torch.randn(users, items + 1, generator=generator) * 2
    output[:, 0] = -torch.inf
    cold = torch.zeros(items + 1, dtype=torch.bool)
    cold[torch.randperm(items, generator=generator)[:8] + 1] = True
    output[:, cold] -= torch.rand(users, 1, generator=generator) * 4  # some rows: a strong pick
    exclude = torch.rand(users, items + 1, generator=generator) < 0.2
    exclude[:, 0] = False
    scores = {"output": output, "exclude": exclude, "targets": torch.ones(users, dtype=torch.long)}
    calibration = new_items.Calibration(warm=(1.5, -0.3, 1.0), cold=(0.8, -0.1, 0.5))
    moved = new_items.with_calibrated_slot(scores, cold, calibration)
    promoted = 0
    for row in range(users):
        ranked = [i for i in range(1, items + 1) if not exclude[row, i]]
        order = sorted(ranked, key=lambda i: -output[row, i].item())
        pick = next(i for i in order if cold[i])
        others = [i for i in order if i != pick]
        log_softmax = {}  # among the ranked items of the same kind (learnt or cold)
        for kind in (True, False):
            same = [i for i in ranked if cold[i] == kind]
            z = torch.log_softmax(output[row, same], 0).tolist()
            log_softmax.update(zip(same, z, strict=True))

        def p(item, place, kind_cold, lsm=log_softmax):
            a, c, b = calibration.cold if kind_cold else calibration.warm
            return 1 / (1 + math.exp(-(a * lsm[item] + c * math.log1p(place) + b)))

        chance = {item: p(item, place, cold[item]) for place, item in enumerate(others[:10])}
        chance[pick] = p(pick, order.index(pick), True)
        lists = [order] + [others[:s] + [pick] + others[s:] for s in range(order.index(pick))]
        wanted = max(lists[:11], key=lambda o: expected_dcg(o, chance))
        got = sorted(ranked, key=lambda i: -moved[row, i].item())
        assert got[:10] == wanted[:10], row
        promoted += wanted is not order
    assert 0 < promoted < users  # both cases are exercised


def test_the_logistic_fit_recovers_known_weights():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(20_000, 2, generator=generator)
    truth = torch.tensor([1.5, -0.7]), -1.0
    hit = torch.rand(20_000, generator=generator) < torch.sigmoid(x @ truth[0] + truth[1])
    a, c, b = new_items.logistic_fit(x, hit)
    assert abs(a - 1.5) < 0.1 and abs(c + 0.7) < 0.1 and abs(b + 1.0) < 0.1


def test_a_class_that_never_hits_gets_a_small_finite_probability():
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    weights = new_items.logistic_fit(x, torch.zeros(500, dtype=torch.bool))
    probability = new_items.Calibration(warm=weights, cold=weights).probability(
        x, torch.zeros(500, dtype=torch.bool)
    )
    assert (probability > 0).all() and probability.mean() < 0.01


def test_a_fit_from_batches_equals_the_fit_on_the_whole_split():
    """calibration_rows of batches, concatenated, fit as the whole split's scores do (what lets
    `recommend --fit-new-item-slot` fit a large catalogue without holding a split's scores)."""
    generator = torch.Generator().manual_seed(5)
    users, items = 300, 25
    output = torch.randn(users, items + 1, generator=generator) * 2
    output[:, 0] = -torch.inf
    new = torch.zeros(items + 1, dtype=torch.bool)
    new[20:] = True
    exclude = torch.rand(users, items + 1, generator=generator) < 0.1
    exclude[:, 0] = False
    targets = torch.where(
        torch.rand(users, generator=generator) < 0.3,
        torch.randint(20, items + 1, (users,), generator=generator),
        output[:, 1:20].argmax(1) + 1,
    )
    scores = {"output": output, "exclude": exclude, "targets": targets}
    whole = new_items.fit_calibration(scores, new)
    parts = [
        new_items.calibration_rows({k: v[lo : lo + 64] for k, v in scores.items()}, new)
        for lo in range(0, users, 64)
    ]
    batched = new_items.fit_rows({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
    for got, want in ((batched.warm, whole.warm), (batched.cold, whole.cold)):
        assert all(math.isclose(g, w, abs_tol=1e-6) for g, w in zip(got, want, strict=True))
    assert whole.cold[0] > 0  # new targets are the higher-scored new items here: a > 0
    again = new_items.Calibration.from_dict(whole.to_dict())
    assert again == whole
