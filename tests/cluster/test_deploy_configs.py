"""The deployment configs hold together: cluster.yaml (Ray cluster launcher, AWS) and
deploy/rayservice.yaml (KubeRay), checked against Ray's own schemas and options, against each
other, and against this repository (packages, pinned Ray version, Settings).

Nothing here talks to AWS or Kubernetes: what can be checked offline is checked with the real
validators (Ray's cluster-config JSON schema, Serve's config schema, ``ray start``'s options).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.scripts.scripts import start as ray_start_command
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from actors.cluster import HOST_RESOURCE
from warbler.config import Settings

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
DEPLOY = REPO / "deploy"
REDIS_PORT = 6379


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    config: dict[str, Any] = _load(CLUSTER_YAML)
    return config


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    manifest: dict[str, Any] = _load(DEPLOY / "rayservice.yaml")
    return manifest


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    """deploy/warbler.env.example as a dict (the format `--from-env-file` reads)."""
    env = {}
    for line in (DEPLOY / "warbler.env.example").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        # A valid variable name (Ray's own system settings are RAY_<lower_case_name>).
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"not KEY=value: {line!r}"
        assert not value.startswith(("'", '"')), f"quotes would be kept literally: {line!r}"
        env[key] = value
    return env


def _pinned_ray_version() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"ray\[[^\]]*\]==(\S+)", d))]
    assert len(pins) == 1, deps
    return pins[0]


class _OnlyGiven(Settings):
    """Settings from the given values alone: this process's WARBLER_* variables (set by CI to
    pick a backend) must not fill in what a config file forgot."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _settings_from_env(env: dict[str, str]) -> Settings:
    """Settings as a process with exactly this WARBLER_* environment would build them."""
    fields = {
        k.removeprefix("WARBLER_").lower(): v for k, v in env.items() if k.startswith("WARBLER_")
    }
    return _OnlyGiven.model_validate(fields)


def _ray_start_options() -> set[str]:
    return {opt for param in ray_start_command.params for opt in param.opts}


def _ray_start_args(commands: list[str]) -> list[list[str]]:
    """The arguments of each `ray start` in a list of shell commands."""
    found = []
    for command in commands:
        for part in command.split(";"):
            words = shlex.split(part)
            if words[:2] == ["ray", "start"]:
                found.append(words[2:])
    return found


def _flag(args: list[str], name: str) -> str | None:
    for arg in args:
        key, _, value = arg.partition("=")
        if key == name:
            return value
    return None


# --- cluster.yaml ------------------------------------------------------------------------------


def test_cluster_yaml_passes_rays_schema(cluster: dict[str, Any]) -> None:
    # What `ray up` does before it touches the cloud: merge the provider defaults, validate.
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"]


def test_cluster_node_types_carry_the_host_resource(cluster: dict[str, Any]) -> None:
    types = cluster["available_node_types"]
    head = cluster["head_node_type"]
    assert {head, "gateway", "host"} <= types.keys()
    assert types["host"]["resources"][HOST_RESOURCE] >= 1
    # Host actors ask for warbler_host only: the head and gateways must not offer it, or hosts
    # would land there instead of making the autoscaler add host nodes.
    assert HOST_RESOURCE not in types[head]["resources"]
    assert HOST_RESOURCE not in types["gateway"]["resources"]
    # CPU 0 keeps gateway replicas (0.5 CPU) off the head and off host nodes.
    assert types[head]["resources"].get("CPU") == 0
    assert types["host"]["resources"].get("CPU") == 0
    assert types["gateway"]["resources"].get("CPU", 0) > 0
    workers = [t for name, t in types.items() if name != head]
    for node_type in workers:
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"]
    assert cluster["max_workers"] >= sum(t["max_workers"] for t in workers)


def test_cluster_idle_timeout_is_set(cluster: dict[str, Any]) -> None:
    assert cluster["idle_timeout_minutes"] > 0


