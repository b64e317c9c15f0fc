"""The deployment as code, checked with the real tools where they exist.

- Prometheus: `promtool check config` on observability/prometheus/prometheus.yml (which loads the real
  rule file), `promtool check rules`, and `promtool test rules` (every alert fires and stays silent
  in pagelens.rules.test.yml). Every alert carries a severity, a summary, a description and a
  runbook link to a section of docs/operations.md that exists.
- compose.yaml: a real compose parser (Debian's `docker-compose config`) accepts it; every service
  docs/operations.md lists is there and wired (healthchecks, depends_on conditions, Redis AOF + noeviction,
  scalable workers); every file or directory it mounts or builds from exists.
- Grafana provisioning: the datasource uids are the ones the dashboards use and cross-link each
  other; the dashboard provider reads the directory compose mounts the dashboards into.
- deploy/ (Kubernetes): every core object validates against the Kubernetes API models (unknown or
  missing fields fail), kustomizations list files that exist, settings are real pagelens settings,
  probes hit real routes, the PodMonitors produce the job names the alerts use, and the KEDA queries
  read real pagelens metrics (tests/test_prometheus_live.py also runs them against Prometheus).

Missing binaries (promtool, docker-compose): skipped, unless CI=true, where they fail.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from kubernetes import client as k8s
from pydantic import BaseModel

from app.core.settings import ROOT
from observability import metrics
from tests import binaries
from tests.promql import (
    ALERT_RULES,
    DATASOURCES,
    PROMETHEUS_CONFIG,
    alert_rules,
    check_expr,
    datasource_refs,
    histogram_names,
    keda_triggers,
    known_labels,
    load_dashboards,
    scrape_jobs,
)

COMPOSE = ROOT / "compose.yaml"
RULE_TESTS = ROOT / "observability" / "alerts" / "pagelens.rules.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
PROVISIONING = ROOT / "observability" / "grafana" / "provisioning"
DEPLOY = ROOT / "deploy"

# The compose services docs/operations.md lists ("Running the stack").
SERVICES = {
    "api",
    "worker",
    "migrate",
    "redis",
    "postgres",
    "otel-collector",
    "tempo",
    "prometheus",
    "grafana",
    "loki",
    "postgres-exporter",
    "redis-exporter",
    "alloy",
}
# The core Kubernetes kinds deploy/ uses, and the model that validates each.
K8S_MODELS: dict[str, type[BaseModel]] = {
    "Namespace": k8s.V1Namespace,
    "ConfigMap": k8s.V1ConfigMap,
    "Secret": k8s.V1Secret,
    "Deployment": k8s.V1Deployment,
    "Service": k8s.V1Service,
}
CUSTOM_KINDS = {"PodMonitor", "ScaledObject"}


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


# --- Prometheus ------------------------------------------------------------------------------------


def test_promtool_checks_the_config_and_the_rules() -> None:
    promtool = binaries.require("promtool", "prometheus")
    config = _run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr
    # check config also checks the rule files it loads: the real one, not a copy.
    assert "1 rule files found" in config.stdout + config.stderr
    rules = _run(promtool, "check", "rules", str(ALERT_RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    promtool = binaries.require("promtool", "prometheus")
    result = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_fire_and_silence_every_alert() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: set[str] = set()
    silenced: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silenced).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    assert alerts - fired == set(), "alerts no unit test makes fire"
    assert alerts - silenced == set(), "alerts no unit test proves silent"


def _headings(markdown: str) -> set[str]:
    """GitHub's anchors for the document's headings."""
    anchors = set()
    for line in markdown.splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_alert_is_documented_with_a_runbook() -> None:
    anchors = _headings(OPERATIONS.read_text())
    problems = []
    for rule in alert_rules():
        if "alert" not in rule:
            continue
        name, annotations = rule["alert"], rule.get("annotations", {})
        if rule.get("labels", {}).get("severity") not in {"critical", "warning"}:
            problems.append(f"{name}: severity must be critical or warning")
        missing = {"summary", "description", "runbook_url"} - set(annotations)
        if missing:
            problems.append(f"{name}: no {sorted(missing)} annotation")
            continue
        url = annotations["runbook_url"]
        if not url.endswith(f"docs/operations.md#{name.lower()}"):
            problems.append(f"{name}: runbook_url {url} does not point at its section of docs/operations.md")
        if name.lower() not in anchors:
            problems.append(f"{name}: docs/operations.md has no section '{name}'")
    assert not problems, "\n".join(problems)


# --- compose.yaml ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as a real compose implementation resolves it (anchors, merges, defaults)."""
    docker_compose = binaries.require("docker-compose")
    result = _run(docker_compose, "--file", str(COMPOSE), "config")
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A resolved service's bind mounts, target -> host path (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target, kind = volume.get("source", ""), volume["target"], volume.get("type")
        else:
            source, target = volume.split(":")[:2]
            kind = "bind" if source.startswith(("/", ".")) else "volume"
        if kind == "bind":
            mounts[target] = Path(source)
    return mounts


