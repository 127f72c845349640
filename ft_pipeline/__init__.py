"""ft_pipeline: fine-tune a language model on your own examples, as a Dagster asset graph tracked in MLflow."""
