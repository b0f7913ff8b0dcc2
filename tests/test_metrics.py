"Metrics (CD, IoU, IR), normalisations and candidate selection of `cadrecode_nb.metrics`; the generate/score files of `cadrecode_nb.eval`."
import json, subprocess, sys, types

import numpy as np
import pytest
import trimesh

from cadrecode_nb.metrics import *
from cadrecode_nb.eval import *
from cadrecode_nb.eval import _NUMBER, _run_unique


def _box(size, at=(0, 0, 0)):
    m = trimesh.creation.box(size); m.apply_translation(at); return m


def _one_way(p, q):
    "Mean over `p` of the squared distance to the nearest point of `q`: all pairs in chunks (numpy only), no k-d tree"
    return np.concatenate([((p[i:i + 512, None] - q[None]) ** 2).sum(-1).min(1) for i in range(0, len(p), 512)]).mean()


def _brute_chamfer(a, b):
    "The definition: both directions of all-pairs squared nearest distances"
    return _one_way(a, b) + _one_way(b, a)


def test_cd_self_same_sampling_is_zero():
    for mesh in (_box((1, 1, 1)), trimesh.creation.cylinder(0.3, 0.8), trimesh.creation.icosphere(2)):
        assert CD_SCALE * mesh_chamfer_distance(mesh, mesh, seed=3) < 1e-3


def test_cd_sampling_floor_matches_theory():
    "Different seeds: the CD of a perfect prediction is the sampling floor 2A/(pi N), not 0"
    cube = _box((1, 1, 1))
    cd = chamfer_distance(sample_surface(cube, seed=0), sample_surface(cube, seed=1))
    assert abs(cd - 2 * 6 / (np.pi * N_SURFACE)) / cd < 0.1


@pytest.mark.parametrize('d', [0.03, 0.25, 1.0, 2.5])
def test_cd_shifted_cube_matches_brute_force(d):
    cube, moved = _box((1, 1, 1)), _box((1, 1, 1), (d, 0, 0))
    pa, pb = sample_surface(cube, 2048, seed=0), sample_surface(moved, 2048, seed=0)
    np.testing.assert_allclose(pb, pa + [d, 0, 0], atol=1e-12)  # same seed on a moved mesh: same draws, moved
    ref = _brute_chamfer(pa, pb)
    assert chamfer_distance(pa, pb) == pytest.approx(ref, rel=1e-10)
    assert mesh_chamfer_distance(cube, moved, n_points=2048, seed=0) == pytest.approx(ref, rel=1e-10)
    if d >= 1: assert ref > d ** 2 * 0.5  # far apart: every point is at least ~d away in x


def test_cd_rejects_empty_mesh():
    with pytest.raises(ValueError, match='no surface area'):
        sample_surface(trimesh.Trimesh(np.zeros((3, 3)), [[0, 1, 2]]))


def test_iou_self_disjoint_and_analytic():
    a = _box((2, 2, 2))
    assert iou(a, a) == pytest.approx(1, abs=1e-9)
    assert iou(a, _box((2, 2, 2), (3, 0, 0))) == 0
    assert iou(a, _box((2, 2, 2), (2.0 + 1e-9, 0, 0))) == pytest.approx(0, abs=1e-6)  # touching faces
    rng = np.random.default_rng(0)
    for _ in range(10):
        sa, sb = rng.uniform(0.5, 2, 3), rng.uniform(0.5, 2, 3)
        ca, cb = rng.uniform(-0.5, 0.5, 3), rng.uniform(-0.5, 0.5, 3)
        lo, hi = np.maximum(ca - sa / 2, cb - sb / 2), np.minimum(ca + sa / 2, cb + sb / 2)
        inter = np.prod(np.clip(hi - lo, 0, None))
        expect = inter / (np.prod(sa) + np.prod(sb) - inter)
        assert iou(_box(sa, ca), _box(sb, cb)) == pytest.approx(expect, abs=1e-6)


