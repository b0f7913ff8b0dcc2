"""cadrecode_nb.rl across its stages: an interrupted update resumes to exactly the uninterrupted weights, the reward
cache, rounds split between machines equal the online loop, and command-line failures."""
import json, shutil

import numpy as np, pytest, torch

from cadrecode_nb import rl
from cadrecode_nb.checkpoints import load_checkpoint

TINY = str(__import__('pathlib').Path(__file__).resolve().parent.parent/'models'/'tiny')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "Six parts of generator 1.0 (the tiny model's own kind), built as any dataset is."
    from cadrecode_nb.dataset import write_dataset
    root = tmp_path_factory.mktemp('rl')/'data'
    write_dataset(root, 'tiny', progress=False, n_samples=6, generator='1', workers=2)
    return root


def cfg(data, **kw):
    base = dict(model=TINY, data=str(data), limit=2, hard_threshold=0, group_size=4, keep=2, batch_size=4, rounds=2,
                lr=1e-3, max_new_tokens=200, device='cpu', workers=2, sample_batch=2, micro_batch_size=4, seed=3,
                progress=False)
    return rl.RLConfig(**{**base, **kw})


def fake_score(run, folder):
    "Deterministic rewards from the program text (no sandbox): enough for the update's arithmetic."
    rows = rl._read_jsonl(folder/'candidates.jsonl')
    recs = [dict(reward=float(len(r['program']) % 7) - 3, iou=0.5, cd=1.0, status='ok', invalid=False) for r in rows]
    rl.atomic_write(folder/'rewards.jsonl', rl._jsonl(dict(input=r['input'], k=r['k'], **x) for r, x in zip(rows, recs)))
    return run.mark(folder, 'score', dict(rl.round_stats(recs), new_programs=len(recs), seconds=0.0))


def weights(out):
    state = load_checkpoint(out/'checkpoints'/'last.pt')
    return state['step'], state['model'], state['optimizer']


def assert_same(a, b):
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    sa, sb = a[2]['state'], b[2]['state']
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k][n], sb[k][n]) for k in sa for n in ('exp_avg', 'exp_avg_sq'))


def test_update_resumes_exactly(data, tmp_path, monkeypatch):
    "Two rounds in one process == the same rounds with a fresh process per stage and an update stopped half-way."
    torch.set_num_threads(1)
    monkeypatch.setattr(rl, 'score_candidates', fake_score)
    c = cfg(data)
    rl.run_rl(tmp_path/'a', c, 'online', report=lambda *a: None)
    for stage in ('sample', 'score', 'update', 'sample', 'score'):
        rl.run_rl(tmp_path/'b', c, stage, report=lambda *a: None)
    run = rl.RLRun(tmp_path/'b', c, report=lambda *a: None)
    with pytest.raises(KeyboardInterrupt): rl.update_policy(run, 1, stop_before=2)   # two of three steps taken, then killed
    assert rl.RLRun(tmp_path/'b', c).latest()[0]['step'] == 1                       # nothing of round 1 was saved
    rl.run_rl(tmp_path/'b', c, 'update', report=lambda *a: None)                     # a new process resumes
    a, b = weights(tmp_path/'a'), weights(tmp_path/'b')
    assert a[0] == 2
    assert_same(a, b)
    start = rl.CADRecode.from_pretrained(TINY).state_dict()
    assert any(not torch.equal(start[k], a[1][k]) for k in start)                   # the updates did change the policy
    steps = json.loads((tmp_path/'a'/'rounds'/'r0001'/'update.json').read_text())['steps']
    assert len(steps) == 3 and steps[0]['clip_fraction'] < 1e-3                     # step 1: ratio 1 (same policy)


