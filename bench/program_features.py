"""The structure of generated programs beside a sample of real CAD-Recode v1.5 training programs.

    python bench/program_features.py                      # 1,000 programs of each generator, seed 0, with the sandbox
    python bench/program_features.py --version 2 --n 200 --no-run --out table.json

Prints one row per feature: generator 1.0, generator 2.0 and the real v1.5 sample. The real column is a reference
hard-coded from the issue that asked for generator 2 (29 real programs held outside the repository), not a
measurement of this repository. Text features come from `program_features`; the share of parts made of separate
solids runs every program in the sandbox's strict mode (dataset validity) and counts the connected bodies of each
valid part's mesh, which also gives each generator's share of valid programs (about a minute per 1,000 on 2 cores).
"""
import argparse, json, time
from collections import Counter

from cadrecode_nb.programs import generator_version, random_programs
from cadrecode_nb.program_features import REAL_V15_SAMPLE, feature_summary


def measure(version: str, n: int, seed: int, run: bool, workers: int) -> dict:
    t = time.perf_counter()
    codes = random_programs(seed, n, version=version)
    out = dict(version=version, n=n, seed=seed, text_seconds=round(time.perf_counter() - t, 1))
    n_solids = None
    if run:
        from cadrecode_nb.sandbox import run_programs
        res = run_programs(codes, n_workers=workers, strict=True, tolerance=0.05, angular_tolerance=0.2)
        out['status'] = dict(Counter(r.status for r in res))
        out['valid_share'] = round(sum(r.ok for r in res) / n, 4)
        n_solids = [r.mesh().body_count for r in res if r.ok]
        codes = [c for c, r in zip(codes, res) if r.ok]   # features of the programs a dataset would keep
    out['features'] = feature_summary(codes, n_solids)
    return out


def table(columns: list[dict]) -> str:
    head = ['feature'] + [f"generator {c['version']}" for c in columns] + ['real v1.5 sample (reference)']
    rows = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for k, ref in REAL_V15_SAMPLE.items():
        rows.append('| ' + ' | '.join([k] + [str(c['features'][k]) for c in columns] + [str(ref)]) + ' |')
    return '\n'.join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--version', action='append', help="generator version(s) to measure, e.g. --version 2 (default: 1 and 2)")
    p.add_argument('--n', type=int, default=1000, help='programs per generator (default 1000)')
    p.add_argument('--seed', type=int, default=0, help='seed of random_programs (default 0)')
    p.add_argument('--no-run', action='store_true', help='text features only: skip the sandbox (no solids, no validity)')
    p.add_argument('--workers', type=int, default=2, help='sandbox workers (default 2)')
    p.add_argument('--out', help='also write the columns as JSON here')
    args = p.parse_args()
    columns = [measure(generator_version(v), args.n, args.seed, not args.no_run, args.workers) for v in (args.version or ['1', '2'])]
    for c in columns:
        print(f"generator {c['version']}: {c['n']} programs (seed {c['seed']}), text in {c['text_seconds']} s"
              + (f"; sandbox {c['status']}, valid {c['valid_share']:.1%} (features of the valid ones)" if 'status' in c else ''))
    print(table(columns))
    if args.out:
        with open(args.out, 'w') as f: json.dump(dict(columns=columns, real=REAL_V15_SAMPLE), f, indent=1)


if __name__ == '__main__': main()
