"""Capture post-RoPE keys/values (all positions) and queries (last NQ positions) of every layer of
Qwen2.5-Coder-0.5B-Instruct (GGUF, float32 on CPU) on the first T tokens of a named text.
Usage: python capture.py TEXT T [NQ]   -> data/TEXT_T.pt
"""
import sys, time, os
HERE = os.path.dirname(os.path.abspath(__file__))   # the study folder (data/, results/)
import torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from vashista_app.quality.longctx_model import load_model_preset
from vashista_app.quality.haystacks import load
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

text, T = sys.argv[1], int(sys.argv[2])
NQ = int(sys.argv[3]) if len(sys.argv) > 3 else 8
torch.set_num_threads(2)
REC = {}

def capture(module, query, key, value, attention_mask, **kw):
    li = module.layer_idx
    REC[li] = dict(q=query[0, :, -NQ:, :].clone(), k=key[0].clone(), v=value[0].clone(), scaling=kw.get("scaling"))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)

AttentionInterface.register("vcapture", capture)
t0 = time.time()
model, tok, info = load_model_preset("qwen2.5-coder-0.5b")
print("loaded", time.time() - t0, flush=True)
model.config._attn_implementation = "vcapture"
for l in model.model.layers:
    l.self_attn.config._attn_implementation = "vcapture"
s = load(text)
ids = tok(s[: T * 12], return_tensors="pt").input_ids[:, :T]
assert ids.shape[1] == T, ids.shape
print("sliding", getattr(model.config, "use_sliding_window", None), model.config.sliding_window)
t0 = time.time()
with torch.no_grad():
    model.model(input_ids=ids, use_cache=False)
print("forward", time.time() - t0, "layers", len(REC), flush=True)
out = dict(text=text, T=T, NQ=NQ, layers=[REC[i] for i in range(len(REC))], ids=ids[0])
os.makedirs(HERE + "/data", exist_ok=True)
torch.save(out, f"{HERE}/data/{text}_{T}.pt")
print("saved", {k: tuple(v.shape) for k, v in REC[0].items() if torch.is_tensor(v)}, REC[0]["scaling"])
