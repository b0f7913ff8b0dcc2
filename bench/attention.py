"""Packed, document-causal attention at the paper's shapes: each kernel torch offers, forward and backward, time and error.

    python bench/attention.py --lengths uniform:120:700 --reps 30 --out attention.json

One packed row of 18 samples (256 points + START + code + END each, code lengths drawn as `train_step.py` draws
them), Qwen2-1.5B's heads (12 query heads, 2 KV heads, head dim 128), bf16. For each kernel: the median forward and
forward+backward time over `--reps` runs (CUDA events), and the largest error of the output and of the three input
gradients against a float32 reference (causal SDPA over each sample on its own), relative to the reference's largest
magnitude. Kernels:

- `flash2`: `torch.nn.attention.varlen.varlen_attn`, FlashAttention 2, what the kit's `packed_attention` calls.
- `cudnn`, `cudnn-gqa`: cuDNN's fused attention over the same ragged row (`aten._cudnn_attention_forward` with
  the sample boundaries), the KV heads repeated to the query heads, or handed over as they are.
- `flex`: `flex_attention`, compiled, with a document-causal block mask built for the row.
"""
import argparse, json, statistics, sys, traceback
from pathlib import Path
import torch, torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from train_step import length_pool   # the same code-length draws as the step benchmark

H, HKV, D, N_POINTS = 12, 2, 128, 256


def cudnn_varlen(q, k, v, cu, max_len, scale):
    "cuDNN's fused attention over the ragged row; its backward is aten's own derivative of the op."
    return torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, max_len, max_len, True, 0.0, True, False,
                                                   scale=scale)[0]


def repeat_kv(x, n): return x.repeat_interleave(n, dim=1)

def kernels(cu, max_len, scale):
    from torch.nn.attention.varlen import varlen_attn
    import inspect
    params = inspect.signature(varlen_attn).parameters
    causal = dict(is_causal=True) if 'is_causal' in params else dict(window_size=(-1, 0))
    gqa = 'enable_gqa' in params
    def flash2(q, k, v):
        if gqa: return varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scale, enable_gqa=True, **causal)
        return varlen_attn(q, repeat_kv(k, H // HKV), repeat_kv(v, H // HKV), cu, cu, max_len, max_len, scale=scale, **causal)
    def cudnn(q, k, v): return cudnn_varlen(q, repeat_kv(k, H // HKV), repeat_kv(v, H // HKV), cu, max_len, scale)
    def cudnn_gqa(q, k, v): return cudnn_varlen(q, k, v, cu, max_len, scale)
    out = {'flash2': flash2, 'cudnn': cudnn, 'cudnn-gqa': cudnn_gqa}
    try:
        from torch.nn.attention.flex_attention import flex_attention, create_block_mask
        doc = torch.repeat_interleave(torch.arange(len(cu) - 1, device=cu.device), cu.diff())
        mask = create_block_mask(lambda b, h, i, j: (doc[i] == doc[j]) & (j <= i), None, None, int(cu[-1]), int(cu[-1]),
                                 device=cu.device)
        flex = torch.compile(flex_attention)
        def flex_fn(q, k, v):
            o = flex(*(x.transpose(0, 1)[None] for x in (q, k, v)), block_mask=mask, scale=scale, enable_gqa=True)
            return o[0].transpose(0, 1)
        out['flex'] = flex_fn
    except Exception as e: print(f"flex unavailable: {e!r}", flush=True)
    return out


def reference(q, k, v, bounds, scale):
    "float32 causal SDPA over each sample on its own; returns the output and the gradients for `g`."
    q, k, v = (x.detach().float().requires_grad_() for x in (q, k, v))
    kk, vv = repeat_kv(k, H // HKV), repeat_kv(v, H // HKV)
    out = torch.cat([F.scaled_dot_product_attention(*(x[s:e].transpose(0, 1) for x in (q, kk, vv)), is_causal=True,
                     scale=scale).transpose(0, 1) for s, e in zip(bounds[:-1], bounds[1:])])
    return out, (q, k, v)


def timed(fn, reps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record(); fn(); end.record(); end.synchronize(); times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--lengths', default='uniform:120:700'); ap.add_argument('--batch', type=int, default=18)
    ap.add_argument('--reps', type=int, default=30); ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default='attention.json')
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    pool = length_pool(args.lengths, args.seed)
    sizes = [N_POINTS + 2 + pool[i % len(pool)] for i in range(args.batch)]
    bounds = [0] + list(torch.tensor(sizes).cumsum(0).tolist())
    dev = 'cuda'; cu = torch.tensor(bounds, dtype=torch.int32, device=dev); max_len = max(sizes); T = bounds[-1]
    scale = D ** -0.5
    q = torch.randn(T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(T, HKV, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(T, HKV, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(T, H, D, device=dev, dtype=torch.bfloat16)
    ref_out, ref_in = reference(q, k, v, bounds, scale); ref_out.backward(g.float())
    ref = dict(out=ref_out.detach(), dq=ref_in[0].grad, dk=ref_in[1].grad, dv=ref_in[2].grad)
    causal_flops = sum(4 * s * (s + 1) / 2 * D * H for s in sizes)   # QK^T and PV over the causal half
    result = dict(torch=torch.__version__, gpu=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version(),
                  tokens=T, samples=sizes, max_len=max_len, kernels={})
    print(json.dumps({k: result[k] for k in ('torch', 'gpu', 'cudnn', 'tokens', 'max_len')}), flush=True)
    for name, fn in kernels(cu, max_len, scale).items():
        row = {}
        try:
            for x in (q, k, v): x.grad = None
            out = fn(q, k, v); out.backward(g)
            scale_of = lambda t: t.abs().max().item()
            row['err'] = {n: ((a.float() - ref[n]).abs().max() / scale_of(ref[n])).item()
                          for n, a in dict(out=out.detach(), dq=q.grad, dk=k.grad, dv=v.grad).items()}
            with torch.no_grad(): fn(q, k, v); row['fwd_ms'] = timed(lambda: fn(q, k, v), args.reps)
            row['fwd_bwd_ms'] = timed(lambda: fn(q, k, v).backward(g), args.reps)
            row['fwd_tflops'] = causal_flops / row['fwd_ms'] / 1e9
            row['fwd_bwd_tflops'] = 3.5 * causal_flops / row['fwd_bwd_ms'] / 1e9   # backward ~2.5x the forward's FLOPs
        except Exception as e: row["error"] = repr(e)[:300]; print(traceback.format_exc()[-1500:], flush=True)
        result['kernels'][name] = row; print(name, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))

if __name__ == '__main__': main()
