"""Sweep configurations: ``python -m train.sweep --config=NAME`` runs ``NAME.py``'s ``get_config()``.

Each module's docstring holds its command, what it takes on 2 cores, and where
its results are in the README.
"""
