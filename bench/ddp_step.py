"""The kit's training step under DDP, with batches built beforehand: where a two-GPU step loses time against one GPU.

    python -m torch.distributed.run --standalone --nproc_per_node 1 bench/ddp_step.py --lengths data:data/small --out one.json
    python -m torch.distributed.run --standalone --nproc_per_node 2 bench/ddp_step.py --lengths data:data/small --out two.json

Weak scaling: every rank runs `--batch` samples per step (the recipe's 18), lengths drawn as `train_step.py` draws them,
each rank from its own seed. The step is `cadrecode_nb.trainer.train_step` (the function `train` calls) on `CADRecode`
with Qwen2-1.5B shapes, packed rows and compiled layers, run as `train` runs it (each step's numbers read one step
late). Each DDP variant of `--variants` wraps a fresh model, in
turn, `--rounds` times; medians over rounds of each run's mean step time. With one process there is no DDP: the row
is the one-GPU reference. `--profile N` adds torch.profiler over N steps of the first variant, on rank 0: how much of
NCCL's kernel time runs alongside compute and how much is exposed, and the GPU's idle time (`idle_split`).
Unlike the trainer's own loop (`bench/scaling.sh`), no batch is collated inside the timed step.
"""
import argparse, json, os, statistics, sys, time
from pathlib import Path

import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

sys.path.insert(0, str(Path(__file__).parent))
from train_step import free_cuda, idle_split, kit_setup, length_pool, random_batches, run_steps, sync   # noqa: E402
from cadrecode_nb.trainer import train_step   # noqa: E402
from cadrecode_nb.speed import DDP_BUCKET_MB, setup_distributed, wrap_ddp   # noqa: E402

VARIANTS = {   # (dynamo's DDPOptimizer splits the compiled layers?, comm hook: None = DDP divides each gradient itself)
    'trainer': (False, default_hooks.allreduce_hook),      # cadrecode_nb.speed.wrap_ddp, as the trainer wraps
    'ddp-optimizer': (True, default_hooks.allreduce_hook), # dynamo splits each compiled layer's graph at DDP's bucket boundaries
    'grad-division': (False, None),                        # DDP divides each of the ~340 gradients by the world size itself
    'session-3': (True, None),                             # both: what the trainer did before
    'bf16-compress': (False, default_hooks.bf16_compress_hook),   # the trainer's, buckets sent and averaged in bfloat16
}


def wrap(model, device, variant:str):
    "The model in DDP as `variant` says."
    split, hook = VARIANTS[variant]
    if split != torch._dynamo.config.optimize_ddp: torch._dynamo.reset()   # recompile the layers under the new setting
    if variant == 'trainer': return wrap_ddp(model, device, compiled_layers=True)
    torch._dynamo.config.optimize_ddp = split
    # no device_ids, as in wrap_ddp: the labels stay on the CPU, where the model reads them
    ddp = DistributedDataParallel(model, gradient_as_bucket_view=True, bucket_cap_mb=DDP_BUCKET_MB)
    if hook is not None: ddp.register_comm_hook(None, hook)
    return ddp


def union(intervals):
    "Merged, sorted list of (start, end)."
    out = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]: out[-1][1] = max(out[-1][1], e)
        else: out.append([s, e])
    return out


def measure(spans) -> float: return sum(e - s for s, e in spans)


def intersect(a, b) -> float:
    "Total length of the overlap of two merged interval lists."
    i = j = 0; total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo: total += hi - lo
        if a[i][1] < b[j][1]: i += 1
        else: j += 1
    return total


def overlap_report(prof, steps:int) -> dict:
    "NCCL kernel time per step: total, alongside compute kernels, exposed; GPU idle time (ms)."
    from torch.autograd import DeviceType
    ks = [e for e in prof.events() if e.device_type == DeviceType.CUDA and not e.name.startswith('Optimizer.')]
    nccl = [(e.time_range.start, e.time_range.end) for e in ks if 'nccl' in e.name.lower()]
    comp = [(e.time_range.start, e.time_range.end) for e in ks if 'nccl' not in e.name.lower()]
    n, c = union(nccl), union(comp)
    everything = union(nccl + comp)
    span = everything[-1][1] - everything[0][0] if everything else 0.0
    per = lambda us: round(us / 1e3 / steps, 2)
    return dict(nccl_kernel_ms=per(sum(e - s for s, e in nccl)), nccl_busy_ms=per(measure(n)),
                nccl_alongside_compute_ms=per(intersect(n, c)), nccl_exposed_ms=per(measure(n) - intersect(n, c)),
                compute_busy_ms=per(measure(c)), gpu_idle_ms=per(span - measure(everything)),
                nccl_kernels_per_step=round(len(nccl) / steps, 1))


