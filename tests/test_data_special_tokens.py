"""Special tokens come from tokenizer_info end to end: a demo run whose tokenizer holds data_io's
special tokens (boq <|im_start|>, eoq <|im_end|>, eoa <|box_end|>, conditions <|object_ref_start|>
...; no pad) trains, generates, evaluates and exports with those strings. Expectations come from the
raw HF tokenizer file, not from data_io.text_tokenizer. The run is small (30 steps): the held-out
accuracy of a full demo run is checked with `make demo DEMO_FLAGS="--special-tokens data_io"`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from data_io.text_tokenizer import load_tokenizer

DATA_IO = {"boq": "<|im_start|>", "eoq": "<|im_end|>", "eoa": "<|box_end|>", "direct": "<|object_ref_start|>",
           "cot": "<|object_ref_end|>", "noisy": "<|quad_start|>", "synth": "<|quad_end|>"}


@pytest.fixture(scope="module")
def data_io_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("data_io_demo")
    data, run = base / "data", base / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "data_io.demo", "--out", str(data), "--train-size", "3000",
                    "--heldout-size", "40", "--epochs", "1", "--special-tokens", "data_io"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, str(ROOT / "pretrain.py"), "--config-name", "cfg_demo", f"data.path={data}/sampled",
                    f"checkpoint_path={run}", "max_steps=30", "global_batch_size=1024", "log_interval=10",
                    "checkpoint_every_steps=null", "epochs=1"], cwd=ROOT, env=env, check=True, capture_output=True)
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(data / "tokenizer" / "tokenizer.json"))
    return data, run, {role: raw.token_to_id(token) for role, token in DATA_IO.items()}, raw


def test_data_and_run_carry_data_io_strings(data_io_run):
    data, run, ids, raw = data_io_run
    assert None not in ids.values() and raw.token_to_id("<|boq|>") is None
    for info_file in (data / "tokenized" / "tokenizer_info.json", run / "tokenizer" / "tokenizer_info.json"):
        info = json.loads(info_file.read_text())
        assert {k: info[k] for k in ("boq", "eoq", "eoa")} == {k: DATA_IO[k] for k in ("boq", "eoq", "eoa")}
        assert info["condition_mapping"] == {c: DATA_IO[c] for c in ("direct", "cot", "noisy", "synth")}
        assert "pad" not in info
    meta = json.loads((data / "sampled" / "metadata.json").read_text())
    tokens = np.load(data / "sampled" / "tokens.npy")
    e = {k: np.load(data / "sampled" / "epoch_0" / f"{k}.npy") for k in ("inst_start", "inst_len", "resp_start", "resp_len")}
    for k in range(20):
        inst = tokens[e["inst_start"][k]:e["inst_start"][k] + e["inst_len"][k]].tolist()
        resp = tokens[e["resp_start"][k]:e["resp_start"][k] + e["resp_len"][k]].tolist()
        assert inst[:2] == [ids["boq"], ids["direct"]] and inst[-1] == ids["eoq"] and resp[-1] == ids["eoa"]
    assert meta["tokenizer_info"]["boq"] == DATA_IO["boq"]


def test_generates_evaluates_and_exports_with_data_io_strings(data_io_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conversion.convert_to_hf import convert
    from evaluation.engines import NativeEngine, TransformersEngine
    from simple_inference_engine import SimpleEngine, heldout_accuracy
    from training.run_dir import load_run

    data, run, ids, raw = data_io_run
    model, tokenizer, context_len, _ = load_run(run)
    engine = SimpleEngine(model, tokenizer, context_len, compile=False)
    assert engine.eoa == ids["eoa"]
    text = "add 12 34"
    prompt = engine.encode_prompt(text, "cot,direct")
    assert prompt == [ids["boq"], ids["cot"], ids["direct"], *raw.encode(text, add_special_tokens=False).ids, ids["eoq"]]
    heldout = [json.loads(line) for line in (data / "heldout.jsonl").read_text().splitlines()]
    assert 0.0 <= heldout_accuracy(engine, heldout[:8], max_new_tokens=8) <= 1.0

    out = convert(run, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(out)
    assert (tok.bos_token, tok.eos_token, tok.bos_token_id, tok.eos_token_id) == (
        DATA_IO["boq"], DATA_IO["eoa"], ids["boq"], ids["eoa"])
    spec = json.loads((out / "hrm_text_conditions.json").read_text())
    assert (spec["boq"], spec["eoq"], spec["eoa"], spec["condition_mapping"]["direct"]) == (
        DATA_IO["boq"], DATA_IO["eoq"], DATA_IO["eoa"], DATA_IO["direct"])
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.config.eos_token_id == ids["eoa"] and hf.config.bos_token_id == ids["boq"]
    # An eoa-free greedy generation (eoa suppressed) so the comparison covers every token.
    hook = model.lm_head.register_forward_hook(lambda m, i, o: o.index_fill(-1, torch.tensor([ids["eoa"]]), -1e4))
    try:
        native = engine.generate_ids([prompt], max_new_tokens=6)[0]
    finally:
        hook.remove()
    x = torch.tensor([prompt])
    theirs = hf.generate(x, token_type_ids=torch.ones_like(x), max_new_tokens=6, do_sample=False,
                         suppress_tokens=[ids["eoa"]], pad_token_id=ids["eoa"])[0, len(prompt):].tolist()
    assert theirs == native
    # Evaluation's two engines build the same prompt and agree on greedy text.
    exported = TransformersEngine(out, device="cpu")
    assert exported.encode_prompt(text, "cot,direct") == prompt
    prompts = [r["instruction"] for r in heldout[:4]]
    assert exported.generate(prompts, "direct", 8, 0.0, 1, 4) == NativeEngine(engine).generate(prompts, "direct", 8, 0.0, 1, 4)


def test_a_tokenizer_without_either_set_is_refused_with_the_fix(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from data_io import DataError

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.add_special_tokens(["<|start|>", "<|end|>", "<|stop|>", "<|d|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataError, match="holds neither .* --boq/--eoq/--eoa/--conditions"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))
    named = load_tokenizer(str(tmp_path / "tokenizer.json"), {"boq": "<|start|>", "eoq": "<|end|>", "eoa": "<|stop|>",
                                                             "condition_mapping": {"direct": "<|d|>"}})
    assert named.instruction_ids([], ["direct"]) == [0, 3, 1] and named.eoa_id == 2 and named.pad_id is None
    with pytest.raises(DataError, match=r"lacks the special tokens \['<\|x\|>'\]"):
        load_tokenizer(str(tmp_path / "tokenizer.json"), {"boq": "<|start|>", "eoq": "<|end|>", "eoa": "<|x|>",
                                                         "condition_mapping": {}})
