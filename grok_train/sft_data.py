"""Instruction rows -> Qwen2-VL training tensors: chat template, image tokens, assistant-only labels.

A row (``instructions`` / ``benchmark`` config) has ``id``, ``messages`` (``[{"role", "content"}]``;
images referenced in order by the literal ``<image>`` inside user contents) and ``images`` (list of
PIL images: CFP RGB and OCT B-scans).

Encoding a row:

1. validate it (roles, at least one assistant turn, ``<image>`` only in user turns, as many
   placeholders as images) -- :class:`~grok_train.errors.ImageTokenMismatchError` otherwise;
2. compute each image's token count from its size alone (Qwen2-VL's ``smart_resize``:
   ``grid_h * grid_w / merge_size**2``), without decoding pixels;
3. render the ChatML text, each ``<image>`` -> ``<|vision_start|>`` + n x ``<|image_pad|>`` +
   ``<|vision_end|>``, and record the character span of every assistant answer (its content plus the
   closing ``<|im_end|>``);
4. tokenise once with offsets; a token is supervised (label = its id) when its character span overlaps
   an assistant span, otherwise its label is -100;
5. refuse rows longer than ``max_length`` (:class:`~grok_train.errors.SequenceTooLongError`) -- an
   answer is never truncated.

Pixels are processed lazily per micro-batch (:meth:`ChatEncoder.pixels`), and the grid the processor
returns is checked against the token count used in step 3.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from grok_train.errors import ImageTokenMismatchError, SequenceTooLongError
from grok_train.tokenizer import IM_END, IM_START, IMAGE_PAD, IMAGE_PLACEHOLDER, VISION_END, VISION_START

if TYPE_CHECKING:  # pragma: no cover
    import torch

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


@dataclass
class EncodedRow:
    """One tokenised row (no pixels yet)."""

    row_id: str
    input_ids: list[int]
    labels: list[int]
    """Same length as input_ids; -100 outside assistant answers."""
    image_token_counts: list[int]
    """Number of ``<|image_pad|>`` tokens of each image, in order."""
    reference: str | None = None
    """For generation prompts: the held-out final assistant answer."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.input_ids)


def _row_id(row: dict[str, Any], index: int) -> str:
    return str(row.get("id") or row.get("sample_id") or f"row#{index}")


