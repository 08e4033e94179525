from __future__ import annotations

import pytest
import torch

from ilora.config import LLAMA_TARGETS
from ilora.moe_lora import (
    GateNetwork,
    MoELoRAConfig,
    MoELoRALinear,
    gate_context,
    inject_moe_lora,
    load_moe_lora_state_dict,
    moe_lora_layers,
    moe_lora_state_dict,
    set_gate,
)
from recdata.errors import UserError

B, T = 3, 7


def _ids(vocab=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (B, T), generator=g)


def _randomise_b(model, seed=2, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in moe_lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * scale)


def _uniform_gate(e):
    return torch.full((B, e), 1.0 / e)


def test_config_validation():
    cfg = MoELoRAConfig()
    assert (cfg.r, cfg.num_experts, cfg.expert_rank, cfg.scaling) == (8, 4, 2, 16.0)
    assert cfg.dropout == 0.1 and list(cfg.target_modules) == list(LLAMA_TARGETS)
    with pytest.raises(UserError, match="multiple of num_experts"):
        MoELoRAConfig(r=6, num_experts=4)
    with pytest.raises(UserError, match="dropout"):
        MoELoRAConfig(dropout=1.5)


def test_single_expert_matches_peft_lora(tiny_llm):
    from peft import LoraConfig, get_peft_model

    targets = list(LLAMA_TARGETS)
    moe = tiny_llm(seed=0)
    ref = get_peft_model(
        tiny_llm(seed=0),
        LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0),
    )
    names = inject_moe_lora(
        moe, MoELoRAConfig(r=4, num_experts=1, alpha=8, dropout=0.0, target_modules=targets)
    )
    assert len(names) == 2 * 7
    _randomise_b(moe)
    peft_modules = dict(ref.base_model.model.named_modules())
    with torch.no_grad():
        for name, layer in moe_lora_layers(moe):
            pm = peft_modules[name]
            pm.lora_A["default"].weight.copy_(layer.lora_A[0])
            pm.lora_B["default"].weight.copy_(layer.lora_B[0])
    ids = _ids()
    with torch.no_grad(), gate_context(moe, torch.ones(B, 1)):
        out = moe(ids).logits
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_zero_b_is_identity(tiny_llm):
    base = tiny_llm(seed=0)
    moe = tiny_llm(seed=0)
    inject_moe_lora(moe, MoELoRAConfig(r=8, num_experts=4, dropout=0.0))
    ids = _ids()
    gates = torch.softmax(torch.randn(B, 4), -1)
    with torch.no_grad(), gate_context(moe, gates):
        h = moe(ids, output_hidden_states=True).hidden_states
    with torch.no_grad():
        h0 = base(ids, output_hidden_states=True).hidden_states
    for a, b in zip(h, h0, strict=True):
        assert torch.equal(a, b)


def test_gate_changes_output_per_example(tiny_llm):
    moe = tiny_llm(seed=0)
    inject_moe_lora(moe, MoELoRAConfig(r=8, num_experts=4, dropout=0.0))
    _randomise_b(moe)
    gate_net = GateNetwork(16, 4, hidden=8)
    u = torch.randn(B, 16)
    ids = _ids()
    with torch.no_grad():
        g1 = gate_net(u)
        g2 = g1.clone()
        g2[1] = gate_net(u[1:2] + 3.0)[0]  # only example 1's gate input changes
        assert torch.allclose(g1.sum(-1), torch.ones(B))
        with gate_context(moe, g1):
            o1 = moe(ids).logits
        with gate_context(moe, g2):
            o2 = moe(ids).logits
    assert not torch.allclose(o1[1], o2[1], atol=1e-6)
    torch.testing.assert_close(o1[[0, 2]], o2[[0, 2]], atol=0, rtol=0)


