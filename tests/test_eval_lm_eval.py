"""lm-evaluation-harness with the `hrm_text` model on a real (small) demo run, offline: a local
custom task over the demo's held-out rows agrees item for item with the native harness, and
loglikelihood equals the Transformers export's prefix-LM forward."""

import json
import os
import subprocess
import sys

import pytest
import torch

from evaluation.engines import NativeEngine
from evaluation.lm_eval_model import HrmTextLM, command_line
from simple_inference_engine import SimpleEngine, heldout_accuracy
from training.run_dir import load_run

from conftest import ROOT

TASK = """task: demo_heldout
dataset_path: json
dataset_kwargs:
  data_files:
    test: {heldout}
test_split: test
output_type: generate_until
doc_to_text: "{{{{instruction}}}}"
doc_to_target: "{{{{response}}}}"
generation_kwargs:
  until: []
  max_gen_toks: 32
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def native(demo_run):
    _, run = demo_run
    model, tokenizer, context_len, _ = load_run(run, device="cpu")
    return SimpleEngine(model, tokenizer, context_len, compile=False)


def test_cli_on_a_custom_task_agrees_item_for_item_with_the_native_harness(demo_run, native, tmp_path):
    """lm-eval's own command line, offline, in a fresh process (lm-eval 0.4.13's `lm_eval` finds
    no model outside its package, so the command is `python -m evaluation.lm_eval_model`, which
    registers `hrm_text` and runs lm-eval's CLI with the same arguments)."""
    data, run = demo_run
    heldout = [json.loads(line) for line in (data / "heldout.jsonl").read_text().splitlines()][:8]
    own = NativeEngine(native).generate([r["instruction"] for r in heldout], "direct", 32, 0.0, 1, 8)
    # Every other row's gold is the native answer, so both verdicts occur whatever the short
    # training reached: the item-for-item comparison below cannot pass vacuously.
    rows = [{**r, "response": texts[0].strip()} if i % 2 == 0 else r for i, (r, texts) in enumerate(zip(heldout, own))]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "demo_heldout.yaml").write_text(TASK.format(heldout=tmp_path / "rows.jsonl"))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf_cache")}
    cli = subprocess.run([sys.executable, "-m", "evaluation.lm_eval_model", "--model", "hrm_text",
                          "--model_args", f"ckpt_path={run}", "--tasks", "demo_heldout", "--include_path", str(tasks),
                          "--batch_size", "8", "--device", "cpu", "--log_samples", "--output_path", str(tmp_path / "out")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-3000:]
    (samples_file,) = (tmp_path / "out").rglob("samples_demo_heldout_*.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]["demo_heldout"]

    assert [s["filtered_resps"][0] for s in samples] == [texts[0] for texts in own]
    verdicts = [s["exact_match"] for s in samples]
    assert verdicts == [float(texts[0].strip() == r["response"].strip()) for texts, r in zip(own, rows)]
    assert 0 < sum(verdicts) < len(rows)
    assert results["exact_match,none"] == pytest.approx(heldout_accuracy(native, rows, batch_size=8))


def test_the_command_line_runs_on_cpu_where_no_cuda_device_exists():
    args = ["--model", "hrm_text", "--model_args", "ckpt_path=RUN", "--tasks", "gsm8k"]
    assert command_line(args, cuda=False) == [*args, "--device", "cpu"]
    assert command_line(args, cuda=True) == args
    for asked in (["--device", "cuda:1"], ["--device=cpu"]):  # what the user asked for stands
        assert command_line(args + asked, cuda=False) == args + asked


def test_model_args_that_lm_evals_own_flags_also_pass_are_refused_by_name():
    # the CLI passes --batch_size (default 1) and --device itself; the same key in --model_args
    # would otherwise stop it with a TypeError about duplicate keywords
    with pytest.raises(ValueError, match="batch_size given in --model_args; pass --batch_size instead"):
        HrmTextLM.create_from_arg_obj({"ckpt_path": "RUN", "batch_size": 8}, {"batch_size": 1, "device": None})
    # simple_evaluate(model_args="...") takes the string path
    with pytest.raises(ValueError, match="device given in --model_args; pass --device instead"):
        HrmTextLM.create_from_arg_string("ckpt_path=RUN,device=cpu", {"batch_size": 1, "device": "cpu"})


def test_loglikelihood_equals_the_exports_prefix_lm_forward(demo_run, native, tmp_path):
    from lm_eval.api.instance import Instance
    from transformers import AutoModelForCausalLM

    from conversion.convert_to_hf import convert

    _, run = demo_run
    export = convert(run, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(export).eval()
    lm = HrmTextLM(engine=native, batch_size=2)
    pairs = [("add 12 34", "46"), ("reverse 9081", "1809"), ("sort 5129", "1259")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    got = lm.loglikelihood(requests)
    # `pretrained=EXPORT` (the Transformers engine) scores and generates as the run does.
    on_export = HrmTextLM(pretrained=str(export), device="cpu")
    assert [g for g, _ in on_export.loglikelihood(requests)] == pytest.approx([g for g, _ in got], abs=1e-3)
    generate = [Instance("generate_until", {}, (context, {"until": ["9"], "max_gen_toks": 8}), i)
                for i, (context, _) in enumerate(pairs)]
    assert on_export.generate_until(generate) == lm.generate_until(generate)
    # flex prefill (CPU: uncompiled) pads the packed forward to a compiled shape, 1024 tokens and
    # 4 sample slots here: the padding changes nothing
    padded = SimpleEngine(native.model, native.tokenizer, native.context_len, compile=False, prefill_backend="flex")
    assert padded.pad_prefill
    lm_padded = HrmTextLM(engine=padded, batch_size=2)
    assert [g for g, _ in lm_padded.loglikelihood(requests)] == pytest.approx([g for g, _ in got], abs=1e-4)
    assert lm_padded.generate_until(generate) == lm.generate_until(generate)
    for (context, continuation), (logprob, greedy) in zip(pairs, got):
        prompt = native.encode_prompt(context, "direct")
        response = native.tokenizer.encode_batch([continuation])[0]
        ids = torch.tensor([prompt + response])
        token_type_ids = torch.zeros_like(ids)
        token_type_ids[0, :len(prompt)] = 1  # the prompt bidirectional, the response causal
        with torch.no_grad():
            logits = hf(input_ids=ids, token_type_ids=token_type_ids).logits[0].double().log_softmax(-1)
        steps = logits[len(prompt) - 1:-1]
        expected = steps.gather(-1, torch.tensor(response)[:, None]).sum().item()
        assert logprob == pytest.approx(expected, abs=1e-3)
        assert greedy == bool((steps.argmax(-1) == torch.tensor(response)).all())