def test_iou_sums_components_and_ignores_open_pieces():
    a, far = _box((1, 1, 1)), _box((1, 1, 1), (4, 0, 0))
    assert iou(a + far, a) == pytest.approx(0.5)
    assert iou(a, a + far) == pytest.approx(0.5)
    open_box = trimesh.Trimesh(a.vertices, a.faces[:6])
    assert iou(a, open_box) == 0
    with pytest.raises(ValueError, match='ground-truth'): iou(open_box, a)


def test_normalizations():
    box = _box((200, 100, 50), (10, 0, 0))
    np.testing.assert_allclose(normalize_prediction(box, 'bbox').bounds, [[0, .25, .375], [1, .75, .625]])
    np.testing.assert_allclose(normalize_prediction(box, 'demo').bounds, [[.05, .25, .375], [1.05, .75, .625]])
    np.testing.assert_allclose(normalize_target(box).bounds, [[0, .25, .375], [1, .75, .625]])
    np.testing.assert_allclose(input_points_to_unit([[-1, 0, 1]]), [[0, .5, 1]])
    with pytest.raises(ValueError, match="'cube'"): normalize_prediction(box, 'cube')
    assert DEFAULT_NORMALIZATION in NORMALIZATIONS


def test_invalidity_ratio_and_best_index():
    assert invalidity_ratio([True, False, False, True]) == 0.5
    assert best_index([None, 2., 1., None]) == 2
    assert best_index([None, None, None]) == 0
    assert best_index([float('inf'), 3.]) == 1


class _Res:
    "Stand-in for sandbox.ProgramResult (same fields) so selection is tested without CadQuery"
    def __init__(self, mesh=None, status='ok'):
        self.status, self.message, self.seconds = (status if mesh is not None else 'runtime'), '', 0.
        self.vertices = None if mesh is None else mesh.vertices
        self.faces = None if mesh is None else mesh.faces
    @property
    def ok(self): return self.status == 'ok'


def test_score_item_picks_by_input_and_never_an_invalid_candidate():
    truth = trimesh.boolean.union([_box((2, 1, 0.5)), trimesh.creation.cylinder(0.3, 1.0)], engine='manifold')
    inp = 2 * sample_surface(normalize_target(truth), 256, seed=5) - 1
    target = ItemTarget(truth, inp)
    cands = [None, _box((2, 1, 0.5)), truth.copy(), None]
    rec = score_item(target, [_Res(m) for m in cands], ['a', 'b', 'c', 'd'])
    assert (rec['picked'], rec['oracle'], rec['first']) == (2, 2, 0)
    assert rec['candidates'][0]['cd'] is None and rec['candidates'][3]['cd'] is None
    assert rec['candidates'][2]['iou'] == pytest.approx(1, abs=1e-6)
    assert 0 < rec['candidates'][2]['cd'] < 1  # sampling floor, different seeds for GT and prediction
    s = summarize([rec])
    assert s['first']['ir'] == 100 and s['picked']['ir'] == 0 and s['k'] == 4
    assert 'ORACLE' in summary_table(s)


