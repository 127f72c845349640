"""A wrong preset fails before any step runs, one line per problem naming the file and the key, with exit status
2 and no traceback (--debug shows it); the config classes refuse the same values when a Launchpad run builds
them, and TrainOptions refuses them when training is started from Python."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from ft_pipeline import knobs
from ft_pipeline.cli import presets
from ft_pipeline.definitions import defs
from ft_pipeline.defs.data import SplitConfig
from ft_pipeline.defs.evaluation import EvaluationConfig, GateConfig
from ft_pipeline.defs.model import BaseModelConfig, TrainConfig
from ft_pipeline.model import base_models
from ft_pipeline.model.training import TrainOptions
from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests._env import isolated_env

JOBS = [defs.resolve_job_def(j) for j in ("ingest_drop", "train_and_register", "traffic_daily")]  # as `run` checks


def _lines(tmp_path, text: str) -> list[str]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(presets.PresetError) as e:
        presets.load(path, JOBS)
    assert all(line.startswith(f"{path}") for line in e.value.lines)
    return [line.removeprefix(f"{path}") for line in e.value.lines]


@pytest.mark.parametrize("text, expected", [
    # the typo from the issue: the nearest knob is named
    ("ops: {lora_adapter: {config: {lora_rr: 8}}}",
     ": ops.lora_adapter.config.lora_rr: unknown key (did you mean 'lora_r'?)"),
    # used to run the data stages, then fail deep inside PEFT
    ("ops: {lora_adapter: {config: {lora_r: 0}}}", ": ops.lora_adapter.config.lora_r: must be >= 1 (got 0)"),
    ("ops: {lora_adapter: {config: {learning_rate: fast}}}",
     ": ops.lora_adapter.config.learning_rate: Input should be a valid number, unable to parse string as a number "
     "(got 'fast')"),
    ("ops: {lora_adapter: {config: {lr_scheduler_type: cosin}}}", "lr_scheduler_type: must be one of linear, cosine"),
    ("ops: {lora_adapter: {config: {per_device_train_batch_size: 0}}}", "per_device_train_batch_size: must be >= 1"),
    ("ops: {lora_adapter: {config: {lora_dropout: 1}}}", "lora_dropout: must be >= 0 and < 1 (got 1.0)"),
    ("ops: {lora_adapter: {config: {accelerate_config: configs/accelerate/nope.yaml}}}",
     "accelerate_config: no such file in the checkout: configs/accelerate/nope.yaml"),
    # a combination: keyed by the knob that has to change
    ("ops: {lora_adapter: {config: {load_in_4bit: true, finetune: full}}}", "config.load_in_4bit: QLoRA trains"),
    # pydantic lets 8.0 through as an int, Dagster's schema would not: the preset says so up front
    ("ops: {lora_adapter: {config: {max_steps: 8.0}}}", ": ops.lora_adapter.config.max_steps: Value \"8.0\""),
    ("ops: {lora_adaptr: {config: {max_steps: 8}}}", ": ops.lora_adaptr: unknown op (did you mean 'lora_adapter'?)"),
    ("ops: {lora_adapter: {confg: {max_steps: 8}}}", ": ops.lora_adapter.confg: unknown key (did you mean 'config'?)"),
    ("opz: {}", ": opz: unknown key (did you mean 'ops'?)"),
    ("ops: {registered_model: {config: {x: 1}}}", ": ops.registered_model.config: this op takes no config"),
    ("ops: {base_model: {config: {base_model: /nonexistent/model}}}",
     ": ops.base_model.config.base_model: local base model directory /nonexistent/model does not exist"),
    ("ops: {base_model: {config: {base_model: 'not a model'}}}", "base_model: 'not a model' is neither 'builtin:tiny'"),
    ("ops: {train_holdout_split: {config: {holdout_fraction: 1.5}}}", "holdout_fraction: must be > 0 and < 1"),
    ("ops: {cleaned_examples: {config: {near_dup_threshold: 0}}}", "near_dup_threshold: must be > 0 and <= 1"),
    ("ops: {train_holdout_split: {config: {conflicts: newest}}}", "conflicts: must be one of keep, quarantine, latest"),
    ("ops: {raw_examples: {config: {format: jsonl}}}", "format: must be one of auto, openai_chat"),
    ("ops: {evaluation_report: {config: {batch_size: 0}}}", "evaluation_report.config.batch_size: must be >= 1"),
    ("ops: {evaluation_report_beats_base_and_champion: {config: {metric: bleu}}}", "metric: must be one of"),
    ("ops: {evaluation_report_beats_base_and_champion: {config: {gate_on: schema}}}",
     "config.gate_on: must be one of free, constrained (got 'schema')"),
    ("ops: {evaluation_report: {config: {constrained_examples: -1}}}", "constrained_examples: must be >= 0"),
    # Dagster's own way to take a knob from the environment
    ("ops: {lora_adapter: {config: {lora_r: {env: FT_TEST_UNSET_VAR}}}}",
     "lora_r: environment variable FT_TEST_UNSET_VAR is not set"),
    ("ops: [1, 2]", ": ops: must be a mapping of op names"),
    ("ops: {lora_adapter: [\n", " line 2: not valid YAML"),
])
def test_a_wrong_preset_names_the_file_key_and_problem(tmp_path, text, expected):
    lines = _lines(tmp_path, text)
    assert len(lines) == 1 and expected in lines[0], lines


def test_every_problem_gets_its_own_line(tmp_path):
    lines = _lines(tmp_path, "ops:\n  lora_adapter:\n    config: {lora_rr: 8, lora_r: 0, max_steps: -1, seed: x}\n"
                             "  evaluation_report: {config: {max_new_tokens: 0}}\n")
    assert len(lines) == 5, lines


def test_every_shipped_preset_is_valid():
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        presets.load(path, JOBS)


def test_a_missing_local_model_dir_and_a_dir_without_weights_are_one_line(tmp_path):
    assert (base_models.spec_problem(str(tmp_path / "none"))
            == f"local base model directory {tmp_path / 'none'} does not exist")
    assert "no config.json" in base_models.spec_problem(str(tmp_path))
    assert base_models.spec_problem("builtin:tiny") is None and base_models.spec_problem("Qwen/Qwen2.5-0.5B") is None


@pytest.mark.parametrize("cls, bad, message", [
    (TrainConfig, dict(lora_r=0), r"lora_r\n.*must be >= 1 \(got 0\)"),
    (TrainConfig, dict(learning_rate=0.0), "must be > 0 and <= 1"),
    (BaseModelConfig, dict(base_model="/nonexistent/model"), "does not exist"),
    (SplitConfig, dict(holdout_fraction=0.0), "must be > 0 and < 1"),
    (EvaluationConfig, dict(max_new_tokens=0), "must be >= 1"),
    (GateConfig, dict(min_json_valid=2.0), "must be >= 0 and <= 1"),
    (GateConfig, dict(gate_on="Constrained"), "must be one of free, constrained"),
])
def test_the_config_classes_refuse_the_same_values_in_the_launchpad(cls, bad, message):
    # Dagster builds the config class from the Launchpad's run config when the step starts.
    with pytest.raises(ValidationError, match=message):
        cls(**bad)


def test_train_options_refuse_out_of_range_knobs_outside_dagster():
    with pytest.raises(knobs.KnobError) as e:
        TrainOptions(lora_r=0, max_steps=0)
    assert [k for k, _ in e.value.problems] == ["max_steps", "lora_r"]


def _cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "run", *args], env=isolated_env(tmp_path),
                          capture_output=True, text=True, timeout=300)


def test_the_cli_prints_one_line_per_problem_and_exits_2_before_any_step(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ops:\n  lora_adapter:\n    config: {lora_rr: 8, lora_r: 0}\n")
    proc = _cli(tmp_path, "--preset", str(bad))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"{bad}: ops.lora_adapter.config.lora_rr: unknown key (did you mean 'lora_r'?)",
        f"{bad}: ops.lora_adapter.config.lora_r: must be >= 1 (got 0)"]
    assert "raw drops" not in proc.stdout and not (tmp_path / "home" / "data").exists()  # nothing ran
    debug = _cli(tmp_path, "--preset", str(bad), "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "PresetError" in debug.stderr
