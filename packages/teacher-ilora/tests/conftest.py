"""Fixtures: a tiny randomly initialised Llama causal LM and a tiny word-level tokenizer, both built
in-process (no hub, no files)."""

from __future__ import annotations

import pytest
import torch

WORDS = ["the", "a", "user", "has", "watched", "following", "movies", "in", "order", "will", "watch", "next", "given", "history", "movie", "predict", "what", "and", "of", "to", "is", ",", ".", ":", "(", ")", "-", "!", "?", "'", "star", "wars", "toy", "story", "fargo", "heat", "casino", "jumanji", "babe", "seven", "clueless", "braveheart", "apollo", "13", "batman", "forever", "love", "hate", "long", "short", "title", "very", "extremely", "an", "incredibly", "quite", "adventure", "night", "day", "man", "woman", "city", "return", "1977", "1995", "1996", "1994", "1993", "ii", "iii", "part"]
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(dict.fromkeys(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # like Llama tokenizers: BOS prepended by add_special_tokens=True
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def build_tiny_llama(vocab_size: int = 128, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    return model.eval()


@pytest.fixture
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_llm():
    """Factory: ``tiny_llm(seed=0, **config_overrides) -> LlamaForCausalLM`` (fresh, eval mode)."""
    return build_tiny_llama
