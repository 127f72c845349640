"""The GGUF files of a registered model version, as `ft-pipeline export --format gguf|gguf-adapter` and the
`gguf_model` asset write them: the merged model (`model.gguf`) or the LoRA adapter (`adapter.gguf`, for the
base's own GGUF file, or a `base.gguf` written beside it when the base came from none), each with an Ollama
`Modelfile` and `export.json` (the version, and each file's size and sha256)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ft_pipeline.export.gguf import GgufExportError, lora_refusal, source_gguf, write_adapter, write_model

FORMS = ("gguf", "gguf-adapter")


def version_dirs(name: str, version: str, dst: Path) -> tuple[dict, Path, Path]:
    """(provenance, base model dir, adapter dir) of a registered version (a number or an alias), its artifacts
    downloaded into `dst`."""
    import mlflow
    import yaml

    client = mlflow.MlflowClient()
    mv = client.get_model_version(name, version) if version.isdigit() else \
        client.get_model_version_by_alias(name, version)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}", dst_path=str(dst)))
    pyfunc = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    # MLflow saves each artifact under artifacts/<its source folder's name>; the MLmodel maps names to paths
    arts = {k: local / v["path"] for k, v in (pyfunc.get("artifacts") or {}).items()}
    base = arts.get("base_model") or Path(pyfunc.get("model_config", {}).get("base_model", ""))  # a Hub id
    tags = mv.tags or {}
    prov = {"registered_model": name, "version": str(mv.version), "requested": version, "source": mv.source,
            "training_run_id": tags.get("training_run_id"), "base_model": tags.get("base_model")}
    return prov, base, arts["adapter"]


def _candidates(prov: dict) -> list[Path]:
    spec = prov.get("base_model") or ""
    return [Path(spec.removeprefix("gguf:"))] if spec.startswith("gguf:") else []


def check_out(out_dir: Path, force: bool) -> None:
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise GgufExportError(f"{out_dir} already holds files; choose an empty folder or add --force to replace them")


def export_gguf(name: str, version: str, out_dir: Path | str, ftype: str = "q8_0", form: str = "gguf",
                force: bool = False) -> dict:
    """Write the GGUF form `form` of a registered version to `out_dir`; returns export.json's content."""
    from ft_pipeline.data.formats import sha256_file
    from ft_pipeline.evaluation.scoring import is_full_model
    from ft_pipeline.export import modelfile
    from ft_pipeline.export.merged import merge_adapter
    from ft_pipeline.model.base_models import load_tokenizer
    from ft_pipeline.model.chat_templates import strip_generation_markers

    out_dir = Path(out_dir)
    check_out(out_dir, force)
    with tempfile.TemporaryDirectory(prefix="gguf-export-") as tmp:
        tmp = Path(tmp)
        prov, base, adapter = version_dirs(name, version, tmp / "version")
        work = tmp / "out"
        work.mkdir()
        label = f"{name}-v{prov['version']}"
        source = source_gguf(base, _candidates(prov)) if base.is_dir() else None
        if form == "gguf":
            merged = merge_adapter(base, adapter, tmp / "merged")
            info = write_model(merged, work / "model.gguf", ftype, name=label, source=source)
            from_, adapter_file = "./model.gguf", None
        elif form == "gguf-adapter":
            if is_full_model(adapter):
                raise GgufExportError("a full fine-tune has no adapter form: export --format gguf instead")
            if why := lora_refusal(json.loads((adapter / "adapter_config.json").read_text())):
                raise GgufExportError(why)
            base_config = json.loads((base / "config.json").read_text())
            info = write_adapter(adapter, base_config, work / "adapter.gguf", ftype, name=label)
            if source is not None:
                from_ = str(source)
            else:
                write_model(base, work / "base.gguf", ftype, name=f"{label}-base")
                from_ = "./base.gguf"
            adapter_file = "./adapter.gguf"
        else:
            raise GgufExportError(f"export format {form!r}: choose one of {', '.join(FORMS)}")
        tok = load_tokenizer(adapter if (adapter / "tokenizer_config.json").exists() else base)
        try:
            (work / "Modelfile").write_text(modelfile.modelfile(strip_generation_markers(tok.chat_template), from_,
                                                                adapter_file))
            note = None
        except modelfile.ModelfileError as e:
            note = str(e)
        files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(work.iterdir())}
        meta = {**prov, "format": form, "type": ftype, "gguf": info, "from": from_, "files": files,
                **({"modelfile": note} if note else {})}
        (work / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.move(str(work), str(out_dir))
    return meta
