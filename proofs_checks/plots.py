"""The two figures people would rather look at than read: leakage vs ε against the Corollary-1
bound, and the face error ‖y_ε − y*‖ vs ε against Theorem 1's bound (log scales)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _series(results, number):
    return next((r.series for r in results if r.claim.number == number and r.series), None)


def plot_leakage(results, out: Path) -> Path | None:
    s = _series(results, 2)
    if not s or not s["eps_over_gap"]:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(s["eps_over_gap"], s["leakage"], "o", label="measured off-face mass")
    ax.loglog(s["eps_over_gap"], s["bound_c2"], "x", label=r"$(M-|I|)e^{-\Delta/(2\varepsilon)}$")
    ax.set_xlabel(r"$\varepsilon/\Delta$")
    ax.set_ylabel("off-face mass")
    ax.set_title("Corollary 1: leakage vs ε (6 instances)")
    ax.legend()
    path = out / "leakage_vs_eps.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_face_error(results, out: Path) -> Path | None:
    s = _series(results, 3)
    if not s or not s["eps_over_gap"]:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(s["eps_over_gap"], s["error"], "o", label=r"$\|y_\varepsilon-y^*\|$")
    ax.loglog(s["eps_over_gap"], s["bound"], "x", label=r"$C_{geom}\varepsilon+D_K(M-|I|)e^{-\Delta/2\varepsilon}$")
    ax.set_xlabel(r"$\varepsilon/\Delta$")
    ax.set_ylabel("distance to the hard projection")
    ax.set_title("Theorem 1: face error vs ε (6 instances)")
    ax.legend(fontsize=8)
    path = out / "face_error_vs_eps.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