@pytest.mark.parametrize('normalization', ['bbox', 'demo'])
def test_score_item_cd_is_the_two_sided_chamfer_of_its_samples(normalization):
    """The CD every table shows (computed inside score_item) against brute force on the samples the protocol names:
    GT sampled with `seed`, each candidate with `seed + 1`, both in the unit cube; the same for the input agreement."""
    truth = _box((2, 1, 0.5))                                                    # GT: any units
    inp = 2 * sample_surface(normalize_target(truth), 256, seed=5) - 1           # what the model saw, in [-1, 1]
    extra = _box((200, 100, 50)) + _box((50, 50, 50), (150, 0, 0))              # code units: right part + extra piece
    missing = _box((100, 100, 50), (-50, 0, 0))                                  # code units: half of it
    rec = score_item(ItemTarget(truth, inp), [_Res(extra), _Res(missing)], ['extra', 'missing'],
                     normalization=normalization, n_points=1024, seed=3, keep_meshes=True)
    m = rec['meshes']
    np.testing.assert_allclose(m['gt'].bounds, [[0, .25, .375], [1, .75, .625]], atol=1e-12)   # by hand
    hand = {'bbox': ([[0, .5 - 50 / 275, .5 - 25 / 275], [1, .5 + 50 / 275, .5 + 25 / 275]], [[0, 0, .25], [1, 1, .75]]),
            'demo': ([[0, .25, .375], [1.375, .75, .625]], [[0, .25, .375], [.5, .75, .625]])}[normalization]
    for i, b in enumerate(hand): np.testing.assert_allclose(m[str(i)].bounds, b, atol=1e-12)
    gt_pts, unit_in = trimesh.sample.sample_surface(m['gt'], 1024, seed=3)[0], inp / 2 + 0.5
    for i, c in enumerate(rec['candidates']):
        pts = trimesh.sample.sample_surface(m[str(i)], 1024, seed=4)[0]
        to_pred, to_gt = _one_way(gt_pts, pts), _one_way(pts, gt_pts)
        assert min(to_pred, to_gt) > 0.01 * (to_pred + to_gt)                   # dropping either direction shows
        assert c['cd'] == pytest.approx(CD_SCALE * (to_pred + to_gt), rel=1e-9)
        assert c['input_cd'] == pytest.approx(CD_SCALE * (_one_way(unit_in, pts) + _one_way(pts, unit_in)), rel=1e-9)


def test_score_item_picks_by_input_when_input_and_ground_truth_disagree():
    """The input cloud of one shape, the ground truth another, both among the candidates: the pick follows the input,
    the oracle the ground truth (in the other fixtures they coincide, so a pick made against the GT would not show)."""
    plate, rod = _box((2, 1, 0.5)), trimesh.creation.cylinder(0.3, 2.0)
    for seen, truth, picked, oracle in [(plate, rod, 2, 1), (rod, plate, 1, 2)]:
        inp = 2 * sample_surface(normalize_target(seen), 256, seed=5) - 1
        rec = score_item(ItemTarget(truth, inp), [_Res(None), _Res(rod), _Res(plate)], ['r=(', 'rod', 'plate'], n_points=1024)
        assert (rec['picked'], rec['oracle']) == (picked, oracle)
        c = rec['candidates']
        assert c[picked]['input_cd'] < c[oracle]['input_cd'] and c[oracle]['cd'] < c[picked]['cd']
        assert c[picked]['iou'] < 0.5 and c[oracle]['iou'] == pytest.approx(1, abs=1e-6)   # IoU of both rows computed
        s = summarize([rec])
        assert s['picked']['mean_cd'] == c[picked]['cd'] and s['oracle']['mean_cd'] == c[oracle]['cd']


def test_summarize_by_hand():
    "Rows first / picked / oracle over four records whose numbers are written out: IR, mean and median CD, mean IoU"
    def rec(cds, ious, picked=0, oracle=0):
        return dict(k=len(cds), first=0, picked=picked, oracle=oracle, candidates=[dict(cd=c, iou=i) for c, i in zip(cds, ious)])
    s = summarize([rec([None, 0.4, 0.2], [None, .8, .9], picked=1, oracle=2), rec([0.3], [.7]), rec([2.0], [.1]), rec([0.1], [.5])])
    def row(r): return [s[r][k] for k in ('n', 'n_valid', 'ir', 'mean_cd', 'median_cd', 'iou')]
    assert row('first') == pytest.approx([4, 3, 25, 0.8, 0.3, 100 * 1.3 / 3])
    assert row('picked') == pytest.approx([4, 4, 0, 0.7, 0.35, 52.5])
    assert row('oracle') == pytest.approx([4, 4, 0, 0.65, 0.25, 55])
    assert s['k'] == 3 and invalidity_ratio([True, True, True, False]) == 0.25
    assert best_index([float('nan'), 3.]) == 1 and best_index([2., float('nan'), 1.]) == 2   # NaN is never the best


