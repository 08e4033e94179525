"""New items in a top-K list: where a model may place an item it never trained on.

A new item (one with no training interaction: held out by the cold-item protocol, or added to the
catalogue after training) gets its score from text alone (a teacher's text part, a distilled
student's text-made row), on a scale of its own, so the plain output almost never puts one in a
top 10. The **calibrated slot** places, per user, the model's best-scored new item (the pick) at
the place in the top K where it adds most expected NDCG@K, or leaves the list as it is:

* each item's chance of being the user's target is read from the model's own output by a
  logistic fit on a split's targets (`Calibration`: Platt scaling on the item's log-softmax among
  the items of its kind and its place in the list), one fit for learnt items, one for new ones;
* inserting the pick at place p moves the items at p..K down one place, so its expected gain is
  P(pick) d(p) - sum over j >= p of P(item j) (d(j) - d(j+1)), d(j) = 1 / log2(j + 1); the pick
  is only ever promoted.

`bench.quality.cold_channel` measures it (and other placements) for any model; the student's
`recommend` command and service apply it (`sasrec.recommend`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

K = 10  # the list a calibrated slot fills: NDCG@10's


@dataclass(frozen=True)
class ColdPick:
    """Each row's best-scored new item under a model's output: ``ranked`` (S, N+1) the output
    with unrankable items at -inf, ``best`` (S,) its column, ``score`` (S,) (-inf: no rankable
    new item), ``own_rank`` (S,) its 0-based place in the output."""

    ranked: torch.Tensor
    best: torch.Tensor
    score: torch.Tensor
    own_rank: torch.Tensor

    @classmethod
    def of(cls, output: torch.Tensor, new: torch.Tensor, exclude: torch.Tensor) -> ColdPick:
        """``new`` (N+1,) bool, ``exclude`` (S, N+1) bool: items not ranked (the history)."""
        ranked = output.masked_fill(exclude, -torch.inf)
        ranked[:, 0] = -torch.inf
        candidates = ranked.masked_fill(~new, -torch.inf)
        score = candidates.max(1).values
        own_rank = (ranked > score.unsqueeze(1)).sum(1)
        return cls(ranked, tied_best(candidates, score), score, own_rank)

    def others(self) -> torch.Tensor:
        """(S, N+1) the ranked scores without the pick."""
        return self.ranked.scatter(1, self.best.unsqueeze(1), -torch.inf)


def tied_best(candidates: torch.Tensor, best_score: torch.Tensor) -> torch.Tensor:
    """(S,) one column per row among those scoring ``best_score``, drawn uniformly (seeded): a
    model that scores every new item alike (a zero ID row) has no pick, and the lowest id would
    lend it whatever order the ids were given in."""
    tied = (candidates == best_score.unsqueeze(1)) & best_score.isfinite().unsqueeze(1)
    tied[:, 0] |= ~tied.any(1)  # a row with no rankable new item: any column, it is not moved
    generator = torch.Generator().manual_seed(0)
    return torch.multinomial(tied.float(), 1, generator=generator).squeeze(1)


def placed_at(output: torch.Tensor, pick: ColdPick, slots: torch.Tensor) -> torch.Tensor:
    """The output with each row's pick scored between the items now at 1-based ``slots`` - 1 and
    ``slots`` of the list without it (slot 0: the row is left as it is). Callers only promote
    (a slot at or above the pick's own place), so the item at ``slots`` always exists."""
    rows = torch.arange(len(output))
    top = pick.others().topk(int(slots.max().clamp(min=1)), dim=1).values
    at = (slots - 1).clamp(min=0)
    below = top[rows, at]
    above = torch.where(slots > 1, top[rows, (at - 1).clamp(min=0)], below + below.abs() + 1.0)
    placed = torch.where(above > below, (above + below) / 2, above)
    moved = output.clone()
    moved[rows, pick.best] = torch.where(slots > 0, placed, output[rows, pick.best])
    return moved


@dataclass(frozen=True)
class Calibration:
    """P(an item is the user's target) = sigmoid(a z + c log(1 + r) + b) from its log-softmax z
    among the items of its kind and its 0-based place r in the list (``list_features``; a
    logistic fit: Platt scaling with the place as a second feature), with one (a, c, b) for
    learnt items and one for new items, whose scores come from text."""

    warm: tuple[float, float, float]
    cold: tuple[float, float, float]

    def probability(self, x: torch.Tensor, is_new: torch.Tensor) -> torch.Tensor:
        """``x`` (..., 2) = [z, log(1 + r)], ``is_new`` broadcast to x's leading shape."""
        weights = torch.where(
            is_new.unsqueeze(-1),
            torch.tensor(self.cold, dtype=x.dtype),
            torch.tensor(self.warm, dtype=x.dtype),
        )
        logit = (x * weights[..., :2]).sum(-1) + weights[..., 2]
        return torch.sigmoid(logit).masked_fill(x[..., 0].isneginf(), 0.0)

    def to_dict(self) -> dict:
        return {"warm": list(self.warm), "cold": list(self.cold)}

    @classmethod
    def from_dict(cls, values: dict) -> Calibration:
        warm, cold = (tuple(float(v) for v in values[kind]) for kind in ("warm", "cold"))
        if len(warm) != 3 or len(cold) != 3:
            raise ValueError("a calibration has three weights (a, c, b) for warm and for cold")
        return cls(warm, cold)

    def __str__(self) -> str:
        warm, cold = (" ".join(f"{v:.2f}" for v in w) for w in (self.warm, self.cold))
        return f"sigmoid(a z + c log(1 + r) + b), (a c b): warm {warm}, cold {cold}"


def list_features(scores: dict, new: torch.Tensor) -> tuple[ColdPick, dict]:
    """(the pick, {"pick x" (S, 2) and "top x" (S, K, 2): [z, log(1 + r)] of the pick and of the
    top K items without it, "top" (S, K) their columns}) of ``scores`` = {"output", "exclude"}
    (S, N+1); z = the log-softmax among the ranked items of the item's own kind (learnt or new:
    P(target) = P(kind) P(item | kind), and the two kinds' scores are on scales of their own),
    r = the 0-based place in the output (the pick's own, the others' in the list without it)."""
    pick = ColdPick.of(scores["output"], new, scores["exclude"])
    within_warm = pick.ranked.masked_fill(new, -torch.inf).log_softmax(1)
    within_new = pick.ranked.masked_fill(~new, -torch.inf).log_softmax(1)
    z = torch.where(new, within_new, within_warm).nan_to_num(nan=-torch.inf)  # none ranked
    top = pick.others().topk(K, dim=1).indices
    places = torch.arange(K, dtype=z.dtype).expand(len(top), K)
    pick_z = z.gather(1, pick.best.unsqueeze(1)).squeeze(1)
    features = {
        "pick x": torch.stack([pick_z, pick.own_rank.to(z.dtype).log1p()], -1),
        "top x": torch.stack([z.gather(1, top), places.log1p()], -1),
        "top": top,
    }
    return pick, features


def logistic_fit(x: torch.Tensor, hit: torch.Tensor) -> tuple[float, float, float]:
    """Weights and bias of sigmoid(x w + b) by maximum likelihood with Platt's smoothed targets,
    so a class that never hits (no new target reached) gets a small probability, not zero."""
    positives = hit.sum().item()
    target = torch.where(hit, (positives + 1) / (positives + 2), 1 / (len(hit) - positives + 2))
    x = x.double()
    params = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def loss():
        optimiser.zero_grad()
        logit = x @ params[:2] + params[2]
        value = torch.nn.functional.binary_cross_entropy_with_logits(logit, target.double())
        value.backward()
        return value

    optimiser.step(loss)
    return tuple(params.tolist())


def calibration_rows(scores: dict, new: torch.Tensor) -> dict:
    """What a fit needs of ``scores`` = {"output", "exclude", "targets"}: the features of the top
    K learnt items of each list and of the pick, and whether each is the target. Rows of several
    batches concatenate (``torch.cat`` per key), so a split is fitted without holding its scores."""
    pick, features = list_features(scores, new)
    targets = scores["targets"]
    top_x = features["top x"]
    warm = ~new[features["top"]] & top_x[..., 0].isfinite()
    has_pick = pick.score.isfinite()
    return {
        "warm x": top_x[warm],
        "warm hit": (features["top"] == targets.unsqueeze(1))[warm],
        "pick x": features["pick x"][has_pick],
        "pick hit": (pick.best == targets)[has_pick],
    }


def fit_rows(rows: dict) -> Calibration:
    return Calibration(
        warm=logistic_fit(rows["warm x"], rows["warm hit"]),
        cold=logistic_fit(rows["pick x"], rows["pick hit"]),
    )


def fit_calibration(scores: dict, new: torch.Tensor) -> Calibration:
    """Calibrate on one split's targets: the top K learnt items of each list, and the pick."""
    return fit_rows(calibration_rows(scores, new))


def calibrated_slots(scores: dict, new: torch.Tensor, calibration: Calibration):
    """(the pick, (S,) 1-based slots, 0 = stay): per user, the place in the top K where the pick
    maximises the expected NDCG@K under ``calibration``, when that beats its own place."""
    pick, features = list_features(scores, new)
    p_top = calibration.probability(features["top x"], new[features["top"]])
    p_pick = calibration.probability(features["pick x"], torch.ones(len(pick.best), dtype=bool))
    discount = 1.0 / torch.log2(torch.arange(2, K + 2, dtype=torch.float64))
    step = discount - torch.cat([discount[1:], torch.zeros(1, dtype=torch.float64)])
    pushed_down = (p_top * step).flip(1).cumsum(1).flip(1)  # sum over j >= p
    gain = p_pick.unsqueeze(1) * discount - pushed_down  # (S, K): insert at p = column + 1
    own = pick.own_rank
    plain_gain = torch.where(own < K, gain.gather(1, own.clamp(max=K - 1).unsqueeze(1))[:, 0], 0)
    promotions = gain.masked_fill(torch.arange(K) >= own.unsqueeze(1), -torch.inf)
    best_gain, column = promotions.max(1)
    move = pick.score.isfinite() & (best_gain > plain_gain)
    return pick, torch.where(move, column + 1, 0)


def with_calibrated_slot(scores: dict, new: torch.Tensor, calibration: Calibration):
    """(S, N+1) ``scores["output"]`` with each row's pick moved to its calibrated slot."""
    pick, slots = calibrated_slots(scores, new, calibration)
    return placed_at(scores["output"], pick, slots)
