"""Push a trained model (LoRA adapter or merged model) with its model card to the Hugging Face Hub.

Run as: grok-train push --checkpoint RUN_OR_MODEL --hub-repo org/name [--to-folder DIR] [--tag TAG]

What is pushed is what a reader of the Hub page needs and nothing from the training machine:

* the weights as safetensors (a pickled ``*.bin``/``*.pt`` weight file is refused: re-save it with
  ``safe_serialization``), the peft/transformers configs, the tokenizer and processor files, the chat template;
* ``README.md``: the model card written afresh from the run (base model by name, LoRA settings, the pinned
  ``NAME@VERSION`` and its fingerprint, training figures, and the ``grok eval`` results when the run folder
  holds ``eval/eval.json`` — so an evaluation that ran after training reaches the pushed card);
* ``grok_provenance.json``: job, step, dataset ``name``/``version``/``fingerprint``, base model name, the
  ``grok-data-engine`` version; it replaces ``meta.json``/``grok_merge.json``, which hold local paths.

Local paths never leave: ``adapter_config.json``'s ``base_model_name_or_path`` (peft writes the absolute path
of the base folder) becomes the base model's name, and every text file is scanned for the run's, dataset's and
model's folders and for home/temp-style absolute paths before anything is uploaded; a hit stops the push and
names the file. Files that are not pushed are listed with the reason (nothing is dropped silently).

Targets: the Hub (``huggingface_hub.HfApi``: create the model repo, upload the folder as one commit, tag it),
or ``--to-folder DIR``, which writes the repo's files to ``DIR/org/name/`` exactly as the Hub would hold them
(for air-gapped sites, a mirror to copy, and the tests: no network).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grok import __version__
from grok_train.errors import BadInputError, ConfigError, GrokTrainError, MissingDependencyError
from grok_train.model_card import base_model_name, model_card_for, trained_run_dir
from grok_train.runs import MERGE_FILE, META_FILE, TrainedModel, find_trained, now_iso, read_json

PROVENANCE_FILE = "grok_provenance.json"
#: File names/suffixes a model repo carries.
_PUSHED_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".tiktoken")
#: Pickled weights or states: never pushed (loading them runs arbitrary code).
_PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
#: Absolute paths of the kind a training machine leaves in files (home, temp, work and mount folders).
_LOCAL_PATH = re.compile(r"(?<![\w.:/])(?:/(?:home|tmp|work|root|Users|mnt|data|scratch|var/folders)/|[A-Za-z]:\\\\)")
#: Tokenizer vocabularies: their tokens are text, not paths of this machine.
_VOCABULARY_FILES = frozenset({"tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "vocab.txt"})
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass
class PushResult:
    repo: str
    target: str
    """``hub`` or ``folder``."""
    location: str
    """The Hub URL, or the folder the repo's files were written to."""
    kind: str
    commit_message: str
    tag: str | None
    files: dict[str, str] = field(default_factory=dict)
    """Pushed file -> sha256."""
    excluded: dict[str, str] = field(default_factory=dict)
    """Model-folder file -> why it was not pushed."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_repo_id(repo: str) -> str:
    """``org/name`` as the Hub accepts it, else a :class:`ConfigError` naming the flag and the fix."""
    if not isinstance(repo, str) or not _REPO_ID.match(repo) or ".." in repo or repo.endswith((".git", "-", ".")):
        raise ConfigError(f"--hub-repo {repo!r} is not a Hub repo id; use ORG/NAME (letters, digits, '.', '_', '-'), "
                          "e.g. my-lab/grok-qwen2vl-lora")
    return repo


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _provenance(tm: TrainedModel) -> dict[str, Any]:
    ds = tm.dataset or {}
    # final/meta.json, or checkpoints/step-N/meta.json beside step-N/adapter/
    meta = next((m for m in (tm.model_dir / META_FILE, tm.model_dir.parent / META_FILE) if m.is_file()), None)
    step = read_json(meta).get("step") if meta else None
    return {
        "job": "merge" if tm.kind == "merged" else "sft",
        "kind": tm.kind,
        "step": step,
        "dataset": {k: ds.get(k) for k in ("name", "version", "fingerprint")},
        "base_model": base_model_name(tm.model_cfg),
        "model_family": tm.model_cfg.family,
        "trained": tm.run.get("created"),
        "pushed": now_iso(),
        "grok_data_engine": __version__,
    }


def _sanitise_json(path: Path, tm: TrainedModel) -> None:
    """Replace the local paths transformers and peft write into their configs with the base model's name."""
    data = json.loads(path.read_text())
    changed = False
    for key in ("base_model_name_or_path", "_name_or_path"):
        if isinstance(data.get(key), str) and data[key]:
            data[key] = base_model_name(tm.model_cfg)
            changed = True
    if changed:
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _local_paths(tm: TrainedModel) -> list[str]:
    """Folders of this machine that must not appear in a pushed file."""
    paths = {str(tm.model_dir.resolve()), str(Path.home())}
    run_dir = trained_run_dir(tm)
    if run_dir:
        paths.add(str(run_dir.resolve()))
    ds_path = (tm.dataset or {}).get("path")
    if ds_path:
        paths.add(str(Path(ds_path).resolve()))
    base = (tm.run.get("base_model") or {}).get("path")
    if base and (Path(base).is_absolute() or run_dir):
        paths.add(str((run_dir / base if run_dir else Path(base)).resolve()))
    return sorted(p for p in paths if Path(p).is_absolute() and len(p) > 1)


