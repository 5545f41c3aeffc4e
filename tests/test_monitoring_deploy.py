"""deploy/monitoring/: the Prometheus alert rules and config, and the provisioned Grafana dashboards.

promtool (Debian package `prometheus`, installed by .ci/run) checks the rules and the config and runs the
rules' unit tests (rules/alerts_test.yml), which must make every alert both fire and stay quiet. The
dashboards are validated against grafana/dashboard.schema.json and for what a schema cannot say (unique
ids, the 24-column grid, the provisioned datasource, PromQL that promtool parses). Every metric name in an
alert, a rule test, a dashboard query or a template variable must be one the server, its drift monitor or
the trainer exports, with labels it has, so a typo fails here rather than leaving a panel empty or an alert
silent forever.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
MONITORING = DEPLOY / "monitoring"
RULES = MONITORING / "rules" / "alerts.yml"
RULE_TESTS = MONITORING / "rules" / "alerts_test.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
GRAFANA = MONITORING / "grafana"
DASHBOARD_SCHEMA = GRAFANA / "dashboard.schema.json"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = sorted((GRAFANA / "provisioning" / "dashboards").glob("*.yml"))
COMPOSE = DEPLOY / "docker-compose.yml"

# The contract with the trainer's exporter (rlvr_jax/monitoring/exporters.py): gauges labelled run_id.
TRAIN_METRICS = {
    "rlvr_train_step",
    "rlvr_train_last_step_timestamp_seconds",
    "rlvr_train_finished",
    "rlvr_train_reward_mean",
    "rlvr_train_reward_std",
    "rlvr_train_eval_accuracy",
    "rlvr_train_kl",
    "rlvr_train_approx_kl_old",
    "rlvr_train_loss",
    "rlvr_train_grad_norm",
    "rlvr_train_skipped_updates",
    "rlvr_train_throughput_mfu",
    "rlvr_train_throughput_train_tokens_per_s",
    "rlvr_train_throughput_rollout_tokens_per_s",
    "rlvr_train_time_step_s",
    "rlvr_train_cost_usd_total",
    "rlvr_train_cost_usd_per_step",
    "rlvr_train_cost_usd_per_million_tokens",
    "rlvr_train_cost_projected_run_usd",
}
# Two more step metrics of rlvr_jax/trainer/ that the dashboard and NoLearningSignal use: gauge -> key.
TRAIN_METRICS_FROM_STEP_KEYS = {
    "rlvr_train_accuracy": "accuracy",
    "rlvr_train_groups_zero_variance_fraction": "groups/zero_variance_fraction",
}
# The contract with the server's drift monitor (exported by the server when it has a drift reference),
# with each gauge's labels.
DRIFT_METRICS = {
    "rlvr_drift_statistic": {"feature", "statistic"},
    "rlvr_drift_threshold": {"feature", "statistic"},
    "rlvr_drift_detected": {"feature"},
    "rlvr_drift_detected_any": set(),
    "rlvr_drift_window_samples": set(),
    "rlvr_drift_pass_rate": {"window"},
}
PROMETHEUS_METRICS = {"up"}  # written by Prometheus for every target
TARGET_LABELS = {"job", "instance", "service"}  # added by the scrape (service: prometheus.yml's static label)

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
}  # fmt: skip
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
            "bool", "inf", "nan", "atan2"}  # fmt: skip
GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range")


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: apt-get install -y prometheus, see .ci/run")
    return path


def _run_promtool(*args: str, cwd: Path) -> None:
    proc = subprocess.run([_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}  # fmt: skip


@functools.cache
def _server_families() -> dict[str, set[str]]:
    """The server's metric families -> their series names (counters as _total, histograms as _bucket etc.)."""
    from rlvr_jax.serving.metrics import ServerMetrics

    families = {}
    for family in ServerMetrics(max_batch=8).registry.collect():
        series = {family.name + s for s in SUFFIXES.get(family.type, ("",))}
        assert {s.name for s in family.samples} <= series, family  # the suffix table matches the client
        families[family.name] = series
    return families


