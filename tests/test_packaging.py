"""The package as PyPI and a plain ``pip install`` see it: built without deprecation warnings, accepted by
``twine check``, and complete — an installed wheel (not the checkout) finds its templates, knowledge base and
data contracts, and they are the same files the checkout has (same knowledge-base snapshot id)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from grok.resources import BUNDLED_DIRS, BUNDLED_PACKAGE_DIR

ROOT = Path(__file__).resolve().parents[1]
#: What counts as a packaging warning users would see (setuptools/pip deprecations, missing files, bad
#: metadata). distutils' "byte-compiling is disabled" note (PYTHONDONTWRITEBYTECODE) is not one.
_WARNING = re.compile(r"deprecat|SetuptoolsWarning|warning: (?!.*byte-compiling is disabled)", re.IGNORECASE)


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist")
    # sdist first, then the wheel built from that sdist (what `python -m build` does without flags): the
    # wheel is complete only if the sdist carries the data folders too
    proc = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0], "log": proc.stdout + proc.stderr, "out": out}


def test_build_prints_no_packaging_warning(dist):
    bad = [line for line in dist["log"].splitlines() if _WARNING.search(line)]
    assert not bad, "python -m build printed:\n" + "\n".join(bad[:20])


def test_twine_check_passes(dist):
    proc = _run([sys.executable, "-m", "twine", "check", "--strict", str(dist["wheel"]), str(dist["sdist"])])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_wheel_carries_the_data_folders_and_the_licence(dist):
    names = set(zipfile.ZipFile(dist["wheel"]).namelist())
    for folder in BUNDLED_DIRS:
        src = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts)
        assert src, folder
        missing = [s for s in src if f"grok/{BUNDLED_PACKAGE_DIR}/{s}" not in names]
        assert not missing, f"{folder}: {len(missing)} files missing from the wheel, e.g. {missing[:3]}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {"grok_train/configs/sft_gpu.yaml", "flows/build.py"} <= names
    review = {p.relative_to(ROOT).as_posix() for p in (ROOT / "grok" / "review").rglob("*")
              if p.is_file() and p.parent.name in ("templates", "static")}
    assert review and review <= names, sorted(review - names)
    # nothing from the checkout that is not the product
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "runs/", "scripts/"))]


def test_setup_py_and_resources_name_the_same_folders():
    tree = ast.parse((ROOT / "setup.py").read_text())
    assigned = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "BUNDLED_DIRS" for t in n.targets)]
    assert assigned == [BUNDLED_DIRS]


def test_installed_wheel_works_without_the_checkout(dist, tmp_path):
    target = tmp_path / "site"
    proc = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
                 str(dist["wheel"])])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    probe = (
        "import json, grok\n"
        "from grok.knowledge import bundled_knowledge_base_dir, load_knowledge_base\n"
        "from grok.instruct.templating import templates_dir\n"
        "from grok.contracts import contracts_dir, load_contract\n"
        "from grok.privacy.denylist import vocabulary\n"
        "print(json.dumps({'package': grok.__file__, 'kb': str(bundled_knowledge_base_dir()),\n"
        "  'snapshot': load_knowledge_base().snapshot_id, 'templates': str(templates_dir()),\n"
        "  'contracts': str(contracts_dir()), 'contract': load_contract('instructions').name,\n"
        "  'vocabulary': len(vocabulary())}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROK_")}
    env["PYTHONPATH"] = str(target)
    run = _run([sys.executable, "-c", probe], cwd=tmp_path, env=env)  # cwd away from the checkout
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    inside = str(target / "grok" / BUNDLED_PACKAGE_DIR)
    assert got["package"].startswith(str(target)), got
    for key in ("kb", "templates", "contracts"):
        assert got[key].startswith(inside), (key, got[key])
    # the same knowledge base as the checkout, so a build from an installed wheel keeps its build ids
    from grok.knowledge import load_knowledge_base

    assert got["snapshot"] == load_knowledge_base().snapshot_id
    assert got["contract"] == "instructions" and got["vocabulary"] > 500
