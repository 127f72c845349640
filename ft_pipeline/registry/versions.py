"""The MLflow side of a trained adapter: a pyfunc model that answers user messages, registration that is safe
to retry, and the `champion` alias."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

PIP_REQUIREMENTS = ["torch", "transformers==5.23.0", "peft==0.21.2", "accelerate==1.15.0", "safetensors",
                    "llguidance==1.9.1"]


class AdapterModel(PythonModel):
    """Base model + LoRA adapter, or a fully fine-tuned model.
    predict(["user message", ...]) -> ["completion", ...]; params `max_new_tokens` and `response_format`
    (OpenAI's, as a dict or its JSON text: every answer then follows the schema, compact JSON)."""

    _grammars = None

    def load_context(self, context):
        from ft_pipeline.evaluation.scoring import load_tuned

        base = context.artifacts.get("base_model") or context.model_config.get("base_model")
        # A full fine-tune logs its whole model as the "adapter" artifact; load_tuned tells them apart.
        self.model, self.tokenizer = load_tuned(base, context.artifacts["adapter"],
                                                bool(context.model_config.get("trust_remote_code")))
        self.max_new_tokens = int(context.model_config.get("max_new_tokens", 128))
        self.system_prompt = context.model_config.get("system_prompt") or None

    # A DataFrame hint, not list[str]: MLflow then validates the input against the logged signature, which declares
    # the params (a signature inferred from a list[str] hint has none, and MLflow drops every param); with no hint at
    # all MLflow warns on every load, into the one-line output of `forget` and `export`.
    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        from ft_pipeline.evaluation.scoring import generate

        if hasattr(model_input, "iloc"):  # through MLflow's schema enforcement: a one-column DataFrame
            model_input = model_input.iloc[:, 0].tolist()
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        convs = [system + [{"role": "user", "content": str(m)}] for m in model_input]
        max_new = int((params or {}).get("max_new_tokens") or self.max_new_tokens)  # 0: the logged default
        fmt = self.response_format((params or {}).get("response_format"))
        return generate(self.model, self.tokenizer, convs, max_new_tokens=max_new, response_format=fmt,
                        grammars=self._grammars)

    def response_format(self, raw):
        """The ResponseFormat `raw` asks for (None for text); ValueError naming the problem (MLflow's 400)."""
        import json

        from ft_pipeline.structured.formats import parse_response_format
        from ft_pipeline.structured.grammar import Grammars

        fmt = parse_response_format(json.loads(raw) if isinstance(raw, str) and raw.strip() else raw or None)
        if not fmt.constrained:
            return None
        if self._grammars is None:
            self._grammars = Grammars(self.tokenizer, self.model.config.vocab_size, self.tokenizer.eos_token_id)
        self._grammars.matcher(fmt)  # compiles (and caches) it now: a bad schema fails before generating
        return fmt


def signature():
    """Strings in, strings out, and the params `predict` reads: MLflow passes a pyfunc only the params its
    signature declares (predict's input has no type hint, since a signature inferred from type hints would take
    its params from an input example, which MLflow then runs at every registration). A JSON Schema has no fixed
    shape, so response_format travels as JSON text (a dict works when calling the Python model itself)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", 0),
                                              ParamSpec("response_format", "string", "")]))


def log_adapter_model(adapter_dir: Path, base: dict, name: str = "model",
                      finetune: str = "lora") -> mlflow.models.model.ModelInfo:
    """Log the adapter as a pyfunc model in the active run, from code (registry/adapter_pyfunc.py), not a pickle.
    A base built here (builtin) or given as a local directory travels with the model as an artifact; a Hub
    model is referenced by id and revision. A full fine-tune (`finetune="full"`) is a whole model in
    `adapter_dir` and needs no base."""
    import ft_pipeline

    artifacts = {"adapter": str(adapter_dir)}
    config = {"max_new_tokens": 128, "finetune": finetune}
    if finetune == "full":
        pass
    elif base["source"] == "hub":
        config["base_model"] = base["path"]
    else:
        artifacts["base_model"] = base["path"]
    entry = Path(__file__).with_name("adapter_pyfunc.py")  # models from code: see that file
    return mlflow.pyfunc.log_model(name=name, python_model=str(entry), artifacts=artifacts,
                                   model_config=config, pip_requirements=PIP_REQUIREMENTS,
                                   signature=signature(),
                                   code_paths=[str(Path(ft_pipeline.__file__).parent)])


def find_version(client: mlflow.MlflowClient, name: str, training_run_id: str):
    """The registered version already made from this training run, if any (so a retry adds no duplicate)."""
    for mv in client.search_model_versions(f"name = '{name}'"):
        if (mv.tags or {}).get("training_run_id") == training_run_id:
            return mv
    return None


def register(model_uri: str, name: str, training_run_id: str, tags: dict[str, str]):
    client = mlflow.MlflowClient()
    existing = find_version(client, name, training_run_id)
    if existing is not None:
        for k, v in tags.items():
            client.set_model_version_tag(name, existing.version, k, v)
        return existing, False
    mv = mlflow.register_model(model_uri, name, tags={"training_run_id": training_run_id, **tags})
    return mv, True


def champion(name: str):
    """The version the `champion` alias points to, or None."""
    client = mlflow.MlflowClient()
    try:
        return client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException as e:
        # No registered model yet, or no alias on it: there is no champion. Anything else is a real error.
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def set_champion(name: str, version: str) -> None:
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)


def promote(name: str, version: str) -> str | None:
    """Point `champion` at an existing `version`; rolling back is promoting an older one. Every version stays
    registered. Returns the version that was champion before, or None."""
    mlflow.MlflowClient().get_model_version(name, version)  # an unknown version raises here, before anything moves
    previous = champion(name)
    set_champion(name, version)
    return str(previous.version) if previous else None


LINEAGE_ARTIFACT = "lineage/train_rows.jsonl"


def log_lineage(train_records: list[dict], drop_files: dict[str, str] | None = None,
                inherited: list[dict] | None = None) -> None:
    """Record, in the active training run, the provenance of every row it trains on: its drop (partition key),
    the original name of that drop's file (`drop_files`, the split manifest's), line, raw-row hash and id, and
    for a row of reviewed traffic the stored completion it came from (`completion_id`) and the version that
    answered it (`answered_by`, NAME/VERSION); and the `inherited` rows (a warm start's: the lineage of the
    adapter it continued) not among them."""
    import json

    files = drop_files or {}
    rows = [{"drop": r["drop"], "file": files.get(r["drop"], r["drop"]),
             **{k: r[k] for k in ("line", "raw_sha256", "id")},
             **{k: r[k] for k in ("completion_id", "answered_by") if k in r}} for r in train_records]
    seen = {(r["drop"], r["line"], r["raw_sha256"]) for r in rows}
    rows += [r for r in inherited or [] if (r["drop"], r["line"], r["raw_sha256"]) not in seen]
    mlflow.log_text("".join(json.dumps(r) + "\n" for r in rows), LINEAGE_ARTIFACT)


def training_rows(name: str, version: str) -> list[dict]:
    """The raw rows (drop, line, raw-row hash) that trained a registered model version."""
    import json

    client = mlflow.MlflowClient()
    mv = client.get_model_version(name, version)
    text = mlflow.artifacts.load_text(f"runs:/{mv.tags['training_run_id']}/{LINEAGE_ARTIFACT}")
    return [json.loads(line) for line in text.splitlines() if line]


def aliases(client: mlflow.MlflowClient, name: str, version) -> list[str]:
    """The aliases that point at a version, sorted."""
    return sorted(client.get_model_version(name, str(version)).aliases)


def versions_trained_on(name: str, drop: str, line: int | None = None, raw_sha256: str | None = None) -> list[dict]:
    """Every registered version of `name` whose training data holds the given row (by drop, its partition key or
    its file's original name, and line, or by the hash of the raw row), with its aliases."""
    client = mlflow.MlflowClient()
    out = []
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda m: int(m.version)):
        for row in training_rows(name, mv.version):
            if drop in (row["drop"], row.get("file")) and (line is None or row["line"] == line) and \
                    (raw_sha256 is None or row["raw_sha256"].startswith(raw_sha256)):
                # search_model_versions returns versions without their aliases; get_model_version has them.
                out.append({"version": str(mv.version), "aliases": aliases(client, name, mv.version), "row": row})
                break
    return out