def _server_metric_names() -> set[str]:
    return set().union(*_server_families().values())


@functools.cache
def known_labels() -> dict[str, set[str]]:
    """Every known series name -> the label names it may have (the scrape's job / instance included)."""
    from prometheus_client.metrics import MetricWrapperBase

    from rlvr_jax.serving.metrics import ServerMetrics

    labels = {name: set() for name in _server_metric_names()}  # the process collector's have none
    for metric in vars(ServerMetrics(max_batch=8)).values():
        if isinstance(metric, MetricWrapperBase):
            for suffix in SUFFIXES.get(metric._type, ("",)):
                bucket = {"le"} if suffix == "_bucket" else set()
                labels[metric._name + suffix] = set(metric._labelnames) | bucket
    labels |= {name: {"run_id"} for name in TRAIN_METRICS | set(TRAIN_METRICS_FROM_STEP_KEYS)}
    labels |= {name: set(names) for name, names in DRIFT_METRICS.items()}
    labels |= {name: set() for name in PROMETHEUS_METRICS}
    return {name: names | TARGET_LABELS for name, names in labels.items()}


def known_metrics() -> set[str]:
    return set(known_labels())


def matcher_labels(expr: str) -> dict[str, set[str]]:
    """metric name -> the label names that the selectors of `expr` on it match on."""
    out: dict[str, set[str]] = {}
    for name, matchers in re.findall(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        matchers = re.sub(r'"(?:[^"\\]|\\.)*"', '""', matchers)
        out.setdefault(name, set()).update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    return out


def assert_known_labels(expr: str, where: str) -> None:
    labels = known_labels()
    for name, used in matcher_labels(expr).items():
        if name in labels:
            assert used <= labels[name], f"{where}: {name} has no label {sorted(used - labels[name])}"


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, aggregations, keywords or label names)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", s)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*(\()?", s):
        word, call = m.group(1), m.group(2)
        if not call and word not in AGGREGATIONS and word.lower() not in KEYWORDS:
            names.add(word)
    return names


def _alert_rules() -> list[dict]:
    return [rule for group in _yaml(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def _template_queries(text: str) -> list[str]:
    """PromQL inside annotation templates: `printf "..." ... | query` and `query "..."`."""
    queries = re.findall(r'printf\s+"((?:[^"\\]|\\.)*)"[^}]*\|\s*query', text)
    queries += re.findall(r'query\s+"((?:[^"\\]|\\.)*)"', text)
    return [q.replace('\\"', '"').replace("%q", '"x"') for q in queries]


def _dashboards() -> list[dict]:
    return [json.loads(p.read_text()) for p in DASHBOARDS]


def _data_panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _dashboard_exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in _data_panels(dashboard) for t in p["targets"]]


def _variable_queries(dashboard: dict) -> list[str]:
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query)
            out.append(m.group(1) if m else query)
    return out


def _without_variables(expr: str) -> str:
    for interval in GRAFANA_INTERVALS:
        expr = expr.replace(interval, "1m")
    return re.sub(r"\$\{?\w+\}?", ".+", expr)


def _provisioned_datasource_uid() -> str:
    (source,) = _yaml(DATASOURCES)["datasources"]
    return source["uid"]


def _compose_binds(service: str) -> dict[str, str]:
    """container path -> host path (relative to deploy/) of a compose service's bind mounts."""
    binds = {}
    for volume in _yaml(COMPOSE)["services"][service]["volumes"]:
        source, target, *mode = volume.split(":")
        if source.startswith("."):
            assert mode == ["ro"], f"{service} mounts {source} writable"
            binds[target] = source
    return binds


# ---------------------------------------------------------------------------------------------------
# promtool


def test_alert_rules_pass_promtool_check():
    _run_promtool("check", "rules", RULES.name, cwd=RULES.parent)


def test_alert_rule_unit_tests_pass():
    _run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


