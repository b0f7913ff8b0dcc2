"""Tests of the point-cloud / dataset / token half of the data stage (`cadrecode_nb.points`, `cadrecode_nb.dataset`).

Fast tests (no CadQuery): furthest point sampling against a brute-force reference, point clouds, mesh files and their
errors, the offline tokenizer, the collator's layout, a shard's counting with a stand-in pool, the split shares, the
`cadrecode_data` help and progress labels. Slower tests (the real sandbox, a few pool starts): the dataset on disk,
resumed after an interruption and after damage, byte for byte; rejections counted by reason; the command's expected
failures, each in one or two lines with exit status 2, and a corrupt shard rebuilt with a one-line warning.
"""
import json, os, re, shutil, warnings
from pathlib import Path

import numpy as np, pytest, torch, trimesh, yaml
from fastcore.docments import docments

from cadrecode_nb.programs import random_programs
from cadrecode_nb.program_features import canonical_program
from cadrecode_nb.core import START_TOKEN, END_TOKEN, N_POINTS, ConfigError, stable_hash64
from cadrecode_nb.programs import *
from cadrecode_nb.points import *
from cadrecode_nb.dataset import *
from cadrecode_nb.dataset import _chunk_seed, _read_shard, _shard_codes, _data_parser, _shard_progress


# ---------------------------------------------------------------- furthest point sampling

def fps_reference(points: np.ndarray, k: int, start: int) -> np.ndarray:
    "Textbook FPS on one (N,3) cloud, recomputing every distance: O(k^2 N)."
    picked = [start]
    for _ in range(k - 1):
        d = ((points[:, None] - points[picked][None]) ** 2).sum(-1).min(1)
        picked.append(int(d.argmax()))
    return np.array(picked)


@pytest.mark.parametrize('seed', range(6))
def test_fps_matches_bruteforce(seed):
    rng = np.random.default_rng(seed)
    B, N = 3, int(rng.integers(20, 400))
    k = int(rng.integers(2, min(N, 64)))
    pts = rng.normal(size=(B, N, 3)) * rng.uniform(0.1, 10, size=3)   # anisotropic clouds
    start = torch.from_numpy(rng.integers(0, N, B))
    idx = furthest_point_sample(torch.from_numpy(pts), k, start=start)
    assert idx.shape == (B, k) and idx.dtype == torch.int64
    for b in range(B): assert idx[b].tolist() == fps_reference(pts[b], k, int(start[b])).tolist()


