"""Benchmark evaluation of a checkpoint: `python -m evaluation.main ckpt_path=...` (see main.py).

benchmarks.py  data loading and prompts of the eight benchmarks
scoring.py     answer extraction, metrics, majority voting, pass@k, aggregation
engines.py     the generation engine protocol and `build_engine`
"""
