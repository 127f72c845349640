"""Preference tuning (DPO): preference-pair drops in (pairs.py, pair_formats.py), and their training. Plain
Python that never imports dagster, like core/."""
