"""The deployment files agree with the code: deploy/Dockerfile, docker-compose.yml and deploy/kubernetes/
set only real settings (infra/settings.py), each with a value the Settings model accepts; their roles and
commands exist; the ports their probes, health checks, Services and port mappings use are the ones the
processes listen on; the table stores' volume is mounted at the data directory. None of them is run
here (no Docker engine, no cluster): this is what can be checked without."""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from unittest import mock

import click
import pytest
import yaml
from pydantic import AliasChoices

from infra.settings import ALL_ROLES, Settings
from streams.processes import Process, shape

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
KUBERNETES = ROOT / "deploy" / "kubernetes"
LIVE, READY, METRICS = "/health/live", "/health/ready", "/metrics"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def variables() -> set[str]:
    """Every environment variable a setting is read from."""
    names = set()
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        names |= set(alias.choices) if isinstance(alias, AliasChoices) else {f"GEODISPATCH_{field.upper()}"}
    return names


def settings_from(env: dict[str, object], where: str) -> Settings:
    """The Settings a container with exactly this environment builds. The model ignores unknown
    variables (extra="ignore"), so a renamed setting would be silently dropped: refused here instead."""
    ours = {name: str(value) for name, value in env.items()
            if name.startswith("GEODISPATCH_") or name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    assert sorted(set(ours) - variables()) == [], f"{where}: not a setting of infra/settings.py"
    with mock.patch.dict(os.environ, ours, clear=True):
        return Settings()


def resolve_command(args: list[str]) -> click.Command:
    """The `geodispatch` command these arguments run, failing on an unknown command or option."""
    from streams.cli import main

    command: click.Command = main
    for arg in args:
        if arg.startswith("-"):
            assert arg in {opt for param in command.params for opt in getattr(param, "opts", ())}, (args, arg)
        else:
            assert isinstance(command, click.Group), args
            command = command.commands[arg]
    return command


# -- the Dockerfile ---------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                            if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip()]


def image_env() -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            env |= dict(word.split("=", 1) for word in shlex.split(args))
    return env


def image_uid() -> int:
    [uid] = [int(m) for i, args in dockerfile() if i == "RUN" for m in re.findall(r"--uid (\d+)", args)]
    return uid


def test_the_image_installs_the_worker_and_the_gateway_and_runs_the_worker_as_a_user():
    steps = dockerfile()
    assert all(args.startswith("python:3.11-slim") for i, args in steps if i == "FROM")
    installs = [args for i, args in steps if i == "RUN" and "pip install" in args]
    assert len(installs) == 1 and "[worker,gateway]" in installs[0]
    assert {"worker", "gateway"} <= set(PYPROJECT["project"]["optional-dependencies"])
    assert PYPROJECT["project"]["scripts"]["geodispatch"] == "streams.cli:main"
    [user] = [args for i, args in steps if i == "USER"]
    runs = " ".join(args for i, args in steps if i == "RUN")
    assert user not in ("root", "0") and image_uid() != 0
    assert re.search(rf"useradd [^&]*--uid {image_uid()} [^&]*\b{user}\b", runs)
    [entrypoint] = [json.loads(args) for i, args in steps if i == "ENTRYPOINT"]
    [cmd] = [json.loads(args) for i, args in steps if i == "CMD"]
    assert entrypoint == ["geodispatch"] and cmd == ["worker"]
    resolve_command(cmd)
    settings = settings_from(image_env(), "deploy/Dockerfile ENV")
    [volume] = [json.loads(args) for i, args in steps if i == "VOLUME"]
    assert volume == [str(settings.data_dir)]
    assert settings.web_host == settings.gateway_host == "0.0.0.0"  # reachable from outside the container
    [exposed] = [args.split() for i, args in steps if i == "EXPOSE"]
    assert exposed == [str(settings.web_port), str(settings.gateway_port)]
    # What it copies is let into the build context (.dockerignore leaves out everything else) and exists.
    copied = [word for i, args in steps if i == "COPY" and "--from" not in args for word in args.split()[:-1]]
    kept = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert set(copied) <= kept and all((ROOT / path).exists() for path in copied)
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]  # "streams*", ...
    assert {package.rstrip("*") + "/" for package in packages} | {"pyproject.toml", "README.md"} <= set(copied)
    # The health check asks the liveness probe on the worker's port, whatever GEODISPATCH_WEB_PORT says.
    [check] = [args for i, args in steps if i == "HEALTHCHECK"]
    assert LIVE in check and f"os.environ.get('GEODISPATCH_WEB_PORT', '{settings.web_port}')" in check


