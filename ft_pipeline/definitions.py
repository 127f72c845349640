"""The one Definitions object of ft_pipeline (loaded by `dagster dev` through workspace.yaml and by `dg dev`)."""

import dagster as dg

from ft_pipeline.defs import automation, data, evaluation, jobs, model, preference, registry, sensors, traffic
from ft_pipeline.resources import default_resources
from ft_pipeline.runs.console import LOGGERS

# Runs launched from the UI, the daemon or the automation run each step in a process of its own. Started with
# `spawn` (Dagster's default), each imported dagster, this module, torch and transformers again, nine steps a
# training run. A forkserver imports them once per run and forks every step from it (test_daemon's two queued
# training runs and two direct ones: 298 s spawned, 177 s forked). No torch op runs in the server, so no thread
# pool or CUDA context is forked. `ft-pipeline run` runs its steps in its own process.
executor = dg.multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": ["ft_pipeline.definitions", "torch", "transformers",
                                                         "peft", "trl", "mlflow"]}}}, name="multiprocess")

defs = dg.Definitions(
    assets=automation.with_automation(
        [data.raw_examples, data.cleaned_examples, data.train_holdout_split, model.base_model, model.lora_adapter,
         preference.preference_pairs, preference.preference_adapter,
         evaluation.evaluation_report, registry.registered_model, registry.merged_model, registry.gguf_model,
         traffic.reviewed_traffic, traffic.traffic_drift]),
    asset_checks=[evaluation.beats_base_and_champion, data.no_near_duplicate_across_split],
    jobs=[jobs.ingest_drop_job, jobs.ingest_preferences_job, jobs.train_and_register_job, traffic.traffic_daily_job,
          traffic.reevaluate_job],
    schedules=[traffic.traffic_daily_schedule],
    sensors=[sensors.raw_drops_sensor, automation.automation_sensor, traffic.drift_reevaluation_sensor],
    resources=default_resources(),
    loggers=LOGGERS,
    executor=executor,
)
