"""Which registered model version answers a model id (loaded by serving.adapters from the registry's own pyfunc
artifacts, on a shared base), and the aliases followed as they move. One ModelStore per registered model;
serving.catalog holds them all.

Model ids: `NAME` is NAME at the served alias (`champion`), `NAME@ALIAS` another alias, `NAME/VERSION` one
version. A request takes the `Served` object of its version when it starts and keeps it until it ends; a move
of the alias replaces the store's pointer (one assignment under a lock) once the new version is loaded, so a
request in flight finishes on the version it started on and no request ever waits for a load it did not ask
for."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("ft_pipeline.serving")

MODEL_ID = re.compile(r"^(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))?$")


class ModelNotFound(LookupError):
    """The model id names no registered model, alias or version (HTTP 404)."""


class NotReady(RuntimeError):
    """The served alias points nowhere yet, or its version could not be loaded (HTTP 503)."""


@dataclass(eq=False)
class Served:
    """One loaded registered version: what a request generates with from start to end."""

    name: str
    version: str
    model: Any
    tokenizer: Any
    max_context: int  # prompt + completion tokens the model takes
    output_schema: dict | None = None  # the JSON Schema registered with the version (registry.output_schema)
    adapter: str | None = None  # its adapter's name in `model`, a shared base's PeftModel (None: a model of its own)
    shared: Any = None  # adapters.SharedBase that `model` is, when `adapter` is set
    created: int = field(default_factory=lambda: int(time.time()))
    _grammars: Any = field(default=None, repr=False)
    _grammars_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def grammars(self):
        """structured.grammar.Grammars for this version's tokenizer, built on first use (once)."""
        with self._grammars_lock:
            if self._grammars is None:
                from ft_pipeline.structured.grammar import Grammars

                vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
                # the registered schema says how this model was taught to write JSON: every schema follows it
                seps = (self.output_schema or {}).get("x-guidance") or {}
                seps = {k: seps[k] for k in ("item_separator", "key_separator") if k in seps}
                self._grammars = Grammars(self.tokenizer, vocab, self.tokenizer.eos_token_id, separators=seps)
            return self._grammars

    @property
    def fingerprint(self) -> str:
        """`NAME/VERSION`: the model id that pins this version (sent back as `system_fingerprint`)."""
        return f"{self.name}/{self.version}"


def context_limit(model, tok, fallback: int = 2048) -> int:
    """The longest sequence the model takes: its position embeddings, or the tokenizer's limit when that is
    smaller (transformers puts a huge sentinel there when it does not know)."""
    limits = [int(x) for x in (getattr(model.config, "max_position_embeddings", None),
                               getattr(tok, "model_max_length", None)) if x and int(x) < 10**8]
    return min(limits, default=fallback)


def registered_format(served: Served):
    """The response_format a request that names none gets with `--default-response-format registered`: the
    version's registered schema as a strict json_schema named after the model (None: the version has none)."""
    from ft_pipeline.structured.formats import parse_response_format

    if served.output_schema is None:
        return None
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", served.name)[:64]
    return parse_response_format({"type": "json_schema",
                                  "json_schema": {"name": name, "schema": served.output_schema, "strict": True}})


def parse_model_id(model_id: str, served_name: str, default_alias: str) -> tuple[str, str | None]:
    """(alias, None) or (None, version) that `model_id` asks for; ModelNotFound when it names another model
    or is not of the form NAME, NAME@ALIAS or NAME/VERSION."""
    m = MODEL_ID.match(model_id or "")
    if not m or m["name"] != served_name:
        raise ModelNotFound(f"The model '{model_id}' does not exist: this server serves '{served_name}' "
                            f"(as '{served_name}', '{served_name}@ALIAS' or '{served_name}/VERSION')")
    if m["version"]:
        return None, m["version"]
    return m["alias"] or default_alias, None


