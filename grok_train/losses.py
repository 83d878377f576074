"""Training losses that need torch at import time (import this module lazily)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


class AnswerTokenLoss(nn.Module):
    """Causal-LM loss computed from the hidden states of supervised positions only.

    ``Qwen2VLForConditionalGeneration.forward`` projects every position onto the 152k-token vocabulary
    before the loss; in SFT only the answer tokens carry labels (typically a few hundred of ~2,000), so
    we run the backbone, keep the positions whose *next* token is supervised and apply ``lm_head`` to
    those alone: identical loss, a fraction of the logits memory and FLOPs. Wrap this module (not the
    bare model) in DDP so gradient synchronisation sees the whole forward.

    Parameters
    ----------
    model : a (peft-wrapped) Qwen2-VL / Qwen2.5-VL ``...ForConditionalGeneration``.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._backbone = base.model  # Qwen2VLModel: vision tower + language model (LoRA injected in place)
        self._lm_head = base.lm_head

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | None = None,
                **inputs: torch.Tensor) -> torch.Tensor:
        """Sum of token cross-entropies over supervised next tokens / ``num_items_in_batch``
        (default: their count in this batch). input_ids, labels : (B, S)."""
        out = self._backbone(input_ids=input_ids, use_cache=False, **inputs)
        hidden = out.last_hidden_state[:, :-1]
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX
        logits = self._lm_head(hidden[keep]).float()
        total = F.cross_entropy(logits, target[keep], reduction="sum")
        denom = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp_min(1)
        return total / denom
