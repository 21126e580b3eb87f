"""The dependency rules of docs/ARCHITECTURE.md ("Dependency rules"), checked on the source with ``ast``
(nothing is imported, so the rules are checked on a machine without torch or cvxpy too):

  (a) no import cycle among our modules (module-level imports), and no import placed inside a function
      only to dodge one (a function-level import of a module that imports this one back);
  (b) no private name (``_x``) imported from another module, or read as ``module._x``;
  (c) layering: vashista_core imports only the standard library and NumPy; vashista_ref imports
      vashista_core among ours and never torch/triton; vashista_gpu never imports vashista_ref,
      proofs_checks or vashista_app; proofs_checks imports only vashista_ref and vashista_core among
      ours; no library package imports vashista_app; benchmarks and the notebooks use only names in a
      module's ``__all__``.

Every failure names the file and line. The checker itself is tested on small synthetic sources, so a
rule that could never fire would fail here too.
"""
from __future__ import annotations

import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("vashista_core", "vashista_ref", "vashista_gpu", "proofs_checks")
OURS = LIBRARY + ("vashista_app",)
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


@dataclass(frozen=True)
class Import:
    target: str          # absolute module (or module.name) imported
    names: tuple         # names of a ``from`` import (empty for ``import x``)
    line: int
    level: str           # "module" (runs at import), "function" (runs when called), "typing" (never)
    where: str           # "path:line" for messages
    alias_binds: tuple = ()   # (bound name, module) pairs for attribute checks


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_package(mod: str, sources: dict) -> bool:
    return mod in sources and sources[mod][0].name == "__init__.py"


def resolve(mod: str, node: ast.ImportFrom, sources: dict) -> str:
    """Absolute module named by a (possibly relative) ``from`` import in module ``mod``."""
    if not node.level:
        return node.module or ""
    base = mod.split(".")
    if not is_package(mod, sources):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(mod: str, tree: ast.AST, rel: str, sources: dict) -> list[Import]:
    out: list[Import] = []

    def visit(node, level):
        for child in ast.iter_child_nodes(node):
            lvl = level
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                lvl = "function"
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                lvl = "typing"
            if isinstance(child, ast.Import):
                for a in child.names:
                    binds = ((a.asname, a.name),) if a.asname else ((a.name, a.name),) if "." not in a.name else ()
                    out.append(Import(a.name, (), child.lineno, lvl, f"{rel}:{child.lineno}", binds))
            elif isinstance(child, ast.ImportFrom):
                target = resolve(mod, child, sources)
                names = tuple(a.name for a in child.names)
                binds = tuple((a.asname or a.name, f"{target}.{a.name}") for a in child.names
                              if f"{target}.{a.name}" in sources)
                out.append(Import(target, names, child.lineno, lvl, f"{rel}:{child.lineno}", binds))
            visit(child, lvl)

    visit(tree, "module")
    return out


def load_sources(root: Path, packages=OURS) -> dict:
    """module -> (path, source text) for every .py file of ``packages`` under ``root``."""
    sources = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" not in f.parts:
                sources[module_name(f, root)] = (f, f.read_text())
    return sources


def parse_all(sources: dict, root: Path) -> dict:
    """module -> list[Import]."""
    return {m: imports_of(m, ast.parse(src, str(p)), str(p.relative_to(root)), sources)
            for m, (p, src) in sources.items()}


def our_targets(imp: Import, sources: dict) -> list[str]:
    """Our modules whose code an import needs: for ``from pkg import sub`` the submodule (the package is
    only being initialised, as it is for any import inside it), for ``from mod import name`` the module."""
    out = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in sources]
    if imp.target in sources and (not imp.names or len(out) < len(imp.names)):
        out.append(imp.target)
    if not out:   # ``import a.b.c`` of a module given with a trailing attribute, or a package dir
        t = imp.target
        while t and t not in sources:
            t = t.rpartition(".")[0]
        if t:
            out.append(t)
    return out


def module_graph(imports: dict, sources: dict) -> dict:
    """module -> {imported module: first Import} over module-level imports (what runs at import)."""
    g = {m: {} for m in imports}
    for m, imps in imports.items():
        for imp in imps:
            if imp.level != "module":
                continue
            for t in our_targets(imp, sources):
                if t != m:
                    g[m].setdefault(t, imp)
    return g


