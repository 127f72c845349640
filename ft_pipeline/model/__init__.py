"""The model stage: base models (builtin, Hub, local directory or GGUF file: `base_models`, `gguf_models`), chat
templates that mark what the loss is on (`chat_templates`), LoRA and full fine-tuning with TRL + PEFT
(`training`, with the CPU speed-ups of `cpu_speed`), and training in a child process or under a launcher
(`launch`, `train`: `python -m ft_pipeline.model.train`). Plain Python: never imports dagster."""
