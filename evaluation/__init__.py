"""Benchmark evaluation of a checkpoint: `python -m evaluation.main ckpt_path=...` (see main.py).

benchmarks.py     data, schema checks, prompts and metrics of the reference's benchmarks
scoring.py        the reference's answer extraction and metrics (GSM8k, MATH, DROP, MCQ, AIME)
engines.py        the generation engine protocol, context limits, `build_engine`
lm_eval_model.py  the lm-evaluation-harness model `hrm_text`
search/           test-time search methods
"""
