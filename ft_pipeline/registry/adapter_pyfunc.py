"""The file MLflow logs as the adapter's pyfunc ("models from code"): loading the model runs this file, which
names the model class, instead of unpickling an object (a pickle ties the model to the code and Python that
wrote it, and MLflow warns about it on every registration). The class lives in registry.versions; ft_pipeline
travels with the model as code_paths."""

import mlflow

from ft_pipeline.registry.versions import AdapterModel

mlflow.models.set_model(AdapterModel())
