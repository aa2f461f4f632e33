"""Experiment configs: one ``get_config() -> ml_collections.ConfigDict`` per file.

``base.py`` holds the defaults every experiment starts from; it is not an
experiment itself. ``python -m experiments list`` shows the others.
"""
