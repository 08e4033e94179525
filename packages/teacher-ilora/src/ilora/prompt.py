"""Prompt building for the iLoRA teacher, in its two formats.

Prefix mode (:class:`PromptBuilder`, iLoRA's prompt): one prompt per history,
``[BOS] instruction  title_1 [ItemEmb] , title_2 [ItemEmb] , ... answer_cue``: the
instruction first (so the representation is read at the end), then the last ``max_history`` items
of the history, oldest first, each as its title followed by one ``[ItemEmb]`` token whose input
embedding the teacher replaces by ``projector(SASRec item embedding)``, then the answer cue. No
candidate list. Batches are LEFT-padded, so the last real token of every row is at index ``-1``.

Sequence mode (:class:`SequencePromptBuilder`): one prompt per user window,
``[BOS] instruction [ItemEmb] [ItemEmb] ...`` (optionally ``title [ItemEmb]`` pieces), read out at
every item token, so one causal pass scores every prefix of the window.

Titles are tokenised once, when a builder is made; building a batch is list concatenation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ilora.config import TeacherConfig
from recdata.errors import UserError

ITEM_TOKEN = "[ItemEmb]"
# Short on purpose: every prompt token costs a full LLM pass on CPU (teacher.instruction and
# teacher.answer_cue set them).
DEFAULT_INSTRUCTION = TeacherConfig.instruction
DEFAULT_ANSWER_CUE = TeacherConfig.answer_cue


def add_item_token(tokenizer, token: str = ITEM_TOKEN) -> int:
    """Add ``token`` as an extra special token (never split, never produced from other text)
    unless already present; return its id. Does not touch any model: see
    :func:`ensure_item_token`."""
    vocab = tokenizer.get_vocab()
    if token not in vocab:
        try:  # transformers >= 5
            tokenizer.add_special_tokens(
                {"extra_special_tokens": [token]}, replace_extra_special_tokens=False
            )
        except TypeError:  # transformers 4.x
            tokenizer.add_special_tokens(
                {"additional_special_tokens": [token]}, replace_additional_special_tokens=False
            )
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise UserError(f"could not add {token!r} to the tokenizer")
    return int(token_id)


def ensure_item_token(tokenizer, model: nn.Module | None = None, token: str = ITEM_TOKEN) -> int:
    """Add the ``[ItemEmb]`` token to ``tokenizer`` and, if its id does not fit the model's
    input-embedding matrix, resize the model's token embeddings (and tied output head) to
    ``len(tokenizer)``. The new rows keep the old rows' ``requires_grad`` (frozen base stays
    frozen); their values never matter for the teacher, which overwrites the input embedding at
    every ``[ItemEmb]`` position. Returns the token id."""
    token_id = add_item_token(tokenizer, token)
    if model is not None:
        emb = model.get_input_embeddings()
        if token_id >= emb.weight.shape[0]:
            trainable = emb.weight.requires_grad
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            model.get_input_embeddings().weight.requires_grad_(trainable)
            out = model.get_output_embeddings()
            if out is not None:
                out.weight.requires_grad_(trainable)
    return token_id


def _title_text(title) -> str:
    """An item's text, or "" when it has none (an item of a dataset without text is shown by its
    [ItemEmb] token alone: nothing invents a title)."""
    if title is None or (isinstance(title, float) and title != title):  # None / NaN
        return ""
    return str(title).strip()


def _special_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer prepends with ``add_special_tokens=True`` (e.g. BOS for Llama, ``</s>``
    for OPT); trailing specials (EOS) are deliberately not used."""
    probe = "watched"
    with_sp = tokenizer.encode(probe, add_special_tokens=True)
    without = tokenizer.encode(probe, add_special_tokens=False)
    n = len(without)
    for start in range(len(with_sp) - n + 1):
        if with_sp[start : start + n] == without:
            return list(with_sp[:start])
    return []