def test_lora_batches_resume_and_export(data, tmp_path, monkeypatch):
    "LoRA over two batches a round: checkpoints hold only the adapters, a killed update resumes exactly, the export is plain."
    torch.set_num_threads(1)
    monkeypatch.setattr(rl, 'score_candidates', fake_score)
    c = cfg(data, lora_rank=2, batches_per_round=2, lr=1e-2)
    quiet = lambda *a: None
    rl.run_rl(tmp_path/'a', c, 'online', report=quiet)
    for stage in ('sample', 'score', 'update', 'sample', 'score'): rl.run_rl(tmp_path/'b', c, stage, report=quiet)
    with pytest.raises(KeyboardInterrupt): rl.update_policy(rl.RLRun(tmp_path/'b', c, quiet), 1, stop_before=4)  # in batch 2
    rl.run_rl(tmp_path/'b', c, 'update', report=quiet)
    a, b = weights(tmp_path/'a'), weights(tmp_path/'b')
    assert a[0] == 2
    assert_same(a, b)
    assert a[1] and all('lora_' in k for k in a[1])                                  # only the adapters travel
    steps = json.loads((tmp_path/'a'/'rounds'/'r0001'/'update.json').read_text())['steps']
    assert [s['batch'] for s in steps] == [0, 0, 0, 1, 1, 1]
    rl.run_rl(tmp_path/'a', c, 'export', report=quiet)
    policy, start = (rl.CADRecode.from_pretrained(p).state_dict() for p in (tmp_path/'a'/'policy', TINY))
    assert policy.keys() == start.keys()                                              # a plain model, adapters merged
    assert any(not torch.equal(start[k], policy[k]) for k in start)


def test_dpo_round(data, tmp_path, monkeypatch):
    "DPO: K samples per input, one best/worst pair per input, updates that move the chosen above the rejected."
    torch.set_num_threads(1)
    monkeypatch.setattr(rl, 'score_candidates', fake_score)
    c = cfg(data, algorithm='dpo', dpo_samples=3, rounds=1, lr=1e-3)
    run = rl.run_rl(tmp_path/'dpo', c, 'online', report=lambda *a: None)
    folder = tmp_path/'dpo'/'rounds'/'r0000'
    samples = torch.load(folder/'samples.pt', weights_only=True)
    assert samples['group'] == 3 and len(samples['tokens']) == 2 * 3
    info = json.loads((folder/'update.json').read_text())
    rewards = rl._group_rewards(folder, 2, 3)
    assert info['pairs'] == sum(p is not None for p in rl.dpo_pairs(rewards)) >= 1
    assert info['steps'][0]['loss'] == pytest.approx(np.log(2), abs=1e-4)   # step 1: policy = reference
    items, owner, _ = rl.policy_batch(c, samples, rewards)
    run.load_policy(1)
    margins = []
    for it, j in zip(items, owner):
        pts = torch.stack([run.dataset[j]['points']] * 2)
        start, _, pad = rl._special_ids(run.tokenizer)
        with torch.no_grad(): lp = rl.token_logprobs(run.model, rl.sequence_batch([it['chosen'], it['rejected']], pts, start, pad)).sum(-1)
        margins.append(float((lp[0] - it['ref_chosen']) - (lp[1] - it['ref_rejected'])))
    assert all(m > 0 for m in margins), margins                                   # the chosen rose relative to the rejected