OUTPUT_SCHEMA_ARTIFACT = "output_schema.json"


def attach_output_schema(name: str, version, run_id: str, schema: dict | None) -> str | None:
    """Log the JSON Schema of the version's answers as `output_schema.json` in its run (`run_id`, the run the
    model was logged in) and tag the version `has_output_schema` (true/false) and `output_schema_sha256`.
    Returns that sha256, or None without a schema."""
    import hashlib

    from ft_pipeline.structured.schema import dumps

    client = mlflow.MlflowClient()
    if schema is None:
        client.set_model_version_tag(name, str(version), "has_output_schema", "false")
        return None
    text = dumps(schema)
    sha = hashlib.sha256(text.encode()).hexdigest()
    client.log_text(run_id, text, OUTPUT_SCHEMA_ARTIFACT)
    client.set_model_version_tag(name, str(version), "has_output_schema", "true")
    client.set_model_version_tag(name, str(version), "output_schema_sha256", sha)
    return sha


def output_schema(mv) -> dict | None:
    """The JSON Schema registered with a model version (attach_output_schema), or None."""
    import json

    tags = getattr(mv, "tags", None) or {}
    if tags.get("has_output_schema") != "true":
        return None
    run_id = tags.get("training_run_id") or mv.run_id
    return json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{OUTPUT_SCHEMA_ARTIFACT}"))
