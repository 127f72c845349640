"""Erasure: requests to forget a raw row (`requests`: recorded, found in every drop, scrubbed from what is not
regenerated) and the registered versions they reach (`registry`). `ft-pipeline forget` (cli/forget.py) drives
them. Plain Python: never imports dagster."""
