"""The iLoRA teacher: a frozen causal LLM with instance-wise MoE-LoRA, in two modes.

prefix (iLoRA's prompt): history -> frozen SASRec -> u -> gate g (one per example, shared by every
layer and token); history -> prompt (instruction, `title [ItemEmb]` x <= max_history, answer cue)
-> LLM with MoE-LoRA(g) -> the state at the prompt's last token scores the next item.

sequence (one causal pass per user window): `[BOS] instruction [ItemEmb]_1 ... [ItemEmb]_L`
(optionally each after its title); the state at item t's token scores item t+1, so one pass
reads out every prefix of the window. The tokens of item t use the gate of u_t, the frozen
student's state of the prefix ending at t; the instruction uses the uniform gate, so it never
depends on the history and prefix t reads out the same in the window as alone. The item token's
input is projector(SASRec item vector) + title_projector(the LLM's title state of the item).

Both modes: state -> LayerNorm -> head -> a query in the student's item space (plus the
student's own state u when `residual_student_state`) -> scores over all items through the
student's item table (trainable, pulled toward its initial copy) or a linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ilora.config import TeacherConfig
from ilora.moe_lora import GateNetwork, MoELoRAConfig, inject_moe_lora, set_gate
from ilora.prompt import PromptBuilder, SequencePromptBuilder, ensure_item_token
from runkit.chunking import blocked_cross_entropy
from runkit.vectors import standardise_rows
from sasrec.model import SASRec, item_scores


@torch.no_grad()
def mean_title_states(
    llm: nn.Module, prompts, batch_size: int = 64, gate_experts: int | None = None
) -> torch.Tensor:
    """(N+1, H_llm): the LLM's mean last-layer state over each item's title tokens (row 0 = zeros),
    always in eval mode (no dropout). ``gate_experts``: run MoE-LoRA adapters at the uniform gate
    over that many experts; None for a model without adapters."""
    device = llm.get_input_embeddings().weight.device
    titles = [
        prompts.item_piece(i)[:-1] or [prompts.pad_token_id]
        for i in range(1, prompts.num_items + 1)
    ]
    rows = [torch.zeros(llm.config.hidden_size)]
    was_training = llm.training
    llm.eval()
    try:
        for lo in range(0, len(titles), batch_size):
            chunk = titles[lo : lo + batch_size]
            width = max(len(t) for t in chunk)
            ids = torch.full((len(chunk), width), prompts.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, t in enumerate(chunk):
                ids[r, width - len(t) :], mask[r, width - len(t) :] = torch.tensor(t), 1
            ids, mask = ids.to(device), mask.to(device)
            if gate_experts:
                set_gate(
                    llm, torch.full((len(chunk), gate_experts), 1 / gate_experts, device=device)
                )
            states = llm.base_model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                use_cache=False,
            ).last_hidden_state
            pooled = (states.float() * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
            rows.extend(pooled.cpu())
    finally:
        llm.train(was_training)
    return torch.stack(rows)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class ILoRATeacher(nn.Module):
    def __init__(
        self,
        llm: nn.Module,
        tokenizer,
        student: SASRec,
        item_titles: list[str],
        config: TeacherConfig,
        *,
        title_states: torch.Tensor | None = None,
    ):
        """``title_states``: the (N+1, H_llm) title states (standardised) as saved with a
        checkpoint or computed by `build_teacher` from another depth of the LLM; computed from this
        base LLM (adapters not yet injected) when not given and something reads them."""
        super().__init__()
        self.config = config
        self.item_token_id = ensure_item_token(tokenizer, llm)
        self.student = student.eval().requires_grad_(False)
        d, width = student.config.hidden_size, llm.config.hidden_size
        self.sequence_mode = config.prompt_mode == "sequence"
        if self.sequence_mode:
            self.prompts = SequencePromptBuilder(
                tokenizer,
                item_titles,
                with_titles=config.sequence_titles,
                max_title_tokens=config.max_title_tokens,
                instruction=config.instruction,
            )
            self.window = int(config.max_sequence_items or student.config.max_seq_len)
        else:
            self.prompts = PromptBuilder(
                tokenizer,
                item_titles,
                max_history=config.max_history,
                max_title_tokens=config.max_title_tokens,
                instruction=config.instruction,
                answer_cue=config.answer_cue,
            )
        self.title_projector = self.text_projector = None
        title_projector = self.sequence_mode and config.use_title_projector
        if title_projector or config.text_scoring:
            # the base LLM's view of each title: adapters are not injected yet
            if title_states is None:
                title_states = standardise_rows(mean_title_states(llm, self.prompts))
            self.register_buffer("title_states", title_states.float().clone())
        if title_projector:  # input side: the item token carries its title
            self.title_projector = _mlp(width, config.hidden_size, width)
        inject_moe_lora(
            llm,
            MoELoRAConfig(
                r=config.lora_r,
                num_experts=config.num_lora_experts,
                alpha=config.lora_alpha,
                dropout=config.lora_dropout,
                target_modules=list(config.target_modules),
            ),
        )
        self.llm = llm
        self.projector = _mlp(d, config.hidden_size, width)
        self.gate = GateNetwork(d, config.num_lora_experts, hidden=config.gate_hidden_size)
        self.state_norm = nn.LayerNorm(width) if config.normalize_state else nn.Identity()
        if config.use_item_embeddings_head:
            table = student.item_table().detach().clone()
            self.item_table = nn.Parameter(table)
            self.register_buffer("initial_item_table", table.clone())
            self.head = nn.Linear(width, d)  # LLM state -> the student's item space
        else:
            self.item_table = None
            self.head = nn.Linear(width, student.config.num_items + 1)
        if config.residual_student_state:
            # The LLM learns a correction to the student's view: with a zero head the teacher
            # starts exactly as its student, so a short (CPU-budget) run never ends below it.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        if config.text_scoring:  # scoring side: an item's vector carries its text
            # zero, and built last (every other module draws the same initial weights): the
            # teacher starts scoring by ID alone and learns how much text to add
            self.text_projector = nn.Linear(width, d)
            nn.init.zeros_(self.text_projector.weight)
            nn.init.zeros_(self.text_projector.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen: by default its dropout never acts. With student_dropout_in_training the teacher
        # learns its correction against the noisier view the student has of unseen histories
        # (on its own training prefixes the eval-mode student is close to memorised).
        self.student.train(mode and self.config.student_dropout_in_training)
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what the teacher trains (adapters, gate, projectors, head, item table)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {n: t for n, t in self.state_dict().items() if n in names}

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: the trained tensors, plus the title states when anything reads
        them (derived from the base LLM, saved so loading skips a pass over every title)."""
        tensors = self.trainable_state_dict()
        if self.title_projector is not None or self.text_projector is not None:
            tensors["title_states"] = self.title_states
        return tensors

    # -- encoding ------------------------------------------------------------------------------
    def encode(
        self, history: torch.Tensor, *, all_positions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) left-padded item ids -> (LLM states (B, R, H_llm), frozen-student states u
        (B, R, d)) at the readout positions: the newest item (R = 1), or with ``all_positions``
        (sequence mode) every column of ``history`` (R = L; padding columns are meaningless)."""
        if self.sequence_mode:
            return self._encode_sequence(history, all_positions)
        if all_positions:
            raise ValueError(
                "prefix mode reads out one state per prompt; "
                "all_positions needs prompt_mode=sequence"
            )
        return self._encode_prefix(history)

    def _encode_prefix(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            u = self.student.last_state(history)
        set_gate(self.llm, self.gate(u))  # stays set for gradient checkpointing's re-runs
        prompt = {k: v.to(history.device) for k, v in self.prompts.build(history.tolist()).items()}
        slots = prompt["item_slot_ids"]
        vectors = self.projector(self.student.item_table()[slots[slots > 0]])
        out = self._run_llm(prompt, slots > 0, vectors)
        return out[:, -1:].float(), u.unsqueeze(1)

    def _encode_sequence(
        self, history: torch.Tensor, all_positions: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width = history.shape[1]
        if all_positions and width > self.window:
            raise ValueError(
                f"a window of {width} items exceeds teacher.max_sequence_items={self.window}"
            )
        window = history[:, -self.window :]
        real_columns = (window > 0).any(0).nonzero()
        # drop all-padding columns
        window = window[:, int(real_columns[0]) :] if len(real_columns) else window[:, -1:]
        with torch.no_grad():
            u = self.student.encode(window)  # (B, L', d): u_t = the state of the prefix ending at t
        prompt = {k: v.to(history.device) for k, v in self.prompts.build(window.cpu()).items()}
        set_gate(self.llm, self._token_gates(self.gate(u), prompt["token_item_column"]))
        slots = prompt["item_slot_ids"]
        out = self._run_llm(prompt, slots > 0, self.item_vectors(slots[slots > 0]))
        if not all_positions:
            return out[:, -1:].float(), u[:, -1:]
        readout = prompt["readout_columns"].unsqueeze(-1).expand(-1, -1, out.shape[-1])
        states = out.gather(1, readout).float()
        pad = width - window.shape[1]  # back to the caller's columns
        return F.pad(states, (0, 0, pad, 0)), F.pad(u, (0, 0, pad, 0))

    def _token_gates(self, item_gates: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """(B, T, E) per-token gates: the gate of each token's item; uniform for the instruction
        (it precedes every item) and for padding."""
        experts = item_gates.shape[-1]
        gathered = item_gates.gather(1, owner.clamp(min=0).unsqueeze(-1).expand(-1, -1, experts))
        return torch.where(
            owner.unsqueeze(-1) >= 0, gathered, torch.full_like(gathered, 1 / experts)
        )

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Input vectors of ``[ItemEmb]`` tokens: projector(SASRec item vector), plus in sequence
        mode title_projector(the item's title state)."""
        vectors = self.projector(self.student.item_table()[item_ids])
        if self.title_projector is not None:
            vectors = vectors + self.title_projector(self.title_states[item_ids])
        return vectors

    def _run_llm(
        self, prompt: dict, item_tokens: torch.Tensor, vectors: torch.Tensor
    ) -> torch.Tensor:
        """Last-layer states (B, T, H_llm) with the ``[ItemEmb]`` inputs replaced by ``vectors``."""
        embeds = self.llm.get_input_embeddings()(prompt["input_ids"])
        embeds = embeds.masked_scatter(item_tokens.unsqueeze(-1), vectors.to(embeds.dtype))
        out = self.llm.base_model(
            inputs_embeds=embeds,
            attention_mask=prompt["attention_mask"],
            position_ids=prompt["position_ids"],
            use_cache=False,
        )
        return out.last_hidden_state

    # -- scoring ----------------------------------------------------------------------------------
    def scores_from_state(
        self,
        state: torch.Tensor,
        u: torch.Tensor,
        student_mix: float | None = None,
        table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(..., H_llm) LLM states and (..., d) student states -> (..., N+1) fp32 scores, column 0
        -inf: the teacher's own scores plus ``student_mix`` (default: the config's) times the
        student's. ``table``: the item vectors to score against (default :meth:`scoring_table`).
        The head runs in fp32 also under autocast (bf16 scores would tie items)."""
        mix = self.config.student_mix if student_mix is None else student_mix
        with torch.autocast(state.device.type, enabled=False):
            state, u = self.state_norm(state.float()), u.float()
            if self.item_table is not None:
                query = self.head(state) + (u if self.config.residual_student_state else 0)
                scores = item_scores(query, self.scoring_table() if table is None else table)
            else:
                scores = self.head(state)
                if self.config.residual_student_state:
                    scores = scores + item_scores(u, self.student.item_table())
            if mix:
                scores = scores + mix * item_scores(u, self.student.item_table())
        return scores.index_fill(
            -1, torch.zeros(1, dtype=torch.long, device=scores.device), -torch.inf
        )

    def scoring_table(self, drop_ids: bool = False) -> torch.Tensor:
        """(N+1, d) the item vectors the teacher scores against: the item table, plus with
        `text_scoring` a projection of each item's text state (so text carries an item with few or
        no interactions, whose ID row has learnt little or nothing). ``drop_ids`` (a training step
        with `text_id_dropout` p): each item's ID row is left out with probability p, so the text
        part learns to score an item alone, as it must for an item never seen."""
        if self.text_projector is None:
            return self.item_table
        rows = self.item_table
        if drop_ids and self.config.text_id_dropout > 0:
            kept = torch.rand(len(rows), 1, device=rows.device) >= self.config.text_id_dropout
            rows = rows * kept
        return rows + self.text_projector(self.title_states)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """(B, N+1) scores for the item after each history; column 0 (padding) is -inf."""
        return self.scores_from_state(*self.encode(history))[:, 0]

    def score_all_positions(self, windows: torch.Tensor) -> torch.Tensor:
        """Sequence mode: (B, L, N+1) scores for the item after every column of the windows."""
        return self.scores_from_state(*self.encode(windows, all_positions=True))

    def training_readouts(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(LLM states (M, H_llm), student states (M, d), targets (M,)) at the positions of a
        training batch that have a target: a window batch (``targets`` at every column, 0 where
        none) in sequence mode, a prefix batch (``target``) in prefix mode."""
        if "targets" in batch:
            keep = batch["targets"] > 0
            states, u = self.encode(batch["history"], all_positions=True)
            return states[keep], u[keep], batch["targets"][keep]
        states, u = self.encode(batch["history"])
        return states[:, 0], u[:, 0], batch["target"]

    def training_scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (M, N+1), targets (M,)) of a training batch (see :meth:`training_readouts`)."""
        states, u, targets = self.training_readouts(batch)
        return self.scores_from_state(states, u), targets

    def training_loss(
        self,
        batch: dict[str, torch.Tensor],
        budget: int | None = None,
        exclude: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean full-softmax CE over items, targets) of a training batch, in row blocks of bounded
        memory when the positions x items scores exceed `budget` (runkit.chunking); `exclude`
        ((N+1,) bool) items take no part (the cold-item protocol)."""
        states, u, targets = self.training_readouts(batch)
        columns = self.student.config.num_items + 1
        # one draw of the ID dropout per step, shared by every row block
        table = self.scoring_table(drop_ids=self.training) if self.item_table is not None else None

        def scores(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = self.scores_from_state(s, v, table=table)
            return out if exclude is None else out.masked_fill(exclude.to(out.device), -torch.inf)

        return blocked_cross_entropy(scores, (states, u), targets, columns, budget), targets

    def item_title_embeddings(self, batch_size: int = 64) -> torch.Tensor:
        """(N+1, H_llm): the teacher's item vectors for distillation -- the LLM's mean state over
        each item's title tokens with the adapters at the uniform gate, in eval mode (row 0 =
        zeros). Computed once per checkpoint."""
        return mean_title_states(
            self.llm, self.prompts, batch_size, gate_experts=self.config.num_lora_experts
        )
