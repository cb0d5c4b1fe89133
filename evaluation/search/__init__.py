"""Test-time compute: search methods over a policy, guided by verifiers.

methods.py (the methods, their compute accounting), verifiers.py (step scores: programmatic, PRM
directories, outcome), policy.py (the native engine as the policy), compute_optimal.py (best
method per difficulty bin), benchmarks.py (`search=` in evaluation.main), demo.py (`make ttc-demo`).
"""
