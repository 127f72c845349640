"""The split's `output_schema` knob: the JSON Schema of the train set's answers, written next to the split as
output_schema.json for the registry to carry with the model. `auto` infers it (structured/schema.py) when every
assistant answer of the train set is a JSON object, `off` writes none, anything else is a schema file (relative to
the checkout, or absolute) that must be in OpenAI's strict subset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ft_pipeline.structured import schema as output_schemas
from ft_pipeline.structured.schema import SchemaCollector, SchemaFileError

OUTPUT_SCHEMA_FILE = "output_schema.json"
__all__ = ["OUTPUT_SCHEMA_FILE", "SchemaFileError", "check_output_schema", "split_schema", "write_output_schema"]


def check_output_schema(value: str, root: Path | None = None) -> dict | None:
    """The schema the knob names: None for auto and off, else the file's (SchemaFileError naming the file and
    its problem). `root`: what a relative path is relative to (default: the checkout)."""
    if value in ("auto", "off"):
        return None
    if root is None:
        from ft_pipeline.settings import REPO_ROOT

        root = REPO_ROOT
    return output_schemas.load_schema_file(value, root)


def write_output_schema(out_dir: Path, value: str, collected: SchemaCollector | None,
                        given: dict | None = None) -> dict:
    """Write the schema to out_dir/output_schema.json (removed when there is none) and return its manifest
    entry: source (inferred, file or off), sha256 of the file (None without one) and, without one, why."""
    path = out_dir / OUTPUT_SCHEMA_FILE
    if value == "off":
        schema, info = None, {"source": "off", "why_none": "output_schema: off"}
    elif value == "auto":
        schema = collected.schema() if collected is not None else None
        info = {"source": "inferred", "answers": collected.n if collected else 0}
        if schema is None:
            info["why_none"] = collected.why if collected else "not collected"
    else:
        schema = given if given is not None else check_output_schema(value)
        info = {"source": "file", "file": str(value)}
    if schema is None:
        path.unlink(missing_ok=True)
        return {**info, "sha256": None}
    text = output_schemas.dumps(schema)
    path.write_text(text)
    return {**info, "sha256": hashlib.sha256(text.encode()).hexdigest()}


SPLIT_CHANGED = "the split changed since training"


def split_schema(split_dir: Path, train_sha256: str) -> tuple[dict | None, str]:
    """(the split's output_schema.json, "") when the split on disk is the one a model trained on (`train_sha256`,
    its adapter's record), else (None, a line saying why there is none): the schema the registered version
    carries, and the one its evaluation decodes under."""
    manifest_path = Path(split_dir) / "manifest.json"
    if not manifest_path.exists():
        return None, "no split manifest"
    manifest = json.loads(manifest_path.read_text())
    info = manifest.get("output_schema") or {}
    if manifest.get("train_sha256", "")[:16] != train_sha256[:16]:
        return None, SPLIT_CHANGED
    if not info.get("sha256"):
        return None, f"the split has no output schema ({info.get('why_none') or 'a split written before it had one'})"
    return json.loads((Path(split_dir) / OUTPUT_SCHEMA_FILE).read_text()), ""
