"""Chat formatting for Qwen2-VL SFT: assistant-only labels token by token, image tokens vs grids, bad rows."""

from __future__ import annotations

import numpy as np
import pytest

from grok_train._compat import guard_torchvision

guard_torchvision()  # hide a broken torchvision before transformers / peft are imported
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from grok_train.config import ModelConfig, TinyModelConfig
from grok_train.errors import ImageTokenMismatchError, SequenceTooLongError
from grok_train.sft_data import IGNORE_INDEX, ChatEncoder, epoch_batches
from tests.train_fixtures import draw_bscan

MODEL_CFG = ModelConfig(tiny=TinyModelConfig(), image_min_pixels=56 * 56, image_max_pixels=112 * 112)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def processor():
    from grok_train.modeling import build_processor

    return build_processor(MODEL_CFG)


@pytest.fixture(scope="module")
def encoder(processor):
    return ChatEncoder(processor.tokenizer, processor.image_processor, max_length=512,
                       default_system_prompt="You are a helpful assistant.")


def _cfp(w: int = 120, h: int = 100) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.retina()).resize((w, h))


def _oct(h: int = 496, w: int = 512) -> Image.Image:
    return Image.fromarray(draw_bscan(np.full(5, 0.5), np.random.default_rng(0), h, w))


def _row(answer1: str = "Drusen are present; the CST is about 301 um.", answer2: str = "Intermediate AMD.") -> dict:
    return {
        "id": "row-1",
        "messages": [
            {"role": "user", "content": "CFP: <image>\nOCT: <image>\nWhat do you see?"},
            {"role": "assistant", "content": answer1},
            {"role": "user", "content": "Diagnosis?"},
            {"role": "assistant", "content": answer2},
        ],
        "images": [_cfp(), _oct()],
    }


def test_labels_cover_exactly_the_assistant_answers_token_by_token(encoder, processor):
    tok = processor.tokenizer
    row = _row()
    enc = encoder.encode(row)
    assert len(enc.labels) == len(enc.input_ids)
    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    assistant_header = tok("assistant\n", add_special_tokens=False)["input_ids"]
    # Walk the sequence turn by turn: inside an assistant turn every token after the header up to and
    # including <|im_end|> is supervised; every other token is ignored.
    expected = []
    i, ids = 0, enc.input_ids
    while i < len(ids):
        assert ids[i] == im_start
        end = ids.index(im_end, i)
        header = ids[i + 1 : i + 1 + len(assistant_header)]
        is_assistant = header == assistant_header
        for k in range(i, end + 1):
            supervised = is_assistant and k > i + len(assistant_header)
            expected.append(ids[k] if supervised else IGNORE_INDEX)
        i = end + 1
        if i < len(ids):  # the "\n" after <|im_end|> is never supervised
            expected.append(IGNORE_INDEX)
            i += 1
    assert enc.labels == expected
    runs, current = [], []
    for t, lab in zip(ids, enc.labels):
        if lab != IGNORE_INDEX:
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    assert [tok.decode(r) for r in runs] == [row["messages"][1]["content"] + "<|im_end|>",
                                           row["messages"][3]["content"] + "<|im_end|>"]
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert all(lab == IGNORE_INDEX for t, lab in zip(ids, enc.labels) if t == image_pad)
    assert tok.decode(ids).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=60)
       .filter(lambda s: "<" not in s and s.strip() == s and s))
def test_any_answer_is_supervised_exactly(encoder, processor, answer):
    import unicodedata

    row = {"id": "h", "images": [], "messages": [{"role": "user", "content": "Describe."},
                                                 {"role": "assistant", "content": answer}]}
    enc = encoder.encode(row)
    supervised = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
    assert processor.tokenizer.decode(supervised) == unicodedata.normalize("NFC", answer) + "<|im_end|>"