def test_fps_start_and_generator():
    pts = torch.rand(4, 500, 3)
    assert (furthest_point_sample(pts, 10)[:, 0] == 0).all()              # fixed start, as pytorch3d's default
    a = furthest_point_sample(pts, 10, torch.Generator().manual_seed(1))
    b = furthest_point_sample(pts, 10, torch.Generator().manual_seed(1))
    c = furthest_point_sample(pts, 10, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    for row in range(4):                                                   # any start: same algorithm
        assert a[row].tolist() == fps_reference(pts[row].double().numpy(), 10, int(a[row, 0])).tolist()
    with pytest.raises(ValueError, match='must be \\(B, N, 3\\)'): furthest_point_sample(torch.rand(500, 3), 4)


def test_fps_duplicate_points_picks_each_location_once():
    distinct = torch.rand(1, 12, 3)
    pts = distinct.repeat(1, 5, 1)                                         # every point 5 times
    idx = furthest_point_sample(pts, 12)[0]
    assert len({tuple(p) for p in pts[0, idx].tolist()}) == 12


def test_fps_covers_better_than_random():
    mesh = normalize_mesh(trimesh.creation.annulus(r_min=2, r_max=5, height=1))
    cloud = trimesh.sample.sample_surface(mesh, 4096, seed=0)[0]
    def radius(kept): return np.sqrt(((cloud[:, None] - kept[None]) ** 2).sum(-1).min(1).max())
    fps = cloud[furthest_point_sample(torch.from_numpy(cloud)[None], 256)[0].numpy()]
    rand = [radius(cloud[np.random.default_rng(s).choice(4096, 256, replace=False)]) for s in range(5)]
    assert radius(fps) < 0.6 * min(rand)


# ---------------------------------------------------------------- point clouds and mesh files

def test_sample_point_cloud():
    mesh = trimesh.creation.box((40, 10, 20)); mesh.apply_translation((50, 50, -50))
    pc = sample_point_cloud(mesh, seed=3)
    assert pc.shape == (256, 3) and pc.dtype == np.float32
    assert np.abs(pc).max() <= 1 + 1e-6
    assert np.isclose(pc[:, 0].min(), -1, atol=0.02) and np.isclose(pc[:, 0].max(), 1, atol=0.02)   # longest side
    assert np.abs(pc[:, 1]).max() <= 0.25 + 1e-6                            # proportions kept (10/40)
    assert np.array_equal(pc, sample_point_cloud(mesh, seed=3)) and not np.array_equal(pc, sample_point_cloud(mesh, seed=4))
    with pytest.raises(ValueError, match='exceeds n_surface'): sample_point_cloud(mesh, n_surface=100, n_points=256)


def test_sample_point_cloud_is_fps_of_the_surface_samples():
    """The cloud is the brute-force FPS (from the first sample) of trimesh's seeded surface samples of the mesh normalised
    by hand; an L-shaped part, so a centre other than the bounding box's (e.g. the vertex mean) would show."""
    arm = trimesh.creation.box((10, 30, 20)); arm.apply_translation((15, 20, 0))
    mesh = trimesh.util.concatenate([trimesh.creation.box((40, 10, 20)), arm]); mesh.apply_translation((50, 50, -50))
    lo, hi = mesh.bounds
    unit = trimesh.Trimesh((mesh.vertices - (lo + hi) / 2) * (2 / (hi - lo).max()), mesh.faces, process=False)
    surface = trimesh.sample.sample_surface(unit, 2000, seed=4)[0].astype(np.float32)
    expect = surface[fps_reference(surface.astype(np.float64), 64, 0)]
    pc = sample_point_cloud(mesh, n_surface=2000, n_points=64, seed=4)
    np.testing.assert_allclose(pc, expect, atol=1e-6)
    def radius(kept): return np.sqrt(((surface[:, None] - kept[None]) ** 2).sum(-1).min(1).max())
    assert radius(pc) < 0.75 * radius(surface[:64])                        # FPS covers; the first 64 samples do not


@pytest.mark.parametrize('suffix', ['stl', 'obj', 'ply'])
def test_load_mesh_formats(tmp_path, suffix):
    box = trimesh.creation.box((1, 2, 3))
    box.export(tmp_path / f'part.{suffix}')
    mesh = load_mesh(tmp_path / f'part.{suffix}')
    assert np.isclose(mesh.area, box.area) and np.isclose(mesh.volume, 6)
    clouds = point_clouds_from_folder(tmp_path)
    assert list(clouds) == [f'part.{suffix}'] and clouds[f'part.{suffix}'].shape == (256, 3)


BAD_FILES = {
    'empty.stl': (b'', 'empty file'),
    'text.ply': (b'hello, not a mesh\n', 'text.ply'),
    'noise.stl': (bytes(np.random.default_rng(0).integers(0, 256, 333, dtype=np.uint8)), 'noise.stl'),
    'flat.obj': (b'v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n', 'no surface area'),
    'nan.obj': (b'v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n', 'NaN/inf'),
    'inf.obj': (b'v 0 0 0\nv 1 0 0\nv 0 inf 0\nf 1 2 3\n', 'NaN/inf'),
    'points.obj': (b'v 0 0 0\nv 1 0 0\nv 0 1 0\n', 'no triangles'),
}

@pytest.mark.parametrize('name', sorted(BAD_FILES))
def test_load_mesh_errors_name_the_file(tmp_path, name):
    data, reason = BAD_FILES[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError) as e: load_mesh(tmp_path / name)
    assert name in str(e.value) and reason in str(e.value)


def test_folder_raise_or_skip(tmp_path):
    trimesh.creation.box((1, 1, 1)).export(tmp_path / 'b.stl')
    trimesh.creation.cylinder(1, 1).export(tmp_path / 'a.obj')
    (tmp_path / 'c.ply').write_bytes(b'')
    (tmp_path / 'readme.txt').write_text('ignored: not a mesh suffix')
    with pytest.raises(ValueError, match='c.ply: empty file'): point_clouds_from_folder(tmp_path)
    with pytest.warns(UserWarning, match='c.ply'): clouds = point_clouds_from_folder(tmp_path, on_error='skip')
    assert list(clouds) == ['a.obj', 'b.stl']
    with pytest.raises(FileNotFoundError): load_mesh(tmp_path / 'missing.stl')


def test_noise_and_quantisation():
    pts = torch.zeros(4000, 8, 3)
    noisy = add_point_noise(pts, 0.5, 0.01, torch.Generator().manual_seed(0))
    hit = noisy.abs().amax((1, 2)) > 0
    assert abs(hit.float().mean() - 0.5) < 0.03 and abs(noisy[hit].std() - 0.01) < 5e-4
    assert torch.equal(noisy, add_point_noise(pts, 0.5, 0.01, torch.Generator().manual_seed(0)))
    rare = add_point_noise(pts, 0.2, 0.01, torch.Generator().manual_seed(1)).abs().amax((1, 2)) > 0
    assert abs(rare.float().mean() - 0.2) < 0.03                            # p is the share that gets noise (not 1 - p)
    x = np.random.default_rng(0).uniform(-1, 1, (1000, 3)).astype(np.float32)
    assert np.abs(dequantize_points(quantize_points(x)) - x).max() <= 1 / 255 + 1e-6


# ---------------------------------------------------------------- tokens and batches

@pytest.fixture(scope='module')
def code_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp('tok')
    train_code_tokenizer(random_programs(11, 1500), vocab_size=1024, path=path)
    return load_tokenizer(path)


def test_tokenizer_round_trip(code_tokenizer):
    tok = code_tokenizer
    programs = random_programs(12, 500) + ["import cadquery as cq\nr=cq.Workplane('XY').box(1,2,3) # ünïcödé ✓\n\n  "]
    ids = tok(programs, add_special_tokens=False)['input_ids']
    assert [tok.decode(i) for i in ids] == programs
    assert tok.pad_token == END_TOKEN and tok.convert_tokens_to_ids(START_TOKEN) != tok.unk_token_id
    assert max(map(len, ids)) < 768                                        # the demo's max_new_tokens


def test_tokenizer_training_is_deterministic(tmp_path):
    codes = random_programs(13, 300)
    train_code_tokenizer(codes, 512, tmp_path / 'a'); train_code_tokenizer(codes, 512, tmp_path / 'b')
    assert (tmp_path / 'a' / 'tokenizer.json').read_bytes() == (tmp_path / 'b' / 'tokenizer.json').read_bytes()


def test_load_tokenizer_needs_special_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    t = Tokenizer(models.BPE()); t.pre_tokenizer = pre_tokenizers.ByteLevel()
    t.add_special_tokens([END_TOKEN])
    PreTrainedTokenizerFast(tokenizer_object=t, eos_token=END_TOKEN).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) \['<\|im_start\|>'\]"): load_tokenizer(tmp_path)


