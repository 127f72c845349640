"""Export a tuned model as one plain model directory: the LoRA adapter folded into the base weights
(`merge_and_unload`), saved as safetensors with the tokenizer and its chat template, loadable with
`AutoModelForCausalLM.from_pretrained` and no PEFT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def save_merged(model, tok, out_dir: Path | str, provenance: dict) -> Path:
    """Fold a PeftModel's adapter into its base (a plain model is saved as it is) and write it, the tokenizer
    and `export.json` (where it came from) to `out_dir`, replacing what was there only once all is written."""
    from peft import PeftModel

    if not tok.chat_template:
        raise ValueError("the tokenizer has no chat template; the exported model would not know its prompt format")
    out_dir = Path(out_dir)
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "export.json").write_text(json.dumps(provenance, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def merge_adapter(base_dir: Path | str, adapter_dir: Path | str, out_dir: Path | str) -> Path:
    """The model in `base_dir` with the adapter in `adapter_dir` merged in, written to `out_dir`. A full
    fine-tune (a whole model in `adapter_dir`) is re-saved as it is."""
    from ft_pipeline.evaluation.scoring import load_tuned

    model, tok = load_tuned(base_dir, adapter_dir)
    return save_merged(model, tok, out_dir, {"base": str(base_dir), "adapter": str(adapter_dir)})


def export_registered(name: str, version: str, out_dir: Path | str) -> tuple[Path, dict]:
    """Merge a registered model version (a number or an alias such as `champion`) into `out_dir`. Returns the
    directory and its provenance (the version number it resolved to, its training run)."""
    import mlflow

    client = mlflow.MlflowClient()
    mv = (client.get_model_version(name, version) if version.isdigit()
          else client.get_model_version_by_alias(name, version))
    py = mlflow.pyfunc.load_model(f"models:/{name}/{mv.version}").unwrap_python_model()
    provenance = {"registered_model": name, "version": str(mv.version), "requested": version, "source": mv.source,
                  "training_run_id": (mv.tags or {}).get("training_run_id")}
    return save_merged(py.model, py.tokenizer, out_dir, provenance), provenance
