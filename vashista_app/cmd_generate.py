"""``vashista generate``: greedy generation with Vashista owning the KV cache (``vashista_gpu.engine``).

Prints the generated text; ``--json`` prints one JSON object instead: token ids, prefill seconds,
decode ms/token and tokens/s, cache bytes (ours: kv / sketch / metadata) and the dense cache's bytes,
fallback rate and the certificate summary, and the configuration that ran. The model is the embedded
SmolLM2-135M-Instruct unless ``--model`` names a preset (``qwen2.5-coder-0.5b``: the 32k long-context
model, installed by ``scripts/install_longctx_model.sh``; never downloaded here) or a GGUF file. Bad
options, and a preset that is not installed, exit with status 2 and one line naming the option.

Example:
    vashista generate --prompt "The capital of France is" --max-new-tokens 16 --mode certified --bits 8
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from vashista_core.errors import VashistaInputError

__all__ = ['POLICIES', 'build_parser', 'main', 'parse_budget', 'run']

POLICIES = ("report", "fallback", "capped")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vashista generate", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("input")
    src.add_argument("--model", default=None, metavar="PRESET|FILE.gguf",
                     help="a preset (smollm2-135m, the embedded default; qwen2.5-coder-0.5b, the 32k model of "
                          "scripts/install_longctx_model.sh) or a local GGUF file")
    src.add_argument("--prompt", default=None, help="prompt text")
    src.add_argument("--prompt-file", default=None, help="read the prompt from this text file")
    src.add_argument("--max-new-tokens", type=int, default=32)
    dec = p.add_argument_group("decode")
    dec.add_argument("--mode", choices=("dense", "certified", "paged", "auto"), default="certified")
    dec.add_argument("--bits", type=int, default=4, help="certified-mode sketch bits: 4 or 8")
    dec.add_argument("--budget", default="1/16",
                     help="fraction of the context read exactly (Kc = 16·ceil(budget·context/16)); "
                          "a number or a fraction like 1/16")
    dec.add_argument("--policy", choices=POLICIES, default="report",
                     help="report: count certificates; fallback: exact attention for heads whose certified "
                          "error exceeds --tol; capped: widen Kc up to --Kc-max first")
    dec.add_argument("--tol", type=float, default=None, help="certified-error tolerance (fallback, capped; "
                                                              "with report: the threshold counted)")
    dec.add_argument("--Kc-max", type=int, default=None, help="capped: the widest Kc (default 4096)")
    dec.add_argument("--bounds", choices=("auto", "one-sided", "two-sided"), default="auto",
                     help="certified mode's token bounds: one-sided (tighter certificate), two-sided (a scan "
                          "of about half the work, a looser certificate; CUDA graph path only), auto (default: "
                          "two-sided for --bits 8 on CUDA, where it loosens nothing measurable; else one-sided)")
    dec.add_argument("--dense-layers", default="", help="comma-separated layers decoded densely")
    dec.add_argument("--page-size", type=int, default=16)
    dec.add_argument("--prefill-chunk", type=int, default=1024)
    run = p.add_argument_group("run")
    run.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--no-graph", action="store_true", help="on CUDA, run the decode step eagerly")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the layers' norms, MLP and residual adds in the decode steps "
                          "(for the CUDA graph path; the first steps compile; on the CPU no measurable effect, "
                          "and it needs a C++ compiler there)")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def parse_budget(text: str) -> float:
    """'1/16', '0.0625' -> 0.0625; anything else is a VashistaInputError naming --budget."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise VashistaInputError("--budget", f"expected a number or a fraction like 1/16, got {text!r}") from None
    if not 0 < value <= 1 or math.isnan(value):
        raise VashistaInputError("--budget", f"must be a fraction in (0, 1], got {text!r}")
    return value


def _policy(args):
    from vashista_core.policies import Capped, DenseFallback, ReportOnly

    if args.tol is not None and not args.tol >= 0:
        raise VashistaInputError("--tol", f"must be >= 0, got {args.tol}")
    if args.policy == "report":
        return ReportOnly()
    if args.tol is None:
        raise VashistaInputError("--tol", f"--policy {args.policy} needs a tolerance")
    if args.policy == "fallback":
        return DenseFallback(args.tol)
    kc_max = 4096 if args.Kc_max is None else args.Kc_max
    if kc_max < 1:
        raise VashistaInputError("--Kc-max", f"must be >= 1, got {kc_max}")
    return Capped(args.tol, kc_max, kc_max)


