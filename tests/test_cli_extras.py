"""A plain install (no extras): ``vashista certify`` and ``vashista check`` run; a subcommand whose
optional dependency is missing exits with one line naming the extra to install, never a traceback
(``vashista_app.cli``). "Not installed" is simulated in a subprocess by an import hook that raises
ModuleNotFoundError for the blocked top-level modules, as Python does for a module that is absent."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vashista_app import cli

ROOT = Path(__file__).resolve().parents[1]

RUN_BLOCKED = """
import sys
BLOCKED = set(sys.argv[1].split(","))

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Block())
from vashista_app.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_without(blocked: str, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", RUN_BLOCKED, blocked, *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("blocked, argv, extra", [
    ("torch,triton", ["repro", "--quick", "--no-progress"], "gpu"),
    ("torch,triton", ["quality", "--quick"], "gpu"),
    ("transformers,gguf", ["quality", "--quick"], "model"),
])
def test_missing_optional_dependency_names_its_extra(blocked, argv, extra, tmp_path):
    p = run_without(blocked, *argv, "--out", str(tmp_path / "out"))
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr + p.stdout
    assert len(lines) == 1, p.stderr
    assert f'pip install "vashista[{extra}]"' in lines[0] and blocked.split(",")[0] in lines[0]


def test_certify_needs_no_optional_dependency():
    p = run_without("torch,triton,transformers,gguf,matplotlib", "certify", "--seed", "0", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    assert '"gap"' in p.stdout


def test_check_without_matplotlib_skips_the_plots_with_one_notice(tmp_path):
    out = tmp_path / "report"
    p = run_without("torch,triton,matplotlib", "check", "--quick", "--only", "1", "--out", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    notices = [ln for ln in p.stderr.splitlines() if "plots skipped" in ln]
    assert len(notices) == 1 and 'pip install "vashista[reports]"' in notices[0]
    assert (out / "report.md").is_file() and not list(out.glob("*.png"))


def test_a_missing_module_that_is_not_an_extra_is_not_hidden(monkeypatch):
    """Only the optional dependencies are turned into a one-line message: a broken import of our
    own (a renamed module) must still fail loudly."""
    monkeypatch.setitem(cli.COMMANDS, "broken", ("vashista_app.no_such_module", "test"))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["broken"])
