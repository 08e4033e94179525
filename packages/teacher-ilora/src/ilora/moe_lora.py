"""Instance-wise mixture-of-LoRA-experts (iLoRA), split peft-style into config / layer / injection.

For every target linear ``W``::

    y = W x + (alpha / r_e) * sum_e g_e * B_e A_e dropout(x)

with ``E`` experts of rank ``r_e = r // E``. The gate ``g`` is shared by every adapted layer and is
either one vector per example, shape ``(batch, E)`` (iLoRA's prompt teacher: every token of the
prompt uses it), or one vector per token, shape ``(batch, tokens, E)`` (the sequence-mode teacher:
the tokens of item t use the gate of the prefix ending at t); it is set once per forward::

    with gate_context(model, gates):        # or set_gate(model, gates) before model(...)
        out = model(input_ids)

The experts are computed in one fused pass: ``A`` (stored ``(E, r_e, in)``) is viewed as a
single ``(E*r_e, in)`` matrix and ``B`` (stored ``(E, out, r_e)``) as ``(out, E*r_e)``, so the
adapter costs two thin matmuls plus one ``(tokens, E*r_e)`` scale by the gate repeated per rank
-- the same work as a plain rank-``r`` LoRA.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilora.config import LLAMA_TARGETS
from recdata.errors import UserError
from runkit.checkpoint import CheckpointError


@dataclass
class MoELoRAConfig:
    """``r`` is the total rank, split evenly over ``num_experts`` experts (``r_e = r // E``)."""

    r: int = 8
    num_experts: int = 4
    alpha: float = 32.0
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_TARGETS))

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise UserError(f"moe-lora num_experts must be >= 1, got {self.num_experts}")
        if self.r < self.num_experts or self.r % self.num_experts:
            raise UserError(
                f"moe-lora rank r={self.r} must be a positive multiple of num_experts="
                f"{self.num_experts} (each expert gets rank r // num_experts)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"moe-lora dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        self.target_modules = list(self.target_modules)
        if not self.target_modules:
            raise UserError("moe-lora target_modules is empty")

    @property
    def expert_rank(self) -> int:
        return self.r // self.num_experts

    @property
    def scaling(self) -> float:
        return self.alpha / self.expert_rank


class GateState:
    """Holder of the current per-example gate, shared by all MoE-LoRA layers of one model.

    Caches the gate expanded per rank and pre-multiplied by the scaling, so the ~200 adapted
    layers of a model do not each redo it."""

    def __init__(self) -> None:
        self.gates: Tensor | None = None
        self._expanded: dict[tuple, Tensor] = {}

    def set(self, gates: Tensor | None) -> None:
        self.gates = gates
        self._expanded = {}

    def expanded(self, rank: int, scaling: float, dtype: torch.dtype) -> Tensor:
        """``(B, E*rank)`` or ``(B, T, E*rank)``: gate_e * scaling repeated ``rank`` times per
        expert."""
        assert self.gates is not None
        key = (rank, scaling, dtype)
        out = self._expanded.get(key)
        if out is None:
            out = (self.gates.to(dtype) * scaling).repeat_interleave(rank, dim=-1)
            self._expanded[key] = out
        return out


class LoRADropout(nn.Dropout):
    """``nn.Dropout`` (active in training only) that on CPU draws its mask with ``rand_like``:
    same distribution and scaling, ~1.5-2x faster than CPU ``bernoulli_`` -- the adapter's
    largest cost in a CPU training step. Other devices use ``F.dropout`` (fused there)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.inplace:
            return F.dropout(x, self.p, True, self.inplace)
        keep = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * keep


class MoELoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus ``E`` gated LoRA experts.

    Parameters: ``lora_A`` ``(E, r_e, in)`` (kaiming-uniform, like peft), ``lora_B``
    ``(E, out, r_e)`` (zeros, so a fresh adapter is the identity). Adapters live in
    ``adapter_dtype`` (fp32 by default, also when the base is bf16/fp16); the input is cast to it
    and the update cast back.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        *,
        num_experts: int,
        expert_rank: int,
        alpha: float,
        dropout: float = 0.0,
        gate_state: GateState | None = None,
        adapter_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"MoELoRALinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        base_layer.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.num_experts = num_experts
        self.expert_rank = expert_rank
        self.scaling = alpha / expert_rank
        device = base_layer.weight.device
        self.lora_A = nn.Parameter(
            torch.empty(
                num_experts, expert_rank, self.in_features, device=device, dtype=adapter_dtype
            )
        )
        self.lora_B = nn.Parameter(
            torch.empty(
                num_experts, self.out_features, expert_rank, device=device, dtype=adapter_dtype
            )
        )
        self.dropout = LoRADropout(dropout) if dropout > 0 else nn.Identity()
        self.gate_state = gate_state if gate_state is not None else GateState()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for e in range(self.num_experts):  # per expert: fan_in = in_features, as in peft
                nn.init.kaiming_uniform_(self.lora_A[e], a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    @property
    def weight(self) -> Tensor:  # some model code inspects `proj.weight` (dtype/device)
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        state = self.gate_state
        gates = state.gates
        if gates is None:
            raise RuntimeError(
                "MoE-LoRA layer ran without a gate: call set_gate(model, gates) or use "
                "`with gate_context(model, gates):` around the forward"
            )
        er = self.num_experts * self.expert_rank
        # (B, E*r_e) or (B, T, E*r_e)
        g = state.expanded(self.expert_rank, self.scaling, self.lora_A.dtype)
        g = self._broadcast_gate(g, x)
        a = self.lora_A.reshape(er, self.in_features)  # view: (E*r_e, in)
        b = self.lora_B.permute(1, 0, 2).reshape(self.out_features, er)  # (out, E*r_e)
        h = F.linear(self.dropout(x.to(a.dtype)), a) * g  # (B, ..., E*r_e)
        if h.dtype == result.dtype:
            # result + h @ b^T in one GEMM (beta=1): no separate pass over the output
            out = torch.addmm(result.reshape(-1, self.out_features), h.reshape(-1, er), b.t())
            return out.view(result.shape)
        return result + F.linear(h, b).to(result.dtype)

    @staticmethod
    def _broadcast_gate(g: Tensor, x: Tensor) -> Tensor:
        """The gate viewed so it broadcasts over ``x``'s (B, ..., in) leading dimensions."""
        nb = g.shape[0]
        if x.dim() < 2 or (nb != x.shape[0] and nb != 1):
            raise RuntimeError(
                f"MoE-LoRA gate has batch size {nb} but the layer input has shape "
                f"{tuple(x.shape)}; the gate must be (batch, num_experts) "
                "or (batch, tokens, num_experts)"
            )
        if g.dim() == 2:  # one gate per example: the same for every token
            return g.view(nb, *([1] * (x.dim() - 2)), g.shape[-1])
        if x.dim() != 3 or g.shape[1] != x.shape[1]:
            raise RuntimeError(
                f"MoE-LoRA per-token gate has shape {tuple(g.shape[:2])} + (E*r,) but the layer "
                f"input has shape {tuple(x.shape)}; it must be (batch, tokens, num_experts)"
            )
        return g

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, "
            f"expert_rank={self.expert_rank}, scaling={self.scaling:g}"
        )