def cycles(graph: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in list(graph):
        if v not in index:
            strong(v)
    return out


def reachable(graph: dict, start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def cycle_violations(imports: dict, sources: dict) -> list[str]:
    g = module_graph(imports, sources)
    msgs = []
    for comp in cycles(g):
        edges = [f"{g[a][b].where} ({a} -> {b})" for a in comp for b in comp if b in g[a]]
        msgs.append("import cycle among " + ", ".join(comp) + ": " + "; ".join(edges))
    for m, imps in imports.items():
        for imp in imps:
            if imp.level != "function":
                continue
            for t in our_targets(imp, sources):
                if t != m and m in reachable(g, t):
                    msgs.append(f"{imp.where}: {m} imports {t} inside a function, and {t} imports {m} back "
                                "at module level: a cycle dodged, not removed")
    return msgs


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_violations(mod: str, tree: ast.AST, imps: list[Import], rel: str, sources: dict) -> list[str]:
    msgs = []
    aliases = {}
    for imp in imps:
        ours = imp.target.split(".")[0] in OURS
        if ours and imp.target != mod:
            msgs += [f"{imp.where}: imports private name {n!r} from {imp.target}" for n in imp.names
                     if _is_private(n)]
            if any(_is_private(part) for part in imp.target.split(".")[1:]) and imp.target not in sources:
                msgs.append(f"{imp.where}: imports from private module path {imp.target}")
        aliases.update({b: t for b, t in imp.alias_binds if t.split(".")[0] in OURS and t != mod})
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and _is_private(node.attr)):
            msgs.append(f"{rel}:{node.lineno}: reads private name {node.attr!r} of {aliases[node.value.id]}")
    return msgs


def top(name: str) -> str:
    return name.split(".")[0]


def layering_violations(imports: dict) -> list[str]:
    msgs = []
    for m, imps in imports.items():
        pkg = top(m)
        for imp in imps:
            if imp.level == "typing":
                continue
            t = top(imp.target)
            if t == pkg or not t:
                continue
            bad = None
            if pkg == "vashista_core" and t not in STDLIB and t != "numpy":
                bad = "vashista_core imports only the standard library and numpy"
            elif pkg == "vashista_ref" and (t in OURS and t != "vashista_core" or t in ("torch", "triton")):
                bad = "vashista_ref imports only vashista_core among ours, and never torch/triton"
            elif pkg == "vashista_gpu" and t in ("vashista_ref", "proofs_checks", "vashista_app"):
                bad = "vashista_gpu never imports vashista_ref, proofs_checks or vashista_app"
            elif pkg == "proofs_checks" and (t in OURS and t not in ("vashista_ref", "vashista_core")
                                             or t in ("torch", "triton")):
                bad = "proofs_checks imports only vashista_ref and vashista_core among ours, never torch"
            if bad is None and pkg in LIBRARY and t == "vashista_app":
                bad = "no library package imports vashista_app"
            if bad:
                msgs.append(f"{imp.where}: {m} imports {imp.target} ({bad})")
    return msgs


def declared_all(src: str) -> tuple | None:
    """The literal ``__all__`` of a module's source (lists/tuples of strings, ``+`` and ``+=``), or None."""
    names, found = [], False

    def strings(node):
        if isinstance(node, (ast.List, ast.Tuple)):
            return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return strings(node.left) + strings(node.right)
        return []

    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            names, found = strings(node.value), True
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id == "__all__":
            names += strings(node.value)
    return tuple(names) if found else None


def public_api_violations(rel: str, src: str, sources: dict) -> list[str]:
    """Names a script imports from our modules (and reads off our modules) that are not in the
    module's ``__all__``. Importing a submodule itself is allowed; its attributes are checked."""
    msgs = []
    tree = ast.parse(src)
    imps = imports_of("__script__", tree, rel, sources)

    def check(where, mod, name):
        if f"{mod}.{name}" in sources:
            return
        api = declared_all(sources[mod][1]) if mod in sources else None
        if mod not in sources:
            return
        if api is None:
            msgs.append(f"{where}: uses {mod}.{name}, but {mod} declares no __all__")
        elif name not in api:
            msgs.append(f"{where}: uses {mod}.{name}, which is not in {mod}.__all__")

    aliases = {}
    for imp in imps:
        if top(imp.target) not in OURS:
            continue
        for n in imp.names:
            check(imp.where, imp.target, n)
        aliases.update(dict(imp.alias_binds))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            check(f"{rel}:{node.lineno}", aliases[node.value.id], node.attr)
    return msgs


# ------------------------------------------------------------------------------------ the repository
SOURCES = load_sources(ROOT)
IMPORTS = parse_all(SOURCES, ROOT)


def report(msgs: list[str]) -> str:
    return f"{len(msgs)} violation(s):\n  " + "\n  ".join(msgs)


def test_no_import_cycles_and_no_cycle_dodging_function_imports():
    msgs = cycle_violations(IMPORTS, SOURCES)
    assert not msgs, report(msgs)


def test_no_private_name_crosses_a_module():
    files = dict(SOURCES)
    files.update({module_name(f): (f, f.read_text()) for d in ("benchmarks", "scripts")
                  for f in sorted((ROOT / d).glob("*.py"))})
    msgs = []
    for m, (p, src) in files.items():
        tree = ast.parse(src, str(p))
        rel = str(p.relative_to(ROOT))
        msgs += private_violations(m, tree, imports_of(m, tree, rel, SOURCES), rel, SOURCES)
    assert not msgs, report(msgs)


def test_layering():
    msgs = layering_violations(IMPORTS)
    assert not msgs, report(msgs)


def notebook_sources() -> list[tuple[str, str]]:
    out = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        # notebook cells may hold IPython magics; they are not Python and import nothing of ours
        code = "\n".join(ln for ln in code.splitlines() if not ln.lstrip().startswith(("%", "!")))
        out.append((str(nb.relative_to(ROOT)), code))
    return out


def test_benchmarks_and_notebooks_use_only_public_names():
    scripts = [(str(f.relative_to(ROOT)), f.read_text()) for f in sorted((ROOT / "benchmarks").glob("*.py"))]
    msgs = []
    for rel, src in scripts + notebook_sources():
        msgs += public_api_violations(rel, src, SOURCES)
    assert not msgs, report(msgs)


# ------------------------------------------------------------------- the checker on synthetic sources
def synthetic(tmp_path: Path, files: dict) -> tuple[dict, dict]:
    for rel, text in files.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    sources = load_sources(tmp_path, packages=sorted({r.split("/")[0] for r in files}))
    return sources, parse_all(sources, tmp_path)


def test_checker_finds_a_cycle_a_dodge_a_private_import_and_a_layer_breach(tmp_path):
    sources, imports = synthetic(tmp_path, {
        "vashista_gpu/__init__.py": "",
        "vashista_gpu/a.py": "from .b import f\nimport vashista_ref.x\n",
        "vashista_gpu/b.py": "from . import a\ndef f():\n    pass\n",
        "vashista_gpu/c.py": "from .d import _hidden\n\ndef g():\n    from .d import h\n    return h\n",
        "vashista_gpu/d.py": "from . import c\n_hidden = 1\ndef h():\n    pass\n",
        "vashista_core/__init__.py": "import scipy\n",
        "vashista_ref/__init__.py": "", "vashista_ref/x.py": "import torch\n",
    })
    cyc = cycle_violations(imports, sources)
    assert any("vashista_gpu.a, vashista_gpu.b" in m for m in cyc)
    assert any(m.startswith("vashista_gpu/c.py:4") and "dodged" in m for m in cyc)
    tree = ast.parse(sources["vashista_gpu.c"][1])
    priv = private_violations("vashista_gpu.c", tree, imports["vashista_gpu.c"], "vashista_gpu/c.py", sources)
    assert priv == ["vashista_gpu/c.py:1: imports private name '_hidden' from vashista_gpu.d"]
    lay = layering_violations(imports)
    assert any(m.startswith("vashista_gpu/a.py:2") for m in lay)
    assert any(m.startswith("vashista_core/__init__.py:1") for m in lay)
    assert any(m.startswith("vashista_ref/x.py:1") for m in lay)


def test_checker_accepts_clean_code_and_checks_all(tmp_path):
    sources, imports = synthetic(tmp_path, {
        "vashista_core/__init__.py": "import math\nimport numpy as np\nfrom .e import E\n__all__ = ['E']\n",
        "vashista_core/e.py": "__all__ = ['E', 'F']\nclass E(Exception):\n    pass\nF = 1\nG = 2\n",
        "vashista_ref/__init__.py": "from vashista_core.e import E\n",
    })
    assert cycle_violations(imports, sources) == [] and layering_violations(imports) == []
    script = "from vashista_core import E\nfrom vashista_core import e\ne.F\ne.G\nfrom vashista_core.e import G\n"
    msgs = public_api_violations("benchmarks/x.py", script, sources)
    assert msgs == ["benchmarks/x.py:5: uses vashista_core.e.G, which is not in vashista_core.e.__all__",
                    "benchmarks/x.py:4: uses vashista_core.e.G, which is not in vashista_core.e.__all__"]