def test_reward_cache(data, tmp_path):
    "Rewards come from the sandbox once per (input, program text); the JSON cache answers afterwards, per input."
    from cadrecode_nb.dataset import CADRecodeDataset
    from cadrecode_nb.sandbox import CadWorkerPool
    ds = CADRecodeDataset(data, 'train')
    calls = []
    with CadWorkerPool(2) as pool:
        class Counting:
            def map(self, codes): calls.append(list(codes)); return pool.map(codes)
        counting = Counting()
        targets = rl.make_targets(counting, {0: ds[0], 1: ds[1]})
        jobs = [(0, ds[0]['code']), (1, ds[0]['code']), (0, 'r = 1/0'), (0, ds[0]['code'])]
        cache = rl.RewardCache(tmp_path/'cache.json')
        first = rl.score_programs(counting, targets, jobs, cache)
        assert calls[-1] == [ds[0]['code'], 'r = 1/0']          # each distinct text once, for both inputs
        assert first[0]['reward'] == pytest.approx(10, abs=0.05) and first[1]['reward'] < 9.5   # input 1 is another part
        assert first[2] == dict(reward=-10.0, iou=None, cd=None, status=first[2]['status'], invalid=True)
        assert first[3] == first[0]
        cache.save()
        n = len(calls)
        again = rl.score_programs(counting, targets, jobs, rl.RewardCache(tmp_path/'cache.json'))
        assert len(calls) == n and again == first
        assert rl.RewardCache.key(0, 'a') != rl.RewardCache.key(1, 'a') != rl.RewardCache.key(0, 'b')


def test_split_equals_online(data, tmp_path):
    "One round with the real sandbox: stages in separate runs (machines) give the online loop's files and weights."
    torch.set_num_threads(1)
    c = cfg(data, rounds=1)
    rl.run_rl(tmp_path/'online', c, 'online', report=lambda *a: None)
    for stage in ('sample', 'score', 'update'):
        rl.run_rl(tmp_path/'split', c, stage, report=lambda *a: None)
    for name in ('candidates.jsonl', 'rewards.jsonl'):
        assert (tmp_path/'online'/'rounds'/'r0000'/name).read_text() == (tmp_path/'split'/'rounds'/'r0000'/name).read_text()
    s1, s2 = (torch.load(p/'rounds'/'r0000'/'samples.pt', weights_only=True) for p in (tmp_path/'online', tmp_path/'split'))
    assert s1['tokens'] == s2['tokens'] and all(torch.equal(x, y) for x, y in zip(s1['old_logp'], s2['old_logp']))
    assert_same(weights(tmp_path/'online'), weights(tmp_path/'split'))
    rewards = [json.loads(l)['reward'] for l in (tmp_path/'online'/'rounds'/'r0000'/'rewards.jsonl').read_text().splitlines()]
    assert len(rewards) == 8 and len(set(rewards)) > 1                                # real, varied rewards


@pytest.mark.parametrize('argv,culprit', [
    (['--keep', '20'], "'keep' = 20"),
    (['--stages', 'smaple'], "unknown stage(s) ['smaple']"),
    (['--algorithm', 'ppo'], "'algorithm'"),
    (['--model', '/nonexistent/model', '--hard-threshold', '0', '--stages', 'sample'], "'data'"),
    (['--stages', 'score'], None),
])
def test_cli_fails_in_one_line(data, tmp_path, capsys, argv, culprit):
    if culprit is None:   # scoring a round nobody sampled is nothing to do, not an error
        rl.main(['--out', str(tmp_path/'run'), *argv]); assert 'nothing to do' in capsys.readouterr().out; return
    with pytest.raises(SystemExit) as e: rl.main(['--out', str(tmp_path/'run'), *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith('cadrecode_rl: error:') and culprit in err, err


def test_cli_names_model_and_changed_keys(data, tmp_path, capsys):
    out = str(tmp_path/'run')
    with pytest.raises(SystemExit): rl.main(['--out', out, '--model', '/nonexistent/model', '--data', str(data),
                                             '--hard-threshold', '0', '--stages', 'sample'])
    assert "'model' = '/nonexistent/model'" in capsys.readouterr().err
    with pytest.raises(SystemExit): rl.main(['--out', out, '--group-size', '8', '--stages', 'sample'])
    err = capsys.readouterr().err
    assert 'group_size: run 16 vs now 8' in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit): rl.main(['--out', out, '--stages', 'update,sample'])   # hard inputs not mined
    with pytest.raises(SystemExit) as e: rl.main(['--stages', 'online'])
    assert e.value.code == 2 and '--out is required' in capsys.readouterr().err