# -- docker-compose.yml -----------------------------------------------------------------------------


def interpolated(value: object) -> str:
    """Compose's ${NAME:-default} as it reads with NAME unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def compose_services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def ours(services: dict[str, dict]) -> dict[str, dict]:
    return {name: service for name, service in services.items()
            if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"}


def compose_settings(name: str, service: dict) -> Settings:
    env = image_env() | {key: interpolated(value) for key, value in service.get("environment", {}).items()}
    return settings_from(env, f"docker-compose.yml: {name}")


def published(service: dict) -> dict[int, int]:
    """container port: host port, of "127.0.0.1:HOST:CONTAINER" mappings."""
    return {int(container): int(host) for host, container in
            (mapping.rsplit(":", 2)[1:] for mapping in service.get("ports", []))}


def test_compose_runs_make_runs_shape_on_its_broker_and_redis():
    services = compose_services()
    built = ours(services)
    workers = {name: s for name, s in built.items() if s.get("command", ["worker"])[0] == "worker"}
    processes = set()
    for name, service in built.items():
        settings = compose_settings(name, service)
        resolve_command(service.get("command", ["worker"]))
        host, port = settings.kafka_bootstrap_servers.split(":")
        assert f"://{host}:{port}" in services[host]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        redis = settings.redis_url.get_secret_value()
        assert re.fullmatch(r"redis://redis:6379/\d+", redis) and "redis" in services
        if name in workers:
            processes.add(Process(",".join(settings.roles), settings.web_port, settings.niceness))
            assert published(service) == {settings.web_port: settings.web_port}
            if settings.runs_streams:  # its table stores on a named volume, at the data directory
                mounts = dict(reversed(volume.split(":", 1)) for volume in service["volumes"])
                assert mounts[str(settings.data_dir)] in yaml.safe_load(COMPOSE.read_text())["volumes"]
            assert set(service["depends_on"]) == {"topics", "redis"}
    # streams.processes.shape: the same processes, ports and nice values as `make run`.
    assert processes == set(shape("roles", Settings.model_fields["web_port"].default))
    assert built["topics"]["command"][:2] == ["topics", "apply"]


def test_compose_runs_the_gateway_with_a_secret_and_checks_its_own_port():
    gateway = compose_services()["gateway"]
    settings = compose_settings("gateway", gateway)
    assert gateway["command"] == ["gateway"]
    assert settings.jwt_secret is not None and len(settings.jwt_secret.get_secret_value()) >= 32
    assert published(gateway) == {settings.gateway_port: settings.gateway_port}
    assert f"127.0.0.1:{settings.gateway_port}{LIVE}'" in " ".join(gateway["healthcheck"]["test"])


# -- Kubernetes ---------------------------------------------------------------------------------------


def manifests() -> dict[tuple[str, str], dict]:
    documents = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            documents[document["kind"], document["metadata"]["name"]] = document
    return documents


def containers() -> list[tuple[dict, dict, Settings]]:
    """(workload, container, the Settings its environment builds) for every container."""
    found, documents = [], manifests()
    for (kind, name), workload in documents.items():
        if kind not in ("Deployment", "StatefulSet", "Job"):
            continue
        for container in workload["spec"]["template"]["spec"]["containers"]:
            env = dict(image_env())
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    env |= documents["ConfigMap", source["configMapRef"]["name"]]["data"]
                else:
                    env |= documents["Secret", source["secretRef"]["name"]]["stringData"]
            env |= {item["name"]: item["value"] for item in container.get("env", [])}
            found.append((workload, container, settings_from(env, f"{kind} {name}: {container['name']}")))
    return found


def test_kustomization_lists_every_manifest():
    resources = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    assert sorted(resources) == sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def test_kubernetes_workloads_run_every_role_with_real_settings_and_the_image_of_this_version():
    roles, version = set(), PYPROJECT["project"]["version"]
    for workload, container, settings in containers():
        pod = workload["spec"]["template"]["spec"]
        assert container["image"] == f"geodispatch:{version}"
        command = resolve_command(container["args"])
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == image_uid()
        if command.name == "worker":
            assert "GEODISPATCH_ROLES" in {item["name"] for item in container["env"]}
            roles |= set(settings.roles)
            if settings.runs_streams:  # more pods than partitions would sit idle
                assert workload["spec"]["replicas"] <= settings.partitions
    assert roles == set(ALL_ROLES)


def test_the_table_stores_are_on_a_claimed_volume_at_the_data_directory():
    for workload, container, settings in containers():
        if container["args"] != ["worker"] or not settings.runs_streams:
            continue
        assert workload["kind"] == "StatefulSet", f"{workload['metadata']['name']}: its stores would not survive"
        claims = {claim["metadata"]["name"] for claim in workload["spec"]["volumeClaimTemplates"]}
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        assert mounts[str(settings.data_dir)] in claims
        assert workload["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == image_uid()


def test_probes_services_and_the_service_monitor_use_the_ports_the_processes_listen_on():
    documents = manifests()
    services = {name: doc for (kind, name), doc in documents.items() if kind == "Service"}
    served = set()
    for workload, container, settings in containers():
        if workload["kind"] == "Job":
            continue
        listens = settings.gateway_port if container["args"] == ["gateway"] else settings.web_port
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports == {"http": listens}
        wanted = {"livenessProbe": LIVE, "readinessProbe": READY}
        if workload["kind"] == "StatefulSet":  # its tables restored before liveness counts
            wanted["startupProbe"] = LIVE
        probes = {name: container[name]["httpGet"] for name in container if name.endswith("Probe")}
        assert probes == {name: {"path": path, "port": "http"} for name, path in wanted.items()}
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        [service] = [s for s in services.values() if s["spec"]["selector"].items() <= labels.items()]
        assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
        if workload["kind"] == "StatefulSet":
            assert workload["spec"]["serviceName"] == service["metadata"]["name"]
        served.add(service["metadata"]["name"])
    [monitor] = [doc for (kind, _), doc in documents.items() if kind == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    scraped = {name for name, s in services.items()
               if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()}
    assert scraped == served
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", METRICS)]


# -- what the files rely on in the code ----------------------------------------------------------------


def test_every_process_serves_the_probes_and_metrics_without_a_token():
    from prometheus_client import CollectorRegistry

    from consumers.gateway.server import Gateway
    from infra.auth import Verifier
    from streams.access import OPEN_PATHS
    from streams.api import build_api
    from streams.metrics import Metrics
    from streams.views import routes

    wanted = {LIVE, READY, METRICS}
    assert wanted <= OPEN_PATHS
    assert wanted <= {path for path, _ in routes(serves_sessions=False)}
    api = build_api(Settings(), None, Metrics(CollectorRegistry()), None)  # type: ignore[arg-type]
    assert wanted <= {resource.canonical for resource in api.router.resources()}
    settings = Settings(jwt_secret="s" * 32)
    gateway = Gateway(settings, Verifier.from_settings(settings)).application()
    assert wanted <= {resource.canonical for resource in gateway.router.resources()}


REPO_PATH = re.compile(r"((?:deploy|docs|streams|infra|consumers|tests)/[A-Za-z0-9_./-]*[A-Za-z0-9_])")


@pytest.mark.parametrize("path", [DOCKERFILE, COMPOSE, *sorted(KUBERNETES.glob("*.yaml")),
                                  ROOT / "docs" / "DEPLOYMENT.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_names_paths_that_exist(path: Path):
    """The repository paths the files' comments (and the deployment guide) point a reader to."""
    assert [name for name in REPO_PATH.findall(path.read_text()) if not (ROOT / name).exists()] == []
