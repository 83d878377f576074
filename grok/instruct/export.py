"""The instructions table (parquet): schema, streaming writer, and OpenAI / LLaVA-ShareGPT exports.

Run as: python -c "from grok.instruct.export import INSTRUCTIONS_SCHEMA; print(INSTRUCTIONS_SCHEMA)"

Columns (the contract for publishing and training): ``id, study_id, patient_id, eye, task, label,
messages (list of {role, content}; images referenced in order by the literal token <image> in user
turns), images (paths relative to the build folder, in <image> order), image_roles, mode,
template_id, template_sha256, seed, kb_snapshot, verifier_passed, verifier_score,
verifier_reasons, provenance (JSON string), attempts``. The quarantine table adds ``source_key,
reason, error_class``; the failures table keeps every failed LLM request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

INSTRUCTIONS_SCHEMA = pa.schema([
    ("id", pa.string()), ("study_id", pa.string()), ("patient_id", pa.string()), ("eye", pa.string()),
    ("task", pa.string()), ("label", pa.string()), ("messages", MESSAGE_TYPE), ("images", pa.list_(pa.string())),
    ("image_roles", pa.list_(pa.string())), ("mode", pa.string()), ("template_id", pa.string()),
    ("template_sha256", pa.string()), ("seed", pa.int64()), ("kb_snapshot", pa.string()),
    ("verifier_passed", pa.bool_()), ("verifier_score", pa.float64()), ("verifier_reasons", pa.list_(pa.string())),
    ("provenance", pa.string()), ("attempts", pa.int64()),
])

QUARANTINE_SCHEMA = pa.schema([("source_key", pa.string()), ("reason", pa.string()), ("error_class", pa.string()),
                               *[f for f in INSTRUCTIONS_SCHEMA]])

#: A row a family could not make for a study (:class:`grok.instruct.families.Skip`): who, which family, why.
SKIPPED_SCHEMA = pa.schema([
    ("study_id", pa.string()), ("patient_id", pa.string()), ("eye", pa.string()), ("label", pa.string()),
    ("task", pa.string()), ("mode", pa.string()), ("reason_code", pa.string()), ("reason", pa.string()),
])

FAILURES_SCHEMA = pa.schema([
    ("study_id", pa.string()), ("task", pa.string()), ("row_id", pa.string()), ("attempt", pa.int64()),
    ("try_index", pa.int64()), ("request_hash", pa.string()), ("kind", pa.string()), ("message", pa.string()),
    ("final", pa.bool_()),
])


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of an instructions (or quarantine) parquet file as dicts."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: table not found (run 'grok instruct STUDIES --out DIR' first)")
    return pq.read_table(p).to_pylist()


def to_openai(row: dict[str, Any], image_root: str | Path | None = None) -> dict[str, Any]:
    """OpenAI chat format: ``{"messages": [...]}`` with each ``<image>`` turned into an image part.

    Images are referenced by path (``file://`` URL under ``image_root`` when given, else relative).
    """
    images = list(row.get("images") or [])
    k = 0
    out = []
    for m in row["messages"]:
        content = m["content"]
        if m["role"] != "user" or "<image>" not in content:
            out.append({"role": m["role"], "content": content})
            continue
        parts: list[dict[str, Any]] = []
        for i, piece in enumerate(content.split("<image>")):
            if i > 0:
                path = images[k] if k < len(images) else ""
                url = (Path(image_root) / path).resolve().as_uri() if image_root else path
                parts.append({"type": "image_url", "image_url": {"url": url}})
                k += 1
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
        out.append({"role": m["role"], "content": parts})
    return {"id": row["id"], "messages": out}


def to_sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    """LLaVA / ShareGPT format: ``{"id", "image"|"images", "conversations": [{"from", "value"}]}``.

    ``<image>`` tokens stay in the text; a system message becomes a leading ``system`` entry.
    """
    who = {"user": "human", "assistant": "gpt", "system": "system"}
    conv = [{"from": who[m["role"]], "value": m["content"]} for m in row["messages"]]
    images = list(row.get("images") or [])
    out: dict[str, Any] = {"id": row["id"], "conversations": conv}
    if len(images) == 1:
        out["image"] = images[0]
    elif images:
        out["images"] = images
    return out


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path, fmt: str = "sharegpt") -> int:
    """Export rows to JSONL in ``fmt`` = ``sharegpt`` | ``openai``; returns the number written."""
    conv = {"sharegpt": to_sharegpt, "openai": to_openai}.get(fmt)
    if conv is None:
        raise ValueError(f"fmt={fmt!r}: choose 'sharegpt' or 'openai'")
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(conv(r), ensure_ascii=False) + "\n")
            n += 1
    return n
