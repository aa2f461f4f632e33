"""User entry points: ``python -m experiments <command>``."""
