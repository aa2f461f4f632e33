"""Benchmarks: fusion-block and training throughput, with PyTorch references.

Run them with ``python -m experiments bench fusion [--quick]``; results and
the machine they were measured on are in ``benchmarks/RESULTS.md``.
"""
