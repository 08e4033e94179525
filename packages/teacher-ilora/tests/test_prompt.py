from __future__ import annotations

import pytest
import torch

from ilora.prompt import DEFAULT_ANSWER_CUE, ITEM_TOKEN, PromptBuilder, ensure_item_token
from recdata.errors import UserError

TITLES = [
    "",  # 0 = padding
    "Toy Story (1995)",
    "Star Wars (1977)",
    "Fargo (1996)",
    "Heat",
    "The incredibly very extremely long title of a movie about a man and a woman in the city "
    "of love and hate part ii (1995)",
    "Casino (1995)",
    "Babe",
    "Seven (1995)",
    "Jumanji (1995)",
    "Clueless (1995)",
    "Braveheart (1995)",
    "Apollo 13 (1995)",
]


def _builder(tok, **kw):
    return PromptBuilder(tok, TITLES, **kw)


def _rows(batch):
    return [
        (ids[mask.bool()].tolist(), slots[mask.bool()].tolist())
        for ids, mask, slots in zip(
            batch["input_ids"], batch["attention_mask"], batch["item_slot_ids"], strict=True
        )
    ]


def test_item_token_added_and_model_resized(tiny_tokenizer, tiny_llm):
    n0 = len(tiny_tokenizer)
    model = tiny_llm(vocab_size=n0).requires_grad_(False)
    tid = ensure_item_token(tiny_tokenizer, model)
    assert tid == n0 and len(tiny_tokenizer) == n0 + 1
    assert tiny_tokenizer.convert_ids_to_tokens(tid) == ITEM_TOKEN
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == n0 + 1 and not emb.requires_grad
    assert ensure_item_token(tiny_tokenizer, model) == tid  # idempotent
    # never split, whatever surrounds it
    assert tiny_tokenizer.encode(f"fargo{ITEM_TOKEN}heat", add_special_tokens=False).count(tid) == 1
    with torch.no_grad():
        model(torch.tensor([[2, tid]]))


def test_one_item_token_per_shown_item(tiny_tokenizer):
    b = _builder(tiny_tokenizer, max_title_tokens=4)
    hists = [[1, 5, 2], [5, 5, 5, 4], [3]]
    batch = b.build(hists)
    tid = b.item_token_id
    for (ids, slots), h in zip(_rows(batch), hists, strict=True):
        assert ids.count(tid) == len(h)
        assert [s for s in slots if s] == h
        assert all((i == tid) == (s != 0) for i, s in zip(ids, slots, strict=True))
    # the long title is cut to 4 tokens
    long_piece = b.item_piece(5)
    assert len(long_piece) == 4 + 1 and long_piece[-1] == tid
    pos = batch["item_token_positions"]
    assert pos.shape == (sum(map(len, hists)), 2)
    assert torch.equal(batch["input_ids"][pos[:, 0], pos[:, 1]], torch.full((len(pos),), tid))
    assert batch["item_token_item_ids"].tolist() == [i for h in hists for i in h]
    assert batch["num_shown"].tolist() == [3, 4, 1]


def test_history_window_and_padding_ids(tiny_tokenizer):
    b = _builder(tiny_tokenizer, max_history=3)
    batch = b.build([[0, 0, 0, 1, 2, 3, 4, 6], [0, 0, 7]])
    (ids0, slots0), (_, slots1) = _rows(batch)
    assert [s for s in slots0 if s] == [3, 4, 6]  # last 3, oldest first
    assert [s for s in slots1 if s] == [7]  # padding ignored
    empty = b.build([[0, 0], []])
    assert empty["num_shown"].tolist() == [0, 0]
    assert empty["input_ids"].shape[1] == len(b.encode([])[0])
    with pytest.raises(UserError, match="outside"):
        b.build([[len(TITLES)]])


def test_max_length_drops_oldest_items(tiny_tokenizer):
    free = _builder(tiny_tokenizer, max_title_tokens=6)
    hist = [5, 1, 2, 3, 4, 6]
    full_len = len(free.encode(hist)[0])
    b = _builder(tiny_tokenizer, max_title_tokens=6, max_length=full_len - 3)
    ids, slots = b.encode(hist)
    assert len(ids) <= full_len - 3
    shown = [s for s in slots if s]
    assert shown == hist[-len(shown) :] and len(shown) < len(hist)
    assert shown == b.shown_items(hist)
    assert ids.count(b.item_token_id) == len(shown)
    # exactly at the limit: nothing dropped
    exact = _builder(tiny_tokenizer, max_title_tokens=6, max_length=full_len)
    assert exact.shown_items(hist) == hist
    with pytest.raises(UserError, match="no room"):
        _builder(tiny_tokenizer, max_length=5)


def test_left_padding_and_positions(tiny_tokenizer):
    b = _builder(tiny_tokenizer)
    batch = b.build([[1], [1, 2, 3, 4]])
    mask, ids = batch["attention_mask"], batch["input_ids"]
    assert mask[:, -1].tolist() == [1, 1]  # last real token at index -1 for every row
    assert mask[0, 0] == 0 and mask[1].all()
    n0 = int(mask[0].sum())
    assert (ids[0, : ids.shape[1] - n0] == tiny_tokenizer.pad_token_id).all()
    assert batch["position_ids"][0, -n0:].tolist() == list(range(n0))
    # every prompt starts with BOS + instruction and ends with the answer cue
    cue = tiny_tokenizer.encode(DEFAULT_ANSWER_CUE, add_special_tokens=False)
    for row_ids, _ in _rows(batch):
        assert row_ids[0] == tiny_tokenizer.bos_token_id
        assert row_ids[-len(cue) :] == cue


def test_deterministic_and_titles_cannot_inject_item_tokens(tiny_tokenizer):
    b = _builder(tiny_tokenizer)
    h = [[3, 1, 2], [4]]
    first, second = b.build(h), b.build(h)
    for k in first:
        assert torch.equal(first[k], second[k]), k
    again = _builder(tiny_tokenizer).build(h)
    assert torch.equal(first["input_ids"], again["input_ids"])
    evil = PromptBuilder(tiny_tokenizer, ["", f"heat {ITEM_TOKEN} fargo", None])
    ids, _ = evil.encode([1, 2])
    assert ids.count(evil.item_token_id) == 2