def run_variant(variant:str, batches, args, device, dinfo, profile_steps:int=0) -> dict:
    cfg, model, opt, scaler, ctx = kit_setup('kit', args, device)   # compiled layers, packed rows, fused loss
    step_model = wrap(model, device, variant) if dinfo.enabled else model
    launch = lambda i, micro: train_step(step_model, model, micro, opt, scaler, cfg, device, ctx, dinfo, step=i + 1)
    run_steps(batches[:args.warmup], launch)
    sync()
    if dinfo.enabled: dist.barrier()
    outs, dt = run_steps(batches[args.warmup:args.warmup + args.steps], launch)
    tokens = [o['tokens'] for o in outs]
    row = dict(variant=variant if dinfo.enabled else 'one GPU', s_per_step=round(dt, 4),
               tokens_per_step_all_ranks=round(statistics.mean(tokens)), tokens_per_s_per_gpu=round(sum(tokens) / (dt * len(tokens)) / dinfo.world_size))
    if profile_steps:
        from torch.profiler import ProfilerActivity, profile
        sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run_steps(batches[-profile_steps:], launch)
            sync()
        row['profile'] = dict(overlap_report(prof, profile_steps), idle=idle_split(prof, profile_steps))
        if args.trace and dinfo.is_main: prof.export_chrome_trace(args.trace)
    del step_model, model, opt; free_cuda()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--lengths', default='uniform:120:700', help="'data:DIR', 'uniform:LO:HI' or a JSON list")
    ap.add_argument('--batch', type=int, default=18, help='samples per rank per step')
    ap.add_argument('--steps', type=int, default=12); ap.add_argument('--warmup', type=int, default=4)
    ap.add_argument('--rounds', type=int, default=2); ap.add_argument('--variants', default='trainer,session-3')
    ap.add_argument('--pad', type=int, default=64, help="packed rows rounded up to a multiple of this (the trainer's pad_to_multiple_of)")
    ap.add_argument('--profile', type=int, default=0); ap.add_argument('--trace', default='')
    ap.add_argument('--seed', type=int, default=0); ap.add_argument('--model-kw', default='{}')
    ap.add_argument('--out', default='ddp_step.json')
    args = ap.parse_args(); args.micro = 0
    dinfo = setup_distributed()
    device = torch.device('cuda', dinfo.local_rank) if torch.cuda.is_available() else torch.device('cpu')   # CPU: smoke test
    pool = length_pool(args.lengths)
    args.seed += dinfo.rank   # each rank its own lengths and tokens; rank 0 draws what one GPU draws
    batches = random_batches(pool, args, True, args.warmup + args.steps + args.profile, 151936, args.pad or None)
    args.seed -= dinfo.rank
    variants = args.variants.split(',') if dinfo.enabled else ['trainer']
    for v in variants:
        if v not in VARIANTS: ap.error(f'unknown variant {v!r}; choose from {", ".join(VARIANTS)}')
    rows = []
    for r in range(args.rounds):
        for k, v in enumerate(variants):
            rows.append(dict(round=r, **run_variant(v, batches, args, device, dinfo, args.profile if r == 0 and k == 0 else 0)))
            if dinfo.is_main: print(json.dumps(rows[-1]), flush=True)
    if dinfo.is_main:
        summary = {v: dict(s_per_step=statistics.median(x['s_per_step'] for x in rows if x['variant'] == v),
                           tokens_per_s_per_gpu=statistics.median(x['tokens_per_s_per_gpu'] for x in rows if x['variant'] == v))
                   for v in dict.fromkeys(x['variant'] for x in rows)}
        res = dict(world=dinfo.world_size, lengths=args.lengths, batch_per_rank=args.batch, pad_to_multiple_of=args.pad, rows=rows, median=summary,
                   versions=dict(torch=torch.__version__))
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(json.dumps(dict(world=dinfo.world_size, median=summary)))
    if dinfo.enabled: dist.destroy_process_group()


if __name__ == '__main__':
    main()