def test_compose_mounts_and_builds_only_what_exists(compose: dict[str, Any]) -> None:
    missing = []
    for name, service in compose["services"].items():
        for source in bind_mounts(service).values():
            # The Docker socket (Alloy) is the host's, not the repository's.
            if not source.is_relative_to("/var/run") and not source.exists():
                missing.append(f"{name}: mounts {source}")
        build = service.get("build")
        if build:
            context = Path(build["context"])
            if not (context / build.get("dockerfile", "Dockerfile")).exists():
                missing.append(f"{name}: builds from {context / build.get('dockerfile', 'Dockerfile')}")
    assert not missing, missing


def test_compose_healthchecks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    without = [name for name, s in services.items() if name != "migrate" and "healthcheck" not in s]
    assert not without, f"services without a healthcheck: {without}"
    assert services["worker"]["healthcheck"]["test"][1:] == ["pagelens", "worker", "--check"]
    assert services["worker"]["command"] == ["pagelens", "worker"]
    assert services["migrate"]["command"] == ["pagelens", "migrate"]
    for app in ("api", "worker"):
        conditions = {dep: spec["condition"] for dep, spec in services[app]["depends_on"].items()}
        assert conditions["migrate"] == "service_completed_successfully", app
        assert conditions["postgres"] == conditions["redis"] == "service_healthy", app
    for exporter, store in (("postgres-exporter", "postgres"), ("redis-exporter", "redis")):
        assert services[exporter]["depends_on"][store]["condition"] == "service_healthy"


