"""The ``grok`` CLI: help for every command, JSON output, meaningful exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from grok.cli import app

runner = CliRunner()


def test_root_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("demo", "phantom", "ingest"):
        assert cmd in res.output


@pytest.mark.parametrize("cmd", ["demo", "phantom", "ingest"])
def test_subcommand_help(cmd):
    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("grok ")


def test_phantom_and_ingest_json(tmp_path):
    ph = tmp_path / "ph"
    res = subprocess.run([sys.executable, "-m", "grok.cli", "phantom", "--subjects", "1", "--seed", "2",
                          "--oct-shape", "3", "160", "96", "--oct-spacing-um", "8", "62.5", "1000",
                          "--cfp-size", "160", "--no-exports", "--out", str(ph), "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(res.stdout)["images"] == 4
    res = subprocess.run([sys.executable, "-m", "grok.cli", "ingest", str(ph / "dicom"), "--out", str(tmp_path / "i"),
                          "--json"], capture_output=True, text=True, check=True)
    out = json.loads(res.stdout)
    assert out["images"] == 4 and out["files_seen"] == out["files_ingested"] + out["files_quarantined"] + out["files_skipped"]
    # --locate on a clean run finds nothing to locate
    res = subprocess.run([sys.executable, "-m", "grok.cli", "ingest", str(ph / "dicom"), "--out", str(tmp_path / "i"),
                          "--locate", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(res.stdout) == {}


def test_missing_source_exit_code(tmp_path):
    res = runner.invoke(app, ["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 3


def test_bad_option_exit_code(tmp_path):
    res = runner.invoke(app, ["ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--date-mode", "month"])
    assert res.exit_code == 2
