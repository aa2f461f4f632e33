"""Shared pytest setup: small, deterministic, CPU-only."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep each xdist worker to its share of the 2 cores.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
