"""Throughput of the score step: validation (sandbox) + metrics of generated programs, per second, on this machine.

Stand-in "predictions" are the kit's generator programs with one number changed (`perturb_program`), scored against
the unchanged programs as ground truth, i.e. programs like the dataset's. The input clouds are prepared first (not
timed); then `score_generations` runs exactly as `cadrecode_eval score` does, ground-truth execution included.

    python bench/eval_throughput.py                  # 120 items x 1 candidate, all cores
    python bench/eval_throughput.py --n 60 --k 4     # 60 items x 4 candidates
    python bench/eval_throughput.py --layers all,none --rounds 3   # the sandbox layers' cost: alternating pools
Runs the score step twice: cold (ground-truth programs executed as well) and warm (ground truths from `gt_cache`).
Reports wall-clock programs/s, and CPU seconds per program (workers + parent), which gives the rate on an otherwise
idle machine when other jobs share the cores. Target: >= 5 programs/s on 2 cores.
"""
import argparse, os, tempfile, time
from pathlib import Path

import numpy as np

from cadrecode_nb.eval import perturb_program, score_generations, write_jsonl
from cadrecode_nb.metrics import normalize_target, sample_surface
from cadrecode_nb.sandbox import RUNTIME_LAYERS, CadWorkerPool


REF = [  # the two REFERENCE.md example programs
    "import cadquery as cq\nw0=cq.Workplane('XY',origin=(0,0,-40))\nw1=cq.Workplane('ZX',origin=(0,12,0))\n"
    "r=w0.sketch().push([(-30,10)]).rect(80,60).push([(20,-15)]).circle(25,mode='s').finalize().extrude(80)"
    ".union(w1.sketch().segment((-60,-20),(40,-20)).arc((55,0),(40,20)).segment((-60,20)).close().assemble()"
    ".finalize().extrude(-24))",
    "import cadquery as cq\nw0=cq.Workplane('XY',origin=(0,0,30))\nr=w0.sketch().segment((-90,-60),(70,-60))"
    ".arc((90,-40),(70,-20)).segment((-90,-20)).close().assemble().push([(-50,40)]).circle(30).finalize()"
    ".extrude(-60).union(w0.workplane(offset=-10/2).moveTo(40,45).cylinder(10,35))"]


def ground_truth_programs(n, seed):
    "The kit's generator programs (REFERENCE examples, perturbed, when the generator is not exported yet)"
    try:
        from cadrecode_nb.programs import random_programs
        return random_programs(seed, n), 'cadrecode_nb.programs.random_programs'
    except ImportError:
        rng = np.random.default_rng(seed)
        return [perturb_program(REF[i % 2], rng, 3) for i in range(n)], 'REFERENCE examples, perturbed'


def _cpu_seconds(pids):
    "user+system CPU seconds of live processes, from /proc (the sandbox workers are long-lived children)"
    tick, total = os.sysconf('SC_CLK_TCK'), 0.
    for pid in pids:
        try: fields = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
        except OSError: continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def timed_score(tmp, pool, a, cache, out):
    "Wall time and CPU time (parent + workers) of one score step"
    pids = [w.proc.pid for w in pool.workers]
    w0, p0, t0 = _cpu_seconds(pids), time.process_time(), time.time()
    rep = score_generations(tmp, out_dir=tmp / out, normalization=a.normalization, plots=False, pool=pool, gt_cache=cache)
    dt = time.time() - t0
    if [w.proc.pid for w in pool.workers] != pids: print('  (a worker was replaced: its CPU time is not counted)')
    return rep, dt, time.process_time() - p0, _cpu_seconds(pids) - w0


def prepare(tmp, pool, codes, a):
    "Untimed: the stand-in generations and the input clouds a model would have seen; the number of predicted programs"
    rng = np.random.default_rng(a.seed)
    rows, ids, pts = [], [], []
    for i, (code, res) in enumerate(zip(codes, pool.map(codes))):
        if not res.ok: continue
        rows.append(dict(id=f'b{i}', programs=[perturb_program(code, rng) for _ in range(a.k)], gt_program=code))
        ids.append(f'b{i}'); pts.append(2 * sample_surface(normalize_target(res.mesh()), 256, seed=i) - 1)
    write_jsonl(tmp / 'generations.jsonl', rows)
    np.savez(tmp / 'inputs.npz', ids=np.array(ids), points=np.stack(pts).astype(np.float32))
    return sum(len(r['programs']) for r in rows)


LAYER_SETS = {'all': RUNTIME_LAYERS, 'none': ()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=120, help='ground-truth items')
    ap.add_argument('--k', type=int, default=1, help='candidates per item')
    ap.add_argument('--workers', type=int, default=None, help='sandbox workers (default: all cores)')
    ap.add_argument('--seed', type=int, default=7)
    ap.add_argument('--normalization', default='bbox')
    ap.add_argument('--layers', default='all', help="comma-separated runtime layer sets to time, alternating: "
                    "'all' (the default sandbox), 'none' (no runtime layer), or layer names joined by '+'")
    ap.add_argument('--rounds', type=int, default=1, help='rounds over the layer sets (medians are reported)')
    a = ap.parse_args()
    sets = {name: LAYER_SETS.get(name, tuple(name.split('+'))) for name in a.layers.split(',')}
    codes, source = ground_truth_programs(a.n, a.seed)
    cores, rates = os.cpu_count(), {(name, out): [] for name in sets for out in ('cold', 'warm')}
    with tempfile.TemporaryDirectory(prefix='eval_bench_') as tmp:
        tmp = Path(tmp)
        for rnd in range(a.rounds):
            for name, layers in sets.items():
                with CadWorkerPool(n_workers=a.workers, strict=False, layers=layers) as pool:
                    n_pred = prepare(tmp, pool, codes, a)
                    print(f'round {rnd + 1}, layers {name} ({"+".join(layers) or "none"}): ground truth {source}; '
                          f'{n_pred // a.k} items x {a.k} candidates = {n_pred} predicted programs; '
                          f'{pool.n_workers} workers on {cores} cores')
                    for label, out in (('cold (ground truths executed too)', 'cold'), ('warm (ground truths cached)', 'warm')):
                        load0 = os.getloadavg()[0]
                        cache = tmp / f'gt_cache_{name}_{rnd}'
                        rep, dt, cpu_parent, cpu_workers = timed_score(tmp, pool, a, cache, f'{out}_{name}_{rnd}')
                        cpu = cpu_parent + cpu_workers
                        rates[name, out].append((n_pred / dt, 1000 * cpu / n_pred))
                        print(f'  {label}: {dt:.1f} s wall -> {n_pred / dt:.2f} predicted programs/s; '
                              f'{rep.timings["n_executed"]} programs executed; CPU {cpu:.1f} s (workers {cpu_workers:.1f}, '
                              f'parent {cpu_parent:.1f}) = {1000 * cpu / n_pred:.0f} ms/program -> {cores * n_pred / cpu:.2f} '
                              f'programs/s if the {cores} cores were ours; load average {load0:.2f} -> {os.getloadavg()[0]:.2f}')
    valid = sum(c['cd'] is not None for r in rep.records for c in r['candidates'])
    print(f'{valid}/{n_pred} predictions valid; time split of the last run (s): {rep.timings}')
    print(rep.table(test_set='bench stand-ins', published=False))
    print('medians over rounds:')
    for (name, out), vals in rates.items():
        print(f'  layers {name:5} {out}: {np.median([v[0] for v in vals]):.2f} programs/s wall, '
              f'{np.median([v[1] for v in vals]):.1f} ms CPU per program')


if __name__ == '__main__':
    main()