def test_cluster_gcs_port_is_not_redis_and_workers_join_it(cluster: dict[str, Any]) -> None:
    heads = _ray_start_args(cluster["head_start_ray_commands"])
    workers = _ray_start_args(cluster["worker_start_ray_commands"])
    assert len(heads) == 1 and len(workers) == 1
    head, worker = heads[0], workers[0]
    assert "--head" in head
    port = _flag(head, "--port")
    assert port is not None and int(port) != REDIS_PORT
    assert _flag(worker, "--address") == f"$RAY_HEAD_IP:{port}"
    assert _flag(head, "--autoscaling-config") == "~/ray_bootstrap_config.yaml"
    assert _flag(head, "--metrics-export-port") == "8080"
    assert _flag(head, "--dashboard-host") == "0.0.0.0"
    # A re-run of `ray up` restarts Ray: each node stops it first.
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        assert commands[0].strip() == "ray stop"


def test_cluster_start_flags_are_ray_start_options(cluster: dict[str, Any]) -> None:
    options = _ray_start_options()
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        for args in _ray_start_args(commands):
            flags = {arg.partition("=")[0] for arg in args if arg.startswith("-")}
            assert flags <= options, flags - options


def test_cluster_setup_installs_warbler(cluster: dict[str, Any]) -> None:
    installs = []
    for command in cluster["setup_commands"]:
        words = shlex.split(command)
        if words[:2] == ["pip", "install"]:
            installs += [w for w in words[2:] if not w.startswith("-")]
    assert any(re.match(r"warbler(\[[^\]]*\])?( @ git\+https://\S+)?$", w) for w in installs)


def test_cluster_nodes_get_the_env_file_and_token(cluster: dict[str, Any]) -> None:
    mounts = cluster["file_mounts"]
    assert mounts["~/warbler.env"] == "deploy/warbler.env"
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert (REPO / mounts["~/warbler-serve.yaml"]).is_file()
    # The filled-in env file is never committed.
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/warbler.env"], cwd=REPO, check=False
    )
    assert ignored.returncode == 0
    # Every `ray start` exports the env file first, so every Ray process inherits it.
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        before = start.split("ray start")[0]
        assert "set -a" in before and ". ~/warbler.env" in before


def test_env_example_is_a_production_config(env_example: dict[str, str]) -> None:
    settings = _settings_from_env(env_example)
    settings.check_production()  # raises WarblerError on an insecure or incomplete config
    assert settings.mode == "production"
    assert settings.database_url is not None and settings.database_url.startswith("postgresql")
    assert settings.redis_url is not None and settings.redis_url.startswith("rediss://")
    assert env_example["RAY_AUTH_MODE"] == "token"
    assert env_example["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_host_pool_fits_the_host_nodes(
    cluster: dict[str, Any], rayservice: dict[str, Any], env_example: dict[str, str]
) -> None:
    # settings.max_hosts host actors must be placeable when every host node is up.
    host_type = cluster["available_node_types"]["host"]
    capacity = host_type["max_workers"] * host_type["resources"][HOST_RESOURCE]
    vm = _settings_from_env(env_example)
    assert vm.min_hosts <= vm.max_hosts <= capacity

    group = _worker_group(rayservice, "host")
    k8s_capacity = group["maxReplicas"] * _start_param_resources(group)[HOST_RESOURCE]
    k8s = _settings_from_env(_literal_env(_containers(rayservice)[0]))
    assert k8s.min_hosts <= k8s.max_hosts <= k8s_capacity


# --- deploy/rayservice.yaml --------------------------------------------------------------------


