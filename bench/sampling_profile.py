"""Where a decoding step of the shared-prompt decoder spends its time: GPU kernel time by kind, per step.

    python bench/sampling_profile.py --parts 64 --attention matmul --out bench/results/sampling_profile_matmul_h200.json

Qwen2-1.5B shapes, random bf16 weights, 16 sampled candidates per part, temperature 1.0 (or, with `--greedy`, one
greedy row per part: `--parts 64 --candidates 1 --attention fused --greedy` is 768-token greedy's step). The decoder runs its
compiled pieces *without* CUDA graphs under `torch.profiler` for `--steps` steps inside one suffix bucket (a graph
replays the same kernels; the profiler sees them one by one only outside a graph), after a warm-up run that compiles.
Kernels are grouped into kinds by name (matmul, attention pieces, sampling, norms and elementwise, copies) and their
GPU time is divided by the number of steps. The same steps are then timed as CUDA-graph replays, so that the
difference between the graph's wall time and the kernels' sum is the gaps between kernels.
"""
import argparse, json, re, sys, time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from cadrecode_nb.model import CADRecode, qwen2_1_5b_config
from cadrecode_nb.sampling import SharedPromptDecoder, draw_noise, logits_warpers, prefill_parts

START, END, N_POINTS = 151644, 151643, 256
KINDS = [('attention (FlashAttention)', r'flash'),
         ('attention (Triton)', r'_decode_attention_kernel|_suffix_decode_kernel'),
         ('attention (FlexAttention)', r'flex|triton_tem'),
         ('matmul', r'gemm|gemv|cutlass|sm90|sm80|nvjet|matmul|xmma|splitk'),
         ('sampling', r'exponential|distribution|argmax|softmax|max_|sum_|reduce'),
         ('copy', r'copy|fill|index|cat|memset|memcpy'),
         ('triton (fused)', r'triton')]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.I): return kind
    return 'other'


def decoder_for(model, parts, k, max_new, graphed, attention, greedy=False):
    pts = torch.rand(parts, N_POINTS, 3, device='cuda') * 2 - 1
    logits, prefix = prefill_parts(model, pts, START)
    dec = SharedPromptDecoder(model, parts, k, prefix[0][0].shape[2], max_new, END, END, () if greedy else logits_warpers(1.0, 1.0),
                              sampling=not greedy, graphed=graphed, compiled=True, attention=attention)
    for (pk, pv), (kk, vv) in zip(dec.prefix, prefix):   # the flat layouts keep the prompt as (B, P, Hkv, D)
        pk.copy_(kk.transpose(1, 2) if dec.flat else kk); pv.copy_(vv.transpose(1, 2) if dec.flat else vv)
    return dec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--parts', type=int, default=64); ap.add_argument('--candidates', type=int, default=16)
    ap.add_argument('--steps', type=int, default=20); ap.add_argument('--slot', type=int, default=200,
                                                                         help='position of the profiled steps')
    ap.add_argument("--attention", default="matmul", choices=['flash', 'flex', 'fused', 'matmul', 'triton'])
    ap.add_argument('--greedy', action='store_true', help='greedy steps (no noise, no warpers) instead of sampled ones')
    ap.add_argument('--bucket', type=int, default=64); ap.add_argument('--out', default='sampling_profile.json')
    args = ap.parse_args()
    torch.manual_seed(0)
    with torch.device('cuda'): model = CADRecode(qwen2_1_5b_config()).to(torch.bfloat16).eval()
    rows, length = args.parts * args.candidates, -(-(args.slot + args.steps) // args.bucket) * args.bucket
    gen = torch.Generator('cuda').manual_seed(0)
    noise = lambda dec: dec.noise is None or draw_noise(dec.noise, gen)   # greedy: nothing to draw
    result = dict(torch=torch.__version__, gpu=torch.cuda.get_device_name(), args=vars(args), rows=rows, length=length)
    with torch.no_grad():
        dec = decoder_for(model, args.parts, args.candidates, length, graphed=False, attention=args.attention, greedy=args.greedy)
        dec.slot.fill_(args.slot)
        for _ in range(3): noise(dec); dec._step(length)   # compiles
        torch.cuda.synchronize(); dec.slot.fill_(args.slot)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps): noise(dec); dec._step(length)
            torch.cuda.synchronize()
        by_kind, by_name = defaultdict(float), defaultdict(lambda: [0.0, 0])
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                t = e.device_time / 1e3 / args.steps   # ms per step
                by_kind[kind_of(e.name)] += t; by_name[e.name][0] += t; by_name[e.name][1] += 1
        result['kernel_ms_per_step'] = {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])}
        result['kernel_ms_total'] = round(sum(by_kind.values()), 3)
        result['kernels_per_step'] = sum(n for _, n in by_name.values()) / args.steps
        result['top_kernels'] = [dict(name=n[:160], ms_per_step=round(t, 4), calls_per_step=c / args.steps)
                                 for n, (t, c) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:40]]
        model._cadrecode_shared_decoder = None; del dec; torch.cuda.empty_cache()
        dec = decoder_for(model, args.parts, args.candidates, length, graphed=True, attention=args.attention, greedy=args.greedy)
        dec.slot.fill_(args.slot); noise(dec); dec._run_step(length)   # compiled already: record
        dec.slot.fill_(args.slot); torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(args.steps): noise(dec); dec._run_step(length)
        torch.cuda.synchronize()
        result['graph_ms_per_step'] = round((time.perf_counter() - t) * 1e3 / args.steps, 3)
    print(json.dumps({k: v for k, v in result.items() if k != 'top_kernels'}, indent=1))
    for r in result['top_kernels'][:25]: print(f"{r['ms_per_step']:8.3f} ms {r['calls_per_step']:6.1f}x  {r['name']}")
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    sys.exit(main())
