"""Every teaching notebook executes top to bottom at its default size (a failing cell fails the test),
and the stored notebooks are exactly what scripts/build_notebooks.py generates, without outputs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# The notebooks extra is installed by scripts/install.sh (so CI runs these); the GPU machine has no
# nbformat, where the GPU tests are collected too.
nbformat = pytest.importorskip("nbformat")
NotebookClient = pytest.importorskip("nbclient").NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_seven_notebooks_stored_without_outputs_and_up_to_date():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code"), p.name
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_notebooks.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    # a cell error raises CellExecutionError with the traceback of the failing cell
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    assert any(o.get("output_type") in ("stream", "display_data", "execute_result")
               for c in nb.cells if c.cell_type == "code" for o in c.outputs)
