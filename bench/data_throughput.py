"""Throughput of the dataset pipeline: generated programs -> sandbox (CadQuery, strict checks) -> point clouds
(in the workers) -> deduplication -> compressed shards, with every core, through the real `write_dataset`.

    python bench/data_throughput.py                 # 600 samples, all cores
    python bench/data_throughput.py --n-samples 2000 --workers 2

Prints valid (kept) samples per second end to end and in steady state (without the sandbox workers' start-up,
paid once per run), the disk cost per sample, and the load average: on a shared machine the wall-clock numbers fall
with it. So it also counts the CPU seconds spent by this process and all its descendants (the sandbox workers;
needs psutil): CPU seconds per valid sample barely depend on what else runs, and cores / (CPU s per sample) is the
rate an otherwise idle machine would reach. Target on a 2-core machine: >= 15 valid samples/s.
"""
import argparse, os, tempfile, threading, time


class TreeCPU:
    "CPU seconds (user + system) of this process and all its descendants, sampled every 0.2 s while in use."
    def __init__(self):
        import psutil
        self.psutil, self.seen, self.stop, self.series = psutil, {}, threading.Event(), []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        me = self.psutil.Process()
        for p in [me, *me.children(recursive=True)]:   # workers come and go (a timeout replaces one): key by pid+start
            try:
                t = p.cpu_times(); self.seen[(p.pid, p.create_time())] = t.user + t.system
            except self.psutil.Error: pass
        self.series.append((time.perf_counter(), self.seconds))

    def _run(self):
        while not self.stop.wait(0.2): self._sample()

    def __enter__(self):
        self._sample(); self.base = dict(self.seen); self.thread.start(); return self

    def __exit__(self, *exc):
        self.stop.set(); self.thread.join(); self._sample()

    @property
    def seconds(self) -> float: return sum(v - self.base.get(k, 0.0) for k, v in self.seen.items()) if hasattr(self, 'base') else 0.0

    def between(self, t0: float, t1: float) -> float:
        "CPU seconds spent between two perf_counter times (interpolated between samples)."
        import numpy as np
        t, c = np.array(self.series).T
        return float(np.interp(t1, t, c) - np.interp(t0, t, c))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--n-samples', type=int, default=600)
    p.add_argument('--shard-size', type=int, default=1000, help="as the 'small' preset")
    p.add_argument('--workers', type=int, default=None, help='sandbox workers (default: all cores)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=None, help='keep the dataset here (default: a temporary folder, deleted)')
    args = p.parse_args()
    from cadrecode_nb import dataset as data
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or os.path.join(tmp, 'bench')
        try: cpu = TreeCPU()
        except ImportError: cpu = None
        timings, t0 = {}, time.perf_counter()
        with cpu if cpu is not None else open(os.devnull):
            manifest = data.write_dataset(out, 'small', n_samples=args.n_samples, shard_size=args.shard_size,
                                          workers=args.workers, seed=args.seed, progress=False, timings=timings)
        wall = time.perf_counter() - t0
    n = manifest['n_samples']
    print(data.manifest_summary(manifest))
    print(f"workers {args.workers or os.cpu_count()} on {os.cpu_count()} cores; load average before "
          f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(f"phases (s): pool start {timings['pool_start']:.1f}, shards {timings['shards']:.1f}, "
          f"tokenizer {timings['tokenizer']:.1f}, total {wall:.1f}")
    print(f"valid samples/s: end to end {n / wall:.1f}, steady state {n / timings['shards']:.1f} "
          f"({manifest['attempted'] / timings['shards']:.1f} programs/s)")
    if cpu is not None:
        cores = args.workers or os.cpu_count()
        start = t0 + timings['pool_start']
        steady = cpu.between(start, start + timings['shards'])
        print(f"CPU seconds, this process and all sandbox workers: {cpu.seconds:.1f} in total, {steady:.1f} while building "
              f"shards = {steady / n * 1000:.0f} ms per valid sample -> an otherwise idle {cores}-core machine would "
              f"reach about {cores * n / steady:.1f} valid samples/s in steady state")


if __name__ == '__main__': main()