class GateNetwork(nn.Module):
    """``softmax(MLP(u))``: per-example expert weights from the SASRec representation ``u``.

    ``hidden=None`` (or 0) gives a single linear layer."""

    def __init__(
        self, in_dim: int, num_experts: int, hidden: int | None = 64, dropout: float = 0.0
    ):
        super().__init__()
        if hidden:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(in_dim, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_experts),
            )
        else:
            self.net = nn.Linear(in_dim, num_experts)
        self.num_experts = num_experts

    def forward(self, u: Tensor) -> Tensor:
        return torch.softmax(self.net(u).float(), dim=-1)


# --------------------------------------------------------------------------------------------
# injection and gate plumbing
# --------------------------------------------------------------------------------------------


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def inject_moe_lora(
    model: nn.Module, config: MoELoRAConfig, *, adapter_dtype: torch.dtype = torch.float32
) -> list[str]:
    """Replace every ``nn.Linear`` whose qualified name ends with one of
    ``config.target_modules`` by a :class:`MoELoRALinear` sharing one :class:`GateState`.

    Freezes every pre-existing parameter of ``model`` (like peft); only the new
    ``lora_A``/``lora_B`` are trainable. Returns the replaced module names."""
    if any(isinstance(m, MoELoRALinear) for m in model.modules()):
        raise UserError("model already has MoE-LoRA layers; inject once")
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = [n for n in linear_names if _matches(n, config.target_modules)]
    if not names:
        short = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
        raise UserError(
            f"no nn.Linear matched moe-lora target_modules={list(config.target_modules)}; "
            f"linear module names in this model: {short}"
        )
    model.requires_grad_(False)
    state = GateState()
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        setattr(
            parent,
            child,
            MoELoRALinear(
                base,
                num_experts=config.num_experts,
                expert_rank=config.expert_rank,
                alpha=config.alpha,
                dropout=config.dropout,
                gate_state=state,
                adapter_dtype=adapter_dtype,
            ),
        )
    return names


