"""The monitoring in k8s/monitoring: alerts, dashboard, and a real Prometheus on a real scrape.

- The PrometheusRule's rules pass `promtool check rules`, and every alert passes its unit tests
  in k8s/monitoring/alerts.test.yaml (`promtool test rules`), firing and staying quiet where
  it should.
- Every TF Serving series the rules and the dashboard use is one TF Serving exports, with the
  labels it has (the list below, from tensorflow_serving's sources), and the local server
  exports the same names and labels.
- The Grafana dashboard is valid JSON, shipped as a ConfigMap with the sidecar's label, and
  each of its queries is valid PromQL (promtool).
- End to end: Debian's Prometheus, on loopback, scrapes the local server at the path and with
  the labels the ServiceMonitor gives it, evaluates the alert rules, and a query over TF
  Serving's request metrics returns exactly the requests this test sent.

promtool and prometheus come from the Debian package `prometheus` (.ci/run installs it);
without them these tests skip locally, saying so, and fail under CI.

    python -m pytest tests/test_k8s_monitoring.py -q
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from support import free_port
from support.k8s import (
    K8S,
    MODEL_NAME,
    SERVING_BUILDS,
    SERVING_CONFIG,
    needs_kubectl,
    objects,
    one,
    prometheus,
    prometheus_rules,
    promtool,
)

MONITORING = K8S / "monitoring"
ALERT_TESTS = MONITORING / "alerts.test.yaml"
DASHBOARD = MONITORING / "dashboards" / "effnet-serving.json"

# What TF Serving exports (its Prometheus exporter writes every metric of TensorFlow's
# monitoring registry, '/' and other characters turned into ':'), with the labels of each:
#   servables/tensorflow/util.cc: request_count, request_latency, runtime_latency,
#     request_example_counts, request_example_count_total
#   servables/tensorflow/saved_model_warmup_util.cc: model_warmup_latency,
#     model_warmup_records_read
#   batching/batching_session.cc, batching/batching_util.h (task name "batching_session"):
#     queuing_latency, wrapped_run_count, input_batch_size, processed_batch_size, padding_size
#   core/request_logger.cc: request_log_count
#   tensorflow/cc/saved_model/loader.cc (TensorFlow, linked into the server):
#     load_attempt_count, load_latency, load_latency_by_stage
TF_SERVING_METRICS = {
    ":tensorflow:serving:request_count": {"model_name", "status"},
    ":tensorflow:serving:request_latency": {"model_name", "API", "entrypoint"},
    ":tensorflow:serving:runtime_latency": {"model_name", "API", "runtime"},
    ":tensorflow:serving:request_example_counts": {"model"},
    ":tensorflow:serving:request_example_count_total": {"model"},
    ":tensorflow:serving:model_warmup_latency": {"model_path", "status"},
    ":tensorflow:serving:model_warmup_records_read": {"model_path", "status"},
    ":tensorflow:serving:batching_session:queuing_latency": {"thread_pool_name"},
    ":tensorflow:serving:batching_session:wrapped_run_count": set(),
    ":tensorflow:serving:batching_session:input_batch_size": set(),
    ":tensorflow:serving:batching_session:processed_batch_size": set(),
    ":tensorflow:serving:batching_session:padding_size": {"execution_batch_size"},
    ":tensorflow:serving:request_log_count": {"model_name", "status"},
    ":tensorflow:cc:saved_model:load_attempt_count": {"model_path", "status"},
    ":tensorflow:cc:saved_model:load_latency": {"model_path"},
    ":tensorflow:cc:saved_model:load_latency_by_stage": {"model_path", "stage"},
}
# Labels Prometheus adds to every series of a target (ServiceMonitor: job = the Service).
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "endpoint", "container"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Grafana's variables, as a query would be sent for the default selection.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "6h", "$namespace": "effnet",
                     "$model": ".+"}


def write_rules(directory) -> str:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(prometheus_rules(), sort_keys=False))
    return str(path)


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for g in prometheus_rules()["groups"] for r in g["rules"]
            if "alert" in r}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard (panels and variables), Grafana variables set."""
    found = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    found += [re.fullmatch(r"label_values\((.*), \w+\)", v["definition"])[1]
              for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    out = []
    for query in found:
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        out.append(query)
    return out


def duration_seconds(value: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", value))


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                            **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# --- Rules ---------------------------------------------------------------------------------

@needs_kubectl
def test_rules_pass_promtool_check(tmp_path):
    (rule,) = objects("monitoring", "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    assert rule["metadata"]["namespace"] == MODEL_NAME
    result = run([promtool(), "check", "rules", write_rules(tmp_path)])
    assert f"SUCCESS: {sum(len(g['rules']) for g in prometheus_rules()['groups'])} rules" \
        in result.stdout


@needs_kubectl
def test_alerts_pass_their_unit_tests(tmp_path):
    write_rules(tmp_path)
    (tmp_path / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text())
    result = run([promtool(), "test", "rules", ALERT_TESTS.name], cwd=tmp_path)
    assert "SUCCESS" in result.stdout


@needs_kubectl
def test_every_alert_is_tested_firing_and_quiet():
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == ["rules.yaml"]
    cases = [case for test in tests["tests"] for case in test["alert_rule_test"]]
    for name in alerts():
        assert any(c["alertname"] == name and c["exp_alerts"] for c in cases), name
    # Each alert is also shown quiet somewhere: before its `for`, or on harmless input.
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert set(alerts()) <= quiet


@needs_kubectl
def test_alerts_cover_what_a_model_server_needs():
    names = set(alerts())
    for wanted in ("EffnetModelUnavailable", "EffnetModelLoadFailed", "EffnetHighErrorRate",
                   "EffnetHighLatency", "EffnetBatchQueueFull", "EffnetBatchQueueing",
                   "EffnetServerRestarting", "EffnetServerOOMKilled"):
        assert wanted in names
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert 'k8s/README.md, "Alerts"' in rule["annotations"]["description"], name


@needs_kubectl
def test_readme_explains_every_alert():
    """k8s/README.md's "Alerts" table has a row, meaning and what to do, for each alert."""
    text = (K8S / "README.md").read_text()
    section = text[text.index("### Alerts"):]
    rows = {m[1]: m[2] for m in re.finditer(r"^\| (Effnet\w+) \|(.*)\|$", section, re.M)}
    assert set(rows) == set(alerts())
    for name, rule in alerts().items():
        severity, means, todo = (c.strip() for c in rows[name].split("|"))
        assert severity == rule["labels"]["severity"], name
        assert means and todo, name


@needs_kubectl
def test_slow_starts_never_page():
    """Fewer servers than wanted pages only after any roll-out step's deadline has passed
    (the timing budget: a start within progressDeadlineSeconds is normal)."""
    wait = duration_seconds(alerts()["EffnetServersUnavailable"]["for"])
    deadlines = [one(b, "Deployment", MODEL_NAME)["spec"]["progressDeadlineSeconds"]
                 for b in SERVING_BUILDS]
    assert wait >= max(deadlines)


def series_used(query: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) for every TF Serving series a query selects."""
    found = []
    for name, matchers in re.findall(r"(:tensorflow:[\w:]+)(?:\{([^}]*)\})?", query):
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in TF_SERVING_METRICS:
                base = name.removesuffix(suffix)
        found.append((base, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""))))
    return found


@needs_kubectl
def test_rules_and_dashboard_use_what_tf_serving_exports():
    queries = [r["expr"] for r in alerts().values()] + dashboard_queries()
    used = [s for q in queries for s in series_used(q)]
    assert used
    for name, labels in used:
        assert name in TF_SERVING_METRICS, f"TF Serving exports no {name}"
        assert labels <= TF_SERVING_METRICS[name] | TARGET_LABELS, (name, labels)
    # Grouping labels exist on the series grouped (or are the histogram's le).
    for query in queries:
        names = {n for n, _ in series_used(query)}
        if not names:
            continue
        available = set().union(*(TF_SERVING_METRICS[n] for n in names)) | TARGET_LABELS
        for group in re.findall(r"\bby \(([^)]*)\)", query):
            for label in (x.strip() for x in group.split(",")):
                assert label in available | {"le"}, (label, query)


def test_local_server_exports_the_same_names_and_labels():
    """The local server (what the end-to-end test scrapes) names and labels its metrics as
    TF Serving does; its one metric of its own has its own prefix."""
    from serving.metrics import Metrics

    for metric in Metrics().all():
        if metric.name.startswith(":serving_local:"):
            continue
        assert metric.name in TF_SERVING_METRICS, metric.name
        assert set(metric.labels) == TF_SERVING_METRICS[metric.name], metric.name


# --- Dashboard -----------------------------------------------------------------------------

@needs_kubectl
def test_dashboard_ships_as_a_configmap_for_the_grafana_sidecar():
    (configmap,) = [c for c in objects("monitoring", "ConfigMap")
                    if c["metadata"]["name"] == "effnet-grafana-dashboard"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = configmap["data"]
    assert key.endswith(".json")
    assert json.loads(configmap["data"][key]) == dashboard()
    # kubectl apply keeps a copy in an annotation limited to 256 KiB.
    assert len(configmap["data"][key].encode()) < 200_000


def test_dashboard_structure():
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "model"} <= variables
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@needs_kubectl
def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses each query as the expression of a recording rule."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": q}
        for i, q in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    run([promtool(), "check", "rules", str(path)])


# --- End to end: Prometheus scrapes the local server ---------------------------------------

def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def prometheus_server(directory, config: dict):
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()  # Prometheus logs no bound port at --log.level=warn: chosen up front.
    log = open(directory / "prometheus.log", "w")
    process = subprocess.Popen(
        [prometheus(), f"--config.file={directory / 'prometheus.yml'}",
         f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (directory / "prometheus.log").read_text()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            assert time.monotonic() < deadline, "Prometheus did not become ready in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def query(url: str, promql: str) -> list[dict]:
    answer = get_json(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for(url: str, promql: str, expected: float, *, timeout: float = 60) -> list[dict]:
    """Polls until the query's single value equals expected; the last answer otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(url, promql)
        if len(result) == 1 and float(result[0]["value"][1]) == expected:
            return result
        if time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@needs_kubectl
def test_prometheus_scrapes_tf_serving_metrics_from_the_local_server(tmp_path,
                                                                     conformance_models):
    from clients import GrpcClient, RestClient, errors
    from serving import conformance

    (monitor,) = objects("monitoring", "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    red = conformance.encode_png(conformance.COLOURS["red"])
    grpc_calls, rest_calls, bad_calls = 7, 4, 3
    with conformance.local_server(
            model_config_file=str(conformance_models),
            allow_version_labels_for_unavailable_models=True,
            monitoring_config_file=str(SERVING_CONFIG / "monitoring.config")) as (_, server):
        host_port = server.rest.removeprefix("http://")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [write_rules(tmp_path)],
            # The target as the ServiceMonitor makes it: its path, job = the Service's name,
            # the pod's namespace and name.
            "scrape_configs": [{
                "job_name": MODEL_NAME,  # The Service's name, the ServiceMonitor's job label.
                "metrics_path": endpoint["path"],
                "static_configs": [{"targets": [host_port], "labels": {
                    "namespace": monitor["metadata"]["namespace"], "pod": "effnet-local"}}],
            }],
        }
        with GrpcClient(server.grpc, conformance.MODEL_NAME) as g, \
                RestClient(server.rest, conformance.MODEL_NAME) as r:
            for _ in range(grpc_calls):
                assert g.predict(red)[0].label == "red"
            for _ in range(rest_calls):
                assert r.predict(red)[0].label == "red"
            for _ in range(bad_calls):
                with pytest.raises(errors.InvalidInputError):
                    g.predict(b"not an image")
        with prometheus_server(tmp_path, config) as url:
            selector = f'namespace="effnet", job="effnet", model_name="{conformance.MODEL_NAME}"'
            # Successful calls by API: gRPC "Predict", REST "predict".
            grpc_ok = wait_for(url, f'sum(:tensorflow:serving:request_latency_count'
                                    f'{{{selector}, API="Predict"}})', grpc_calls)
            assert grpc_ok and float(grpc_ok[0]["value"][1]) == grpc_calls, grpc_ok
            rest_ok = query(url, f'sum(:tensorflow:serving:request_latency_count'
                                 f'{{{selector}, API="predict"}})')
            assert rest_ok and float(rest_ok[0]["value"][1]) == rest_calls, rest_ok
            # Every call by status: the bad images as INVALID_ARGUMENT, which the error
            # alert leaves to the clients.
            statuses = {s["metric"]["status"]: float(s["value"][1]) for s in query(
                url, f"sum by (status) (:tensorflow:serving:request_count{{{selector}}})")}
            assert statuses["INVALID_ARGUMENT"] == bad_calls, statuses
            assert statuses["OK"] >= grpc_calls + rest_calls, statuses
            # The rules evaluate on the real series without errors, and the alerts are quiet
            # (server-side errors: none; the scrape: up) once an evaluation has seen the
            # scraped series (one before the first scrape may find `up` absent).
            deadline = time.monotonic() + 30
            while True:
                groups = get_json(f"{url}/api/v1/rules")["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                if all(r["health"] == "ok" and r["state"] == "inactive" for r in rules) \
                        or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert len(rules) == len(alerts())
            for rule in rules:
                assert rule["health"] == "ok", rule
                assert rule["state"] == "inactive", rule
            # Every dashboard query runs.
            for promql in dashboard_queries():
                query(url, promql)
