"""Preference tuning (DPO): preference-pair drops in (`pairs`, `pair_formats`) and their training (`training`).
Pair accuracy is scored in evaluation/pair_scoring.py. Plain Python: never imports dagster."""