def test_collator_layout(code_tokenizer):
    tok = code_tokenizer
    items = [dict(points=torch.full((256, 3), 0.5), code='r=w0.box(10,20,30)', index=7),
             dict(points=np.zeros((256, 3), np.float32), code='r=1', index=8)]
    t0, t1 = (tok(it['code'], add_special_tokens=False)['input_ids'] for it in items)
    S, E = tok.convert_tokens_to_ids(START_TOKEN), tok.convert_tokens_to_ids(END_TOKEN)
    b = PointCodeCollator(tok)(items)
    L = 256 + 2 + len(t0); pad = L - (258 + len(t1))
    assert {k: tuple(v.shape) for k, v in b.items()} == dict(input_ids=(2, L), attention_mask=(2, L), labels=(2, L), points=(2, 256, 3))
    assert all(v.dtype == torch.long for k, v in b.items() if k != 'points') and b['points'].dtype == torch.float32
    assert b['input_ids'].tolist() == [[E] * 256 + [S] + t0 + [E], [E] * 256 + [S] + t1 + [E] + [E] * pad]
    assert b['labels'].tolist() == [[-100] * 257 + t0 + [E], [-100] * 257 + t1 + [E] + [-100] * pad]
    assert b['attention_mask'].tolist() == [[1] * L, [1] * (258 + len(t1)) + [0] * pad]
    assert torch.equal(b['points'][0], torch.full((256, 3), 0.5))
    with pytest.raises(ValueError, match=f'item 7: program has {len(t0)} tokens'): PointCodeCollator(tok, max_code_tokens=len(t1))(items)
    with pytest.raises(ValueError, match='points must be'): PointCodeCollator(tok, n_points=128)(items)
    g = lambda: torch.Generator().manual_seed(5)
    n1, n2 = PointCodeCollator(tok, noise_p=1.0, generator=g())(items), PointCodeCollator(tok, noise_p=1.0, generator=g())(items)
    assert torch.equal(n1['points'], n2['points']) and not torch.equal(n1['points'], b['points'])