def moe_lora_layers(model: nn.Module) -> Iterator[tuple[str, MoELoRALinear]]:
    for name, m in model.named_modules():
        if isinstance(m, MoELoRALinear):
            yield name, m


def _gate_states(model: nn.Module) -> list[GateState]:
    states: dict[int, GateState] = {}
    for _, layer in moe_lora_layers(model):
        states.setdefault(id(layer.gate_state), layer.gate_state)
    if not states:
        raise UserError("model has no MoE-LoRA layers (call inject_moe_lora first)")
    return list(states.values())


def set_gate(model: nn.Module, gates: Tensor | None) -> None:
    """Set the gate ``(batch, num_experts)`` or ``(batch, tokens, num_experts)`` for all MoE-LoRA
    layers of ``model``
    (``None`` clears it). The gate stays set until changed, which is what gradient checkpointing
    needs (layers are re-run during backward, after the forward call has returned)."""
    states = _gate_states(model)
    if gates is not None:
        num_experts = next(moe_lora_layers(model))[1].num_experts
        if gates.dim() not in (2, 3) or gates.shape[-1] != num_experts:
            raise UserError(
                f"gate must have shape (batch, {num_experts}) or (batch, tokens, {num_experts}), "
                f"got {tuple(gates.shape)}"
            )
    for s in states:
        s.set(gates)


@contextmanager
def gate_context(model: nn.Module, gates: Tensor):
    """``with gate_context(model, gates): model(...)`` -- sets the gate, restores the previous one
    on exit. With gradient checkpointing, run ``backward()`` inside the block (or use
    :func:`set_gate`)."""
    states = _gate_states(model)
    previous = [s.gates for s in states]
    set_gate(model, gates)
    try:
        yield
    finally:
        for s, g in zip(states, previous, strict=True):
            s.set(g)


def moe_lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter tensors (``<layer>.lora_A`` / ``<layer>.lora_B``), detached."""
    out: dict[str, Tensor] = {}
    for name, layer in moe_lora_layers(model):
        out[f"{name}.lora_A"] = layer.lora_A.detach()
        out[f"{name}.lora_B"] = layer.lora_B.detach()
    return out


def load_moe_lora_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load adapter tensors saved by :func:`moe_lora_state_dict`; keys and shapes must match."""
    own = moe_lora_state_dict(model)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"MoE-LoRA state mismatch: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"MoE-LoRA shape mismatch for {key}: checkpoint {tuple(tensor.shape)}, "
                f"model {tuple(own[key].shape)}"
            )
    with torch.no_grad():
        for name, layer in moe_lora_layers(model):
            layer.lora_A.copy_(state[f"{name}.lora_A"])
            layer.lora_B.copy_(state[f"{name}.lora_B"])
