"""Jinja templates of the instruction families: loading, hashing, rendering into chat messages.

Run as: python -c "from grok.instruct.templating import TemplateLibrary; print(TemplateLibrary().ids())"

A family template renders one conversation as text in which a line ``@@ system``, ``@@ user`` or
``@@ assistant`` opens each message. Inside a message, single line breaks are joined with a space
(so templates can be laid out readably), a blank line is kept as a paragraph break, and lines that
start with ``Step N``, ``- `` or ``<image>`` keep their own line. Templates run with
``StrictUndefined``: a missing value is an error, never an empty string.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grok.instruct.records import lower_first

TEMPLATES_ENV = "GROK_TEMPLATES"
_MARKER = re.compile(r"^@@ (system|user|assistant)\s*$", re.MULTILINE)
_KEEP_LINE = re.compile(r"^(Step \d|- |<image>)")
_SPACES = re.compile(r"[ \t]+")
_SPACE_PUNCT = re.compile(r" +([.,;:])")


def templates_dir() -> Path:
    """The templates folder: ``$GROK_TEMPLATES`` or the repository's ``templates/``."""
    env = os.environ.get(TEMPLATES_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "templates"


def capitalize_first(text: str) -> str:
    """Upper-case the first character only (``str.capitalize`` would lower-case the rest)."""
    return text[:1].upper() + text[1:] if text else text


def normalise_content(text: str) -> str:
    """Join wrapped lines, keep paragraph breaks and list/step lines, squeeze spaces."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", text.strip()):
        lines = [ln.strip() for ln in para.splitlines() if ln.strip()]
        out: list[str] = []
        for ln in lines:
            if out and not _KEEP_LINE.match(ln) and not out[-1].startswith("<image>"):
                out[-1] = f"{out[-1]} {ln}"
            else:
                out.append(ln)
        paragraphs.append("\n".join(_SPACE_PUNCT.sub(r"\1", _SPACES.sub(" ", ln)) for ln in out))
    return "\n\n".join(p for p in paragraphs if p)


def split_messages(rendered: str, template_id: str, keep_lines: bool = False) -> list[dict[str, str]]:
    """Rendered template text -> ``[{"role", "content"}, ...]``; raises ``ValueError`` on bad layout.

    ``keep_lines`` keeps every line as written (prompts), instead of joining wrapped lines (rows).
    """
    parts = _MARKER.split(rendered)
    if parts[0].strip():
        raise ValueError(f"template {template_id}: text before the first '@@ role' line: {parts[0].strip()[:60]!r}")
    msgs = []
    for role, body in zip(parts[1::2], parts[2::2]):
        content = ("\n".join(ln.rstrip() for ln in body.strip().splitlines() if ln.strip()) if keep_lines
                   else normalise_content(body))
        if not content:
            raise ValueError(f"template {template_id}: empty {role} message")
        msgs.append({"role": role, "content": content})
    if not msgs:
        raise ValueError(f"template {template_id}: no '@@ user' / '@@ assistant' lines")
    return msgs


@dataclass(frozen=True)
class TemplateInfo:
    id: str
    sha256: str


class TemplateLibrary:
    """Jinja environment over ``templates/`` with the instruction families and LLM prompts."""

    def __init__(self, root: str | Path | None = None):
        import jinja2

        self.root = Path(root) if root is not None else templates_dir()
        if not (self.root / "instruct").is_dir():
            raise FileNotFoundError(f"{self.root}/instruct: template folder not found (set {TEMPLATES_ENV} to the "
                                    "folder that holds instruct/ and llm/)")
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(self.root)), undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True, autoescape=False, keep_trailing_newline=False,
        )
        self.env.filters["capitalize_first"] = capitalize_first
        self.env.filters["lower_first"] = lower_first
        self._cache: dict[str, Any] = {}
        self._info: dict[str, TemplateInfo] = {}

    def ids(self) -> list[str]:
        return sorted(f"{p.parent.name}/{p.name}" for p in self.root.glob("*/*.j2") if not p.name.startswith("_"))

    def get(self, template_id: str):
        """``(jinja Template, TemplateInfo)``; the hash covers the file and every ``_*.j2`` it may import."""
        if template_id not in self._cache:
            path = self.root / template_id
            if not path.exists():
                raise FileNotFoundError(f"{path}: template not found (expected one of {self.ids()})")
            h = hashlib.sha256(path.read_bytes())
            for shared in sorted(path.parent.glob("_*.j2")):
                h.update(shared.name.encode())
                h.update(shared.read_bytes())
            self._cache[template_id] = self.env.get_template(template_id)
            self._info[template_id] = TemplateInfo(template_id, h.hexdigest())
        return self._cache[template_id], self._info[template_id]

    def render_messages(self, template_id: str, context: dict[str, Any]) -> tuple[list[dict[str, str]], TemplateInfo]:
        tpl, info = self.get(template_id)
        return split_messages(tpl.render(context), template_id), info

    def render_text(self, template_id: str, context: dict[str, Any]) -> tuple[str, TemplateInfo]:
        tpl, info = self.get(template_id)
        return tpl.render(context), info