def test_perturb_program_changes_one_number():
    code = "import cadquery as cq\nw0=cq.Workplane('XY',origin=(0,0,-40))\nr=w0.sketch().rect(80,60).finalize().extrude(-92/2)"
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = perturb_program(code, rng)
        old, new = _NUMBER.findall(code), _NUMBER.findall(p)
        assert len(old) == len(new) and sum(a != b for a, b in zip(old, new)) == 1
        assert p.startswith('import cadquery as cq\n')


def test_jsonl_roundtrip_and_bad_line(tmp_path):
    write_jsonl(tmp_path / 'x.jsonl', [dict(a=1), dict(b='two')])
    assert read_jsonl(tmp_path / 'x.jsonl') == [dict(a=1), dict(b='two')]
    (tmp_path / 'y.jsonl').write_text('{"a": 1}\n{oops\n')
    with pytest.raises(InputError, match=r'y.jsonl:2: not valid JSON'): read_jsonl(tmp_path / 'y.jsonl')


def test_generate_step_writes_files(tmp_path, monkeypatch):
    "generate_step against the agreed generate_programs signature (a stub model module)"
    calls = []
    def fake_generate(model, tokenizer, points, num_candidates=1, do_sample=False, temperature=1.0, top_p=1.0,
                      max_new_tokens=768, batch_size=16):
        calls.append((points.shape, num_candidates, do_sample))
        return [[f"r={'s' if do_sample else 'g'}{j}" for j in range(num_candidates)] for _ in range(len(points))]
    monkeypatch.setitem(sys.modules, 'cadrecode_nb.model', types.SimpleNamespace(generate_programs=fake_generate))
    items = [dict(id=f'i{i}', points=np.full((256, 3), i / 10, np.float32), gt_program=f'gt{i}') for i in range(5)]
    out = generate_step(None, None, items, tmp_path, num_candidates=3, greedy_first=True, batch_size=2)
    rows = read_jsonl(out / 'generations.jsonl')
    assert [r['id'] for r in rows] == [f'i{i}' for i in range(5)]
    assert rows[0]['programs'] == ['r=g0', 'r=s0', 'r=s1'] and rows[4]['gt_program'] == 'gt4'
    assert calls[0] == ((2, 256, 3), 1, False) and calls[1] == ((2, 256, 3), 2, True)
    with np.load(out / 'inputs.npz') as z:
        assert z['ids'].tolist() == [f'i{i}' for i in range(5)] and z['points'].shape == (5, 256, 3)
        np.testing.assert_array_equal(z['points'][3], items[3]['points'])


def test_generate_progress_moves_per_batch(tmp_path, monkeypatch):
    "The bar steps once per generate call (a batch of clouds, greedy or sampled), and its comment counts the programs"
    import fastprogress.fastprogress as fp
    seen = []
    class Bar:
        def __init__(self, jobs): self.jobs, self.comment = list(jobs), ''
        def __iter__(self):
            for j in self.jobs: yield j; seen.append(self.comment)
    monkeypatch.setattr(fp, 'progress_bar', Bar)
    fake = lambda model, tok, pts, num_candidates=1, **kw: [['r=1'] * num_candidates for _ in pts]
    monkeypatch.setitem(sys.modules, 'cadrecode_nb.model', types.SimpleNamespace(generate_programs=fake))
    items = [dict(id=f'i{i}', points=np.zeros((256, 3), np.float32), gt_program='g') for i in range(5)]
    generate_step(None, None, items, tmp_path, num_candidates=3, greedy_first=True, batch_size=2, progress=True)
    assert seen == [f'batches; {n} of 15 programs' for n in (2, 6, 8, 12, 13, 15)]


