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
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from grok.instruct.records import lower_first
from grok.resources import bundled_dir

TEMPLATES_ENV = "GROK_TEMPLATES"
#: A line ``@@ role``. Same as ``^@@ (system|user|assistant)\s*$`` (multi-line), written to start
#: with the literal ``@@`` (the look-behind is the start-of-line check) so the scan is a fast search.
_MARKER = re.compile(r"@@(?<![^\n]@@) (system|user|assistant)\s*$", re.MULTILINE)
_KEEP_LINE = re.compile(r"^(Step \d|- |<image>)")
_SPACES = re.compile(r"[ \t]+")
_SPACE_PUNCT = re.compile(r" +([.,;:])")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_PUNCT_AFTER_SPACE = (" .", " ,", " ;", " :")
#: Attribute names a plain ``dict`` has (``d.items`` is the method, as Jinja resolves it).
_DICT_ATTRS = frozenset(dir(dict))


#: Subfolders of the templates folder that instruction generation reads (task families, the LLM prompt);
#: the dataset card, curator report and evaluation templates beside them do not shape instruction rows.
GENERATION_TEMPLATES = ("instruct", "llm")


def templates_dir() -> Path:
    """The templates folder: ``$GROK_TEMPLATES``, else the bundled ``templates/`` (see grok.resources)."""
    env = os.environ.get(TEMPLATES_ENV)
    if env:
        return Path(env)
    return bundled_dir("templates")


def capitalize_first(text: str) -> str:
    """Upper-case the first character only (``str.capitalize`` would lower-case the rest)."""
    return text[:1].upper() + text[1:] if text else text


#: Words a template can spend on one abnormal biomarker besides its name, value, reading word and range
#: texts: "of", the longest bracketed phrase of ``_common.j2``'s ``reading`` ("(below the 5th percentile
#: of ...)", "(normal range ... to ...)") and the joining "and a".
_ABNORMAL_OVERHEAD_WORDS = 9
#: Word budget of the biomarkers one sentence lists: the lint's limit (45 words, grok.instruct.lint) less
#: the longest lead-in of a follow-on sentence ("In addition, there is").
SENTENCE_LIST_WORDS = 41


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def _abnormal_cost(b) -> int:
    """An upper bound of the words ``_common.j2`` writes for one abnormal ``BiomarkerFact``."""
    return (_words(b.name) + _words(b.text) + _words(b.qual or "increased") + _words(b.low_text)
            + _words(b.high_text) + _ABNORMAL_OVERHEAD_WORDS)


def sentence_groups(items: list, first: int | None = None, size: int = 2,
                    budget: int = SENTENCE_LIST_WORDS) -> list[list]:
    """Abnormal biomarkers split into sentences as the report lists them: at most ``size`` per sentence
    (the first at most ``first``), and a second one joins a sentence only when the longest way the
    templates can write the two stays within ``budget`` words, so no sentence breaks the lint's length
    rule whichever phrasing ``pick`` chooses (a 49-word pair once refused a 120-study publication)."""
    groups: list[list] = []
    for b in items:
        last = groups[-1] if groups else None
        limit = first if first is not None and len(groups) == 1 else size
        if last is not None and len(last) < limit and sum(map(_abnormal_cost, last)) + _abnormal_cost(b) <= budget:
            last.append(b)
        else:
            groups.append([b])
    return groups


def _squeeze(line: str) -> str:
    """Runs of spaces/tabs -> one space, and no space before . , ; : (each step only when it applies)."""
    if "\t" in line or "  " in line:
        line = _SPACES.sub(" ", line)
    if any(p in line for p in _PUNCT_AFTER_SPACE):
        line = _SPACE_PUNCT.sub(r"\1", line)
    return line


def normalise_content(text: str) -> str:
    """Join wrapped lines, keep paragraph breaks and list/step lines, squeeze spaces."""
    paragraphs = []
    for para in _PARAGRAPH_BREAK.split(text.strip()):
        out: list[str] = []
        for ln in para.splitlines():
            ln = ln.strip()
            if not ln:
                continue
            if out and not _KEEP_LINE.match(ln) and not out[-1].startswith("<image>"):
                out[-1] = f"{out[-1]} {ln}"
            else:
                out.append(ln)
        paragraphs.append("\n".join(_squeeze(ln) for ln in out))
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


_ENV_CLASS: Any = None


def _environment_class(jinja2) -> type:
    """A ``jinja2.Environment`` whose ``obj.name`` lookup on a plain dict reads the key directly.

    Jinja tries ``getattr(d, "name")`` first, which for a dict raises (and catches) an
    AttributeError before ``d["name"]``; the contexts here are mostly dicts. The result is the
    same: a name that is a dict attribute (``items``, ``keys``...) still resolves to the method.
    """
    global _ENV_CLASS
    if _ENV_CLASS is None:
        base_getattr = jinja2.Environment.getattr

        class GrokEnvironment(jinja2.Environment):
            def getattr(self, obj: Any, attribute: str) -> Any:
                if type(obj) is dict and attribute not in _DICT_ATTRS:
                    try:
                        return obj[attribute]
                    except KeyError:
                        return self.undefined(obj=obj, name=attribute)
                return base_getattr(self, obj, attribute)

        _ENV_CLASS = GrokEnvironment
    return _ENV_CLASS


@dataclass(frozen=True)
class TemplateInfo:
    id: str
    sha256: str


class TemplateLibrary:
    """Jinja environment over ``templates/`` with the instruction families and LLM prompts."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else templates_dir()
        if not (self.root / "instruct").is_dir():
            raise FileNotFoundError(f"{self.root}/instruct: template folder not found (set {TEMPLATES_ENV} to the "
                                    "folder that holds instruct/ and llm/)")
        # auto_reload off: the library keeps its compiled templates (and their hashes) for its
        # lifetime anyway, and imports of _common.j2 then skip a file-time check per render.
        self.env = _environment_class(jinja2)(
            loader=jinja2.FileSystemLoader(str(self.root)), undefined=jinja2.StrictUndefined,
            trim_blocks=True, lstrip_blocks=True, autoescape=False, keep_trailing_newline=False,
            auto_reload=False,
        )
        self.env.filters["capitalize_first"] = capitalize_first
        self.env.filters["lower_first"] = lower_first
        self.env.filters["sentence_groups"] = sentence_groups
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


_LIBRARIES: dict[str, tuple[tuple[Any, ...], TemplateLibrary]] = {}
_LIBRARIES_LOCK = threading.Lock()


def library(root: str | Path | None = None) -> TemplateLibrary:
    """The :class:`TemplateLibrary` of ``root`` for this process: its Jinja environment is made and its templates
    compiled once per process (a worker generating many shards does not recompile them per shard), and made
    again when a template file under ``root`` changed (name, size or modification time)."""
    path = Path(root) if root is not None else templates_dir()
    files = sorted(path.glob("*/*.j2"))
    stamp = tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in (f.stat(),))
    key = str(path.resolve())
    with _LIBRARIES_LOCK:
        hit = _LIBRARIES.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    lib = TemplateLibrary(root)
    with _LIBRARIES_LOCK:
        _LIBRARIES[key] = (stamp, lib)
    return lib