def stage(tm: TrainedModel, staging: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Copy what is pushed into ``staging``; returns (pushed file -> sha256, excluded file -> reason)."""
    excluded: dict[str, str] = {}
    for src in sorted(tm.model_dir.iterdir()):
        name = src.name
        if src.is_dir():
            excluded[name + "/"] = "a sub-folder (a model repo holds the model's files only)"
        elif name in (META_FILE, MERGE_FILE):
            excluded[name] = f"training-machine record with local paths; its facts are in {PROVENANCE_FILE}"
        elif name == "README.md":
            excluded[name] = "replaced by a model card written afresh from the run (with its evaluation)"
        elif name.endswith(_PICKLED_SUFFIXES):
            raise BadInputError(
                f"{src}: pickled weights or state are not pushed (loading them runs arbitrary code); save the model "
                "with safe_serialization=True (safetensors) and push again")
        elif name.startswith("."):
            excluded[name] = "hidden file"
        elif not name.endswith(_PUSHED_SUFFIXES):
            excluded[name] = f"not a model-repo file type ({', '.join(_PUSHED_SUFFIXES)})"
        else:
            shutil.copy2(src, staging / name)
            if name.endswith(".json"):
                _sanitise_json(staging / name, tm)
    if not any(p.suffix == ".safetensors" for p in staging.iterdir()):
        raise BadInputError(f"{tm.model_dir}: no *.safetensors weights to push; did the run finish?")
    (staging / PROVENANCE_FILE).write_text(json.dumps(_provenance(tm), indent=2, sort_keys=True) + "\n")
    model_card_for(tm).save(staging / "README.md")
    _refuse_local_paths(staging, _local_paths(tm))
    return {p.name: _sha256(p) for p in sorted(staging.iterdir())}, excluded


def _refuse_local_paths(staging: Path, paths: list[str]) -> None:
    """Stop on any of this machine's folders in a pushed text file, and on home/temp-style absolute paths in
    any file but the tokenizer's vocabulary (whose tokens include strings such as ``/home/``)."""
    home = str(Path.home())
    needles = [x.rstrip("/") + "/" for x in paths] + [x.rstrip("/") + '"' for x in paths]
    for p in sorted(staging.iterdir()):
        if p.suffix == ".safetensors":
            continue
        text = p.read_text(errors="replace")
        vocabulary = p.name in _VOCABULARY_FILES
        hit = next((x for x in needles if x in text and not (vocabulary and x.rstrip('/"') == home)), None)
        m = _LOCAL_PATH.search(text) if hit is None and not vocabulary else None
        if hit or m:
            what = hit or text[m.start():m.start() + 40]
            raise BadInputError(f"{p.name}: would publish a local path ({what!r}); nothing was pushed. Remove the "
                                "path from the model folder's file and push again")


def _write_folder(staging: Path, root: Path, repo: str, tag: str | None, message: str) -> Path:
    """Replace ``root/org/name/`` by the staged files (the repo as the Hub would hold it after the commit)."""
    dest = root / repo
    dest.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    fresh.chmod(0o755)  # mkdtemp makes it private; the mirror is meant to be read by others
    for p in staging.iterdir():
        shutil.copy2(p, fresh / p.name)
    old = dest.with_name(f".{dest.name}.old")
    if dest.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    os.replace(fresh, dest)
    if old.exists():
        shutil.rmtree(old)
    log = dest.with_name(f"{dest.name}.pushes.jsonl")  # the commit history a Hub repo would show
    with open(log, "a") as fh:
        fh.write(json.dumps({"time": now_iso(), "message": message, "tag": tag}) + "\n")
    return dest


def _push_hub(staging: Path, repo: str, tag: str | None, message: str, private: bool) -> str:
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:  # huggingface_hub comes with transformers; a bare worker may lack it
        raise MissingDependencyError("pushing needs huggingface_hub: pip install huggingface-hub") from exc
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(staging), repo_id=repo, repo_type="model", commit_message=message)
        if tag:
            api.create_tag(repo, tag=tag, repo_type="model", tag_message=message)
    except Exception as exc:  # HTTP, auth and network errors of huggingface_hub, with its message
        raise GrokTrainError(f"push to the Hub repo {repo} failed: {exc}. Check HF_TOKEN (write access to {repo}) "
                             "and the network, or write a mirror with --to-folder") from exc
    return f"https://huggingface.co/{repo}"


def push_model(checkpoint: str | Path, hub_repo: str, *, to_folder: str | Path | None = None,
               tag: str | None = None, private: bool = False) -> PushResult:
    """Push ``checkpoint`` (SFT run folder, its ``final/``, ``checkpoints/step-N``, or a merged model) to
    ``hub_repo`` on the Hub, or to ``to_folder/hub_repo/``. Nothing is uploaded unless every check passes."""
    repo = check_repo_id(hub_repo)
    tm = find_trained(checkpoint)
    ds = tm.dataset or {}
    if not ds.get("name") or not ds.get("version"):
        raise BadInputError(f"{checkpoint}: the run records no pinned dataset NAME@VERSION; only models trained "
                            "on a pinned version are pushed")
    message = f"Push {tm.kind} trained on {ds['name']}@{ds['version']} (fingerprint {ds.get('fingerprint')})"
    with tempfile.TemporaryDirectory(prefix="grok-push-") as tmp:
        staging = Path(tmp)
        files, excluded = stage(tm, staging)
        if to_folder is not None:
            location = str(_write_folder(staging, Path(to_folder), repo, tag, message))
            target = "folder"
        else:
            location = _push_hub(staging, repo, tag, message, private)
            target = "hub"
    return PushResult(repo=repo, target=target, location=location, kind=tm.kind, commit_message=message, tag=tag,
                      files=files, excluded=excluded)


__all__ = ["PROVENANCE_FILE", "PushResult", "check_repo_id", "push_model", "stage"]
