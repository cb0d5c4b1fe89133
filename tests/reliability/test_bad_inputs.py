"""Bad input, table-driven: each case runs a tool's command line (in this process, through its
`__main__`) and expects a non-zero exit with a one-line message naming the offending file or key."""

import json
import os
import pickle
import re
import runpy
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from test_training import TINY, pretrain, write_sampled
from training import checkpoint as ckpt
from training.config import compose

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "eval"
DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def exit_of(call) -> tuple[int, str]:
    try:
        call()
    except SystemExit as exit:
        return (1, exit.code) if isinstance(exit.code, str) else (exit.code or 0, "")
    return 0, ""


def cli(module: str, argv: list[str]) -> tuple[int, str]:
    saved = sys.argv
    sys.argv = [module, *argv]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: "found in sys.modules"
            return exit_of(lambda: runpy.run_module(module, run_name="__main__"))
    finally:
        sys.argv = saved


def train(overrides: list[str]) -> tuple[int, str]:
    import pretrain as pretrain_module

    saved = {k: os.environ.pop(k, None) for k in DIST_ENV}
    try:
        return exit_of(lambda: pretrain_module.launch(compose("cfg_pretrain", [*TINY, *overrides])))
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


class Poison:
    def __reduce__(self):
        return os.system, ("true",)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, request):
    """Inputs for every case: a corpus with its tokenizer, tokenized and sampled folders, a tiny
    training run (and poisoned / checkpoint-less copies), benchmark folders."""
    from data_io.sample_tokenized import SampleConfig, sample
    from data_io.tokenize import tokenize
    from data_io.train_tokenizer import train_tokenizer

    base = tmp_path_factory.mktemp("bad_inputs")
    corpus = base / "corpus"
    corpus.mkdir()
    good = [{"instruction": f"question {k}", "response": f"answer {k}"} for k in range(20)]
    (corpus / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    tok = train_tokenizer([str(corpus)], str(base / "tok"), vocab_size=300)
    tokenize([str(corpus)], str(tok), str(base / "tokenized"))
    sample(SampleConfig(tokenized_path=str(base / "tokenized"), output_path=str(base / "sampled"), epochs=1,
                        context_size=64))
    bad = base / "bad_rows"
    bad.mkdir()
    rows = {
        "bad_json.jsonl": '{"instruction": "a", "response": "b"}\n{"instruction": "a", \n',
        "no_response.jsonl": '{"instruction": "a"}\n',
        "number_response.jsonl": '{"instruction": "a", "response": 7}\n',
        "surrogate.jsonl": '{"instruction": "a\\ud800", "response": "b"}\n',
        "deep.jsonl": '{"instruction": ' + "[" * 100000 + "]" * 100000 + ', "response": "b"}\n',
        "cond.jsonl": '{"instruction": "a", "response": "b", "condition": "nosuchcondition"}\n',
    }
    for name, text in rows.items():
        (bad / name).write_text(text)
    (bad / "latin1.jsonl").write_bytes('{"instruction": "caf\xe9", "response": "b"}\n'.encode("latin-1"))
    (bad / "notes.txt").write_text("not a source")
    (base / "foreign_out").mkdir()
    (base / "foreign_out" / "tokens.npy").write_bytes(b"someone else's")

    data = write_sampled(base / "data", [(8, 8)] * 40, epochs=1)
    other = write_sampled(base / "other", [(6, 9)] * 40, epochs=1)
    run = base / "run"
    pretrain([f"data.path={data}", "global_batch_size=256", "max_steps=2", f"checkpoint_path={run}"])
    poisoned = base / "poisoned"
    shutil.copytree(run, poisoned)
    (ckpt.find_checkpoint(poisoned) / ".metadata").write_bytes(pickle.dumps(Poison()))
    changed = base / "changed"  # a run whose dataset was rewritten in place since it trained
    shutil.copytree(run, changed)
    shutil.copy(other / "metadata.json", changed / "dataset_metadata.json")
    corrupt = shutil.copytree(data, base / "corrupt")  # the run's dataset with its metadata.json cut short
    (corrupt / "metadata.json").write_text((data / "metadata.json").read_text()[:40])
    unfinished = base / "unfinished"
    shutil.copytree(run, unfinished)
    for marker in unfinished.glob("checkpoints/*/COMPLETE"):
        marker.unlink()

    def benchmark(name: str, split: str, rows: list | str) -> Path:
        folder = base / f"eval_{name}_{len(list(base.glob('eval_*')))}"
        shutil.copytree(FIXTURES, folder)
        text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
        (folder / name / f"{split}.jsonl").write_text(text)
        return folder

    return dict(base=base, corpus=corpus, tok=tok, bad=bad, data=data, other=other, run=run, poisoned=poisoned,
                changed=changed, unfinished=unfinished, corrupt=corrupt, benchmark=benchmark)


def tokenize_case(inputs, out=None):
    return lambda c: cli("data_io.tokenize", ["--inputs", str(inputs(c)), "--tokenizer", str(c["tok"]),
                                              "--out", str(out(c) if out else c["base"] / "tok_out")])


def sample_case(*args):
    return lambda c: cli("data_io.sample_tokenized", [a(c) if callable(a) else a for a in args])


def eval_case(name, split, rows, extra=()):
    def run(c):
        data_dir = c["benchmark"](name, split, rows)
        c["last_eval_file"] = data_dir / name / f"{split}.jsonl"
        return cli("evaluation.main", [f"ckpt_path={c['run']}", f"data_dir={data_dir}", f"run_only=[{name}]",
                                       "limit=2", f"results_path={c['base'] / 'eval.json'}", *extra])
    return run


BOOLQ = {"question": "is it", "passage": "It is.", "answer": True}
MMLU = {"question": "Which?", "subject": "astronomy", "choices": ["a", "b", "c", "d"], "answer": 1}
WINO = {"sentence": "The _ is small.", "option1": "box", "option2": "room", "answer": "1"}

# (case, run(ctx) -> (exit code, message), what the message must name)
CASES = [
    # data_io.tokenize
    ("tokenize: missing input", tokenize_case(lambda c: c["base"] / "nowhere"), lambda c: c["base"] / "nowhere"),
    ("tokenize: invalid JSON line", tokenize_case(lambda c: c["bad"] / "bad_json.jsonl"), lambda c: "bad_json.jsonl:2"),
    ("tokenize: missing response", tokenize_case(lambda c: c["bad"] / "no_response.jsonl"), lambda c: "no_response.jsonl:1: field 'response'"),
    ("tokenize: response not text", tokenize_case(lambda c: c["bad"] / "number_response.jsonl"), lambda c: "number_response.jsonl:1: field 'response'"),
    ("tokenize: lone surrogate", tokenize_case(lambda c: c["bad"] / "surrogate.jsonl"), lambda c: "surrogate.jsonl:1: field 'instruction'"),
    ("tokenize: JSON nested too deeply", tokenize_case(lambda c: c["bad"] / "deep.jsonl"), lambda c: "deep.jsonl:1"),
    ("tokenize: unknown condition", tokenize_case(lambda c: c["bad"] / "cond.jsonl"), lambda c: "cond.jsonl:1"),
    ("tokenize: not UTF-8", tokenize_case(lambda c: c["bad"] / "latin1.jsonl"), lambda c: "latin1.jsonl:1"),
    ("tokenize: unsupported file", tokenize_case(lambda c: c["bad"] / "notes.txt"), lambda c: "notes.txt"),
    ("tokenize: output inside input", tokenize_case(lambda c: c["corpus"], lambda c: c["corpus"] / "out"), lambda c: "--out"),
    # data_io.sample_tokenized
    ("sample: not a tokenized folder", sample_case(lambda c: f"tokenized_path={c['corpus']}", lambda c: f"output_path={c['base'] / 's1'}"),
     lambda c: c["corpus"] / "tokenizer_info.json"),
    ("sample: output is the input", sample_case(lambda c: f"tokenized_path={c['base'] / 'tokenized'}", lambda c: f"output_path={c['base'] / 'tokenized'}"),
     lambda c: "output_path"),
    ("sample: argument without =", sample_case(lambda c: f"tokenized_path={c['base'] / 'tokenized'}", "epochs"), lambda c: "key=value"),
    ("sample: missing rules file", sample_case(lambda c: f"tokenized_path={c['base'] / 'tokenized'}", lambda c: f"output_path={c['base'] / 's2'}",
                                               lambda c: f"prefix_config_path={c['base'] / 'rules_missing.yaml'}"),
     lambda c: f"prefix_config_path {c['base'] / 'rules_missing.yaml'}"),
    ("sample: context_size too small", sample_case(lambda c: f"tokenized_path={c['base'] / 'tokenized'}", lambda c: f"output_path={c['base'] / 's3'}",
                                                   "context_size=2"), lambda c: "context_size"),
    ("sample: foreign file in the output", sample_case(lambda c: f"tokenized_path={c['base'] / 'tokenized'}",
                                                       lambda c: f"output_path={c['base'] / 'foreign_out'}", "context_size=64"),
     lambda c: c["base"] / "foreign_out" / "tokens.npy"),
    # pretrain.py
    ("pretrain: max_steps=0", lambda c: train([f"data.path={c['data']}", "max_steps=0"]), lambda c: "max_steps"),
    ("pretrain: global_batch_size=0", lambda c: train([f"data.path={c['data']}", "global_batch_size=0"]), lambda c: "global_batch_size"),
    ("pretrain: batch smaller than a sample", lambda c: train([f"data.path={c['data']}", "global_batch_size=2",
                                                               f"checkpoint_path={c['base'] / 'r1'}"]),
     lambda c: "global_batch_size=2"),
    ("pretrain: checkpoint_every_steps=0", lambda c: train([f"data.path={c['data']}", "checkpoint_every_steps=0"]),
     lambda c: "checkpoint_every_steps"),
    ("pretrain: lr=-1", lambda c: train([f"data.path={c['data']}", "lr=-1"]), lambda c: "lr: Input should be greater than or equal to 0"),
    ("pretrain: beta2=1", lambda c: train([f"data.path={c['data']}", "beta2=1"]), lambda c: "beta2"),
    ("pretrain: lr_min_ratio=2", lambda c: train([f"data.path={c['data']}", "lr_min_ratio=2"]), lambda c: "lr_min_ratio"),
    ("pretrain: data.max_samples_per_batch=0", lambda c: train([f"data.path={c['data']}", "data.max_samples_per_batch=0"]),
     lambda c: "data.max_samples_per_batch"),
    ("pretrain: misspelt key", lambda c: train([f"data.path={c['data']}", "lrr=1e-3"]), lambda c: "unknown key 'lrr'; did you mean 'lr'?"),
    ("pretrain: misspelt arch key", lambda c: train([f"data.path={c['data']}", "+arch.H_cycle=3"]),
     lambda c: "unknown key 'arch.H_cycle'; did you mean 'arch.H_cycles'"),
    ("pretrain: keep_last=0", lambda c: train([f"data.path={c['data']}", "keep_last=0"]), lambda c: "keep_last"),
    ("pretrain: data.path without metadata.json", lambda c: train([f"data.path={c['corpus']}"]), lambda c: f"data.path={c['corpus']}"),
    ("pretrain: new run into an existing run", lambda c: train([f"data.path={c['data']}", f"checkpoint_path={c['run']}"]),
     lambda c: f"checkpoint_path={c['run']}"),
    ("pretrain: resume from a folder that is not a run", lambda c: train([f"data.path={c['data']}", f"resume_from={c['corpus']}"]),
     lambda c: "all_config.yaml"),
    ("pretrain: resume without a complete checkpoint", lambda c: train([f"data.path={c['data']}", f"resume_from={c['unfinished']}",
                                                                        "global_batch_size=256"]),
     lambda c: c["unfinished"] / "checkpoints"),
    ("pretrain: resume on its dataset changed in place", lambda c: train([f"data.path={c['data']}", f"resume_from={c['changed']}",
                                                                          "global_batch_size=256"]),
     lambda c: f"data.path={c['data']}"),
    ("pretrain: resume on a dataset with a corrupt metadata.json", lambda c: train([f"data.path={c['corrupt']}", f"resume_from={c['run']}",
                                                                                    "global_batch_size=256"]),
     lambda c: c["corrupt"] / "metadata.json"),
    ("pretrain: warm start into the run's own directory", lambda c: train([f"data.path={c['other']}", f"resume_from={c['run']}",
                                                                           f"checkpoint_path={c['run']}", "global_batch_size=256"]),
     lambda c: f"checkpoint_path={c['run']}"),
    ("pretrain: resume from a poisoned checkpoint", lambda c: train([f"data.path={c['data']}", f"resume_from={c['poisoned']}",
                                                                     "global_batch_size=256", "max_steps=3"]),
     lambda c: ".metadata"),
    # evaluation.main
    ("evaluation: BoolQ answer as a string", eval_case("BoolQ", "validation", [{**BOOLQ, "answer": "false"}]), lambda c: c["last_eval_file"]),
    ("evaluation: MMLU answer -1", eval_case("MMLU", "test", [{**MMLU, "answer": -1}]), lambda c: c["last_eval_file"]),
    ("evaluation: Winogrande answer 0", eval_case("Winogrande", "validation", [{**WINO, "answer": "0"}]), lambda c: c["last_eval_file"]),
    ("evaluation: missing field", eval_case("BoolQ", "validation", [{k: v for k, v in BOOLQ.items() if k != "passage"}]),
     lambda c: c["last_eval_file"]),
    ("evaluation: empty benchmark file", eval_case("BoolQ", "validation", ""), lambda c: c["last_eval_file"]),
    ("evaluation: invalid JSON row", eval_case("BoolQ", "validation", "{not json\n"), lambda c: c["last_eval_file"]),
    ("evaluation: unknown benchmark", lambda c: cli("evaluation.main", [f"ckpt_path={c['run']}", "run_only=[NoSuchBench]"]),
     lambda c: "NoSuchBench"),
    ("evaluation: unknown key", lambda c: cli("evaluation.main", [f"ckpt_path={c['run']}", "no_such_key=1"]), lambda c: "no_such_key"),
    # conversion.convert_to_hf
    ("export: not a run directory", lambda c: cli("conversion.convert_to_hf", ["--ckpt_path", str(c["corpus"]), "--out_dir", str(c["base"] / "hf1")]),
     lambda c: "all_config.yaml"),
    ("export: no complete checkpoint", lambda c: cli("conversion.convert_to_hf", ["--ckpt_path", str(c["unfinished"]), "--out_dir", str(c["base"] / "hf2")]),
     lambda c: c["unfinished"] / "checkpoints"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_with_one_line_naming_it(ctx, case):
    _, run, names = case
    code, message = run(ctx)
    assert code != 0, message
    assert message and "\n" not in message.strip(), message
    assert str(names(ctx)) in message, message


def test_the_table_is_wide():
    tools = {c[0].split(":")[0] for c in CASES}
    assert len(CASES) >= 30 and tools >= {"tokenize", "sample", "pretrain", "evaluation", "export"}


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_a_bad_cpu_thread_count_is_named(monkeypatch, value):
    from training.distributed import set_cpu_threads

    monkeypatch.setenv("HRM_CPU_THREADS", value)
    with pytest.raises(SystemExit, match=f"HRM_CPU_THREADS='{re.escape(value)}': give a positive whole number"):
        set_cpu_threads(1024)


def test_loading_a_run_leaves_the_callers_thread_count(demo_run, monkeypatch):
    """Only the programs choose CPU threads; a library caller (lm-eval, a notebook) keeps its own."""
    import torch

    from training.run_dir import load_run

    monkeypatch.delenv("HRM_CPU_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # not what set_cpu_threads would choose for the demo model on this machine
    try:
        load_run(demo_run[1])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