def test_render_matches_the_stored_chat_template(encoder, processor):
    row = _row()
    text, _ = encoder.render(encoder._with_system(row["messages"]), [1, 1])
    via_template = processor.tokenizer.apply_chat_template(encoder._with_system(row["messages"]), tokenize=False)
    assert text == via_template
    prompt, _ = encoder.render(row["messages"][:1], [1, 1], add_generation_prompt=True)
    assert prompt == processor.tokenizer.apply_chat_template(row["messages"][:1], tokenize=False,
                                                             add_generation_prompt=True)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_image_tokens_match_grids_for_cfp_and_oct(encoder, processor, family):
    from grok_train.modeling import build_model

    tok = processor.tokenizer
    row = _row()
    enc = encoder.encode(row)
    batch = encoder.collate([enc], [row["images"]])
    grid = batch["image_grid_thw"]
    assert grid.shape == (2, 3)
    per_image = (grid.prod(-1) // processor.image_processor.merge_size**2).tolist()
    assert per_image == enc.image_token_counts
    # 120x100 CFP and 496x512 OCT under a 112x112-pixel budget: distinct grids, both bounded
    assert grid[0].tolist() != grid[1].tolist()
    assert all(h * w * 14 * 14 <= 112 * 112 for _, h, w in grid.tolist())
    ids = batch["input_ids"][0].tolist()
    vs, ve = tok.convert_tokens_to_ids("<|vision_start|>"), tok.convert_tokens_to_ids("<|vision_end|>")
    starts = [i for i, t in enumerate(ids) if t == vs]
    ends = [i for i, t in enumerate(ids) if t == ve]
    assert [e - s - 1 for s, e in zip(starts, ends)] == per_image
    assert int(batch["mm_token_type_ids"].sum()) == sum(per_image)
    assert batch["pixel_values"].shape[0] == int(grid.prod(-1).sum())
    model = build_model(MODEL_CFG.model_copy(update={"family": family}), tok, torch.float32).eval()
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
    assert out.logits.shape[:2] == batch["input_ids"].shape
    # one image token fewer than the grid needs: the model refuses the batch
    broken = dict(batch)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    first_pad = ids.index(pad)
    broken["input_ids"] = batch["input_ids"].clone()
    broken["input_ids"][0, first_pad] = tok.convert_tokens_to_ids("<|vision_pad|>")
    broken["mm_token_type_ids"] = (broken["input_ids"] == pad).to(torch.int32)
    with pytest.raises(Exception, match="(?i)image features and image tokens do not match"):
        with torch.no_grad():
            model(**{k: v for k, v in broken.items() if k != "labels"})


def test_bad_rows_are_refused_with_their_id(encoder):
    row = _row()
    row["images"] = row["images"][:1]
    with pytest.raises(ImageTokenMismatchError, match=r"row row-1: 2 <image> placeholder\(s\).*1 image"):
        encoder.encode(row)
    row = _row(answer1="See <image>")
    with pytest.raises(ImageTokenMismatchError, match="images belong in user turns"):
        encoder.encode(row)
    no_answer = {"id": "q", "images": [], "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ImageTokenMismatchError, match="no assistant message"):
        encoder.encode(no_answer)
    with pytest.raises(ImageTokenMismatchError, match="role"):
        encoder.encode({"id": "r", "images": [], "messages": [{"role": "bot", "content": "x"}]})


def test_too_long_rows_fail_instead_of_truncating(processor):
    short = ChatEncoder(processor.tokenizer, processor.image_processor, max_length=40)
    long_row = _row(answer1="word " * 50)
    with pytest.raises(SequenceTooLongError, match=r"row row-1: \d+ tokens .* > max_length 40.*answers are never truncated"):
        short.encode(long_row)
    ok = {"id": "ok", "images": [], "messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "yes"}]}
    with pytest.raises(SequenceTooLongError, match=r"1 unusable row\(s\): row row-1"):
        short.encode_all([ok, long_row])


def test_generation_prompt_holds_out_the_answer(encoder, processor):
    row = _row()
    enc = encoder.encode(row, for_generation=True)
    assert enc.reference == "Intermediate AMD."
    text = processor.tokenizer.decode(enc.input_ids)
    assert text.endswith("<|im_start|>user\nDiagnosis?<|im_end|>\n<|im_start|>assistant\n")
    assert "Intermediate AMD." not in text


def test_epoch_batches_cover_each_row_once_and_bucket_by_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 2000, size=203).tolist()
    b0 = epoch_batches(lengths, 8, epoch=0, seed=1)
    assert sorted(i for b in b0 for i in b) == list(range(203))
    assert b0 == epoch_batches(lengths, 8, epoch=0, seed=1)
    assert b0 != epoch_batches(lengths, 8, epoch=1, seed=1)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    plain = epoch_batches(lengths, 8, epoch=0, seed=1, bucketing=False)
    assert padding(b0) < 0.25 * padding(plain)
    ranks = [epoch_batches(lengths, 8, epoch=0, seed=1, world_size=3, rank=r) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1
    assert {i for r in ranks for b in r for i in b} == set(range(203))
