"""Framework-free logic of ft_pipeline: formats, cleaning, splitting, models, training, evaluation, registry.

Nothing under this package imports dagster; heavy libraries (torch, transformers, peft, trl, mlflow) are
imported inside the functions that need them so the Dagster code location loads fast.
"""