class _PromptPieces:
    """What both prompt formats are made of, tokenised once: the special prefix (e.g. BOS) and
    the instruction, the separator, each item's (truncated) title, the ``[ItemEmb]`` token and
    the pad id."""

    def __init__(
        self,
        tokenizer,
        item_titles: Sequence[str],
        *,
        max_title_tokens: int,
        instruction: str,
        separator: str,
        title_prefix: str,
    ) -> None:
        if max_title_tokens < 1:
            raise UserError(f"max_title_tokens must be >= 1, got {max_title_tokens}")
        self.tokenizer = tokenizer
        self.max_title_tokens = int(max_title_tokens)
        self.item_token_id = add_item_token(tokenizer)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        self.pad_token_id = int(pad) if pad is not None else 0
        self._prefix = _special_prefix(tokenizer) + self._encode_text(instruction)
        self._sep = self._encode_text(separator)
        self.num_items = len(item_titles) - 1
        titles = [_title_text(t) for t in item_titles]
        shown = [f"{title_prefix}{t}" if t else "" for t in titles]
        batch = tokenizer(shown, add_special_tokens=False)["input_ids"] if shown else []
        self._title_ids: list[list[int]] = [
            [i for i in ids if i != self.item_token_id][: self.max_title_tokens] for ids in batch
        ]
        self._title_ids[0] = []  # padding is never shown

    def _encode_text(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False) if text else []
        # titles or templates that literally contain "[ItemEmb]" must not create item slots
        return [i for i in ids if i != self.item_token_id]

    def item_piece(self, item_id: int) -> list[int]:
        """Token ids of one shown item: its (truncated) title then ``[ItemEmb]``."""
        return self._title_ids[item_id] + [self.item_token_id]

    def _check_items(self, items: Sequence[int]) -> None:
        for i in items:
            if not 0 < i <= self.num_items:
                raise UserError(f"item id {i} is outside 1..{self.num_items} (no title known)")

    def _left_pad(
        self, rows: list[list[int]], *columns: list[list[int]], fill: int = 0
    ) -> tuple[torch.Tensor, ...]:
        """Left-pad token rows (with the pad id) and per-token columns aligned with them (with
        ``fill``): ``(input_ids, attention_mask, position_ids, *columns)``, (B, T) long each.
        Position ids count from each row's first real token: Hugging Face models do not derive
        them from a left-padded mask on their own."""
        width, bsz = max((len(r) for r in rows), default=0), len(rows)
        input_ids = torch.full((bsz, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((bsz, width), dtype=torch.long)
        extra = [torch.full((bsz, width), fill, dtype=torch.long) for _ in columns]
        for row, ids in enumerate(rows):
            n = len(ids)
            input_ids[row, width - n :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - n :] = 1
            for out, column in zip(extra, columns, strict=True):
                out[row, width - n :] = torch.tensor(column[row], dtype=torch.long)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_(min=0)
        return input_ids, attention_mask, position_ids, *extra

    def decode(self, input_ids: torch.Tensor) -> list[str]:
        """Human-readable prompts (padding removed), for logging and debugging."""
        return [
            self.tokenizer.decode([i for i in row.tolist() if i != self.pad_token_id])
            for row in input_ids
        ]


class PromptBuilder(_PromptPieces):
    """Turn item-id histories into left-padded prefix-mode prompts (iLoRA's format).

    Args:
        tokenizer: a Hugging Face tokenizer; ``[ItemEmb]`` is added to it if missing (resize the
            model with :func:`ensure_item_token`).
        item_titles: ``item_titles[item_id]`` is the title of ``item_id``; index 0 (padding) is
            never shown.
        max_history: number of most recent items shown.
        max_title_tokens: titles are truncated to this many tokens.
        max_length: optional cap on the prompt length in tokens; the OLDEST shown items are
            dropped until the prompt fits (never a placeholder without its item).
        instruction / answer_cue / separator / title_prefix: the prompt text pieces.
    """

    def __init__(
        self,
        tokenizer,
        item_titles: Sequence[str],
        *,
        max_history: int = 10,
        max_title_tokens: int = 24,
        max_length: int | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        answer_cue: str = DEFAULT_ANSWER_CUE,
        separator: str = ",",
        title_prefix: str = " ",
    ) -> None:
        if max_history < 1:
            raise UserError(f"max_history must be >= 1, got {max_history}")
        super().__init__(
            tokenizer,
            item_titles,
            max_title_tokens=max_title_tokens,
            instruction=instruction,
            separator=separator,
            title_prefix=title_prefix,
        )
        self.max_history = int(max_history)
        self._cue = self._encode_text(answer_cue)
        fixed = len(self._prefix) + len(self._cue)
        longest_item = max((len(t) for t in self._title_ids[1:]), default=0) + 1 + len(self._sep)
        if max_length is not None and max_length < fixed + longest_item:
            raise UserError(
                f"prompt max_length={max_length} leaves no room for a single item: the "
                f"instruction and answer cue take {fixed} tokens and a title up to "
                f"{longest_item}"
            )
        self.max_length = max_length

    def shown_items(self, history: Sequence[int]) -> list[int]:
        """The items of ``history`` that appear in its prompt, oldest first (padding ignored,
        last ``max_history``, oldest dropped while over ``max_length``)."""
        items = [int(i) for i in history if int(i) != 0][-self.max_history :]
        self._check_items(items)
        if self.max_length is not None:
            budget = self.max_length - len(self._prefix) - len(self._cue)
            lengths = [len(self._title_ids[i]) + 1 for i in items]
            total = sum(lengths) + len(self._sep) * max(len(items) - 1, 0)
            start = 0
            while total > budget and start < len(items):
                total -= lengths[start] + (len(self._sep) if start < len(items) - 1 else 0)
                start += 1
            items = items[start:]
        return items

    def encode(self, history: Sequence[int]) -> tuple[list[int], list[int]]:
        """Unpadded ``(token ids, item slot ids)`` for one history; slot ids hold the item id at
        ``[ItemEmb]`` positions and 0 elsewhere."""
        ids = list(self._prefix)
        slots = [0] * len(ids)
        for n, item in enumerate(self.shown_items(history)):
            if n:
                ids += self._sep
                slots += [0] * len(self._sep)
            piece = self.item_piece(item)
            ids += piece
            slots += [0] * (len(piece) - 1) + [item]
        ids += self._cue
        slots += [0] * len(self._cue)
        return ids, slots

    def build(self, histories: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Left-padded batch. Returns

        * ``input_ids`` (B, T) long, ``attention_mask`` (B, T) long,
        * ``position_ids`` (B, T) long: 0.. from the first real token (pass it to the model),
        * ``item_slot_ids`` (B, T) long: item id at ``[ItemEmb]`` positions, 0 elsewhere,
        * ``item_token_positions`` (M, 2) long ``(row, column)`` of every ``[ItemEmb]`` token and
          ``item_token_item_ids`` (M,) long, the item shown there (row-major order),
        * ``num_shown`` (B,) long: items shown per row.
        """
        encoded = [self.encode(h) for h in histories]
        input_ids, attention_mask, position_ids, slots = self._left_pad(
            [ids for ids, _ in encoded], [sl for _, sl in encoded]
        )
        positions = (slots > 0).nonzero()
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "item_slot_ids": slots,
            "item_token_positions": positions,
            "item_token_item_ids": slots[positions[:, 0], positions[:, 1]],
            "num_shown": (slots > 0).sum(-1),
        }


class SequencePromptBuilder(_PromptPieces):
    """One prompt per user window, for the sequence-mode teacher.

    A window of item ids (oldest first) becomes ``[BOS] instruction`` then every item as one
    ``[ItemEmb]`` token or, with ``with_titles``, as ``title [ItemEmb]`` pieces separated like the
    prefix prompt. Read causally, the state at item t's ``[ItemEmb]`` has seen the instruction and
    items 1..t only, so one pass reads out every prefix of the window: the prompt of items[:t]
    alone is the window's prompt cut right after that token. No answer cue (the readout is at the
    item tokens themselves). Batches are LEFT-padded, so the newest item's token is at index -1.
    """

    def __init__(
        self,
        tokenizer,
        item_titles: Sequence[str],
        *,
        with_titles: bool = False,
        max_title_tokens: int = 24,
        instruction: str = DEFAULT_INSTRUCTION,
        separator: str = ",",
        title_prefix: str = " ",
    ) -> None:
        super().__init__(
            tokenizer,
            item_titles,
            max_title_tokens=max_title_tokens,
            instruction=instruction,
            separator=separator,
            title_prefix=title_prefix,
        )
        self.with_titles = bool(with_titles)

    def piece(self, item_id: int, first: bool) -> list[int]:
        """Tokens of one item: ``[ItemEmb]``, or ``[sep] title [ItemEmb]`` with titles (the
        separator opens every piece but the first, so no token of an item comes after its
        readout)."""
        if not self.with_titles:
            return [self.item_token_id]
        return ([] if first else list(self._sep)) + self.item_piece(item_id)

    def encode(self, items: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        """Unpadded ``(token ids, item slot ids, owner)`` for one window of real item ids; owner is
        the 0-based index of the item each token belongs to (-1 for the instruction)."""
        self._check_items(items)
        ids, slots, owner = list(self._prefix), [0] * len(self._prefix), [-1] * len(self._prefix)
        for n, item in enumerate(items):
            piece = self.piece(item, first=n == 0)
            ids += piece
            slots += [0] * (len(piece) - 1) + [item]
            owner += [n] * len(piece)
        return ids, slots, owner

    def build(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Left-padded batch for (B, L) left-padded item windows (0 = padding). Returns

        * ``input_ids``, ``attention_mask``, ``position_ids`` (B, T) long, as in prefix mode,
        * ``item_slot_ids`` (B, T): the item id at ``[ItemEmb]`` tokens, 0 elsewhere,
        * ``token_item_column`` (B, T): the window column (0..L-1) of the item each token belongs
          to, -1 for the instruction and padding (per-position gates are gathered with it),
        * ``readout_columns`` (B, L): the token column of each window column's ``[ItemEmb]``
          (0 for padding columns, whose readouts are meaningless).
        """
        rows, slot_rows, owner_rows, width = [], [], [], windows.shape[1]
        for window in windows.tolist():
            items = [i for i in window if i != 0]
            ids, slots, owner = self.encode(items)
            offset = width - len(items)  # window column of the row's first real item
            rows.append(ids), slot_rows.append(slots)
            owner_rows.append([o + offset if o >= 0 else -1 for o in owner])
        input_ids, attention_mask, position_ids, slots, owner = self._left_pad(
            rows, slot_rows, owner_rows, fill=-1
        )
        slots = slots.clamp(min=0)
        readout = torch.zeros(windows.shape, dtype=torch.long)
        row, col = (slots > 0).nonzero(as_tuple=True)
        readout[row, owner[row, col]] = col
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "item_slot_ids": slots,
            "token_item_column": owner,
            "readout_columns": readout,
        }
