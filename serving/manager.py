"""Model manager: which versions of which models are served, and their lifecycle.

Mirrors TF Serving's ServerCore + file-system source + availability-preserving policy:

* every --file_system_poll_wait_seconds the base paths are listed; numeric directories are
  versions, and the model's version policy (latest{num_versions} by default, all{},
  specific{versions}) picks the aspired ones;
* an aspired version goes START -> LOADING -> (warmup replayed) -> AVAILABLE; a version
  that fails to load is retried on the next polls (at most max_num_load_retries times:
  an export still being copied completes meanwhile), then ends in END with the error in
  its status, and never serves;
* a version that is no longer aspired goes UNLOADING -> END, but only once an aspired
  version is AVAILABLE (so a broken new version never takes the old one down); requests
  already holding it complete first;
* version labels resolve to versions; the config file can be re-read periodically.

Thread-safe: requests take a handle (a reference count) under the lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator

import grpc
from absl import logging
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import config as config_lib
from serving.errors import ServingError, invalid_argument, not_found
from serving.metrics import Metrics
from serving.servable import DEFAULT_TAGS, Servable, servable_id

State = get_model_status_pb2.ModelVersionStatus.State
START, LOADING, AVAILABLE, UNLOADING, END = (State.START, State.LOADING, State.AVAILABLE,
                                            State.UNLOADING, State.END)


@dataclasses.dataclass
class VersionState:
    name: str
    version: int
    path: str
    state: int = START
    error: ServingError | None = None
    servable: Servable | None = None
    inflight: int = 0
    failed_attempts: int = 0
    gave_up: bool = False


def list_versions(base_path: str) -> dict[int, str]:
    """Numeric subdirectories of base_path (TF Serving ignores anything else)."""
    try:
        entries = os.listdir(base_path)
    except OSError:
        return {}
    versions = {}
    for entry in entries:
        if entry.isdigit() and os.path.isdir(os.path.join(base_path, entry)):
            versions[int(entry)] = os.path.join(base_path, entry)
    return versions


def aspired_versions(policy, available: list[int]) -> set[int]:
    """The versions a ModelVersionPolicy serves out of those on disk."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return set(available)
    if kind == "specific":
        return set(policy.specific.versions) & set(available)
    num = policy.latest.num_versions if kind == "latest" else 1
    return set(sorted(available)[-max(num, 1):]) if available else set()