def _cluster_spec(rayservice: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = rayservice["spec"]["rayClusterConfig"]
    return spec


def _groups(rayservice: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = _cluster_spec(rayservice)
    yield spec["headGroupSpec"]
    yield from spec["workerGroupSpecs"]


def _worker_group(rayservice: dict[str, Any], name: str) -> dict[str, Any]:
    groups = [g for g in _cluster_spec(rayservice)["workerGroupSpecs"] if g["groupName"] == name]
    assert len(groups) == 1, name
    group: dict[str, Any] = groups[0]
    return group


def _containers(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for group in _groups(rayservice) for c in group["template"]["spec"]["containers"]]


def _literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _start_param_resources(group: dict[str, Any]) -> dict[str, float]:
    # KubeRay passes rayStartParams to the shell as `--resources=<value>`: unquote as it would.
    raw = group["rayStartParams"].get("resources")
    if raw is None:
        return {}
    words = shlex.split(raw)
    assert len(words) == 1, raw
    resources: dict[str, float] = json.loads(words[0])
    return resources


def test_rayservice_serve_config_is_valid_and_matches_the_vm_one(
    rayservice: dict[str, Any],
) -> None:
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert rayservice["kind"] == "RayService"
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    vm = _load(DEPLOY / "serve.yaml")
    ServeDeploySchema.model_validate(embedded)
    ServeDeploySchema.model_validate(vm)
    assert embedded == vm


def test_rayservice_import_path_resolves_to_this_repo(rayservice: dict[str, Any]) -> None:
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    module, _, attribute = app["import_path"].partition(":")
    assert (module, attribute) == ("serve.app", "app")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve() == REPO / (module.replace(".", "/") + ".py")


def test_rayservice_import_path_names_a_serve_application() -> None:
    module = importlib.import_module("serve.app")
    assert isinstance(module.app, Application)


def test_rayservice_autoscaler_and_auth(rayservice: dict[str, Any]) -> None:
    spec = _cluster_spec(rayservice)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["authOptions"]["mode"] == "token"


def test_rayservice_groups_and_host_resource(rayservice: dict[str, Any]) -> None:
    options = _ray_start_options()
    for group in _groups(rayservice):
        flags = {f"--{key}" for key in group["rayStartParams"]}
        assert flags <= options, flags - options
    host = _worker_group(rayservice, "host")
    assert _start_param_resources(host)[HOST_RESOURCE] >= 1
    assert host["rayStartParams"]["num-cpus"] == "0"
    assert _cluster_spec(rayservice)["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in _groups(rayservice):
        if group is not host:
            assert HOST_RESOURCE not in _start_param_resources(group)
    for group in _cluster_spec(rayservice)["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_rayservice_secret_refs_exist(
    rayservice: dict[str, Any], env_example: dict[str, str]
) -> None:
    secrets = {
        doc["metadata"]["name"]: doc["stringData"]
        for doc in yaml.safe_load_all((DEPLOY / "secret.example.yaml").read_text())
        if doc and doc.get("kind") == "Secret"
    }
    containers = _containers(rayservice)
    assert containers
    for container in containers:
        refs = [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]
        assert refs, f"container {container['name']} reads no Secret"
        from_secrets: dict[str, str] = {}
        for name in refs:
            assert name in secrets, f"Secret {name!r} is not in deploy/secret.example.yaml"
            from_secrets.update(secrets[name])
        for entry in container.get("env", []):
            key_ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if key_ref:
                assert key_ref["key"] in secrets.get(key_ref["name"], {}), key_ref
        # The Secret is made from the same env file as the VMs use: its keys are all there.
        assert from_secrets.keys() <= env_example.keys()
        # A pod's environment is a complete production configuration.
        env = {**from_secrets, **_literal_env(container)}
        _settings_from_env(env).check_production()


def test_images_use_the_pinned_ray(cluster: dict[str, Any], rayservice: dict[str, Any]) -> None:
    version = _pinned_ray_version()
    assert _cluster_spec(rayservice)["rayVersion"] == version
    assert cluster["docker"]["image"].startswith(f"rayproject/ray:{version}-py311")
    images = {c["image"] for c in _containers(rayservice)}
    assert len(images) == 1, images
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert base.startswith(f"rayproject/ray:{version}-py311")


def test_dockerfile_installs_every_package() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(\w+)\s", dockerfile, flags=re.MULTILINE))
    assert packages <= copied, packages - copied