def test_mesh_folder_skips_bad_files_with_their_reason(tmp_path):
    _box((40, 20, 10)).export(tmp_path / 'good.stl')
    (tmp_path / 'zero.stl').write_bytes(b'')
    (tmp_path / 'notes.stl').write_text('not a mesh')
    items = load_eval_inputs(tmp_path)
    assert [it['id'] for it in items] == ['good'] and items.kind == 'meshes'
    assert [(s['id'], s['reason']) for s in items.skipped] == [('notes', 'the mesh has no triangles'), ('zero', 'empty file')]
    with pytest.raises(InputError, match='notes.stl: the mesh has no triangles'): load_eval_inputs(tmp_path, strict=True)


def test_plots_say_which_candidate_and_their_units():
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    def recs(cds, k): return [dict(k=k, first=0, picked=0, oracle=0, candidates=[dict(cd=c, iou=.5, n_chars=99)]) for c in cds]
    for cds, k, title in [(np.geomspace(0.3, 2.5, 50), 1, 'CD, one candidate'),
                          (np.geomspace(2, 40, 50), 10, 'CD, picked by input among 10')]:
        fig, ax = plt.subplots(figsize=(5, 3)); plot_cd_histogram(recs(list(cds), k), ax=ax); fig.canvas.draw()
        assert ax.get_title() == title and 'x1000' in ax.get_xlabel()
        lo, hi = ax.get_xlim()
        ticks = [*zip(ax.xaxis.get_majorticklocs(), ax.xaxis.get_majorticklabels()),
                 *zip(ax.xaxis.get_minorticklocs(), ax.xaxis.get_minorticklabels())]
        boxes = sorted((t.get_window_extent().x0, t.get_window_extent().x1) for x, t in ticks if t.get_text() and lo <= x <= hi)
        assert len(boxes) >= 2 and all(b[0] >= a[1] for a, b in zip(boxes, boxes[1:])), boxes   # no two labels overlap
        plt.close(fig)
    assert candidate_label('first', 10) == 'first of 10 candidates' and candidate_label('picked', 1) == 'one candidate'
    assert gallery_title(1.234, 0.83) == 'CD x1000 1.23, IoU 83%' and gallery_title(None, None) == 'CD x1000 -, IoU -'


def test_score_step_errors_name_the_file(tmp_path):
    pytest.importorskip('cadrecode_nb.sandbox', reason='sandbox module not exported yet')
    with pytest.raises(InputError, match='generations.jsonl is missing'): score_generations(tmp_path)
    write_jsonl(tmp_path / 'generations.jsonl', [dict(id='a', programs=['r=1'], gt_program='r=1')])
    np.savez(tmp_path / 'inputs.npz', ids=np.array(['b']), points=np.zeros((1, 256, 3), np.float32))
    with pytest.raises(InputError, match="no item can be scored .*generations.jsonl:1: no input cloud"): score_generations(tmp_path)
    with pytest.raises(InputError, match="generations.jsonl:1: no input cloud"): score_generations(tmp_path, strict=True)


def test_eval_imports_without_cadquery():
    "The generate side runs on a GPU machine without CadQuery: importing the module must not need it"
    code = ("import sys; sys.modules['cadquery'] = None\n"
            "import cadrecode_nb.eval as e\n"
            "assert 'cadquery' not in [m for m in sys.modules if sys.modules[m] is not None]; print('ok')")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and 'ok' in out.stdout, out.stderr


REF = ["import cadquery as cq\nw0=cq.Workplane('XY',origin=(0,0,-40))\nw1=cq.Workplane('ZX',origin=(0,12,0))\n"
       "r=w0.sketch().push([(-30,10)]).rect(80,60).push([(20,-15)]).circle(25,mode='s').finalize().extrude(80)"
       ".union(w1.sketch().segment((-60,-20),(40,-20)).arc((55,0),(40,20)).segment((-60,20)).close().assemble()"
       ".finalize().extrude(-24))",
       "import cadquery as cq\nw0=cq.Workplane('XY',origin=(0,0,30))\nr=w0.sketch().segment((-90,-60),(70,-60))"
       ".arc((90,-40),(70,-20)).segment((-90,-20)).close().assemble().push([(-50,40)]).circle(30).finalize()"
       ".extrude(-60).union(w0.workplane(offset=-10/2).moveTo(40,45).cylinder(10,35))"]


