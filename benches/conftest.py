"""Micro-benchmarks: each core operation beside the best pure-Python path for the same job.

Run: `.venv/bin/python -m pytest benches/ --benchmark-only --benchmark-group-by=group`
(add `--benchmark-json=out.json` to keep the figures). Compare ratios within one run: machines are noisy.
"""
