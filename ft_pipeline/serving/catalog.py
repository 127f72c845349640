"""Every registered model one server serves (one per task): a models.ModelStore per name, each following its
own alias, all loading their versions onto one adapters.Bases, so the tasks tuned from one base model share it.

By default the served names are every registered model in the tracking store that has the served alias, read
again at each poll (a task whose first champion appears while the server runs is served from then on, and a
request naming it finds it at once); `--model NAME` (repeatable) or FT_PIPELINE_SERVE_MODELS names them instead."""

from __future__ import annotations

import logging
import threading

from ft_pipeline.serving.adapters import Bases
from ft_pipeline.serving.models import MODEL_ID, Following, ModelNotFound, ModelStore, Served

log = logging.getLogger("ft_pipeline.serving")


class Catalog(Following):
    def __init__(self, names: tuple[str, ...] = (), alias: str = "champion", poll_s: float = 5.0, keep: int = 3,
                 client=None, bases: Bases | None = None):
        import mlflow

        self.named, self.alias, self.poll_s, self.keep = tuple(names), alias, poll_s, keep
        self.bases = bases or Bases()
        self._client = client or mlflow.MlflowClient()
        self._lock = threading.Lock()
        self._stores: dict[str, ModelStore] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- which registered models are served
    def _registered_with_alias(self) -> list[str]:
        names, token = [], None
        while True:
            page = self._client.search_registered_models(max_results=1000, page_token=token)
            names += [rm.name for rm in page if self.alias in (rm.aliases or {})]
            token = page.token
            if not token:
                return sorted(names)

    def _add(self, names) -> None:
        with self._lock:
            for name in names:
                if name not in self._stores:
                    self._stores[name] = ModelStore(name, self.alias, self.poll_s, self.keep, load=self.bases.load,
                                                    client=self._client)

    def stores(self) -> dict[str, ModelStore]:
        with self._lock:
            return dict(sorted(self._stores.items()))

    def store(self, name: str) -> ModelStore:
        """The store of registered model `name`; ModelNotFound when this server does not serve it."""
        with self._lock:
            found = self._stores.get(name)
        if found is None and not self.named:  # registered (or given the alias) since the last poll?
            self._add(n for n in self._registered_with_alias() if n == name)
            with self._lock:
                found = self._stores.get(name)
        if found is None:
            served = ", ".join(f"'{n}'" for n in self.stores()) or "none yet"
            raise ModelNotFound(f"The model '{name}' does not exist: this server serves {served} (each as "
                                f"'NAME', 'NAME@ALIAS' or 'NAME/VERSION')")
        return found

    # -- what requests call
    def get(self, model_id: str) -> Served:
        m = MODEL_ID.match(model_id or "")
        if not m:
            raise ModelNotFound(f"The model '{model_id}' does not exist: a model id is NAME, NAME@ALIAS or "
                                f"NAME/VERSION")
        return self.store(m["name"]).get(model_id)

    def current(self) -> dict[str, dict[str, str]]:
        """name -> (alias -> the version answering it now)."""
        return {name: s.current() for name, s in self.stores().items()}

    @property
    def last_error(self) -> str | None:
        errors = [f"{name}: {s.last_error}" for name, s in self.stores().items() if s.last_error]
        return "; ".join(errors) or None

    def listing(self) -> list[dict]:
        """Every model id this server answers, model by model (models.ModelStore.listing)."""
        return [row for s in self.stores().values() for row in s.listing()]

    # -- following
    def refresh(self) -> None:
        """Pick up registered models that got the alias (unless the names are fixed), then follow every
        model's aliases (ModelStore.refresh: one model's failure leaves the others and its own current version)."""
        try:
            self._add(self.named or self._registered_with_alias())
        except Exception as e:  # noqa: BLE001 - the poll thread must outlive a registry hiccup
            log.warning("listing the registered models failed (the served ones keep answering): %s", e)
        for store in self.stores().values():
            store.refresh()

