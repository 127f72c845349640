"""The command line, `ft-pipeline` (`python -m ft_pipeline.cli`): `run` (the main job on the persistent
instance, `main`), `forget` (`forget`), preset loading and its errors (`presets`) and what a run must
(re)materialize (`staleness`)."""
