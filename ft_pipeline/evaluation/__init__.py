"""The evaluation stage: greedy answers and their scores (`scoring`), cached per model and example (`cache`), one
evaluation of base, tuned and champion (`run`), pair accuracy on preference pairs (`pair_scoring`), the retention
check (`retention`), chrF and ROUGE-L (`text_metrics`), and the report with its plots (`report`, `plots`). Plain
Python: never imports dagster."""
