"""The two figures people would rather look at than read: leakage vs ε against the Corollary-1
bound, and the face error ‖y_ε − y*‖ vs ε against Theorem 1's bound (log scales). One colour per
instance: measured values solid with dots, the bound dashed, so each curve is read against its own
bound.

    >>> from pathlib import Path; import tempfile
    >>> from proofs_checks import claim2_leakage
    >>> plot_leakage([claim2_leakage.check(n=2, adversarial=0)], Path(tempfile.mkdtemp())).name
    'leakage_vs_eps.png'
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _series(results, number):
    return next((r.series for r in results if r.claim.number == number and r.series), None)


def _plot(s, measured: str, bound: str, labels: tuple[str, str], ylabel: str, title: str,
          path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    inst = np.asarray(s["instance"])
    x = np.asarray(s["eps_over_gap"])
    for n, k in enumerate(np.unique(inst)):
        sel = inst == k
        order = np.argsort(x[sel])
        color = f"C{n % 10}"
        ax.loglog(x[sel][order], np.asarray(s[measured])[sel][order], "o-", color=color,
                  label=labels[0] if n == 0 else None)
        ax.loglog(x[sel][order], np.asarray(s[bound])[sel][order], "--", color=color,
                  label=labels[1] if n == 0 else None)
    ax.set_xlabel(r"$\varepsilon/\Delta$")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} ({len(np.unique(inst))} instances)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_leakage(results, out: Path) -> Path | None:
    s = _series(results, 2)
    if not s or not s["eps_over_gap"]:
        return None
    return _plot(s, "leakage", "bound_c2",
                 ("measured off-face mass", r"bound $(M-|I|)e^{-\Delta/(2\varepsilon)}$"),
                 "off-face mass", "Corollary 1: leakage vs ε", out / "leakage_vs_eps.png")


def plot_face_error(results, out: Path) -> Path | None:
    s = _series(results, 3)
    if not s or not s["eps_over_gap"]:
        return None
    return _plot(s, "error", "bound",
                 (r"$\|y_\varepsilon-y^*\|$", r"bound $C_{geom}\varepsilon+D_K(M-|I|)e^{-\Delta/2\varepsilon}$"),
                 "distance to the hard projection", "Theorem 1: face error vs ε",
                 out / "face_error_vs_eps.png")