def test_prometheus_config_passes_promtool_check_with_its_rules():
    _run_promtool("check", "config", PROMETHEUS_CONFIG.name, cwd=PROMETHEUS_CONFIG.parent)
    config = _yaml(PROMETHEUS_CONFIG)
    assert [(PROMETHEUS_CONFIG.parent / f).resolve() for f in config["rule_files"]] == [RULES]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert {"rlvr-serve", "rlvr-train", "pushgateway"} <= set(jobs)
    assert jobs["pushgateway"]["honor_labels"] is True, "pushed job / run_id labels must survive the scrape"
    assert not jobs["rlvr-serve"].get("honor_labels", False)


def test_dashboard_queries_parse_with_promtool(tmp_path):
    """Every dashboard query and variable, as a recording rule, so that promtool parses its PromQL."""
    rules = [
        {"record": f"dashboard:{d['uid'].replace('-', '_')}:{i}", "expr": _without_variables(expr)}
        for d in _dashboards()
        for i, expr in enumerate(_dashboard_exprs(d) + _variable_queries(d))
    ]
    (tmp_path / "dashboards.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    _run_promtool("check", "rules", "dashboards.yml", cwd=tmp_path)


# ---------------------------------------------------------------------------------------------------
# Alert rules


EXPECTED_ALERTS = {
    "ServerDown", "ServerNotReady", "HighErrorRate", "HighP99Latency", "HighTimeToFirstToken",
    "QueueNearlyFull", "RequestsRejected", "DriftDetected", "RewardCollapse", "NoLearningSignal",
    "KLBlowUp", "NaNSteps", "NaNStepsPersistent", "TrainingStalled",
}  # fmt: skip


def test_alert_rules_are_complete_and_annotated():
    rules = _alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["labels"]["component"] in ("serving", "drift", "training"), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), f"{rule['alert']}: state `for` explicitly"
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_every_alert_rule_fires_and_stays_quiet_in_the_unit_tests():
    cases = [case for test in _yaml(RULE_TESTS)["tests"] for case in test["alert_rule_test"]]
    assert _yaml(RULE_TESTS)["rule_files"] == [RULES.name]
    for rule in _alert_rules():
        name, labels = rule["alert"], rule["labels"]
        fired = [
            exp
            for case in cases
            if case["alertname"] == name
            for exp in case.get("exp_alerts") or []
            if labels.items() <= {k: str(v) for k, v in exp["exp_labels"].items()}.items()
        ]
        assert fired, f"no unit test makes {name} {labels} fire"
        assert all(exp.get("exp_annotations") for exp in fired), f"{name}: check the rendered annotations"
        assert any(case["alertname"] == name and not case.get("exp_alerts") for case in cases), (
            f"no unit test checks that {name} stays quiet"
        )


def test_metric_names_in_rules_and_rule_tests_are_known():
    known = known_metrics()
    for rule in _alert_rules():
        used = metric_names(rule["expr"])
        for text in rule["annotations"].values():
            for query in _template_queries(text):
                used |= metric_names(query)
        assert used, rule["alert"]
        assert used <= known, f"{rule['alert']} reads unknown metrics {sorted(used - known)}"
        assert_known_labels(rule["expr"], rule["alert"])
    for test in _yaml(RULE_TESTS)["tests"]:
        for series in test["input_series"]:
            name = series["series"].split("{")[0].strip()
            assert name in known, f"test {test['name']!r} feeds an unknown series {name}"
            assert_known_labels(series["series"], f"test {test['name']!r}")


def test_the_metric_name_check_catches_typos():
    typo = "rlvr_serve_request_duraton_seconds_bucket"
    expr = f'histogram_quantile(0.99, sum by (job, le) (rate({typo}{{a="b"}}[5m])))'
    assert metric_names(expr) == {typo}
    assert metric_names("time() - rlvr_train_x offset 5m > 1e3 and on (run_id) up") == {"rlvr_train_x", "up"}
    subquery = 'max_over_time(avg_over_time(a{b="sum(c)"}[10m])[2h:1m]) / ignoring (r) group_left d'
    assert metric_names(subquery) == {"a", "d"}
    assert typo not in known_metrics()
    assert _template_queries('{{ range printf "rlvr_drift_detected{instance=%q} == 1" $x | query }}') == [
        'rlvr_drift_detected{instance="x"} == 1'
    ]
    selector = 'rate(rlvr_serve_requests_total{route=~"/v1/.+", stauts=~"5.."}[5m]) + up{job="a,b=c"}'
    assert matcher_labels(selector) == {"rlvr_serve_requests_total": {"route", "stauts"}, "up": {"job"}}
    with pytest.raises(AssertionError, match="stauts"):
        assert_known_labels(selector, "typo")


