"""The certified step's heaviest kernels compile for an H100/H200 (sm_90) on a machine without a GPU.

CI has no GPU, and the interpreter (TRITON_INTERPRET=1) runs kernels as NumPy: it never lowers them
(nor their inline PTX), so a kernel that only fails to compile — a construct the compiler rejects, a
layout it cannot lower, an ``asm`` operand — would first fail on a card. Triton compiles ahead of
time for a named target with the ptxas it ships: every mode of the radix selection
(``kernels/select_topk.py``) and the paged sketch scan (``kernels/sketch_scan.py``: 4 and 8 bits,
one- and two-sided, integer dots with their PTX, float16 and float32 metadata) is compiled to a
cubin here, in a child process without TRITON_INTERPRET (there ``@triton.jit`` makes compilable
functions; the interpreter's are not). ~30 s from a cold cache. The register report of each cubin
(``cuobjdump --dump-resource-usage``) is printed with ``-s``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
I32 = "i32"


def _select_cases():
    types = dict(s_ptr="*fp32", s_stride=I32, bmax_ptr="*fp32", bmax_stride=I32, ids_ptr="*i32", hs_ptr="*i32",
                 js_ptr="*i32", out_ptr="*i64", ovf_ptr="*i1", T=I32, NB=I32, KC=I32, cap=I32, short_w=I32)
    for thr, gather, flag in ((True, True, True), (True, True, False), (True, False, False), (False, False, False)):
        yield types, dict(BS=16, BSP=16, CHUNK=4096, CS=1024, BITS=6, THRESHOLD=thr, GATHER=gather, FLAG=flag,
                          INTERP=False, IT_T=0, IT_B=0, IT_G=0, IT_L=0, IT_S=0, IT_K=0), 16


def _scan_cases():
    for bits in (4, 8):
        for one_sided in (True, False):
            for meta in ("*fp16", "*fp32"):
                types = dict(q_ptr="*fp32", words_ptr="*i32", off_ptr=meta, step_ptr=meta, s_ptr="*fp32",
                             ub_ptr="*fp32", smax_ptr="*fp32", T=I32, NS=I32, Gr=I32, group=I32, scale="fp32",
                             a_fac="fp32", rnd_fac="fp32", grow="fp32", x_fac="fp32", ri_fac="fp32",
                             seq_ptr="*i32", len_ptr="*i32", table_ptr="*i32", table_stride=I32, Hkv=I32)
                yield types, dict(G=4, BITS=bits, D=64, BM=64, ONE_SIDED=one_sided, ASM=True, PAGED=True,
                                  INTDOT=True, BLK_FIRST=True, NG=4), 1


CASES = {"select_topk": ("vashista_gpu.kernels.select_topk", "_select_topk_kernel", _select_cases),
         "sketch_scan": ("vashista_gpu.kernels.sketch_scan", "_sketch_scan_bound_kernel", _scan_cases)}


def compile_all(name: str) -> list:
    """Compile every case of kernel ``name`` for sm_90; returns each cubin's resource line (exit
    status 3: this Triton cannot target sm_90 here, no ptxas or no NVIDIA backend)."""
    import importlib
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, attr, cases = CASES[name]
    fn = getattr(importlib.import_module(module), attr)
    names = fn.arg_names
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    report = []
    for types, consts, warps in cases():
        assert set(types) | set(consts) <= set(names) and set(types).isdisjoint(consts)
        src = ASTSource(fn=fn, signature={a: types.get(a, "constexpr") for a in names},
                        constexprs={(names.index(k),): v for k, v in consts.items()})
        try:
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
        except (FileNotFoundError, RuntimeError) as e:
            if "ptxas" in str(e) or "backend" in str(e).lower():
                print(f"cannot target sm_90 here: {e}")
                sys.exit(3)
            raise
        assert len(k.asm["cubin"]) > 0
        line = "?"
        if os.path.exists(cuobjdump):
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(k.asm["cubin"])
                f.flush()
                out = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True)
                line = next((x.strip() for x in out.stdout.splitlines() if "REG:" in x), "?")
        report.append(dict(consts={c: v for c, v in consts.items() if not c.startswith("IT")},
                           meta=types.get("off_ptr"), resources=line))
    return report


@pytest.mark.parametrize("name,count", [("select_topk", 4), ("sketch_scan", 8)])
def test_kernels_compile_for_sm90(name, count):
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, os.path.abspath(__file__), name], env=env, capture_output=True, text=True,
                       timeout=900)
    if r.returncode == 3:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(report) == count
    for case in report:
        print(name, case)
        assert "LOCAL:0" in case["resources"] or case["resources"] == "?", case     # no spills to local memory


if __name__ == "__main__":
    print(json.dumps(compile_all(sys.argv[1])))