# ---------------------------------------------------------------- shards without the sandbox

class BoxPool:
    "Stands in for CadWorkerPool: `box(a,b,c)` programs are valid parts, equal when their sorted sides are; slices of 2."
    n_workers = 1
    def __init__(self): self.runs = []
    def map(self, codes):
        self.runs.append(list(codes))
        return [self.run(c) for c in codes]
    def run(self, code):
        from cadrecode_nb.sandbox import ProgramResult
        m = re.search(r'box\((\d+), *(\d+), *(\d+)\)', code)
        if m is None: return ProgramResult('syntax', 'not a box')
        return ProgramResult('ok', extra=dict(points=np.zeros((256, 3), np.uint8),
                                              geometry_hash=stable_hash64(str(sorted(map(int, m.groups()))))))


def test_shard_counts_in_program_order_and_stops_when_full():
    from cadrecode_nb.dataset import _build_shard
    stream = ['r=box(1,2,3)', 'r=box(1, 2, 3)', 'r=box(3,2,1)', 'r=sphere(1)', 'r=box(4,5,6)', 'r=box(7,8,9)', 'r=box(9,9,9)']
    progs, geos, pool = set(), set(), BoxPool()
    arrays = _build_shard(0, 3, DataConfig(), pool, progs, geos, lambda seed, n: stream)
    meta = json.loads(arrays['meta'].tobytes())
    assert _shard_codes(arrays) == ['r=box(1,2,3)', 'r=box(4,5,6)', 'r=box(7,8,9)']
    assert meta['rejections'] == dict(duplicate_geometry=1, duplicate_program=1, syntax=1) and meta['attempted'] == 6
    assert len(progs) == 5 and len(geos) == 3                                 # box(9,9,9) ran but was not taken: not seen
    assert sum(map(len, pool.runs)) == 6                                       # each distinct program run once
    with pytest.raises(DatasetError, match='10 chunks of programs in a row gave no new valid sample'):
        _build_shard(1, 3, DataConfig(), BoxPool(), progs, geos, lambda seed, n: stream)


def test_split_shares_follow_the_fractions():
    from cadrecode_nb.dataset import _split_of
    shares = np.bincount([_split_of(stable_hash64(str(i)), 0.1, 0.2) for i in range(20_000)], minlength=3) / 20_000
    assert np.allclose(shares, [0.7, 0.1, 0.2], atol=0.01), shares            # train, val, test

# ---------------------------------------------------------------- the dataset on disk (real sandbox)

SMALL = dict(n_samples=30, shard_size=10, vocab_size=300)

