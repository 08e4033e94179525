"""Fixtures: a tiny randomly initialised Llama causal LM and a tiny word-level tokenizer, both built
in-process (no hub, no files); the builders live in `ilora.testing` for other packages' tests."""

from __future__ import annotations

import pytest

from ilora.testing import build_tiny_llama, build_tiny_tokenizer


@pytest.fixture
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_llm():
    """Factory: ``tiny_llm(seed=0, **config_overrides) -> LlamaForCausalLM`` (fresh, eval mode)."""
    return build_tiny_llama
