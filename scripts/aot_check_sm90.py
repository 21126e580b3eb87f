"""Compile the engine's append and row_vmax Triton kernels for an H100 (sm_90a) on a machine without a GPU:
Triton to PTX, then ptxas, printing registers and spills per variant. A compile check, not a run: it
catches what the interpreter accepts but the compiler rejects (used when no device time was left to
compile them on the card, fourth session).

    PYTHONPATH=. python scripts/aot_check_sm90.py
"""
import subprocess, os, time, triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from vashista_gpu.kernels.append_step import _append_step_kernel, _advance_kernel
from vashista_gpu.kernels.row_vmax import _row_vmax_kernel
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")

def comp(k, sig, const, warps=4, name=""):
    for c in const: sig[c] = "constexpr"
    t = time.time()
    ck = triton.compile(ASTSource(k, sig, const), target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
    open("/tmp/aot_sm90_kernel.ptx", "w").write(ck.asm["ptx"])
    r = subprocess.run([PTXAS, "-arch=sm_90a", "-v", "/tmp/aot_sm90_kernel.ptx", "-o", "/tmp/aot_sm90_kernel.cubin"], capture_output=True, text=True)
    print(name, f"{time.time()-t:.1f}s rc={r.returncode}", [l.strip()[13:] for l in r.stderr.splitlines() if "registers" in l or "spill" in l or "rror" in l])

def append(cache_dt, bits, keys, vnorm, S, D, H, meta="fp16"):
    sig = dict(seq_ptr="*i32", k_ptr=f"*{cache_dt}", v_ptr=f"*{cache_dt}", skb="i32", skh="i32", skd="i32", svb="i32", svh="i32", svd="i32",
               kp_ptr=f"*{cache_dt}", vp_ptr=f"*{cache_dt}", bt_ptr="*i32", bt_stride="i32", lens_ptr="*i32",
               vnorm_ptr="*fp32" if vnorm else "*i32", vabs_ptr="*fp32" if vnorm else "*i32",
               kmin_ptr=f"*{cache_dt}" if keys else "*i32", kmax_ptr=f"*{cache_dt}" if keys else "*i32", kmean_ptr="*fp32" if keys else "*i32",
               codes_ptr="*u8" if bits else "*i32", off_ptr=f"*{meta}" if bits else "*i32", step_ptr=f"*{meta}" if bits else "*i32",
               S="i32", D="i32", DV="i32", W="i32")
    b = bits or 8
    W = D * b // 8 if bits else 1
    mdt, idt, nm = (tl.float16, tl.int16, -32767) if meta == "fp16" else (tl.float32, tl.int32, -2147483647)
    const = dict(H=H, BS=triton.next_power_of_2(S), BD=triton.next_power_of_2(D), BDV=triton.next_power_of_2(D),
                 BW=triton.next_power_of_2(W), VNORM=vnorm, KEYS=keys, SKETCH=bool(bits), BITS=b, PER=8 // b,
                 L=(1 << b) - 1, MDT=mdt, IDT=idt, NEG_MIN=nm)
    comp(_append_step_kernel, sig, const, name=f"append {cache_dt} bits={bits} keys={keys} vnorm={vnorm} S={S} D={D}")

append("bf16", 4, False, True, 16, 64, 8)
append("bf16", 8, False, True, 64, 64, 8)
append("fp32", 8, False, True, 64, 64, 2)
append("fp32", 4, False, True, 16, 64, 2)
append("bf16", None, True, True, 16, 128, 8)
append("bf16", None, False, False, 16, 64, 8)
append("bf16", 4, False, True, 16, 128, 8, meta="fp32")
comp(_advance_kernel, dict(seq_ptr="*i32", lens_ptr="*i32", B="i32", BB="constexpr"), dict(BB=16), name="advance")
comp(_row_vmax_kernel, dict(seq_ptr="*i32", vabs_ptr="*fp32", out_ptr="*fp32", factor="fp32"), dict(HKV=8, G=4, BG=4), name="row_vmax")