def _prompt(args) -> str:
    if (args.prompt is None) == (args.prompt_file is None):
        raise VashistaInputError("--prompt", "give exactly one of --prompt and --prompt-file")
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise VashistaInputError("--prompt-file", f"cannot read {args.prompt_file!r}: {exc}") from None
    else:
        text = args.prompt
    if not text.strip():
        raise VashistaInputError("--prompt", "the prompt is empty")
    return text


def _device(name):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise VashistaInputError("--device", f"not a torch device: {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VashistaInputError("--device", "CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise VashistaInputError("--device", f"expected cpu or cuda, got {name!r}")
    return dev


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _model_source(model: str | None) -> str | None:
    """Check ``--model`` before anything loads: None (the embedded default), a preset name, or an
    existing .gguf file; a preset that is not installed is refused here with the install command."""
    import os

    from vashista_app.quality.longctx_model import PRESETS, qwen_path

    if model is None or model == "smollm2-135m":
        return None
    if model in PRESETS:
        qwen_path()                                   # raises, naming --model, when not installed
        return model
    if not os.path.isfile(model):
        raise VashistaInputError("--model", f"{model!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    if not model.endswith(".gguf"):
        raise VashistaInputError("--model", f"{model!r} is not a .gguf file")
    return model


def _load(model: str | None, dtype, device):
    from vashista_app.quality.longctx_model import PRESETS, load_model_preset
    from vashista_gpu.hf.model import load_default_model, load_model_file

    if model is None:
        return load_default_model(dtype=dtype, device=device)
    if model in PRESETS:
        m, tok, _ = load_model_preset(model, device=device, dtype=dtype)
        return m, tok
    return load_model_file(model, dtype=dtype, device=device)


def run(args) -> dict:
    """Check every option before loading anything, load the model, generate; returns the JSON object."""
    import torch

    from vashista_gpu.engine import generate

    text = _prompt(args)
    args.model = _model_source(args.model)
    budget = parse_budget(args.budget)
    policy = _policy(args)
    device = _device(args.device)
    if args.max_new_tokens < 1:
        raise VashistaInputError("--max-new-tokens", f"must be >= 1, got {args.max_new_tokens}")
    if args.bits not in (4, 8):
        raise VashistaInputError("--bits", f"must be 4 or 8, got {args.bits}")
    try:
        dense_layers = tuple(int(x) for x in args.dense_layers.split(",") if x.strip())
    except ValueError:
        raise VashistaInputError("--dense-layers", f"expected comma-separated integers, got {args.dense_layers!r}") from None
    if args.bounds == "two-sided" and device.type != "cuda":
        raise VashistaInputError("--bounds", "two-sided bounds run on the CUDA graph path only (this run is on the CPU)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tok = _load(args.model, dtype, device)
    try:
        r = generate(model, tok, text, mode=args.mode, bits=args.bits, budget=budget, policy=policy, tol=args.tol,
                     max_new_tokens=args.max_new_tokens, graph=False if args.no_graph else None,
                     page_size=args.page_size, prefill_chunk=args.prefill_chunk, dense_layers=dense_layers,
                     eos_token_id=_eos_ids(model, tok), progress=None if not args.json else False,
                     one_sided={"auto": None, "one-sided": True, "two-sided": False}[args.bounds],
                     compile=args.compile)
    except VashistaInputError as e:
        # the library names its own arguments; the user typed options
        option = {"one_sided": "bounds"}.get(e.argument, e.argument)
        raise VashistaInputError("--" + option.replace("_", "-"), e.problem) from None
    s = r.stats
    return _jsonable(dict(
        text=r.text[0], token_ids=r.tokens[0], prompt_tokens=r.config["prompt_tokens"][0],
        prefill_s=r.prefill_s, decode_steps=r.decode_steps, decode_ms_per_token=r.ms_per_token, tokens_per_s=r.tokens_per_s,
        cache_bytes=r.cache_bytes, dense_cache_bytes=r.dense_cache_bytes,
        fallback_rate=s["fallback_rate"],
        certificate=dict(queries=s["queries"], uncertified=s["uncertified"], uncertified_rate=s["uncertified_rate"],
                         certified_error_mean=s["certified_error_mean"], certified_error_max=s["certified_error_max"],
                         leakage_max=s["leakage_max"], overflow=s["overflow"], nonfinite=s["nonfinite"]),
        mode=r.mode, config=r.config))


def _eos_ids(model, tok):
    """Where generation stops, as transformers' generate decides it: the model's generation config's
    EOS ids (an instruct model often lists two, end of turn and end of text), else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return eos if eos is not None else tok.eos_token_id


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = run(args)
    except VashistaInputError as e:
        print(f"vashista generate: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
    else:
        print(out["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