def _seeded_layer_and_input():
    """A 10 -> 6 MoE-LoRA layer (3 experts of rank 2, non-zero B) and a (B, 5, 10) input."""
    torch.manual_seed(0)
    base = torch.nn.Linear(10, 6)
    layer = MoELoRALinear(base, num_experts=3, expert_rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    return base, layer, torch.randn(B, 5, 10)


def test_fused_layer_matches_per_expert_sum():
    base, layer, x = _seeded_layer_and_input()
    g = torch.softmax(torch.randn(B, 3), -1)
    layer.gate_state.set(g)
    out = layer(x)
    ref = base(x)
    for e in range(3):
        upd = x @ layer.lora_A[e].T @ layer.lora_B[e].T
        ref = ref + (4.0 / 2) * g[:, e, None, None] * upd
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_per_token_gates_match_the_per_expert_sum_token_by_token():
    """A (B, T, E) gate weighs each token's experts by that token's gate; a gate repeated over
    the tokens equals the (B, E) per-example gate exactly."""
    base, layer, x = _seeded_layer_and_input()
    g = torch.softmax(torch.randn(B, 5, 3), -1)
    layer.gate_state.set(g)
    out = layer(x)
    ref = base(x)
    for e in range(3):
        ref = ref + (4.0 / 2) * g[..., e, None] * (x @ layer.lora_A[e].T @ layer.lora_B[e].T)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    per_example = g[:, 0]
    layer.gate_state.set(per_example)
    expected = layer(x)
    layer.gate_state.set(per_example.unsqueeze(1).expand(-1, 5, -1))
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    layer.gate_state.set(g[:, :4])  # one gate per token of another length
    with pytest.raises(RuntimeError, match="per-token gate"):
        layer(x)


def test_dropout_only_in_training(tiny_llm):
    ids = _ids()
    gates = _uniform_gate(4)
    outs = {}
    for p in (0.0, 0.5):
        m = tiny_llm(seed=0)
        torch.manual_seed(3)
        inject_moe_lora(m, MoELoRAConfig(r=8, num_experts=4, dropout=p))
        _randomise_b(m, scale=0.5)
        outs[p] = m
    drop = outs[0.5]
    set_gate(drop, gates)
    set_gate(outs[0.0], gates)
    drop.train()
    with torch.no_grad():
        t1, t2 = drop(ids).logits, drop(ids).logits
    assert not torch.allclose(t1, t2)
    drop.eval()
    with torch.no_grad():
        e1, e2 = drop(ids).logits, drop(ids).logits
        ref = outs[0.0](ids).logits
    assert torch.equal(e1, e2)
    torch.testing.assert_close(e1, ref, atol=1e-6, rtol=0)


def test_only_adapters_and_gate_get_gradients(tiny_llm):
    m = tiny_llm(seed=0)
    base_names = {n for n, _ in m.named_parameters()}
    inject_moe_lora(m, MoELoRAConfig(r=8, num_experts=4, dropout=0.1))
    _randomise_b(m)
    gate_net = GateNetwork(16, 4)
    m.train()
    with gate_context(m, gate_net(torch.randn(B, 16))):
        loss = m(_ids()).logits.square().mean()
        loss.backward()
    for n, p in m.named_parameters():
        if "lora_" in n:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert not p.requires_grad and p.grad is None, n
            assert n.replace(".base_layer", "") in base_names
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate_net.parameters())


def test_gradient_checkpointing_keeps_gate_gradients(tiny_llm):
    grads = []
    for ckpt in (False, True):
        m = tiny_llm(seed=0)
        inject_moe_lora(m, MoELoRAConfig(r=4, num_experts=2, dropout=0.0))
        _randomise_b(m)
        if ckpt:
            m.activation_checkpointing_enable({"use_reentrant": False})
        m.train()
        gates = torch.softmax(torch.randn(B, 2, generator=torch.Generator().manual_seed(0)), -1)
        gates.requires_grad_(True)
        set_gate(m, gates)  # persistent: layers are re-run during backward
        m(_ids(), use_cache=False).logits.square().mean().backward()
        grads.append(gates.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_errors_no_target_and_no_gate(tiny_llm):
    m = tiny_llm(seed=0)
    with pytest.raises(UserError, match=r"no nn.Linear matched.*q_proj"):
        inject_moe_lora(m, MoELoRAConfig(target_modules=["query", "value"]))
    inject_moe_lora(m, MoELoRAConfig(target_modules=["q_proj", "v_proj"]))
    with pytest.raises(RuntimeError, match="without a gate"):
        m(_ids())
    with pytest.raises(UserError, match="gate must have shape"):
        set_gate(m, torch.ones(B, 3))
    with pytest.raises(UserError, match="gate must have shape"):
        set_gate(m, torch.ones(B, T, 3))
    with gate_context(m, _uniform_gate(4)):
        m(_ids())
    with pytest.raises(RuntimeError, match="without a gate"):  # restored on exit
        m(_ids())
    with pytest.raises(UserError, match="already"):
        inject_moe_lora(m, MoELoRAConfig())


def test_adapter_state_dict_roundtrip(tiny_llm):
    a, b = tiny_llm(seed=0), tiny_llm(seed=0)
    cfg = MoELoRAConfig(r=4, num_experts=2, target_modules=["q_proj", "down_proj"])
    inject_moe_lora(a, cfg)
    inject_moe_lora(b, cfg)
    _randomise_b(a)
    sd = moe_lora_state_dict(a)
    assert len(sd) == 2 * 2 * 2 and all("lora_" in k for k in sd)
    load_moe_lora_state_dict(b, sd)
    for k, v in moe_lora_state_dict(b).items():
        assert torch.equal(v, sd[k])
    with pytest.raises(UserError, match="shape mismatch"):
        load_moe_lora_state_dict(b, {k: v[:1] for k, v in sd.items()})


def test_lora_dropout_statistics():
    from ilora.moe_lora import LoRADropout

    drop = LoRADropout(0.25)
    x = torch.ones(200, 500)
    torch.manual_seed(0)
    y = drop(x)
    assert isinstance(drop, torch.nn.Dropout)
    assert torch.unique(y).tolist() == pytest.approx([0.0, 4.0 / 3.0])
    assert abs((y == 0).float().mean().item() - 0.25) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.02
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # seeded like nn.Dropout
    drop.eval()
    assert drop(x) is x