def validate_messages(row_id: str, messages: Any, n_images: int, *, need_assistant: bool = True) -> None:
    """Raise a :class:`BadInputError` subclass naming ``row_id`` when the row cannot be trained on."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ImageTokenMismatchError(f"row {row_id}: messages must be a non-empty list of {{role, content}}")
    placeholders = 0
    n_assistant = 0
    for i, msg in enumerate(messages):
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise ImageTokenMismatchError(f"row {row_id}: messages[{i}].role {role!r} is not one of {list(ROLES)}")
        if not isinstance(content, str):
            raise ImageTokenMismatchError(f"row {row_id}: messages[{i}].content must be a string")
        count = content.count(IMAGE_PLACEHOLDER)
        if count and role != "user":
            raise ImageTokenMismatchError(
                f"row {row_id}: messages[{i}] ({role}) contains {IMAGE_PLACEHOLDER}; images belong in user turns"
            )
        placeholders += count
        n_assistant += role == "assistant"
    if placeholders != n_images:
        raise ImageTokenMismatchError(
            f"row {row_id}: {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the user turns but "
            f"{n_images} image(s) in `images`; republish the row with one placeholder per image"
        )
    if need_assistant and n_assistant == 0:
        raise ImageTokenMismatchError(f"row {row_id}: no assistant message, nothing to learn from")


class ChatEncoder:
    """Tokenise instruction rows for Qwen2-VL with assistant-only labels.

    Parameters
    ----------
    tokenizer : the Qwen2 tokenizer (:func:`grok_train.tokenizer.build_qwen2_tokenizer`).
    image_processor : a Qwen2-VL image processor (``patch_size``, ``merge_size``, ``size``).
    max_length : longest allowed sequence in tokens (text + image tokens).
    default_system_prompt : inserted when a row has no system message; None = none.
    """

    def __init__(self, tokenizer: Any, image_processor: Any, max_length: int,
                 default_system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_length = max_length
        self.default_system_prompt = default_system_prompt
        self.merge_size = int(image_processor.merge_size)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.pad_token_id = tokenizer.pad_token_id

    # ------------------------------------------------------------------ images
    def image_token_count(self, image: Any) -> int:
        """Tokens the LLM sees for ``image`` (PIL): grid_h * grid_w / merge_size**2 after smart_resize."""
        width, height = image.size
        patches = self.image_processor.get_number_of_image_patches(height, width, {})
        return int(patches) // (self.merge_size**2)

    def pixels(self, images: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the image processor: ``pixel_values`` (n_patches, C*T*P*P) and ``image_grid_thw`` (n_images, 3)."""
        rgb = [im.convert("RGB") if getattr(im, "mode", "RGB") != "RGB" else im for im in images]
        out = self.image_processor(images=rgb, return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    # ------------------------------------------------------------------ text
    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.default_system_prompt is not None and messages and messages[0]["role"] != "system":
            return [{"role": "system", "content": self.default_system_prompt}, *messages]
        return list(messages)

    def render(self, messages: Sequence[dict[str, str]], image_token_counts: Sequence[int],
               add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """ChatML text with expanded image tokens, and the (start, end) char spans of assistant answers."""
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        pos = 0
        counts = iter(image_token_counts)

        def emit(s: str) -> None:
            nonlocal pos
            parts.append(s)
            pos += len(s)

        for msg in messages:
            emit(f"{IM_START}{msg['role']}\n")
            chunks = msg["content"].split(IMAGE_PLACEHOLDER)
            start = pos
            for j, chunk in enumerate(chunks):
                if j:
                    emit(VISION_START + IMAGE_PAD * next(counts) + VISION_END)
                emit(chunk)
            emit(IM_END)
            if msg["role"] == "assistant":
                spans.append((start, pos))
            emit("\n")
        if add_generation_prompt:
            emit(f"{IM_START}assistant\n")
        return "".join(parts), spans

    def encode(self, row: dict[str, Any], index: int = 0, *, for_generation: bool = False) -> EncodedRow:
        """Tokenise one row (see the module docstring); ``for_generation`` drops the last assistant answer
        (kept as ``reference``) and appends the generation prompt."""
        row_id = _row_id(row, index)
        images = list(row.get("images") or [])
        messages = [dict(m) for m in (row.get("messages") or [])]
        validate_messages(row_id, messages, len(images), need_assistant=not for_generation)
        reference = None
        if for_generation:
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
            if last is not None:
                reference = messages[last]["content"]
                messages = messages[:last]
            if not messages or messages[-1]["role"] == "assistant":
                raise ImageTokenMismatchError(f"row {row_id}: no user turn to answer")
        counts = [self.image_token_count(im) for im in images]
        text, spans = self.render(self._with_system(messages), counts, add_generation_prompt=for_generation)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        labels = [IGNORE_INDEX] * len(ids)
        if spans:
            span_arr = np.asarray(spans)
            for k, (a, b) in enumerate(enc["offset_mapping"]):
                if b > a and np.any((a < span_arr[:, 1]) & (b > span_arr[:, 0])):
                    labels[k] = ids[k]
        n_pad = sum(1 for t in ids if t == self.image_token_id)
        if n_pad != sum(counts):
            raise ImageTokenMismatchError(
                f"row {row_id}: the text already contains {IMAGE_PAD} tokens ({n_pad} found, {sum(counts)} "
                "expected); remove raw special tokens from the messages"
            )
        limit = self.max_length
        if len(ids) > limit:
            answer_tokens = sum(1 for x in labels if x != IGNORE_INDEX)
            raise SequenceTooLongError(
                f"row {row_id}: {len(ids)} tokens ({sum(counts)} image tokens, {answer_tokens} answer tokens) "
                f"> max_length {limit}; raise max_length, lower model.image_max_pixels, or shorten the row "
                "(answers are never truncated)"
            )
        meta = {k: row.get(k) for k in ("task", "label", "patient_id", "eye") if k in row}
        return EncodedRow(row_id, ids, labels, counts, reference=reference, meta=meta)

    def encode_all(self, rows: Iterable[dict[str, Any]], *, for_generation: bool = False) -> list[EncodedRow]:
        """Encode every row; collect every bad row and raise one error listing them (before any training)."""
        out: list[EncodedRow] = []
        problems: list[Exception] = []
        for i, row in enumerate(rows):
            try:
                out.append(self.encode(row, i, for_generation=for_generation))
            except (ImageTokenMismatchError, SequenceTooLongError) as exc:
                problems.append(exc)
        if problems:
            kind = type(problems[0])
            listed = "; ".join(str(p) for p in problems[:10])
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            raise kind(f"{len(problems)} unusable row(s): {listed}{more}")
        return out

    # ------------------------------------------------------------------ batches
    def collate(self, encoded: Sequence[EncodedRow], images: Sequence[Sequence[Any]]) -> dict[str, torch.Tensor]:
        """Right-pad a micro-batch and attach pixels.

        Returns ``input_ids``/``labels``/``attention_mask``/``mm_token_type_ids`` (B, S) and, when any
        row has images, ``pixel_values`` (n_patches, C*T*P*P) and ``image_grid_thw`` (n_images, 3).
        """
        import torch

        width = max(e.length for e in encoded)
        n = len(encoded)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        pixel_values, grids = [], []
        for b, (enc, ims) in enumerate(zip(encoded, images)):
            input_ids[b, : enc.length] = torch.tensor(enc.input_ids)
            labels[b, : enc.length] = torch.tensor(enc.labels)
            attention[b, : enc.length] = 1
            if ims:
                pv, grid = self.pixels(ims)
                got = (grid.prod(-1) // self.merge_size**2).tolist()
                if got != enc.image_token_counts:
                    raise RuntimeError(
                        f"row {enc.row_id}: image processor grids give {got} tokens but the text was "
                        f"built with {enc.image_token_counts}"
                    )
                pixel_values.append(pv)
                grids.append(grid)
        batch = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention,
            "mm_token_type_ids": (input_ids == self.image_token_id).to(torch.int32),
        }
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values)
            batch["image_grid_thw"] = torch.cat(grids)
        return batch


def count_target_tokens(labels: torch.Tensor) -> int:
    """Supervised next-token targets in a (B, S) label tensor (after the causal shift)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def epoch_batches(lengths: Sequence[int], batch_size: int, epoch: int, seed: int, *,
                  bucketing: bool = True, world_size: int = 1, rank: int = 0,
                  mega_batch_factor: int = 32) -> list[list[int]]:
    """Deterministic micro-batches of row indices for one epoch (and one data-parallel rank).

    With ``bucketing`` the shuffled rows are cut into mega-batches of ``batch_size * mega_batch_factor``
    rows, each sorted by length (longest first) and cut into micro-batches, whose order is then
    shuffled: rows of similar length share a batch (little padding) while the order stays random.
    The same ``(seed, epoch)`` always gives the same batches, so a resumed run skips exactly the
    batches already seen. With ``world_size > 1`` the batch list is padded by repetition to a multiple
    of ``world_size`` and rank ``r`` takes batches ``r, r + world_size, ...``.
    """
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    batches: list[list[int]] = []
    if bucketing:
        mega = batch_size * mega_batch_factor
        lens = np.asarray(lengths)
        for s in range(0, n, mega):
            chunk = order[s : s + mega]
            chunk = chunk[np.argsort(-lens[chunk], kind="stable")]
            batches.extend(chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    else:
        batches = [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    if world_size > 1:
        short = (-len(batches)) % world_size
        batches = batches + [batches[i % len(batches)] for i in range(short)] if batches else batches
        batches = batches[rank::world_size]
    return batches
