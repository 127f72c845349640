"""Declarative automation: what re-materializes by itself, and when.

- The split follows its inputs: a cleaned drop (or the base model) with a new data version -> re-split.
- Training waits for the retrain cron (weekly by default, FT_PIPELINE_RETRAIN_CRON) and then runs only if the
  data versions of its inputs (train set, base model) or its own code version changed since it last trained. A
  re-split that yields the same bytes has the same data version, so it retrains nothing.
- Preference pairs are read by the raw-drop sensor when the preferences/ folder changes; DPO follows a new SFT
  adapter or new pairs.
- Evaluation follows the DPO asset (which materializes after every SFT adapter, trained or not); registration
  follows an evaluation whose blocking gate passed; the merged export follows a new registered version.

The automation sensor that evaluates these conditions runs by default (Dagster's own default sensor is created
STOPPED, so we define ours)."""

import os

import dagster as dg

AC = dg.AutomationCondition
DEFAULT_RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00 UTC


def retrain_cron() -> str:
    return os.environ.get("FT_PIPELINE_RETRAIN_CRON", DEFAULT_RETRAIN_CRON)


def _not_busy() -> dg.AutomationCondition:
    return ~AC.in_progress() & ~AC.any_deps_in_progress()


def _key(prefix: list[str], name: str) -> dg.AssetKey:
    return dg.AssetKey([*prefix, name])


def split_condition(prefix: list[str] = ()) -> dg.AutomationCondition:
    # Not eager(): eager waits while any dependency is missing, and one unparseable drop (a missing
    # cleaned_examples partition) would then hold the split back forever. The split skips such drops itself.
    # Inputs are compared by data version (content hash): re-cleaning a drop into the same bytes re-splits nothing.
    inputs_changed = AC.any_deps_match(AC.data_version_changed()) | AC.code_version_changed()
    return ((inputs_changed | AC.newly_missing()).since_last_handled()
            & ~AC.any_deps_missing().ignore(dg.AssetSelection.assets(_key(prefix, "cleaned_examples")))
            & _not_busy()).with_label("split follows its inputs")


def train_condition(cron: str) -> dg.AutomationCondition:
    inputs_changed = (AC.any_deps_match(AC.data_version_changed()) | AC.code_version_changed()).since_last_handled()
    return (AC.cron_tick_passed(cron) & (inputs_changed | AC.missing()) & ~AC.any_deps_missing()
            & AC.all_deps_blocking_checks_passed()
            & _not_busy()).with_label(f"on {cron}, if inputs changed since the last training")


def preference_condition() -> dg.AutomationCondition:
    # A dependency with a new data version (new pairs; a retrained SFT adapter) or one requested in this very
    # tick (the SFT adapter on the retrain cron), so SFT and DPO go in one run.
    changed = (AC.any_deps_match(AC.data_version_changed() | AC.will_be_requested()) | AC.code_version_changed()
               | AC.newly_missing())
    return (changed.since_last_handled() & ~AC.any_deps_missing() & AC.all_deps_blocking_checks_passed()
            & _not_busy()).with_label("follows a new SFT adapter or new preference pairs")


def follows(upstream: str, prefix: list[str] = ()) -> dg.AutomationCondition:
    return ((AC.any_deps_updated() | AC.code_version_changed()).since_last_handled() & ~AC.any_deps_missing()
            & _not_busy()).allow(dg.AssetSelection.assets(_key(prefix, upstream))).with_label(f"follows {upstream}")


def conditions(prefix: list[str] = ()) -> dict[str, dg.AutomationCondition]:
    """{asset name: its condition}; `prefix`: the task's key prefix (defs/tasks.py), none for the default task."""
    return {
        "train_set": split_condition(prefix), "holdout_set": split_condition(prefix),
        "base_model": AC.missing() & ~AC.in_progress(),
        "lora_adapter": train_condition(retrain_cron()),
        # preference_pairs is the raw-drop sensor's (like ingestion). DPO follows a new SFT adapter or new pairs;
        # evaluation follows DPO, which materializes after every SFT adapter (trained, or recording why not), so
        # a retrain is evaluated once.
        "preference_adapter": preference_condition(),
        "evaluation_report": follows("preference_adapter", prefix),
        "registered_model": follows("evaluation_report", prefix) & AC.all_deps_blocking_checks_passed(),
        "merged_model": follows("registered_model", prefix),
        "gguf_model": follows("registered_model", prefix),
    }


def with_automation(assets: list, prefix: list[str] = ()) -> list:
    """The assets with their automation conditions attached (kept here so the policy reads in one place); the
    assets of a task other than the default have its key `prefix`."""
    conds = {_key(prefix, name): c for name, c in conditions(prefix).items()}
    return dg.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=conds.get(spec.key)), assets)


automation_sensor = dg.AutomationConditionSensorDefinition(
    "ft_pipeline_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions: re-split on new data, retrain on the retrain cron "
                "when inputs changed, then evaluate and register.")