def test_server_and_step_metric_names_come_from_the_code():
    server = _server_metric_names()
    assert {
        "rlvr_serve_requests_total",
        "rlvr_serve_request_duration_seconds_bucket",
        "rlvr_serve_ready",
    } <= server
    from rlvr_jax.monitoring.exporters import prometheus_name

    trainer = "".join(p.read_text() for p in sorted((REPO / "rlvr_jax" / "trainer").glob("*.py")))
    for name, key in TRAIN_METRICS_FROM_STEP_KEYS.items():
        assert f'"{key}"' in trainer, f"rlvr_jax/trainer/ no longer logs {key!r} ({name})"
        assert prometheus_name(key) == name


def test_drift_metric_names_match_the_drift_monitor():
    drift = pytest.importorskip("rlvr_jax.monitoring.drift")
    assert {name: set(names) for name, (_, names) in drift.GAUGES.items()} == DRIFT_METRICS


# ---------------------------------------------------------------------------------------------------
# Grafana dashboards


def test_dashboards_validate_against_the_schema():
    schema = json.loads(DASHBOARD_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert {p.stem for p in DASHBOARDS} == {"training", "serving"}
    for path, dashboard in zip(DASHBOARDS, _dashboards(), strict=True):
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(dashboard)
        ]
        assert not errors, f"{path.name}: {errors}"

    # The schema is not a rubber stamp.
    good = _dashboards()[0]
    panel = next(i for i, p in enumerate(good["panels"]) if p["type"] != "row")
    broken = []
    for mutate in (
        lambda d: d["panels"][panel]["targets"][0].update(expr="  "),
        lambda d: d["panels"][panel].update(targets=[]),
        lambda d: d["panels"][panel]["targets"][0].pop("refId"),
        lambda d: d["panels"][panel]["gridPos"].update(w=25),
        lambda d: d["panels"][panel]["gridPos"].update(x=1.5),
        lambda d: d["panels"][panel].update(type="graph"),
        lambda d: d["panels"][panel].pop("datasource"),
        lambda d: d.pop("uid"),
        lambda d: d.update(schemaVersion=16),
    ):
        d = copy.deepcopy(good)
        mutate(d)
        broken.append(not validator.is_valid(d))
    assert all(broken), broken


