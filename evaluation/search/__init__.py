"""Test-time compute: search methods over a policy, guided by verifiers (methods.py, verifiers.py)."""
