"""The one policy loop (SPEC 3, last lines): report-only, dense fallback, capped widening.

Every decode mode of every tier calls :func:`run_policy`; a mode supplies only what differs between
modes — how to attempt a step for some *units* at (P, Kc), which units are still uncertified, how
many pages/tokens a unit has, and how to recompute a unit's uncertified queries densely. The loop
owns the rest, so the widening schedule (``Capped.widen``) and the fallback rule exist once:

    attempt(every unit, P, Kc)
    Capped:    repeat — every uncertified unit widens (P, Kc) by ``Capped.widen`` (doubling, capped
               at P_max/Kc_max and at the unit's pages/tokens); units whose (P, Kc) no longer moves
               stop; the others are re-attempted, grouped by their new (P, Kc) — until none moves;
    not ReportOnly: dense(the units still uncertified).

A *unit* is whatever the mode retries as one: a (batch row, head) or a GQA group in the reference
tier, a batch row in the GPU tier (whose attempt replaces only the row's uncertified heads). The
loop is pure Python over hashable unit ids and callables — no numpy arrays, no torch tensors — so
both tiers use it; the callables keep the mode's state (the result being filled).

Example (one unit whose attempt is certified once Kc reaches 64)::

    >>> from vashista_core.policies import Capped
    >>> seen = []
    >>> state = {}
    >>> def attempt(units, P, Kc):
    ...     seen.append((P, Kc)); state["ok"] = Kc >= 64
    >>> run_policy(Capped(tol=0.1, P_max=8, Kc_max=256), ["u"], 2, 16, attempt=attempt,
    ...            uncertified=lambda: [] if state["ok"] else ["u"], limits=lambda u: (1000, 100),
    ...            dense=lambda units: None)
    {'u': (8, 64)}
    >>> seen
    [(2, 16), (4, 32), (8, 64)]
"""
from __future__ import annotations

from typing import Callable, Hashable, Iterable, Sequence

from .errors import VashistaInputError
from .policies import Capped, DenseFallback, ReportOnly

Unit = Hashable


def check_policy(policy):
    """The policy to run: ``ReportOnly()`` for None, a ReportOnly/DenseFallback/Capped as given;
    anything else is a VashistaInputError naming ``policy``."""
    policy = ReportOnly() if policy is None else policy
    if not isinstance(policy, (ReportOnly, DenseFallback, Capped)):
        raise VashistaInputError("policy", f"expected ReportOnly, DenseFallback or Capped, got {policy!r}")
    return policy


def run_policy(policy, units: Sequence[Unit], P: int, Kc: int, *,
               attempt: Callable[[list, int, int], None],
               uncertified: Callable[[], Iterable[Unit]],
               limits: Callable[[Unit], tuple[int | None, int | None]],
               dense: Callable[[list], None]) -> dict:
    """Run ``policy`` over ``units`` starting at (P, Kc) (module doc for the loop).

    ``attempt(units, P, Kc)`` runs one attempt for those units and merges it into the mode's result
    (the first call covers every unit; a retry replaces what the mode decides, usually the
    uncertified queries of those units); ``uncertified()`` the units with an uncertified query now;
    ``limits(unit)`` (tokens, pages) of the unit's sequence — widening past them repeats the same
    attempt (None: no limit; a mode that does not route pages passes its P as the page limit, so
    only Kc widens); ``dense(units)`` recomputes densely the uncertified queries of those units.
    Returns ``{unit: (P, Kc)}``, the size of each unit's last attempt.
    """
    used = {u: (P, Kc) for u in units}
    attempt(list(units), P, Kc)
    if isinstance(policy, ReportOnly):
        return used
    if isinstance(policy, Capped):
        while True:
            groups: dict[tuple[int, int], list] = {}
            for u in uncertified():
                nxt = policy.widen(*used[u], *limits(u))
                if nxt != used[u]:
                    used[u] = nxt
                    groups.setdefault(nxt, []).append(u)
            if not groups:
                break
            for (p, kc), group in groups.items():
                attempt(group, p, kc)
    bad = list(uncertified())
    if bad:
        dense(bad)
    return used
