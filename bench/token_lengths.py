"""Code token lengths of generated programs under Qwen2's own tokenizer (built offline: `cadrecode_nb.tokenizer`).

    python bench/token_lengths.py --n 2000 --seed 0 --out lengths.json
    python bench/train_step.py --peer .bench_peer/naive_hf_step.py --lengths lengths.json --out train_step.json

Prints one JSON line: the summary (n, mean, median, p95, min, max of the code lengths, and of the sequence lengths
with 256 point slots + START + END). `--out` gets the lengths themselves as a JSON list, the form `train_step.py
--lengths FILE` and `long_programs.py --lengths FILE` read. Programs are text only (`random_programs`): nothing runs,
so unlike a dataset's programs they are not filtered by validity; `--tokenizer` measures another tokenizer (a folder,
or 'qwen2').
"""
import argparse, json, sys

from cadrecode_nb.core import atomic_write
from cadrecode_nb.dataset import load_tokenizer
from cadrecode_nb.programs import random_programs
from cadrecode_nb.tokenizer import code_token_lengths, length_summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=2000, help='programs to generate (default 2000)')
    ap.add_argument('--seed', type=int, default=0, help='seed of random_programs (default 0)')
    ap.add_argument('--tokenizer', default='qwen2', help="'qwen2' (default), a HF name or a tokenizer folder")
    ap.add_argument('--out', help='write the lengths here as a JSON list (bench/train_step.py --lengths input)')
    args = ap.parse_args(argv)
    if args.n < 1: ap.error('--n must be at least 1')
    lengths = code_token_lengths(random_programs(seed=args.seed, n=args.n), load_tokenizer(args.tokenizer))
    if args.out: atomic_write(args.out, json.dumps(lengths))
    print(json.dumps(length_summary(lengths)), flush=True)


if __name__ == '__main__': sys.exit(main())