def folder_bytes(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    "An uninterrupted run: 30 samples in 3 shards."
    d = tmp_path_factory.mktemp('reference')
    manifest = write_dataset(d, 'tiny', progress=False, **SMALL)
    return d, manifest


def test_dataset_contents(reference):
    d, m = reference
    assert m['n_samples'] == 30 and [s['n_samples'] for s in m['shards']] == [10, 10, 10]
    assert m['attempted'] == 30 + sum(m['rejections'].values()) and m['generator_version']
    assert json.loads((d / 'manifest.json').read_text()) == m
    sets = {s: CADRecodeDataset(d, s) for s in ('train', 'val', 'test')}
    assert {s: len(v) for s, v in sets.items()} == m['counts']
    codes = [c for v in sets.values() for c in v.codes]
    assert len({canonical_program(c) for c in codes}) == 30               # no duplicate program, across splits
    keys = np.concatenate([_read_shard(d / s['file'])['geometry_hash'] for s in m['shards']])
    assert len(set(keys.tolist())) == 30                                     # no duplicate geometry
    item = sets['train'][0]
    assert item['points'].shape == (256, 3) and item['points'].dtype == torch.float32 and item['points'].abs().max() <= 1
    assert item['points'].abs().max() > 0.9                                  # normalised: the longest side spans [-1, 1]
    assert load_tokenizer(d / 'tokenizer').decode(load_tokenizer(d / 'tokenizer')(item['code'])['input_ids']) == item['code']


class Interrupted(Exception): pass

def test_resume_after_interruption_is_byte_identical(reference, tmp_path):
    ref_dir, _ = reference
    d = tmp_path / 'ds'
    def source(seed, n):   # dies when shard 2 asks for its first programs
        if seed == _chunk_seed(0, 2, 0): raise Interrupted()
        return random_programs(seed, n)
    with pytest.raises(Interrupted): write_dataset(d, 'tiny', progress=False, program_source=source, **SMALL)
    assert sorted(p.name for p in d.iterdir()) == ['shard_00000.npz', 'shard_00001.npz']   # finished shards only
    write_dataset(d, 'tiny', progress=False, **SMALL)
    assert folder_bytes(d) == folder_bytes(ref_dir)

    # damage: last shard deleted, a flipped byte inside the first one, a stale temp file, no manifest
    (d / 'shard_00002.npz').unlink(); (d / 'manifest.json').unlink()
    raw = bytearray((d / 'shard_00000.npz').read_bytes()); raw[len(raw) // 2] ^= 0xFF
    (d / 'shard_00000.npz').write_bytes(bytes(raw))
    (d / 'shard_00001.npz.abc.tmp').write_bytes(b'half')                   # an older version's temporary file
    (d / '.shard_00001.npz.x1y2.partial').write_bytes(b'half')             # core.atomic_writer's
    with pytest.raises(DatasetError, match='shard_00000.npz is missing or does not match'): _check_damaged(d, ref_dir)
    with pytest.warns(UserWarning, match='shard_00000.npz: unreadable shard'):
        write_dataset(d, 'tiny', progress=False, **SMALL)
    assert folder_bytes(d) == folder_bytes(ref_dir)

    timings = {}
    write_dataset(d, 'tiny', progress=False, timings=timings, **SMALL)         # complete: no pool, no CadQuery
    assert timings['pool_start'] == 0 and timings['shards'] == 0


def _check_damaged(d, ref_dir):
    "A dataset whose shard no longer matches the manifest checksum is refused by name."
    (d / 'manifest.json').write_bytes((ref_dir / 'manifest.json').read_bytes())
    try: CADRecodeDataset(d, 'train')
    finally: (d / 'manifest.json').unlink()


def test_config_mismatch_and_cli(reference, tmp_path, capsys):
    d, m = reference
    with pytest.raises(DatasetError, match=r"holds another dataset: shard_00000.npz was written with a different config "
                                           r"\(differs in \['n_points'\]: n_points=256 there, 128 asked\)"):
        write_dataset(d, 'tiny', progress=False, n_points=128, **SMALL)
    assert m['generator_version'] == '2.0'
    with pytest.raises(ConfigError, match=r"was written by generator 2.0, and this config asks for generator 1.0: set generator=2"):
        write_dataset(d, 'tiny', progress=False, generator='1', **SMALL)
    cfg = tmp_path / 'small.yaml'
    cfg.write_text(DataConfig.load('tiny', SMALL).to_yaml())
    main(['--config', str(cfg), '--out', str(d), '--no-progress'])
    assert capsys.readouterr().out.strip() == f"{d}: {manifest_summary(m)}"
    cfg.write_text('n_sampels: 3\n')
    with pytest.raises(ConfigError, match=r"small.yaml: unknown key 'n_sampels' \(did you mean 'n_samples'\?\)"): DataConfig.from_yaml(cfg)
    with pytest.raises(SystemExit) as e: main(['--config', str(cfg)])
    assert e.value.code == 2 and "unknown key 'n_sampels'" in capsys.readouterr().err



def cli(capsys, *argv) -> tuple[int, str, str]:
    "`cadrecode_data ARGV` as a shell runs it: (exit status, stdout, stderr)."
    try: main([str(a) for a in argv]); status = 0
    except SystemExit as e: status = e.code
    out = capsys.readouterr()
    return status, out.out, out.err


def test_cli_expected_failures_end_in_one_line(reference, tmp_path, capsys):
    "Each expected failure: status 2, nothing on stdout, at most two lines on stderr that name the culprit, no traceback."
    d, _ = reference
    cfg = tmp_path / 'same.yaml'; cfg.write_text(DataConfig.load('tiny', SMALL).to_yaml())
    cases = {("named 'huge'", "choose one of ['small', 'tiny']"): ['--preset', 'huge'],
             ("'--n-sampels' (did you mean '--n-samples'?)", '--help'): ['--n-sampels', '3'],
             ("'n_sampels' (did you mean 'n_samples'?)",): ['--set', 'n_sampels=3'],
             ("'data/small'", 'after --out'): ['data/small'],
             ('argument --out: expected one argument',): ['--out'],
             ("config key 'workers' = 0",): ['--workers', '0'],
             (f"{cfg}/data is not writable", 'choose another'): ['--out', cfg / 'data', '--no-progress'],
             (f"{d} holds another dataset", "differs in ['seed']", 'delete'): ['--config', cfg, '--out', d, '--seed', 1, '--no-progress']}
    for culprits, argv in cases.items():
        status, out, err = cli(capsys, *argv)
        assert status == 2 and out == '' and err.startswith('cadrecode_data: error: '), (argv, out, err)
        assert len(err.splitlines()) <= 2 and 'Traceback' not in err and all(c in err for c in culprits), (argv, err)


def test_cli_help_lists_every_field_and_the_presets(capsys):
    status, out, _ = cli(capsys, '--help')
    flat = ' '.join(out.split())
    helps = {k: v for k, v in docments(DataConfig).items() if k in DataConfig.keys()}
    assert status == 0 and set(helps) == set(DataConfig.keys())
    for k, why in helps.items():   # the option, a real explanation and the default
        assert len(why.split()) >= 5 and f"--{k.replace('_', '-')}" in flat, k
        assert f"{' '.join(why.split())} (default: {getattr(DataConfig(), k)!r})" in flat, k
    assert re.search(r'\n  small +50,000 samples', out) and re.search(r'\n  tiny +300 samples', out)
    # the README's commands
    assert cli(capsys, '--preset', 'small', '--n-samples', '3000', '--print-config')[1].startswith('n_samples: 3000\n')


def test_cli_rebuilds_a_corrupt_shard_with_a_one_line_warning(reference, tmp_path, capsys):
    ref_dir, m = reference
    d = tmp_path / 'copy'; shutil.copytree(ref_dir, d)
    raw = bytearray((d / 'shard_00001.npz').read_bytes()); raw[len(raw) // 3] ^= 0xFF
    (d / 'shard_00001.npz').write_bytes(bytes(raw))
    cfg = tmp_path / 'same.yaml'; cfg.write_text(DataConfig.load('tiny', SMALL).to_yaml())
    status, out, err = cli(capsys, '--config', cfg, '--out', d, '--no-progress')
    assert status == 0 and out.strip() == f"{d}: {manifest_summary(m)}"
    assert re.fullmatch(r"cadrecode_data: warning: \S+/shard_00001\.npz: unreadable shard \(.*\); rebuilding it\n", err), err
    assert folder_bytes(d) == folder_bytes(ref_dir)


def test_progress_bars_say_what_they_count():
    from fastprogress.fastprogress import master_bar
    bar = master_bar(range(15))
    update = _shard_progress(bar, 2, 15, 100); update(40)
    assert (bar.child.prefix, bar.child.comment, bar.main_bar.comment) == ('shard 3/15', 'samples kept', 'shards')
    assert bar.child.last_v == 40 and bar.child.total == 100

BOX = "import cadquery as cq\nr=cq.Workplane('XY').box({},{},{})\n"
HOSTILE = ["import cadquery as cq\nn = 10 ** 10 ** 8\n",                       # computes for minutes -> timeout
           "import cadquery as cq\nx=' '*(10**10)\nr=x\n",                   # 10 GB -> memory
           "r=((\n",                                                         # syntax
           "import cadquery as cq\nr=1/0\n",                                 # runtime
           "import cadquery as cq\nr=cq.Workplane('XY').box(1,1,1).union(cq.Workplane('XY').moveTo(1,1).box(1,1,1))\n"]  # 2 solids sharing an edge

def test_rejections_are_counted_and_the_shard_completes(tmp_path):
    boxes = [BOX.format(10 + i, 20 + 3 * i, 7) for i in range(12)]
    stream = (boxes[:2] + HOSTILE[:2]
              + ["import cadquery as cq\nr = cq.Workplane('XY').box(10, 20, 7)\n",   # same program as boxes[0], respaced
                 BOX.format(20, 40, 14),                                           # boxes[0] scaled: same geometry
                 "import cadquery as cq\nr=cq.Workplane('XY',origin=(5,5,5)).box(10,20,7)\n"]   # moved: same geometry
              + HOSTILE[2:] + boxes[2:])
    def source(seed, n): return stream if seed == _chunk_seed(0, 0, 0) else pytest.fail('needed a second chunk')
    m = write_dataset(tmp_path, 'tiny', progress=False, program_source=source, n_samples=12, shard_size=12,
                      timeout=1.0, vocab_size=300)
    assert m['rejections'] == dict(duplicate_geometry=2, duplicate_program=1, invalid_solid=1, memory=1, runtime=1,
                                   syntax=1, timeout=1)
    assert m['n_samples'] == 12 and m['attempted'] == 12 + 8
    codes = _shard_codes(_read_shard(tmp_path / 'shard_00000.npz'))
    assert codes == boxes                                                    # kept in program order, nothing else


def test_validity_follows_the_generator(tmp_path):
    "Generator 2.0 datasets keep parts of separate bodies; generator 1.0 datasets keep their one-solid rule (they rebuild as written)."
    apart = "import cadquery as cq\nr=cq.Workplane('XY').box(4,4,4).union(cq.Workplane('XY').moveTo({},0).box(4,4,4))\n"
    stream = [apart.format(10 + i) for i in range(3)] + [BOX.format(10 + i, 5, 5) for i in range(3)]
    def source(seed, n): return stream
    kept = {g: write_dataset(tmp_path / g, 'tiny', progress=False, program_source=source, n_samples=3, shard_size=3,
                             vocab_size=300, generator=g) for g in ('1', '2')}
    assert kept['2']['rejections'] == {} and kept['2']['generator_version'] == '2.0'
    assert kept['1']['rejections'] == dict(invalid_solid=3) and kept['1']['generator_version'] == '1.0'
    assert _shard_codes(_read_shard(tmp_path / '2' / 'shard_00000.npz')) == stream[:3]
