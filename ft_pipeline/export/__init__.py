"""The registered model in the forms other tools run: a merged safetensors model (`merged`). Plain Python: never
imports dagster."""
