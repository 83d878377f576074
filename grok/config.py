"""The one config system: the strict pydantic base of every settings model, the one ``ConfigError``,
YAML loading and ``KEY=VALUE`` overrides with errors that name the field, and the content-key dump.

Run as: a library module (the models live with what they configure; see below)

Each area owns the model of what it configures and nests it where it is used; defaults are written
once, on the owning model:

* :class:`grok.instruct.llm.LLMConfig` -- the LLM client (``grok instruct --llm-config``, the build's
  ``instruct.llm``, an evaluation judge);
* :class:`grok.instruct.generate.InstructConfig` -- instruction generation (``grok instruct``; the
  build's ``instruct`` section extends it with its sharding);
* :class:`grok.stages.config.BuildConfig` -- the whole build YAML (its JSON schema:
  ``configs/build.schema.json``, printed by ``grok build --schema``);
* :mod:`grok_train.config` -- the training jobs (``AlignConfig``, ``SFTConfig``, ``PredictConfig``).

This module imports only pydantic and PyYAML, so the training jobs (which must not import Prefect or
Great Expectations) and every area of ``grok`` can build on it.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Self

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

__all__ = ["ConfigError", "Settings", "apply_overrides", "deep_merge", "describe", "read_yaml_mapping"]

class ConfigError(ValueError):
    """A config that cannot run; the message names the file, the field and the fix (CLI exit code 2)."""


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class inside ``annotation`` (``Model``, ``Model | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [m for a in typing.get_args(annotation) if (m := _nested_model(a)) is not None]
        return models[0] if len(models) == 1 else None
    return None


def _model_at(cls: type[BaseModel], loc: Iterable[Any]) -> type[BaseModel] | None:
    for part in loc:
        field = cls.model_fields.get(str(part)) if isinstance(part, str) else None
        sub = _nested_model(field.annotation) if field is not None else None
        if sub is None:
            return None
        cls = sub
    return cls


def describe(exc: ValidationError, cls: type[BaseModel], where: str = "",
             hint: Callable[[str], str] | None = None) -> str:
    """One line per error: ``<where><field.path>: <what is wrong and the fix>``.

    An unknown key lists the valid keys at its place (a typo never falls back to a default). Validator
    messages may write ``{here}`` where the dotted path of the model they check goes, so a message
    names the right field however deep the model is nested. ``hint(field)`` may add how to fix a value
    (e.g. the ``--set`` flag).
    """
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if isinstance(p, (str, int))]
        # pydantic adds the member type of a union to the location (``target_modules.list[str]``)
        loc = [p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool"}))]
        name = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(loc))
        here = f"{name}." if name else ""
        if err["type"] == "extra_forbidden":
            parent = _model_at(cls, loc[:-1])
            valid = ", ".join(parent.model_fields) if parent is not None else "?"
            fix = f"unknown key (check the spelling); valid keys here: {valid}"
        else:
            msg = str(err["msg"])
            for head in ("Value error, ", "Assertion failed, "):
                msg = msg.removeprefix(head)
            fix = msg.replace("{here}", here)
            if err["type"] not in ("value_error", "assertion_error", "missing") and "input" in err:
                shown = repr(err["input"])
                fix += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
            if hint is not None and name and err["type"] != "missing" and _model_at(cls, loc) is None:
                fix += f"; {hint(name)}"
        lines.append(f"{where}{name}: {fix}" if name else f"{where}{fix}")
    return "\n".join(lines)


class Settings(BaseModel):
    """Base of every settings model.

    * Unknown keys are errors; the error names the field and lists the valid keys.
    * Field docstrings are the field descriptions (shown in the JSON schema and in editors).
    * :meth:`parse` turns bad values into one :class:`ConfigError` naming every field at fault (constructing
      a model in code raises pydantic's ``ValidationError``, also a ``ValueError``).
    * A nested mapping overrides its field's *default* key by key: a job whose default ``data`` section
      reads the ``instructions`` config keeps that when a YAML file sets only ``data.dataset``. Keys of one
      ``EXCLUSIVE`` group replace each other (setting ``model.path`` clears a default ``model.tiny``).
    * :meth:`key_dump` is what content keys hash (see ``KEY_IF_CHANGED`` and ``KEY_EXCLUDE``).
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    #: Fields added after builds were first keyed: hashed only when set to a value other than their
    #: default, so a config that does not use them keeps the content key (and build id) it always had.
    KEY_IF_CHANGED: ClassVar[frozenset[str]] = frozenset()
    #: Fields that never shape data (scheduling, parallelism): never hashed.
    KEY_EXCLUDE: ClassVar[frozenset[str]] = frozenset()
    #: Fields whose ``"auto"`` (a value the run works out, e.g. a shard size) is hashed as the given value: the
    #: default they had before ``auto`` existed, so configs keep their content keys (and build ids).
    KEY_AUTO: ClassVar[dict[str, Any]] = {}
    #: Groups of keys of which a nested override sets at most one (the others revert to None).
    EXCLUSIVE: ClassVar[tuple[tuple[str, ...], ...]] = ()

    @classmethod
    def parse(cls, raw: Any, *, where: str = "", hint: Callable[[str], str] | None = None) -> Self:
        """Validate a plain mapping (from YAML, JSON or a flow parameter); errors name ``where`` and the field."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}the top level must be a mapping of config keys, got {type(raw).__name__}")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(describe(exc, cls, where, hint)) from exc

    @model_validator(mode="before")
    @classmethod
    def _nested_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, given in data.items():
            field = cls.model_fields.get(name)
            if field is None or not isinstance(given, dict):
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, Settings):
                out[name] = default.merged(given)
        return out

    def merged(self, given: dict[str, Any]) -> dict[str, Any]:
        """This model as a mapping, updated key by key (recursively) with ``given``."""
        base = self.model_dump(round_trip=True)
        for group in self.EXCLUSIVE:
            if any(given.get(k) is not None for k in group):
                base.update({k: None for k in group})
        for key, val in given.items():
            sub = getattr(self, key, None)
            base[key] = sub.merged(val) if isinstance(val, dict) and isinstance(sub, Settings) else val
        return base

    def key_dump(self) -> dict[str, Any]:
        """The JSON-able content that content keys hash: every field, nested models by their own rules,
        less ``KEY_EXCLUDE`` and the ``KEY_IF_CHANGED`` fields left at their default, ``KEY_AUTO`` fields set to
        ``"auto"`` as their stand-in."""
        out: dict[str, Any] = {}
        dump = self.model_dump(mode="json")
        for name, field in type(self).model_fields.items():
            if name in self.KEY_EXCLUDE or field.exclude:
                continue
            value = getattr(self, name)
            if name in self.KEY_IF_CHANGED and value == field.get_default(call_default_factory=True):
                continue
            if name in self.KEY_AUTO and value == "auto":
                out[name] = self.KEY_AUTO[name]
                continue
            out[name] = value.key_dump() if isinstance(value, Settings) else dump[name]
        return out


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML (or JSON) file's top-level mapping; :class:`ConfigError` naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc}); fix the file") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of config keys")
    return data


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` updated with ``b``; mappings present in both are merged key by key."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(raw: dict[str, Any], items: Iterable[str]) -> dict[str, Any]:
    """``raw`` with ``a.b=value`` overrides applied (values parsed as YAML: ``3``, ``1e-4``, ``null``, ``[a, b]``)."""
    merged: dict[str, Any] = yaml.safe_load(yaml.safe_dump(raw)) if raw else {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. --set lora.r=8), got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = merged
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"--set {item}: {part!r} is not a mapping")
            node = node[part]
        node[leaf] = yaml.safe_load(text) if text.strip() else None
    return merged
