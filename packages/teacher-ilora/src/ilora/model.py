"""The iLoRA teacher (DESIGN §5): a frozen causal LLM with instance-wise MoE-LoRA.

history -> frozen SASRec -> u -> gate g (one per example, shared by every layer and token)
history -> prompt (instruction, `title [ItemEmb]` x <= max_history, answer cue), where each
[ItemEmb] input vector is projector(SASRec item embedding) -> LLM with MoE-LoRA(g) -> last-layer
state at the last token (index -1 under left padding) -> scores over all items, through the
student's item table (trainable, pulled toward its initial copy) or a linear head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ilora.moe_lora import LLAMA_TARGETS, GateNetwork, MoELoRAConfig, inject_moe_lora, set_gate
from ilora.prompt import PromptBuilder, ensure_item_token
from sasrec.model import SASRec


@dataclass
class TeacherConfig:
    """Architecture knobs (seed-guide names). Optimisation knobs live in train/teacher.yaml."""

    llm_model_name: str = "embedded:smollm2-135m"
    hidden_size: int = 256  # projector MLP width (SASRec d -> hidden_size -> LLM hidden)
    num_lora_experts: int = 4
    lora_r: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_TARGETS))
    gate_hidden_size: int = 64
    max_history: int = 10
    max_title_tokens: int = 12
    use_item_embeddings_head: bool = True
    residual_student_state: bool = True

    def moe_config(self) -> MoELoRAConfig:
        return MoELoRAConfig(r=self.lora_r, num_experts=self.num_lora_experts, alpha=self.lora_alpha,
                             dropout=self.lora_dropout, target_modules=list(self.target_modules))  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


class ILoRATeacher(nn.Module):
    def __init__(self, llm: nn.Module, tokenizer, student: SASRec, item_titles: list[str], config: TeacherConfig):
        super().__init__()
        self.config = config
        self.item_token_id = ensure_item_token(tokenizer, llm)
        inject_moe_lora(llm, config.moe_config())  # freezes the base LLM
        self.llm = llm
        self.prompts = PromptBuilder(tokenizer, item_titles, max_history=config.max_history,
                                     max_title_tokens=config.max_title_tokens)  # fmt: skip
        self.student = student.eval().requires_grad_(False)
        d, width = student.config.hidden_size, llm.config.hidden_size
        self.projector = nn.Sequential(nn.Linear(d, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, width))
        self.gate = GateNetwork(d, config.num_lora_experts, hidden=config.gate_hidden_size)
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

    def train(self, mode: bool = True):
        super().train(mode)
        self.student.eval()  # frozen: its dropout never acts, even while the teacher trains
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what the teacher trains (adapters, gate, projector, head, item table)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {n: t for n, t in self.state_dict().items() if n in names}

    def encode(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) left-padded item ids -> ((B, H_llm) state at the prompt's last token,
        (B, d) the frozen student's state u of the same history)."""
        with torch.no_grad():
            u = self.student.last_state(history)
        set_gate(self.llm, self.gate(u))  # stays set for gradient checkpointing's re-runs
        prompt = {k: v.to(history.device) for k, v in self.prompts.build(history.tolist()).items()}
        embeds = self.llm.get_input_embeddings()(prompt["input_ids"])
        slots = prompt["item_slot_ids"]
        item_vectors = self.projector(self.student.item_table()[slots[slots > 0]])
        embeds = embeds.masked_scatter((slots > 0).unsqueeze(-1), item_vectors.to(embeds.dtype))
        out = self.llm.base_model(inputs_embeds=embeds, attention_mask=prompt["attention_mask"],
                                  position_ids=prompt["position_ids"], use_cache=False)  # fmt: skip
        return out.last_hidden_state[:, -1].float(), u

    def scores_from_state(self, state: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if self.item_table is not None:
            query = self.head(state) + (u if self.config.residual_student_state else 0)
            scores = query @ self.item_table.T
        else:
            scores = self.head(state)
            if self.config.residual_student_state:
                scores = scores + u @ self.student.item_table().T
        return scores.index_fill(1, torch.zeros(1, dtype=torch.long, device=scores.device), -torch.inf)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """(B, N+1) scores over all items; column 0 (padding) is -inf."""
        return self.scores_from_state(*self.encode(history))

    @torch.no_grad()
    def item_title_embeddings(self, batch_size: int = 64) -> torch.Tensor:
        """(N+1, H_llm): the LLM's mean last-layer state over each item's title tokens (row 0 =
        zeros), with the adapters at a uniform gate. Computed once per checkpoint."""
        builder, device = self.prompts, self.projector[0].weight.device
        titles = [builder.item_piece(i)[:-1] or [builder.pad_token_id] for i in range(1, builder.num_items + 1)]
        rows = [torch.zeros(self.llm.config.hidden_size)]
        for lo in range(0, len(titles), batch_size):
            chunk = titles[lo : lo + batch_size]
            width = max(len(t) for t in chunk)
            ids = torch.full((len(chunk), width), builder.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, t in enumerate(chunk):
                ids[r, width - len(t) :], mask[r, width - len(t) :] = torch.tensor(t), 1
            ids, mask = ids.to(device), mask.to(device)
            set_gate(self.llm, torch.full((len(chunk), self.config.num_lora_experts), 1 / self.config.num_lora_experts, device=device))
            states = self.llm.base_model(input_ids=ids, attention_mask=mask,
                                         position_ids=(mask.cumsum(1) - 1).clamp(min=0), use_cache=False).last_hidden_state  # fmt: skip
            pooled = (states.float() * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
            rows.extend(pooled.cpu())
        return torch.stack(rows)
