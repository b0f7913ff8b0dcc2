"""A copy of a dataset whose programs have the paper's token lengths, to time the trainer at those lengths.

    python bench/long_programs.py data/small data/long --lengths uniform:120:700 --shards 5
    bash bench/scaling.sh data/long OUT 2 40 weak

The procedural programs are short (about 120 code tokens), the paper's 120-700. The speed of a training step depends
on how many tokens it holds, not on what they say, so sample i of the copy keeps sample i's point cloud and joins
programs i, i+1, ... (one per line block) until it reaches a length drawn as `bench/train_step.py` draws them
(`--lengths`), counted with the dataset's own tokenizer. The copy is for timing only: its programs do not describe its
point clouds. It is written in the dataset format (`cadrecode_nb.dataset`), with its own manifest and checksums, and
says in its manifest what it is.
"""
import argparse, hashlib, io, json, sys
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from train_step import length_pool   # noqa: E402
from cadrecode_nb.core import atomic_write, atomic_writer   # noqa: E402
from cadrecode_nb.dataset import load_tokenizer, read_manifest, _read_shard, _shard_codes, _write_npz   # noqa: E402


def joined_programs(codes:list[str], n_tokens:list[int], targets:list[int]) -> list[str]:
    "For each i: programs i, i+1, ... (cyclically) joined by newlines, as many as bring the token count nearest targets[i]."
    out = []
    for i, target in enumerate(targets):
        parts, total, j = [codes[i]], n_tokens[i], i + 1
        while total < target:
            more = n_tokens[j % len(codes)] + 1
            if total + more - target > target - total: break   # the next program would overshoot more than we fall short
            parts.append(codes[j % len(codes)]); total += more; j += 1
        out.append('\n'.join(parts))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('src'); ap.add_argument('dst')
    ap.add_argument('--lengths', default='uniform:120:700'); ap.add_argument('--shards', type=int, default=5)
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args()
    src, dst = Path(args.src), Path(args.dst)
    manifest, tok = read_manifest(src), load_tokenizer(src/'tokenizer')
    pool = iter(length_pool(args.lengths, args.seed) * 100)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ('tokenizer', 'tokenizer.json', 'tokenizer_config.json'):
        if (src/name).is_dir():
            (dst/name).mkdir(exist_ok=True)
            for f in (src/name).iterdir(): (dst/name/f.name).write_bytes(f.read_bytes())
        elif (src/name).exists(): (dst/name).write_bytes((src/name).read_bytes())
    entries, counts, lengths = [], dict(train=0, val=0, test=0), []
    for entry in manifest['shards'][:args.shards]:
        arrays = _read_shard(src/entry['file'])
        codes = _shard_codes(arrays)
        n_tokens = [len(x) for x in tok(codes, add_special_tokens=False)['input_ids']]
        new = joined_programs(codes, n_tokens, [next(pool) for _ in codes])
        lengths += [len(x) for x in tok(new, add_special_tokens=False)['input_ids']]
        blob = [c.encode() for c in new]
        arrays['code_bytes'] = np.frombuffer(b''.join(blob), np.uint8)
        arrays['code_offsets'] = np.concatenate([[0], np.cumsum([len(b) for b in blob])]).astype(np.int64)
        arrays['meta'] = np.frombuffer(json.dumps(dict(arrays['meta'], derived=f'{src} with joined programs')).encode(), np.uint8)
        path = dst/entry['file']
        with atomic_writer(path) as f: _write_npz(f, arrays)
        for k, s in zip(('train', 'val', 'test'), range(3)): counts[k] += int((arrays['split'] == s).sum())
        entries.append(dict(entry, bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    out = dict(manifest, shards=entries, counts=counts, n_samples=sum(counts.values()),
               derived=f"for timing only: {src}'s first {len(entries)} shards, programs joined to {args.lengths} tokens "
                       f"(bench/long_programs.py); the programs do not describe the point clouds")
    atomic_write(dst/'manifest.json', json.dumps(out, indent=1) + '\n')
    print(json.dumps(dict(samples=len(lengths), code_tokens_mean=round(float(np.mean(lengths)), 1),
                          min=int(min(lengths)), max=int(max(lengths)))))

if __name__ == '__main__': main()
