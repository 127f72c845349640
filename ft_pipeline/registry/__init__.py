"""The MLflow side: the logged pyfunc model and registered versions, lineage and the `champion` alias
(`versions`, `adapter_pyfunc`), datasets logged as run inputs (`tracking`), and warm starts from the champion
(`warm_start`). Plain Python: never imports dagster."""