def test_score_generations_end_to_end(tmp_path):
    "The REFERENCE programs as ground truth; candidates: a syntax error, the other part and the exact program"
    sandbox = pytest.importorskip('cadrecode_nb.sandbox', reason='sandbox module not exported yet')
    with sandbox.CadWorkerPool(n_workers=2, strict=False) as pool:
        gts = pool.map(REF)
        assert all(r.ok for r in gts), [r.message for r in gts]
        rows, pts = [], []
        for i, (code, res) in enumerate(zip(REF, gts)):
            rows.append(dict(id=f'ref{i}', programs=['r=(', REF[1 - i], code], gt_program=code))  # syntax error, wrong part, right part
            m = normalize_target(res.mesh())
            pts.append((2 * sample_surface(m, 256, seed=i) - 1).astype(np.float32))
        rows.append(dict(id='badgt', programs=[REF[0]], gt_program='r=('))
        pts.append(pts[0])
        write_jsonl(tmp_path / 'generations.jsonl', rows)
        np.savez(tmp_path / 'inputs.npz', ids=np.array([r['id'] for r in rows]), points=np.stack(pts))
        rep = score_generations(tmp_path, n_gallery=2, pool=pool, gt_cache=tmp_path / 'cache')
        again = score_generations(tmp_path, out_dir=tmp_path / 'again', pool=pool, gt_cache=tmp_path / 'cache', plots=False)
        only = [dict(id='x', gt_program=REF[0], programs=['r=('])]
        assert list(_run_unique(pool, only, tmp_path / 'cache')) == ['r=(']          # cached GT is not executed again
        assert list(_run_unique(pool, only, None)) == [REF[0], 'r=(']
    assert rep.timings['n_executed'] == 3  # distinct texts run once: REF[0], REF[1], 'r=('
    assert [r['cd'] for r in again.records] == [r['cd'] for r in rep.records]
    assert len(list((tmp_path / 'cache').glob('*.npz'))) == 2
    assert [(f['id'], f['step']) for f in rep.skipped] == [('badgt', 'score')] and 'syntax' in rep.skipped[0]['reason']
    assert rep.summary['n_skipped'] == 1 and read_jsonl(tmp_path / 'skipped.jsonl') == rep.skipped
    assert len(rep.records) == 2
    for r in rep.records:
        assert r['candidates'][0]['status'] == 'syntax' and r['candidates'][0]['cd'] is None
        assert r['picked'] == 2 and r['oracle'] == 2 and r['status'] == 'ok'
        assert r['iou'] > 0.999 and r['cd'] < 1
    s = rep.summary
    assert s['first']['ir'] == 100 and s['picked']['ir'] == 0 and s['picked']['iou'] > 99.9
    saved = read_jsonl(tmp_path / 'results.jsonl')
    assert saved[0]['program'] == REF[0] and saved[0]['n_chars'] == len(REF[0])
    assert json.loads((tmp_path / 'summary.json').read_text())['normalization'] == 'bbox'
    assert {p.name for p in tmp_path.glob('*.png')} == {'cd_hist.png', 'iou_vs_length.png', 'gallery.png'}


