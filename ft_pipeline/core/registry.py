"""The MLflow side of a trained adapter: a pyfunc model that answers user messages, registration that is safe
to retry, and the `champion` alias."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel

PIP_REQUIREMENTS = ["torch", "transformers==5.23.0", "peft==0.21.2", "accelerate==1.15.0", "safetensors"]


class AdapterModel(PythonModel):
    """Base model + LoRA adapter. predict(["user message", ...]) -> ["completion", ...]."""

    def load_context(self, context):
        from peft import PeftModel

        from ft_pipeline.core.base_models import load_model_and_tokenizer

        base = context.artifacts.get("base_model") or context.model_config["base_model"]
        model, _ = load_model_and_tokenizer(base, trust_remote_code=bool(context.model_config.get("trust_remote_code")))
        self.model = PeftModel.from_pretrained(model, context.artifacts["adapter"]).eval()
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["adapter"])
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_new_tokens = int(context.model_config.get("max_new_tokens", 128))
        self.system_prompt = context.model_config.get("system_prompt") or None

    def predict(self, model_input: list[str], params: dict | None = None) -> list[str]:
        from ft_pipeline.core.evaluation import generate

        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        convs = [system + [{"role": "user", "content": str(m)}] for m in model_input]
        max_new = int((params or {}).get("max_new_tokens", self.max_new_tokens))
        return generate(self.model, self.tokenizer, convs, max_new_tokens=max_new)


def log_adapter_model(adapter_dir: Path, base: dict, name: str = "model") -> mlflow.models.model.ModelInfo:
    """Log the adapter as a pyfunc model in the active run. A base built here (builtin) or given as a local
    directory travels with the model as an artifact; a Hub model is referenced by id and revision."""
    import ft_pipeline

    artifacts = {"adapter": str(adapter_dir)}
    config = {"max_new_tokens": 128}
    if base["source"] == "hub":
        config["base_model"] = base["path"]
    else:
        artifacts["base_model"] = base["path"]
    return mlflow.pyfunc.log_model(name=name, python_model=AdapterModel(), artifacts=artifacts,
                                   model_config=config, pip_requirements=PIP_REQUIREMENTS,
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
    except mlflow.exceptions.MlflowException:
        return None


def set_champion(name: str, version: str) -> None:
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
