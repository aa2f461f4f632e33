"""Reports of experiment runs: plots (matplotlib, Agg backend) and evaluation analyses."""