def test_evaluate_model_and_cli_score(tmp_path, monkeypatch, capsys):
    "generate + score in one call with a stub generator (the model's signature), then the CLI's score subcommand"
    sandbox = pytest.importorskip('cadrecode_nb.sandbox', reason='sandbox module not exported yet')
    def stub_generate(model, tokenizer, points, num_candidates=1, do_sample=False, temperature=1.0, top_p=1.0,
                      max_new_tokens=768, batch_size=16):  # "predicts" REF[1] for every input
        return [[REF[1]] * num_candidates for _ in range(len(points))]
    monkeypatch.setitem(sys.modules, 'cadrecode_nb.model', types.SimpleNamespace(generate_programs=stub_generate))
    with sandbox.CadWorkerPool(n_workers=2, strict=False) as pool:
        gts = pool.map(REF)
        items = [dict(id=f'r{i}', gt_program=c, points=(2 * sample_surface(normalize_target(g.mesh()), 256, seed=i) - 1)
                      .astype(np.float32)) for i, (c, g) in enumerate(zip(REF, gts))]
        rep = evaluate_model(None, None, items, out_dir=tmp_path, num_candidates=2, pool=pool)
    by_id = {r['id']: r for r in rep.records}
    assert by_id['r1']['iou'] > 0.999 and by_id['r0']['iou'] < 0.9  # REF[1] is right for r1 only
    assert rep.timings['n_executed'] == 2  # two distinct texts, although 2 items x 2 candidates + 2 ground truths
    main(['score', '--generations', str(tmp_path), '--out', str(tmp_path / 'cli'), '--workers', '1', '--no-plots',
          '--normalization', 'demo'])
    out = capsys.readouterr().out
    assert 'ORACLE' in out and 'demo (this kit)' in out
    assert len(read_jsonl(tmp_path / 'cli' / 'results.jsonl')) == 2


def test_inputs_from_dataset_split_and_mesh_folder(tmp_path):
    "load_eval_inputs on a tiny procedural dataset (GT = program) and on a folder of STL files (GT = mesh file)"
    sandbox = pytest.importorskip('cadrecode_nb.sandbox', reason='sandbox module not exported yet')
    from cadrecode_nb.eval import _data_attr
    _data_attr('write_dataset')(tmp_path / 'ds', 'tiny', n_samples=30, shard_size=30, progress=False)
    items = load_eval_inputs(tmp_path / 'ds', split='test', limit=3)
    assert len(items) >= 1 and all(it['points'].shape == (256, 3) and 'gt_program' in it for it in items)
    assert np.abs(items[0]['points']).max() <= 1.0 + 1e-6
    box = _box((40, 20, 10)); (tmp_path / 'meshes').mkdir(); box.export(tmp_path / 'meshes' / 'plate.stl')
    (tmp_path / 'meshes' / 'notes.txt').write_text('not a mesh')
    mitems = load_eval_inputs(tmp_path / 'meshes')
    assert [it['id'] for it in mitems] == ['plate'] and mitems[0]['gt_mesh'].endswith('plate.stl')
    rows = [dict(id=it['id'], programs=[it['gt_program']], gt_program=it['gt_program']) for it in items]
    rows.append(dict(id='plate', programs=["import cadquery as cq\nr=cq.Workplane('XY').box(80,40,20)",
                                           "import cadquery as cq\nr=cq.Workplane('XY').box(80,80,20)"],
                     gt_mesh=mitems[0]['gt_mesh']))
    write_jsonl(tmp_path / 'generations.jsonl', rows)
    np.savez(tmp_path / 'inputs.npz', ids=np.array([r['id'] for r in rows]),
             points=np.stack([it['points'] for it in items + mitems]))
    with sandbox.CadWorkerPool(n_workers=2, strict=False) as pool:
        rep = score_generations(tmp_path, pool=pool, plots=False)
    by_id = {r['id']: r for r in rep.records}
    assert not rep.skipped and len(by_id) == len(rows)
    assert by_id['plate']['picked'] == 0 and by_id['plate']['iou'] > 0.999  # same shape at twice the size: bbox protocol
    assert all(by_id[it['id']]['iou'] > 0.999 for it in items)
    with pytest.raises(InputError, match='neither a dataset'): load_eval_inputs(_empty(tmp_path))


def _empty(tmp_path):
    (tmp_path / 'empty').mkdir(); return tmp_path / 'empty'
