"""The one Definitions object of ft_pipeline (loaded by `dagster dev` through workspace.yaml and by `dg dev`)."""

import warnings

import dagster as dg

from ft_pipeline.defs import automation, tasks, traffic
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

# A task's asset checks are the default task's with their keys rewritten (defs/tasks.py); Dagster turns such a copy
# back into an AssetChecksDefinition through a parameter it marks beta, and says so on every load: noise.
warnings.filterwarnings("ignore", message="Parameter `execution_type` of function `AssetsDefinition.__init__`")

# Every task's graph (defs/tasks.py: the default task's keys as they were, the others' under `<task>/`), merged
# with what they share: the traffic assets of the served default model, the automation sensor over every asset,
# the resources (one home, one MLflow store), the loggers and the executor.
defs = dg.Definitions.merge(*tasks.all_task_definitions(), dg.Definitions(
    assets=automation.with_automation([traffic.reviewed_traffic, traffic.traffic_drift]),
    jobs=[traffic.traffic_daily_job, traffic.reevaluate_job],
    schedules=[traffic.traffic_daily_schedule],
    sensors=[automation.automation_sensor, traffic.drift_reevaluation_sensor],
    resources=default_resources(),
    loggers=LOGGERS,
    executor=executor,
))