def test_compose_redis_keeps_jobs(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    args = command if isinstance(command, list) else command.split()
    pairs = dict(zip(args[1::2], args[2::2], strict=False))
    assert pairs.get("--appendonly") == "yes"
    assert pairs.get("--maxmemory-policy") == "noeviction"


def test_compose_workers_scale_and_everything_is_scraped(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    # --scale worker=N needs replicas that do not clash on a name or a host port.
    assert "container_name" not in worker and not worker.get("ports")
    assert worker["environment"]["PAGELENS_WORKER_METRICS_HOST"] == "0.0.0.0"
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    scraped = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            scraped |= {target.split(":")[0] for target in static["targets"]}
        for dns in job.get("dns_sd_configs", []):
            scraped |= set(dns["names"])
    # Prometheus scrapes itself as localhost; the data stores are scraped through their exporters.
    assert SERVICES - {"migrate", "redis", "postgres", "prometheus"} - scraped == set(), "services nobody scrapes"
    for app in ("api", "worker"):
        environment = compose["services"][app]["environment"]
        assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318", app


def test_compose_mounts_grafana_provisioning_where_the_provider_reads(compose: dict[str, Any]) -> None:
    mounts = bind_mounts(compose["services"]["grafana"])
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())["providers"][0]
    dashboards = mounts[provider["options"]["path"]]
    assert sorted(p.name for p in dashboards.glob("*.json")) == sorted(load_dashboards())
    assert mounts["/etc/grafana/provisioning/datasources"] == PROVISIONING / "datasources"


# --- Grafana datasources --------------------------------------------------------------------------------


def _datasources() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yaml").read_text())
    return {source["uid"]: source for source in document["datasources"]}


def test_datasources_are_the_ones_the_dashboards_use() -> None:
    provisioned = {uid: source["type"] for uid, source in _datasources().items()}
    assert provisioned == DATASOURCES
    used = {
        (ref["uid"], ref.get("type"))
        for dashboard in load_dashboards().values()
        for _, ref in datasource_refs(dashboard)
        if isinstance(ref, dict) and not str(ref.get("uid", "")).startswith("$")
    }
    assert {uid for uid, _ in used} <= set(provisioned)
    assert all(provisioned[uid] == kind for uid, kind in used if kind)


def test_datasources_link_traces_logs_and_metrics() -> None:
    sources = _datasources()
    tempo, loki, prometheus = (
        sources["tempo"]["jsonData"],
        sources["loki"]["jsonData"],
        sources["prometheus"]["jsonData"],
    )
    assert tempo["tracesToLogsV2"]["datasourceUid"] == "loki"
    # The log line's trace_id is what Alloy keeps as structured metadata (observability/alloy/config.alloy).
    assert "trace_id=" in tempo["tracesToLogsV2"]["query"]
    assert 'trace_id = ""' in (ROOT / "observability" / "alloy" / "config.alloy").read_text()
    assert tempo["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert tempo["serviceMap"]["datasourceUid"] == "prometheus"
    assert [f["datasourceUid"] for f in loki["derivedFields"]] == ["tempo"]
    assert [d["datasourceUid"] for d in prometheus["exemplarTraceIdDestinations"]] == ["tempo"]
    # `$$` keeps Grafana from reading ${__trace.traceId} as an environment variable at provisioning.
    assert "$${__trace.traceId}" in tempo["tracesToLogsV2"]["query"]


# --- deploy/ (Kubernetes) --------------------------------------------------------------------------------


def _manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def _objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in _manifests() if doc["kind"] == kind}


def test_kustomizations_list_files_that_exist() -> None:
    listed = set()
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        resources = yaml.safe_load(kustomization.read_text())["resources"]
        for resource in resources:
            path = kustomization.parent / resource
            assert path.is_file(), f"{kustomization}: {resource} does not exist"
            listed.add(path)
    unlisted = {p for p, _ in _manifests()} - listed
    # The Secret is an example on purpose: real credentials never go into the repository.
    assert {p.name for p in unlisted} == {"secret.example.yaml"}


def test_core_objects_validate_against_the_kubernetes_api() -> None:
    problems = []
    for path, doc in _manifests():
        kind = doc["kind"]
        if kind in CUSTOM_KINDS:
            continue
        assert kind in K8S_MODELS, f"{path}: no validation for kind {kind}"
        try:
            K8S_MODELS[kind].model_validate(doc)  # unknown fields and missing required ones fail
        except ValueError as exc:
            problems.append(f"{path.relative_to(ROOT)} {kind}/{doc['metadata']['name']}: {exc}")
    assert not problems, "\n".join(problems)


def test_the_validation_catches_mistakes() -> None:
    deployment = _objects("Deployment")["pagelens-worker"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["envfrom"] = []
    with pytest.raises(ValueError, match="envfrom"):
        k8s.V1Deployment.model_validate(broken)


def _settings_names() -> set[str]:
    return set(
        re.findall(
            r'"((?:PAGELENS|OTEL|ENABLE|PSI|LLM|DATABASE|REDIS)_?[A-Z_]*)"',
            (ROOT / "app" / "core" / "settings.py").read_text(),
        )
    )


def test_deployments_use_real_settings_routes_and_grace() -> None:
    known = _settings_names()
    config = _objects("ConfigMap")["pagelens-config"]["data"]
    secret = yaml.safe_load((DEPLOY / "secret.example.yaml").read_text())["stringData"]
    assert set(config) | set(secret) <= known, (set(config) | set(secret)) - known
    deployments = _objects("Deployment")
    api = deployments["pagelens-api"]["spec"]["template"]["spec"]
    worker = deployments["pagelens-worker"]["spec"]["template"]["spec"]
    paths = {api["containers"][0][probe]["httpGet"]["path"] for probe in ("livenessProbe", "readinessProbe")}
    assert paths == {"/healthz", "/readyz"}
    assert worker["containers"][0]["command"] == ["pagelens", "worker"]
    for spec in (api, worker):
        assert [c["command"] for c in spec["initContainers"]] == [["pagelens", "migrate"]]
        for container in spec["containers"] + spec["initContainers"]:
            for variable in container.get("env", []):
                assert variable["name"] in known, variable
    # SIGKILL must not come before a running job could finish (PAGELENS_SHUTDOWN_GRACE).
    grace = int(config["PAGELENS_SHUTDOWN_GRACE"])
    assert grace >= float(config["PAGELENS_JOB_TIMEOUT"])
    assert worker["terminationGracePeriodSeconds"] > grace


def test_podmonitors_produce_the_scrape_jobs_the_alerts_use() -> None:
    deployments = _objects("Deployment")
    jobs = set()
    for name, monitor in _objects("PodMonitor").items():
        spec = monitor["spec"]
        matching = [
            d
            for d in deployments.values()
            if spec["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matching) == 1, name
        pod = matching[0]["spec"]["template"]
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert {e["port"] for e in spec["podMetricsEndpoints"]} <= ports, name
        jobs.add(pod["metadata"]["labels"][spec["jobLabel"]])
    assert jobs == {"pagelens-api", "pagelens-worker"}
    assert jobs <= scrape_jobs()


def test_keda_scales_the_worker_on_backlog_and_wait() -> None:
    scaled = _objects("ScaledObject")["pagelens-worker"]["spec"]
    assert scaled["scaleTargetRef"]["name"] in _objects("Deployment")
    assert scaled["minReplicaCount"] >= 1  # a warm worker: no model load before the first scan
    triggers = keda_triggers()
    assert set(triggers) == {"backlog", "queue-wait"}
    read = {metric for expr in triggers.values() for metric in re.findall(r"pagelens_\w+", expr)}
    assert read == {"pagelens_queue_size", "pagelens_job_queue_wait_seconds_bucket"}
    known, histograms = known_labels(), histogram_names()
    for name, expr in triggers.items():
        assert not check_expr(expr, known, histograms), name
        assert expr.endswith("or vector(0)"), f"{name}: no data must mean 0, not a KEDA error"
    assert {"pagelens_queue_size", "pagelens_job_queue_wait_seconds"} <= set(metrics.REGISTRY.collectors)
