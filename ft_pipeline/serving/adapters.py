"""Registered versions on shared base models: each base model is loaded once (keyed by what it is: the hash of
its files, or its Hub id, and the dtype), wrapped in one PeftModel, and every LoRA version on it is one adapter
of that PeftModel (`load_adapter(path, adapter_name=...)`), whatever registered model it belongs to.

A batch of one adapter generates with that adapter merged into the base weights (merged until a batch needs
another: one task served alone always runs merged). A batch that mixes adapters is one generate call on the
unmerged base, each LoRA layer adding its rows' adapter deltas in two matmuls over every adapter of the batch at
once (`SharedBase.rows`); docs/serving.md#many-tasks-on-one-server has the measurement against splitting it per
adapter and against PEFT's own mixed-adapter batches, which both lost. Adapters that are not plain LoRA on
linear layers (DoRA, LoRA on embeddings) split into one merged call per adapter instead. A version no longer
referenced (evicted, and no request holds it) frees its adapter; the base goes with its last adapter. A full
fine-tune is a model of its own."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import weakref
from pathlib import Path

log = logging.getLogger("ft_pipeline.serving")

DTYPE = "float32"  # what load_model_and_tokenizer loads on CPU, and so part of a base's identity


class SharedBase:
    """One base model in memory as a PeftModel, and the adapters on it. `lock` is held by the generation thread
    for a whole generate call and by every change to the adapters, so weights never change under a forward pass."""

    def __init__(self, key: tuple, model):
        self.key, self.model = key, model
        self.lock = threading.RLock()
        self.merged: str | None = None  # the adapter merged into the base weights now
        self.adapters: set[str] = set(model.peft_config)
        self._next = len(self.adapters)

    def add(self, adapter_dir: Path) -> str:
        with self.lock:
            name = f"adapter{self._next}"
            self._next += 1
            self._unmerge()
            self.model.load_adapter(str(adapter_dir), adapter_name=name)
            self.adapters.add(name)
            return name

    def remove(self, name: str) -> bool:
        """Free adapter `name`; True when it was the last one (the caller then drops the whole base)."""
        with self.lock:
            if self.merged == name:
                self._unmerge()
            self.adapters.discard(name)
            if not self.adapters:
                return True
            self.model.delete_adapter(name)
            return False

    def use(self, name: str) -> None:
        """Make `name` the adapter the next generate call runs with, merged into the weights (call under lock)."""
        import torch

        if self.merged == name:
            return
        with torch.no_grad():  # the delta weights need no autograd graph
            self._unmerge()
            self.model.set_adapter(name)
            self.model.merge_adapter()
        self.merged = name

    def mixable(self, names) -> bool:
        """Whether a batch over adapters `names` can run as one call (`rows`): plain LoRA on linear layers."""
        from peft.tuners.lora import Linear, LoraLayer

        for m in self.model.modules():
            if isinstance(m, LoraLayer) and any(n in m.lora_A or n in m.lora_embedding_A for n in names):
                if not isinstance(m, Linear) or m.fan_in_fan_out or any(m.use_dora.get(n) for n in names):
                    return False
        return True

    @contextlib.contextmanager
    def rows(self, names: list[str]):
        """Generate with adapter `names[i]` on row i of the batch (call under lock; `mixable(names)` first): the
        base weights unmerged and PEFT's adapters off, each LoRA layer's output gets x @ A @ B for its rows'
        adapters, where A stacks every adapter's lora_A (in x sum of ranks), B their scaled lora_B, and a 0/1 mask
        between them keeps each row to its own adapter's rank slice. Two small matmuls and a multiply per layer,
        whatever the number of adapters (PEFT's mixed batch runs a split, two matmuls and an index_add per layer
        and adapter)."""
        import torch
        from peft.tuners.lora import LoraLayer

        order = sorted(set(names))
        hooks = []
        with torch.no_grad():
            self._unmerge()
            for m in self.model.modules():
                if not isinstance(m, LoraLayer) or not (have := [n for n in order if n in m.lora_A]):
                    continue
                dtype = m.get_base_layer().weight.dtype
                a = torch.cat([m.lora_A[n].weight for n in have]).T.to(dtype).contiguous()
                b = torch.cat([m.lora_B[n].weight * m.scaling[n] for n in have], dim=1).T.to(dtype).contiguous()
                mask = torch.zeros(len(names), 1, a.shape[1], dtype=dtype, device=a.device)
                start = 0
                for n in have:
                    r = m.lora_A[n].weight.shape[0]
                    mask[[i for i, x in enumerate(names) if x == n], :, start:start + r] = 1
                    start += r
                hooks.append(m.register_forward_hook(
                    lambda mod, args, out, a=a, b=b, mask=mask: out.add_((args[0] @ a).mul_(mask) @ b)))
        try:
            with self.model.disable_adapter():
                yield
        finally:
            for h in hooks:
                h.remove()

    def _unmerge(self) -> None:
        import torch

        if self.merged is not None:
            with torch.no_grad():
                self.model.unmerge_adapter()
            self.merged = None


class Bases:
    """The shared bases of one server, and how a registered version is loaded onto them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._bases: dict[tuple, SharedBase] = {}
        self._loading: dict[tuple, threading.Lock] = {}

    def shared(self) -> list[SharedBase]:
        with self._lock:
            return list(self._bases.values())

    def load(self, name: str, version: str):
        """The registered version `name`/`version` as a models.Served: its files read the way any MLflow client
        reads them (`models:/NAME/VERSION`, the registry's AdapterModel pyfunc's artifacts and config)."""
        import mlflow

        from ft_pipeline.evaluation.scoring import is_full_model, load_tokenizer
        from ft_pipeline.model.base_models import load_model_and_tokenizer
        from ft_pipeline.registry.versions import output_schema
        from ft_pipeline.serving.models import Served, context_limit

        schema = output_schema(mlflow.MlflowClient().get_model_version(name, str(version)))
        with tempfile.TemporaryDirectory(prefix="ft-pipeline-serve-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
            flavor = mlflow.models.Model.load(str(local)).flavors["python_function"]
            files = {k: local / v["path"] for k, v in (flavor.get("artifacts") or {}).items()}
            config = flavor.get("config") or {}
            trust = bool(config.get("trust_remote_code"))
            adapter_dir = files["adapter"]
            tok = load_tokenizer(adapter_dir, trust)
            if is_full_model(adapter_dir):  # a full fine-tune: nothing to share
                model, _ = load_model_and_tokenizer(adapter_dir, trust_remote_code=trust)
                return Served(name, str(version), model.eval(), tok, context_limit(model, tok), schema)
            shared, adapter = self._adapter_on_base(files.get("base_model") or config["base_model"], adapter_dir,
                                                    trust)
        served = Served(name, str(version), shared.model, tok, context_limit(shared.model, tok), schema,
                        adapter=adapter, shared=shared)
        weakref.finalize(served, self._release, shared, adapter)
        return served

    def _adapter_on_base(self, base, adapter_dir: Path, trust: bool) -> tuple[SharedBase, str]:
        """The shared base `base` (a local directory or a Hub id) with the adapter in `adapter_dir` added."""
        from ft_pipeline.model.base_models import content_hash, load_model_and_tokenizer

        local = isinstance(base, Path)
        key = ("files", content_hash(base), DTYPE, trust) if local else ("hub", str(base), DTYPE, trust)
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load of a base, however many versions on it load at once
            with self._lock:
                shared = self._bases.get(key)
            if shared is not None:
                return shared, shared.add(adapter_dir)
            from peft import PeftModel

            model, _ = load_model_and_tokenizer(base, dtype=DTYPE, trust_remote_code=trust)
            peft = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name="adapter0").eval()
            shared = SharedBase(key, peft)
            with self._lock:
                self._bases[key] = shared
            log.info("loaded base model %s (%s)", Path(base).name if local else base, key[1][:12])
            return shared, "adapter0"

    def _release(self, shared: SharedBase, adapter: str) -> None:
        """A version nobody holds any more: free its adapter, and the base with its last adapter."""
        if shared.remove(adapter):
            with self._lock:
                if self._bases.get(shared.key) is shared:
                    del self._bases[shared.key]
            log.info("freed base model %s (no version on it is loaded)", shared.key[1][:12])
