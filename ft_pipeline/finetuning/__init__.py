"""OpenAI's fine-tuning API mapped onto the pipeline, without a web framework or Dagster: uploaded files (a file is
a drop) and fine-tuning jobs (a job is a task and a Dagster run of its graph) in one SQLite database under the
home (store), a file's validation by the data layer (validation), a job's request and hyperparameters checked
and turned into a preset (jobs), a job's files laid out as its task's drops (job_files: the validation file the
holdout, a DPO file a preference drop and the SFT rows of its preferred outputs), and its checkpoints read from
the trainer's folders (progress). The HTTP edge is serving/finetuning_routes.py; the process that runs a job
is cli/finetuning_job.py."""
