"""A roll-out under load loses no request: the shutdown of k8s/base/deployment.yaml, on loopback.

What Kubernetes does to a pod it replaces, played with local servers (`python -m serving`,
each its own process) behind a stand-in for a ClusterIP Service, while gRPC and REST clients
(clients/, as shipped: default retry policy) keep calling through it:

1. The new server starts, and joins the Service once it has the model AVAILABLE (readiness).
2. The old pod leaves the Service's endpoints (the endpoints controller, at the start of
   termination): no new connection reaches it, but open ones stay with it, as conntrack keeps
   them in a real cluster. Long-lived gRPC connections would stay for ever; the server closes
   them itself (--grpc_channel_arguments max_connection_age + grace, scaled down here), and
   the clients reconnect, through the Service, to the new server.
3. The preStop sleep, here: wait until the old server has no gRPC connection left.
4. The signal. Local server A gets SIGTERM, which it handles (finish what is in flight,
   exit 0). Server B gets SIGKILL: that is what tensorflow_model_server gets, since as PID 1
   with no SIGTERM handler it ignores SIGTERM until the grace period ends. REST keep-alive
   connections are still open to it then (TF Serving has no maximum connection age for
   REST): a REST call in flight at that instant fails with a connection error, which the
   REST client retries on a fresh connection.

Asserted: every call the clients made succeeded, the old servers' gRPC connections were all
closed before their signal, and the last server took over both protocols. No wall-clock
assertions: waits are bounded, the order of events is what is checked.

    python -m pytest tests/test_k8s_rollout.py -q
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import support
from support.k8s import REPO

from clients import GrpcClient, RestClient, errors
from serving import conformance

# max_connection_age and its grace, scaled down from the Deployment's 30 s + 30 s.
MAX_CONNECTION_AGE_MS = 1000
MAX_CONNECTION_AGE_GRACE_MS = 2000
# The preStop sleep, scaled the same way (the Deployment's drain inequality, with margin).
PRE_STOP_S = 30
CALLS_PER_PHASE = 20
RED = conformance.encode_png(conformance.COLOURS["red"])


class LoopbackService:
    """A ClusterIP Service's view of TCP, on 127.0.0.1: each new connection goes to one of
    the ready endpoints (round robin) and stays with it for its life; removing an endpoint
    sends it no new connection and leaves the open ones alone."""

    def __init__(self, name: str):
        self.name = name
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._endpoints: list[int] = []
        self._next = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.open = collections.Counter()      # endpoint port -> connections open now
        self.accepted = collections.Counter()  # endpoint port -> connections ever
        self._closed = False
        threading.Thread(target=self._accept, name=f"{name}-accept", daemon=True).start()

    def add(self, port: int) -> None:
        with self._lock:
            self._endpoints.append(port)

    def remove(self, port: int) -> None:
        with self._lock:
            self._endpoints.remove(port)

    def open_to(self, port: int) -> int:
        with self._lock:
            return self.open[port]

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._endpoints:
                    client.close()  # No ready endpoint: the connection is refused.
                    continue
                port = self._endpoints[self._next % len(self._endpoints)]
                self._next += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.open[port] += 1
                self.accepted[port] += 1
                self._sockets |= {client, upstream}
            done = threading.Barrier(2, action=lambda p=port, c=client, u=upstream:
                                     self._closed_connection(p, c, u))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, done), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, done: threading.Barrier) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
        except OSError:  # A reset on either side ends both directions.
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(threading.BrokenBarrierError):
            done.wait()

    def _closed_connection(self, port: int, client: socket.socket,
                           upstream: socket.socket) -> None:
        with self._lock:
            self.open[port] -= 1
            self._sockets -= {client, upstream}
        client.close()
        upstream.close()


class Server:
    """`python -m serving` in its own process, on free loopback ports."""

    def __init__(self, name: str, models_config, log_dir):
        self.name = name
        # python -m serving has TF Serving's flags, where 0 means no server: ports up front.
        self.grpc_port, self.rest_port = support.free_port(), support.free_port()
        self.log = log_dir / f"server-{name}.log"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "serving", "--host=127.0.0.1",
                 f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
                 f"--model_config_file={models_config}",
                 "--allow_version_labels_for_unavailable_models",
                 "--grpc_channel_arguments=grpc.max_connection_age_ms="
                 f"{MAX_CONNECTION_AGE_MS},grpc.max_connection_age_grace_ms="
                 f"{MAX_CONNECTION_AGE_GRACE_MS}"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_available(self, timeout: float = 180) -> None:
        """Readiness: a version AVAILABLE (what healthcheck.sh asks)."""
        deadline = time.monotonic() + timeout
        with RestClient(f"http://127.0.0.1:{self.rest_port}", conformance.MODEL_NAME,
                        timeout=2) as client:
            while True:
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                with contextlib.suppress(errors.ClientError):
                    if any(s.state == "AVAILABLE" for s in client.status()):
                        return
                assert time.monotonic() < deadline, f"server {self.name} never AVAILABLE"
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


class Load:
    """Clients calling predict in a loop through the Services, counting what they get."""

    def __init__(self, grpc_port: int, rest_port: int, threads_per_protocol: int = 2):
        self.ok = collections.Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        makers = {"grpc": lambda: GrpcClient(f"127.0.0.1:{grpc_port}", conformance.MODEL_NAME,
                                             timeout=20),
                  "rest": lambda: RestClient(f"http://127.0.0.1:{rest_port}",
                                             conformance.MODEL_NAME, timeout=20)}
        self._threads = [threading.Thread(target=self._run, args=(protocol, make), daemon=True)
                         for protocol, make in makers.items()
                         for _ in range(threads_per_protocol)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def total(self) -> int:
        with self._lock:
            return sum(self.ok.values())

    def _run(self, protocol: str, make) -> None:
        with make() as client:
            while not self._stop.is_set():
                try:
                    label = client.predict(RED)[0].label
                    assert label == "red", label
                    with self._lock:
                        self.ok[protocol] += 1
                except Exception as error:  # Any failure is a lost request.
                    with self._lock:
                        self.failures.append(f"{protocol}: {error!r}")
                time.sleep(0.02)  # Leave the 2 cores to the servers.

    def wait_for_more(self, calls: int, timeout: float = 120) -> None:
        target = self.total() + calls
        deadline = time.monotonic() + timeout
        while self.total() < target:
            assert time.monotonic() < deadline, f"no progress: {self.ok}, {self.failures}"
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def terminate_pod(server: Server, services: dict[str, LoopbackService], sig: int) -> int:
    """The kubelet's order: out of the endpoints, the preStop sleep, then the signal.
    Returns how many REST connections were still open to the server at the signal."""
    services["grpc"].remove(server.grpc_port)
    services["rest"].remove(server.rest_port)
    wait_until(lambda: services["grpc"].open_to(server.grpc_port) == 0, PRE_STOP_S)
    assert services["grpc"].open_to(server.grpc_port) == 0, (
        f"server {server.name} still has gRPC connections when the preStop sleep ends")
    rest_open = services["rest"].open_to(server.rest_port)
    server.process.send_signal(sig)
    returncode = server.process.wait(timeout=60)
    if sig == signal.SIGTERM:
        assert returncode == 0, server.log.read_text()[-3000:]
    return rest_open


@pytest.mark.timeout(600)
def test_rolling_update_under_load_loses_no_request(tmp_path, conformance_models):
    models = conformance_models
    services = {"grpc": LoopbackService("grpc"), "rest": LoopbackService("rest")}
    servers: list[Server] = []
    load = None
    try:
        a = Server("a", models, tmp_path)
        servers.append(a)
        a.wait_available()
        services["grpc"].add(a.grpc_port)
        services["rest"].add(a.rest_port)
        load = Load(services["grpc"].port, services["rest"].port)
        load.start()
        load.wait_for_more(CALLS_PER_PHASE)

        # Roll A -> B; A handles SIGTERM (the local server does).
        b = Server("b", models, tmp_path)
        servers.append(b)
        b.wait_available()
        services["grpc"].add(b.grpc_port)
        services["rest"].add(b.rest_port)
        load.wait_for_more(CALLS_PER_PHASE)
        # Long-lived gRPC connections reach B while A is still in service, not only when A
        # leaves: the servers' max connection age makes the clients reconnect and spread.
        wait_until(lambda: services["grpc"].accepted[b.grpc_port] > 0, PRE_STOP_S)
        assert services["grpc"].accepted[b.grpc_port] > 0
        terminate_pod(a, services, signal.SIGTERM)
        load.wait_for_more(CALLS_PER_PHASE)

        # Roll B -> C; B ends as tensorflow_model_server does: SIGKILL after the drain.
        c = Server("c", models, tmp_path)
        servers.append(c)
        c.wait_available()
        services["grpc"].add(c.grpc_port)
        services["rest"].add(c.rest_port)
        connections_to_c = (services["grpc"].accepted[c.grpc_port],
                            services["rest"].accepted[c.rest_port])
        load.wait_for_more(CALLS_PER_PHASE)
        rest_open_at_kill = terminate_pod(b, services, signal.SIGKILL)
        load.wait_for_more(CALLS_PER_PHASE)
        load.stop()

        assert load.failures == [], load.failures[:10]
        # The REST clients' keep-alive connections were still on B when it was killed (no
        # server closes them before): the calls on them were retried on fresh connections.
        assert rest_open_at_kill > 0
        assert load.ok["grpc"] >= CALLS_PER_PHASE and load.ok["rest"] >= CALLS_PER_PHASE
        # Only C is left, and the clients got there: new connections after B's removal.
        assert services["grpc"].accepted[c.grpc_port] > connections_to_c[0]
        assert services["rest"].accepted[c.rest_port] > connections_to_c[1]
    finally:
        if load is not None:
            load.stop()
        for server in servers:
            server.stop()
        for service in services.values():
            service.close()