def test_dashboard_layout_ids_and_datasource():
    uid = _provisioned_datasource_uid()
    dashboards = _dashboards()
    assert len({d["uid"] for d in dashboards}) == len({d["title"] for d in dashboards}) == len(dashboards)
    for d in dashboards:
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{d['uid']}: duplicate panel ids"
        cells: dict[tuple[int, int], int] = {}
        for p in d["panels"]:
            g = p["gridPos"]
            assert g["x"] + g["w"] <= 24, f"{d['uid']} panel {p['id']} leaves the grid"
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{d['uid']}: panels {cells[(x, y)]} and {p['id']} overlap"
                    cells[(x, y)] = p["id"]
        for p in _data_panels(d):
            ref_ids = [t["refId"] for t in p["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), f"{d['uid']} panel {p['id']}: duplicate refIds"
            sources = [p["datasource"]] + [t.get("datasource", p["datasource"]) for t in p["targets"]]
            assert all(s["uid"] == uid for s in sources), f"{d['uid']} panel {p['id']} is not on {uid}"
        for var in d["templating"]["list"]:
            if var["type"] == "query":
                assert var["datasource"]["uid"] == uid


def test_dashboards_use_their_variables_and_known_metrics():
    known = known_metrics()
    for d in _dashboards():
        variables = {v["name"] for v in d["templating"]["list"]}
        exprs = _dashboard_exprs(d)
        for expr in exprs:
            used = metric_names(expr)
            assert used, f"{d['uid']}: no metric in {expr!r}"
            assert used <= known, f"{d['uid']}: unknown metrics {sorted(used - known)} in {expr!r}"
            assert_known_labels(expr, d["uid"])
            referenced = set(re.findall(r"\$\{?(\w+)", expr)) - {i[1:] for i in GRAFANA_INTERVALS}
            assert referenced <= variables, f"{d['uid']}: undefined variable in {expr!r}"
            for var in variables:  # every query filters by the dashboard's variables
                assert f"${var}" in expr, f"{d['uid']}: {expr!r} ignores ${var}"
        for query in _variable_queries(d):
            assert metric_names(query) <= known, query


def test_dashboards_cover_the_training_and_serving_metrics():
    by_uid = {d["uid"]: d for d in _dashboards()}

    def used(uid: str) -> set[str]:
        return set().union(*(metric_names(e) for e in _dashboard_exprs(by_uid[uid])))

    training = by_uid["rlvr-training"]
    assert [v["name"] for v in training["templating"]["list"]] == ["run_id"]
    assert training["templating"]["list"][0]["multi"] and training["templating"]["list"][0]["includeAll"]
    missing = TRAIN_METRICS - used("rlvr-training") - {"rlvr_train_finished"}  # for alerts, not a chart
    assert not missing, f"the training dashboard shows no {sorted(missing)}"
    serving_used = used("rlvr-serving")
    missing = set(DRIFT_METRICS) - serving_used
    missing |= {
        name
        for name, series in _server_families().items()
        if name.startswith("rlvr_serve_") and not series & serving_used
    }
    assert not missing, f"the serving dashboard shows no {sorted(missing)}"
    for needed in ("histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,"):
        assert any(needed in e for e in _dashboard_exprs(by_uid["rlvr-serving"])), needed


# ---------------------------------------------------------------------------------------------------
# Provisioning and compose


def test_compose_mounts_the_rules_dashboards_and_provisioning():
    services = _yaml(COMPOSE)["services"]
    prometheus = _compose_binds("prometheus")
    grafana = _compose_binds("grafana")
    for target, source in {**prometheus, **grafana}.items():
        assert (DEPLOY / source).exists(), f"compose mounts {source} at {target}, which is missing"

    # Prometheus reads its rule files relative to the mounted config.
    config_dir = Path(next(t for t, s in prometheus.items() if s.endswith("prometheus.yml"))).parent
    for rule_file in _yaml(PROMETHEUS_CONFIG)["rule_files"]:
        in_container = config_dir / rule_file
        mount = next((t for t in prometheus if in_container.is_relative_to(t)), None)
        assert mount, f"{in_container} (rule_files of prometheus.yml) is not mounted into the container"
        on_host = DEPLOY / prometheus[mount] / in_container.relative_to(mount)
        assert on_host.resolve() == (PROMETHEUS_CONFIG.parent / rule_file).resolve()

    # Grafana: provisioning (datasource + dashboard provider) and the provider's path are mounted.
    assert grafana["/etc/grafana/provisioning"] == "./monitoring/grafana/provisioning"
    assert DASHBOARD_PROVIDERS, "no dashboard provider"
    (provider,) = [p for path in DASHBOARD_PROVIDERS for p in _yaml(path)["providers"]]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert (DEPLOY / grafana[path]).resolve() == (GRAFANA / "dashboards").resolve()

    # The Pushgateway that prometheus.yml scrapes.
    pushgateway = services["pushgateway"]
    assert pushgateway["image"].startswith("prom/pushgateway:v")
    (job,) = [j for j in _yaml(PROMETHEUS_CONFIG)["scrape_configs"] if j["job_name"] == "pushgateway"]
    assert job["static_configs"][0]["targets"] == ["pushgateway:9091"]
    assert any(p.endswith(":9091") for p in pushgateway["ports"])


# ---------------------------------------------------------------------------------------------------
# Every dashboard query against a real Prometheus scraping the real exporters


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_registry_with_traffic():
    """The server's registry with a little of everything observed, and the drift gauges when available."""
    from rlvr_jax.serving.metrics import ServerMetrics

    m = ServerMetrics(max_batch=8)
    for route, status in (
        ("/v1/chat/completions", "200"),
        ("/v1/completions", "500"),
        ("/v1/completions", "429"),
    ):
        m.requests.labels(route, "POST", status).inc(3)
        m.latency.labels(route, "POST", status).observe(0.4)
    m.rejected.labels("queue_full").inc()
    m.ttft.observe(0.2)
    m.batch_size.observe(4)
    m.batch_duration.observe(0.5)
    m.prompt_tokens.inc(100)
    m.generated_tokens.inc(200)
    m.tokens_per_second.set(400)
    m.queue_depth.set(3)
    m.queue_capacity.set(64)
    m.ready.set(1)
    m.compilations.set(4)
    try:
        from rlvr_jax.monitoring.drift import DriftConfig, DriftMonitor, build_profile
    except ImportError:
        return m.registry, False
    reference = [f"What is {a} plus {b}?" for a in range(1, 9) for b in range(1, 9)]
    profile = build_profile(reference, [f"The answer is {len(q)}." for q in reference], [1.0, 0.0] * 32)
    monitor = DriftMonitor(
        profile, window=50, config=DriftConfig(min_samples=5, min_outcomes=5), min_interval_s=0
    )
    for i in range(20):
        monitor.observe(
            f"Write an essay on topic {i} " * 5, "A long answer. " * 10, outcome=float(i % 5 == 0)
        )
    monitor.register(m.registry)
    return m.registry, True


def test_every_dashboard_query_returns_data_from_the_real_exporters(tmp_path):
    """The server's registry and the trainer's PrometheusSink, scraped by Prometheus under the job names of
    prometheus.yml: no panel of either dashboard may come up empty (a wrong name, label or job would)."""
    from prometheus_client import start_http_server

    from rlvr_jax.monitoring.exporters import PrometheusSink

    binary = shutil.which("prometheus")
    assert binary, "the prometheus binary is missing: apt-get install -y prometheus (see .ci/run)"
    registry, with_drift = _server_registry_with_traffic()
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    sink = PrometheusSink("run-1", port=0)
    names = TRAIN_METRICS | set(TRAIN_METRICS_FROM_STEP_KEYS)
    sink.write(
        1, {n.removeprefix("rlvr_train_"): 0.5 for n in names}
    )  # reward_mean -> rlvr_train_reward_mean
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": "rlvr-serve", "static_configs": [{"targets": [f"127.0.0.1:{server.server_port}"]}]},
            {"job_name": "rlvr-train", "static_configs": [{"targets": [f"127.0.0.1:{sink.port}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        args = [f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}"]
        args.append(f"--web.listen-address=127.0.0.1:{port}")
        proc = subprocess.Popen([binary, *args], stdout=out, stderr=subprocess.STDOUT)
    queries = {
        (d["uid"], expr): re.sub(r"\$\w+", ".+", expr.replace("$__rate_interval", "1m"))
        for d in _dashboards()
        for expr in _dashboard_exprs(d)
        if with_drift or "rlvr_drift_" not in expr
    }
    empty = dict(queries)
    try:
        deadline = time.monotonic() + 30
        while empty and time.monotonic() < deadline:
            assert proc.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
            for key, query in list(empty.items()):
                url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
                try:
                    with urllib.request.urlopen(url, timeout=5) as response:
                        result = json.load(response)["data"]["result"]
                except OSError:
                    break  # not listening yet
                if result:
                    del empty[key]
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(30)
        sink.close()
        server.shutdown()
    assert not empty, f"queries without data: {sorted(empty)}"