def _not_found(e) -> bool:
    return getattr(e, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


class Following:
    """What follows the registry: `start()` refreshes now (loading what the followed aliases point to), then every
    `poll_s` seconds in a daemon thread until `stop()`. Subclasses set poll_s, _stop (an Event) and _thread."""

    poll_s: float

    def refresh(self):
        raise NotImplementedError

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._follow, name="ft-pipeline-follow", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class ModelStore(Following):
    """The loaded versions of one registered model, and the aliases it follows (the served alias always,
    any other alias from the first request that names it). `load(name, version)` loads a version
    (adapters.Bases.load)."""

    def __init__(self, name: str, alias: str = "champion", poll_s: float = 5.0, keep: int = 3, *,
                 load: Callable[[str, str], Served], client=None):
        import mlflow

        self.name, self.alias, self.poll_s, self.keep = name, alias, poll_s, keep
        self._load, self._client = load, client or mlflow.MlflowClient()
        self._lock = threading.Lock()
        self._aliases: dict[str, Served] = {}  # alias -> the version answering it now
        self._followed: set[str] = {alias}
        self._versions: OrderedDict[str, Served] = OrderedDict()  # version -> loaded, least recently used first
        self._loading: dict[str, threading.Lock] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self._schemas: dict[str, dict | None] = {}  # version -> its registered output schema (never changes)

    # -- registry lookups
    def _alias_version(self, alias: str) -> str | None:
        import mlflow

        try:
            return str(self._client.get_model_version_by_alias(self.name, alias).version)
        except mlflow.exceptions.MlflowException as e:
            if _not_found(e):
                return None
            raise

    def _check_version(self, version: str) -> None:
        import mlflow

        try:
            self._client.get_model_version(self.name, version)
        except mlflow.exceptions.MlflowException as e:
            if _not_found(e):
                raise ModelNotFound(f"The model '{self.name}' has no version {version}") from e
            raise

    def _version(self, version: str) -> Served:
        """The loaded `version`, loading it once however many requests ask at the same time."""
        with self._lock:
            if version in self._versions:
                self._versions.move_to_end(version)
                return self._versions[version]
            gate = self._loading.setdefault(version, threading.Lock())
        with gate:
            with self._lock:
                if version in self._versions:
                    return self._versions[version]
            t0 = time.monotonic()
            served = self._load(self.name, version)
            log.info("loaded %s version %s in %.1fs", self.name, version, time.monotonic() - t0)
            with self._lock:
                self._versions[version] = served
                self._evict()
                self._loading.pop(version, None)
            return served

    def _evict(self) -> None:
        """Drop the least recently used versions past `keep`, never one an alias answers with. A request still
        generating with a dropped version holds its own reference, so it finishes on it."""
        pinned = {s.version for s in self._aliases.values()}
        for v in list(self._versions):
            if len(self._versions) <= self.keep:
                break
            if v not in pinned:
                del self._versions[v]

    # -- what requests call
    def get(self, model_id: str) -> Served:
        alias, version = parse_model_id(model_id, self.name, self.alias)
        if version is not None:
            with self._lock:
                known = version in self._versions
            if not known:  # a loaded version exists; ask the registry only about the others
                self._check_version(version)
            return self._version(version)
        with self._lock:
            served = self._aliases.get(alias)
        if served is not None:
            return served
        found = self._alias_version(alias)
        if found is None:
            if alias == self.alias:
                raise NotReady(f"'{self.name}' has no '{alias}' alias yet (register a model: make run)")
            raise ModelNotFound(f"The model '{self.name}' has no alias '{alias}'")
        served = self._version(found)
        with self._lock:
            self._followed.add(alias)
            self._aliases.setdefault(alias, served)
            return self._aliases[alias]

    def current(self) -> dict[str, str]:
        """alias -> the version answering it now."""
        with self._lock:
            return {a: s.version for a, s in sorted(self._aliases.items())}

    # -- following
    def refresh(self) -> dict[str, tuple[str | None, str]]:
        """Read every followed alias once; load a version an alias moved to and then point the alias at it.
        Returns the moves made, alias -> (old version, new version). An alias that disappeared keeps answering
        with its last version; a version that fails to load leaves the alias where it was (and is retried)."""
        moves = {}
        with self._lock:
            followed = sorted(self._followed)
        for alias in followed:
            try:
                target = self._alias_version(alias)
                with self._lock:
                    now = self._aliases.get(alias)
                if target is None or (now is not None and now.version == target):
                    continue
                served = self._version(target)
                with self._lock:
                    self._aliases[alias] = served
                    self._evict()
                moves[alias] = (now.version if now else None, target)
                log.info("%s@%s: version %s -> %s", self.name, alias, now.version if now else "none", target)
                self.last_error = None
            except Exception as e:  # noqa: BLE001 - the poll thread must outlive a registry hiccup or a bad version
                self.last_error = f"{alias}: {type(e).__name__}: {e}"
                log.warning("following %s@%s failed (the current version keeps answering): %s",
                            self.name, alias, self.last_error)
        return moves

    def listing(self) -> list[dict]:
        """Every model id this server answers: NAME (the served alias), NAME@ALIAS for each alias, and
        NAME/VERSION for each version, with the version's creation time."""
        versions = sorted(self._client.search_model_versions(f"name = '{self.name}'"), key=lambda m: int(m.version))
        by_number = {str(mv.version): mv for mv in versions}
        # search_model_versions leaves `aliases` empty; the registered model holds them.
        aliases = self._client.get_registered_model(self.name).aliases if versions else {}
        by_alias = {a: by_number[str(v)] for a, v in aliases.items() if str(v) in by_number}
        rows = []
        if self.alias in by_alias:
            rows.append((self.name, by_alias[self.alias]))
        rows += [(f"{self.name}@{a}", mv) for a, mv in sorted(by_alias.items())]
        rows += [(f"{self.name}/{mv.version}", mv) for mv in versions]
        return [{"id": i, "object": "model", "created": int((mv.creation_timestamp or 0) / 1000),
                 "owned_by": "ft_pipeline", "version": str(mv.version), "output_schema": self._schema(mv)}
                for i, mv in rows]

    def _schema(self, mv) -> dict | None:
        """The version's registered output schema (an extra field of the model object: OpenAI's has none)."""
        from ft_pipeline.registry.versions import output_schema

        v = str(mv.version)
        if v not in self._schemas:
            self._schemas[v] = output_schema(mv)
        return self._schemas[v]