class ModelManager:
    """Loads, serves and unloads model versions per a ModelServerConfig."""

    def __init__(self, *, model_config: model_server_config_pb2.ModelServerConfig,
                 metrics: Metrics | None = None,
                 file_system_poll_wait_seconds: float = 1.0,
                 max_num_load_retries: int = 5,
                 prepare: Callable[[Servable], Servable] | None = None,
                 allow_version_labels_for_unavailable_models: bool = False,
                 saved_model_tags=DEFAULT_TAGS,
                 model_config_file: str | None = None,
                 model_config_file_poll_wait_seconds: float = 0.0):
        """Args:
          model_config: the models to serve (validated here).
          metrics: where load latency and model states are recorded.
          file_system_poll_wait_seconds: base path polling period; <= 0 polls only once.
          max_num_load_retries: further attempts after a failed load, one per poll.
          prepare: turns a loaded version into the one that serves, before it becomes
            AVAILABLE (serving.loading.prepare_version: the batching wrapper, which runs
            like a Servable, then warmup); raising fails the load.
          allow_version_labels_for_unavailable_models: new labels may point at versions not
            yet AVAILABLE.
          saved_model_tags: the meta graph to load.
          model_config_file: re-read every model_config_file_poll_wait_seconds if > 0.
        """
        config_lib.validate_model_server_config(model_config)
        self.metrics = metrics or Metrics()
        self._poll_seconds = file_system_poll_wait_seconds
        self._max_retries = max(0, max_num_load_retries)
        self._prepare = prepare
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._tags = tuple(saved_model_tags)
        self._config_file = model_config_file
        self._config_poll_seconds = model_config_file_poll_wait_seconds
        self._config_text = None
        if model_config_file:
            with open(model_config_file) as f:
                self._config_text = f.read()
        self._lock = threading.Condition()
        self._poll_lock = threading.Lock()  # One poll at a time.
        self._models: dict[str, model_server_config_pb2.ModelConfig] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._versions: dict[str, dict[int, VersionState]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._apply_config(model_config, initial=True)

    # --- configuration ---------------------------------------------------------------

    def _apply_config(self, config, *, initial: bool = False) -> None:
        config_lib.validate_model_server_config(config)
        models = {m.name: m for m in config.model_config_list.config}
        with self._lock:
            # ServerCore checks labels before it loads anything new (so a label moving to
            # a version in the same edit is refused; see serving/README.md).
            for name, model in models.items():
                old = self._labels.get(name, {})
                for label, version in model.version_labels.items():
                    state = self._versions.get(name, {}).get(version)
                    if state is not None and state.state == AVAILABLE:
                        continue
                    if old.get(label) == version:
                        continue
                    if self._allow_unavailable_labels and (initial or label not in old):
                        continue
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {name}, "
                        "which is not currently available for inference")
            self._models = models
            self._labels = {name: dict(m.version_labels) for name, m in models.items()}
            for name in models:
                self._versions.setdefault(name, {})

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Applies a new config and polls at once. Raises ServingError/ValueError."""
        self._apply_config(config)
        self.poll()

    def _maybe_reload_config_file(self) -> None:
        try:
            with open(self._config_file) as f:
                text = f.read()
            if text == self._config_text:
                return
            self.reload_config(config_lib.parse_model_server_config(text))
            self._config_text = text
            logging.info("Reloaded model config file %s", self._config_file)
        except Exception as error:  # A bad edit must not stop the server.
            logging.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", error)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> None:
        """Polls once (loading the initial versions), then keeps polling in threads.

        Raises:
          ServingError: wait=True and a configured model has no version AVAILABLE after
            its loads finished ("1 model(s) did not become available: {...}", as
            ServerCore::WaitUntilModelsAvailable).
        """
        self.poll()
        if wait:
            self._wait_initial_models()
        if self._poll_seconds > 0:
            self._spawn(self._poll_loop, "model-poll")
        if self._config_file and self._config_poll_seconds > 0:
            self._spawn(self._config_loop, "config-poll")

    def _spawn(self, target, name):
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _wait_initial_models(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                pending, failed = [], []
                for name in self._models:
                    states = list(self._versions[name].values())
                    if any(s.state == AVAILABLE for s in states):
                        continue
                    if states and all(s.gave_up for s in states):
                        failed += states
                    else:
                        pending.append(name)
            if failed and not pending:
                # ServerCore::WaitUntilModelsAvailable's wording.
                parts = "".join(
                    f"{{{servable_id(s.name, s.version)} due to error: {s.error}}}, "
                    for s in failed)
                models = len({s.name for s in failed})
                raise ServingError(grpc.StatusCode.UNKNOWN,
                                   f"{models} model(s) did not become available: {{{parts}}}")
            if not pending:
                return
            time.sleep(max(self._poll_seconds, 0.05))
            if self._poll_seconds <= 0:
                self.poll()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll()
            except Exception:  # Keep polling whatever one poll met.
                logging.exception("Polling the model base paths failed")

    def _config_loop(self) -> None:
        while not self._stop.wait(self._config_poll_seconds):
            self._maybe_reload_config_file()

    def stop(self) -> None:
        """Stops polling and unloads everything (waiting for requests in flight)."""
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=30)
        with self._lock:
            states = [s for versions in self._versions.values() for s in versions.values()
                      if s.servable is not None]
        for state in states:
            self._unload(state)

    # --- polling -------------------------------------------------------------------------

    def poll(self) -> None:
        """One pass: load aspired versions, unload the others (when safe)."""
        with self._poll_lock:
            with self._lock:
                models = dict(self._models)
                removed = [n for n in self._versions if n not in models]
            for model in models.values():
                self._poll_model(model)
            for name in removed:
                with self._lock:
                    states = [s for s in self._versions.get(name, {}).values()
                              if s.servable is not None]
                for state in states:
                    self._unload(state)

    def _poll_model(self, model) -> None:
        on_disk = list_versions(model.base_path)
        aspired = aspired_versions(model.model_version_policy, sorted(on_disk))
        if not on_disk:
            logging.log_every_n_seconds(
                logging.WARNING, "No versions of servable %s found under base path %s",
                60, model.name, model.base_path)
        with self._lock:
            versions = self._versions.setdefault(model.name, {})
            for version, state in list(versions.items()):
                # A version that vanished may be published again (atomically, this time).
                if version not in on_disk and state.gave_up:
                    state.gave_up, state.failed_attempts = False, 0
            to_load = []
            for version in sorted(aspired):
                state = versions.get(version)
                if state is None or (state.state == END and not state.gave_up
                                     and state.servable is None):
                    state = VersionState(model.name, version, on_disk[version])
                    versions[version] = state
                    self._record_state(state)
                if state.state in (START, LOADING) and not state.gave_up:
                    to_load.append(state)
        for state in to_load:
            self._load(state)
        with self._lock:
            for version, state in versions.items():
                # A load still being retried whose version is no longer wanted stops here.
                if version not in aspired and state.state in (START, LOADING):
                    state.state = END
                    self._record_state(state)
            any_aspired_available = any(
                versions[v].state == AVAILABLE for v in aspired if v in versions)
            to_unload = [s for v, s in versions.items()
                         if v not in aspired and s.state == AVAILABLE
                         and (any_aspired_available or not aspired)]
        for state in to_unload:
            self._unload(state)

    def _record_state(self, state: VersionState) -> None:
        for candidate in (START, LOADING, AVAILABLE, UNLOADING, END):
            self.metrics.model_state.set(state.name, state.version,
                                         State.Name(candidate),
                                         value=int(candidate == state.state))

    def _set_state(self, state: VersionState, new_state: int) -> None:
        with self._lock:
            state.state = new_state
            self._record_state(state)
            self._lock.notify_all()

    def _load(self, state: VersionState) -> None:
        sid = servable_id(state.name, state.version)
        if state.failed_attempts == 0:
            logging.info("Approving load for servable version %s", sid)
        logging.info("Loading servable version %s", sid)
        self._set_state(state, LOADING)
        started = time.monotonic()
        try:
            servable = Servable.load(name=state.name, version=state.version, path=state.path,
                                     tags=self._tags)
            if self._prepare is not None:
                try:
                    servable = self._prepare(servable)
                except BaseException:
                    servable.close()
                    raise
        except Exception as error:
            failure = ServingError.from_exception(error)
            self.metrics.load_attempt_count.inc(state.path, "fail")
            state.failed_attempts += 1
            if state.failed_attempts <= self._max_retries:
                logging.warning("Loading servable version %s failed (attempt %d of %d), "
                                "retrying on the next poll: %s", sid, state.failed_attempts,
                                self._max_retries + 1, failure)
                return
            logging.error("Loading servable version %s failed: %s", sid, failure)
            with self._lock:
                state.error, state.gave_up = failure, True
            self._set_state(state, END)
            return
        self.metrics.load_latency.inc(state.path, by=int((time.monotonic() - started) * 1e6))
        self.metrics.load_attempt_count.inc(state.path, "success")
        with self._lock:
            state.servable, state.error = servable, None
        self._set_state(state, AVAILABLE)
        logging.info("Successfully loaded servable version %s", sid)

    def _unload(self, state: VersionState) -> None:
        sid = servable_id(state.name, state.version)
        logging.info("Quiescing servable version %s", sid)
        self._set_state(state, UNLOADING)
        with self._lock:
            # Requests already holding this version finish on it.
            self._lock.wait_for(lambda: state.inflight == 0, timeout=300)
            servable, state.servable = state.servable, None
        logging.info("Unloading servable version %s", sid)
        if servable is not None:
            servable.close()
        self._set_state(state, END)
        logging.info("Done unloading servable version %s", sid)

    # --- requests ------------------------------------------------------------------------

    def _resolve_version(self, spec) -> tuple[int | None, str]:
        """(version or None for latest, ServableRequest debug string)."""
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            version = spec.version.value
            return version, f"Specific({spec.name}, {version})"
        if choice == "version_label":
            with self._lock:
                labels = self._labels.get(spec.name, {})
                if spec.version_label not in labels:
                    raise invalid_argument(
                        f"Unrecognized servable version label: {spec.version_label}")
                version = labels[spec.version_label]
            return version, f"Specific({spec.name}, {version})"
        return None, f"Latest({spec.name})"

    @contextlib.contextmanager
    def servable(self, spec) -> Iterator[Servable]:
        """Holds the requested AVAILABLE version for the duration of a request.

        Raises:
          ServingError: NOT_FOUND "Servable not found for request: Specific(name, 3)" /
            "Latest(name)"; INVALID_ARGUMENT for an unknown label or no name.
        """
        if not spec.name:  # ServerCore::ServableRequestFromModelSpec (server_core.cc:843)
            raise invalid_argument("ModelSpec has no name specified.")
        version, request = self._resolve_version(spec)
        with self._lock:
            versions = self._versions.get(spec.name, {})
            if version is None:
                ready = [v for v, s in versions.items() if s.state == AVAILABLE]
                version = max(ready) if ready else None
            state = versions.get(version) if version is not None else None
            if state is None or state.state != AVAILABLE or spec.name not in self._models:
                raise not_found(f"Servable not found for request: {request}")
            state.inflight += 1
        try:
            yield state.servable
        finally:
            with self._lock:
                state.inflight -= 1
                self._lock.notify_all()

    def model_status(self, spec) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus, as GetModelStatusImpl answers it (versions newest first)."""
        response = get_model_status_pb2.GetModelStatusResponse()
        with self._lock:
            versions = dict(self._versions.get(spec.name, {}))
            if spec.HasField("version"):
                version = spec.version.value
                if version not in versions:
                    raise not_found(f"Could not find version {version} of model {spec.name}")
                chosen = [versions[version]]
            else:
                if not versions:
                    raise not_found(f"Could not find any versions of model {spec.name}")
                chosen = [versions[v] for v in sorted(versions, reverse=True)]
            for state in chosen:
                entry = response.model_version_status.add(version=state.version,
                                                          state=state.state)
                entry.status.SetInParent()  # TF Serving always sends it, OK included.
                if state.error is not None:
                    entry.status.error_code = state.error.code.value[0]
                    entry.status.error_message = state.error.message
        return response
