"""All-reduce bandwidth between the GPUs of one host, for the gradient volume of the `paper` recipe.

    python -m torch.distributed.run --standalone --nproc_per_node 2 bench/allreduce.py [--gb 6.2]

DDP all-reduces every gradient once per optimizer step: 1.54 B float32 gradients are 6.2 GB. This measures how long
that takes on the machine's own interconnect (NCCL picks NVLink P2P, shared host memory or the network; run with
NCCL_DEBUG=INFO to see which), so the scaling benchmark's extra time per step can be compared with it.
"""
import argparse, json, os, statistics, time
import torch, torch.distributed as dist

ap = argparse.ArgumentParser(); ap.add_argument('--gb', type=float, default=6.2); ap.add_argument('--reps', type=int, default=5)
ap.add_argument('--bucket-mb', type=int, default=25, help="DDP's default bucket size: the volume goes out in pieces this big")
a = ap.parse_args()
dist.init_process_group('nccl'); rank, world = dist.get_rank(), dist.get_world_size()
torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
res = {}
for label, size_mb in (('one tensor', int(a.gb * 1024)), (f'{a.bucket_mb} MB buckets', a.bucket_mb)):
    n_elem = size_mb * 2**20 // 4
    buf = torch.ones(n_elem, device='cuda')
    pieces = max(1, round(a.gb * 1024 / size_mb))
    times = []
    for r in range(a.reps + 1):
        torch.cuda.synchronize(); dist.barrier(); t = time.perf_counter()
        for _ in range(pieces): dist.all_reduce(buf)
        torch.cuda.synchronize(); times.append(time.perf_counter() - t)
    dt = statistics.median(times[1:])
    gb = pieces * n_elem * 4 / 1e9
    res[label] = dict(gb=round(gb, 2), seconds=round(dt, 4), algbw_gb_s=round(gb / dt, 1),
                      busbw_gb_s=round(gb / dt * 2 * (world - 1) / world, 1))
    del buf
if rank == 0: print(json.dumps(dict(world=world, **res)))
dist.destroy_process_group()
