"""docker-compose.yml and deploy/Dockerfile, checked without a Docker engine.

`docker compose up` must bring up what `make run` brings up, configured through variables the
code actually reads, on the ports and the Kafka the code expects, in an order where nothing
starts before what it needs is healthy; the intake and the partner status API behind TLS with
the certificates and keys the one-shot `credentials` container makes.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from devstack import containers
from devstack.broker import kafka_version
from devstack.stack import SERVICES
from plumbing import config
from tests.deploy.manifests import ROOT, compose, variables_read_by_code

OUR_IMAGE_SERVICES = {
    "create-topics",
    "credentials",
    "intake",
    "router",
    "tracker",
    "timeline",
    "enforcement",
    "victim-services",
    "demo",
}
ONE_SHOT = {"create-topics", "credentials"}
LISTEN_ADDRESSES = {
    "REFERRAL_GRPC_ADDR": config.grpc_address,
    "REFERRAL_PARTNER_GRPC_ADDR": config.partner_grpc_address,
    "REFERRAL_QUERY_GRPC_ADDR": config.query_grpc_address,
    "VICTIM_SERVICES_GRPC_ADDR": config.victim_services_grpc_address,
}
VALID_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
TLS_APIS = {
    # service: (its TLS folder variable, the folder `credentials` makes for it)
    "intake": ("CTROUTE_INTAKE_TLS_DIR", "intake"),
    "tracker": ("CTROUTE_PARTNER_API_TLS_DIR", "partner-api"),
}
"""The authenticated APIs: TLS everywhere but local test fixtures."""


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def default_port(variable: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.delenv(variable, raising=False)
    return port_of(LISTEN_ADDRESSES[variable]())


def python_module(command: list[str]) -> list[str]:
    """`python -m MODULE ARGS...` -> [MODULE, ARGS...]."""
    assert command[:2] == ["python", "-m"], command
    return command[2:]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Mount path -> (volume, mode) of a service's short-syntax volumes."""
    found = {}
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


def credentials_dir() -> str:
    return option(python_module(services()["credentials"]["command"]), "--dir")


def credentials_volume() -> str:
    return mounts(services()["credentials"])[credentials_dir()][0]


def test_every_service_of_make_run_and_the_infrastructure_is_there() -> None:
    assert set(services()) == OUR_IMAGE_SERVICES | {
        "kafka",
        "postgres",
        "jaeger",
        "otel-collector",
    }
    started = {tuple(python_module(services()[name]["command"])) for name in OUR_IMAGE_SERVICES}
    for spec in SERVICES:
        assert spec.module_args in started, f"{spec.name} ({spec.module_args}) is not started"


def test_commands_name_modules_that_exist() -> None:
    for name in OUR_IMAGE_SERVICES:
        module = python_module(services()[name]["command"])[0]
        assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"


def test_our_services_share_one_image_built_from_the_dockerfile() -> None:
    images = {services()[name]["image"] for name in OUR_IMAGE_SERVICES}
    assert len(images) == 1
    for name in OUR_IMAGE_SERVICES:
        build = services()[name]["build"]
        assert build["context"] == "."
        assert (ROOT / build["dockerfile"]).is_file()


def test_kafka_is_the_official_image_in_kraft_mode_at_the_pinned_version() -> None:
    kafka = services()["kafka"]
    assert kafka["image"] == f"apache/kafka:{kafka_version(ROOT)}"
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert not any("ZOOKEEPER" in key for key in env)
    # The code creates its topics with its own partitions and configs; none may appear by accident.
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_services_reach_kafka_on_an_advertised_listener() -> None:
    advertised = {
        listener.split("://", 1)[1]
        for listener in services()["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    for name in OUR_IMAGE_SERVICES:
        servers = services()[name]["environment"]["KAFKA_BOOTSTRAP_SERVERS"].split(",")
        assert set(servers) <= advertised, name
    # The host's refctl uses the code's default bootstrap address through the published port.
    host_port = port_of(config.DEFAULT_KAFKA_BOOTSTRAP)
    assert f"{host_port}:{host_port}" in services()["kafka"]["ports"]
    assert f"localhost:{host_port}" in advertised


def test_every_variable_set_on_our_services_is_read_by_the_code() -> None:
    read = variables_read_by_code()
    for name in OUR_IMAGE_SERVICES:
        unknown = set(services()[name].get("environment", {})) - read
        assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"


def test_grpc_servers_listen_on_the_codes_ports_and_publish_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    servers = 0
    for name in OUR_IMAGE_SERVICES:
        service = services()[name]
        for variable, value in service.get("environment", {}).items():
            if variable not in LISTEN_ADDRESSES:
                continue
            port = default_port(variable, monkeypatch)
            assert port_of(value) == port, f"{name}: {variable}={value}"
            if value.startswith("0.0.0.0:"):
                servers += 1
                assert f"{port}:{port}" in service["ports"], f"{name} does not publish {port}"
                test = service["healthcheck"]["test"]
                assert test[test.index("grpc") + 1] == f"127.0.0.1:{port}", name
                if name in TLS_APIS:
                    tls_dir = service["environment"][TLS_APIS[name][0]]
                    assert test[test.index("grpc") + 2 :] == ["--ca", f"{tls_dir}/ca.pem"], name
                else:
                    assert test[-2:] == ["grpc", f"127.0.0.1:{port}"], name
    assert servers == len(LISTEN_ADDRESSES)


def test_the_authenticated_apis_speak_tls_with_what_credentials_makes(tmp_path: Path) -> None:
    command = python_module(services()["credentials"]["command"])
    assert command[:2] == ["devstack.containers", "credentials"]
    assert services()["credentials"]["restart"] == "no"
    assert mounts(services()["credentials"])[credentials_dir()][1] == "rw"
    hostnames = [command[i + 1] for i, arg in enumerate(command) if arg == "--hostname"]
    assert set(TLS_APIS) <= set(hostnames), "certificates must name the services' hosts"
    # What the container makes, made here: each API's folder has what its server reads.
    names = [arg for hostname in hostnames for arg in ("--hostname", hostname)]
    assert containers.main(["credentials", "--dir", str(tmp_path), *names]) == 0
    for name, (variable, folder) in TLS_APIS.items():
        service = services()[name]
        tls_dir = PurePosixPath(service["environment"][variable])
        assert tls_dir == PurePosixPath(credentials_dir()) / folder, name
        mount = mounts(service)[credentials_dir()]
        assert mount[0] == credentials_volume(), f"{name} does not mount the credentials"
        assert service["depends_on"]["credentials"] == {
            "condition": "service_completed_successfully"
        }
        for file in ("server.pem", "server-key.pem", "ca.pem", "trusted-keys"):
            assert (tmp_path / folder / file).exists(), f"{name}: no {file}"
        assert list((tmp_path / folder / "trusted-keys").glob("*.pub")), name
    assert credentials_volume() in compose()["volumes"]


def test_the_credentials_folder_is_in_the_image_and_the_services_own_it() -> None:
    # A fresh named volume copies the ownership of the image's folder it is mounted on.
    (run,) = [r for k, r in dockerfile_instructions() if k == "RUN" and "useradd" in r]
    assert "--uid 10001" in run
    steps = [step.strip() for step in run.split("&&")]
    made = next(i for i, step in enumerate(steps) if step.startswith("mkdir -p "))
    owned = next(i for i, step in enumerate(steps) if step == "chown -R ctroute /var/lib/ctroute")
    assert credentials_dir() in steps[made].split()
    assert credentials_dir().startswith("/var/lib/ctroute/")
    assert made < owned


def test_every_long_running_service_has_a_health_check() -> None:
    for name, service in services().items():
        if name in ONE_SHOT or name in {"demo", "jaeger", "otel-collector"}:
            continue
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", name
        if name in OUR_IMAGE_SERVICES:
            assert test[1:4] == ["python", "-m", "plumbing.healthcheck"], name


def test_workers_without_grpc_are_healthy_when_their_consumer_group_is_assigned() -> None:
    groups = {spec.consumer_group for spec in SERVICES if spec.consumer_group}
    for name in OUR_IMAGE_SERVICES:
        test = services()[name].get("healthcheck", {}).get("test", [])
        if "group" in test:
            assert test[-1] in groups, f"{name} checks unknown group {test[-1]}"


def test_start_order_waits_for_health_and_for_the_topics() -> None:
    for name, service in services().items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            assert condition["condition"] in VALID_CONDITIONS
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services()[dependency], f"{dependency} has no healthcheck"
            if condition["condition"] == "service_completed_successfully":
                assert services()[dependency]["restart"] == "no"
    for name in OUR_IMAGE_SERVICES - ONE_SHOT - {"demo"}:
        assert services()[name]["depends_on"]["create-topics"] == {
            "condition": "service_completed_successfully"
        }
    assert services()["create-topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services()["timeline"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    demo_waits_for = set(services()["demo"]["depends_on"])
    assert demo_waits_for == OUR_IMAGE_SERVICES - ONE_SHOT - {"demo"}


def test_topics_are_created_by_the_code_with_the_single_brokers_replication() -> None:
    command = python_module(services()["create-topics"]["command"])
    assert command[:2] == ["devstack.containers", "create-topics"]
    assert command[command.index("--replication-factor") + 1] == "1"


def test_the_demo_feeds_the_demo_referrals_through_the_intake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    demo = services()["demo"]
    command = python_module(demo["command"])
    assert command[:2] == ["devstack.containers", "demo"]
    demo_dir = option(command, "--demo-dir")
    assert option(command, "--credentials") == credentials_dir()
    assert mounts(demo)[credentials_dir()][0] == credentials_volume()
    instructions = dockerfile_instructions()
    assert ("WORKDIR", "/app") in instructions
    assert ("COPY", "deploy/demo ./deploy/demo") in instructions
    assert demo_dir == "/app/deploy/demo"
    assert list((ROOT / "deploy/demo").glob("*.json"))
    address = demo["environment"]["REFERRAL_GRPC_ADDR"]
    assert address == f"intake:{default_port('REFERRAL_GRPC_ADDR', monkeypatch)}"


def test_trace_store_is_the_postgres_service() -> None:
    url = services()["timeline"]["environment"]["CTROUTE_TRACE_STORE_URL"]
    postgres = services()["postgres"]["environment"]
    match = re.fullmatch(r"postgresql://([^:]+):([^@]+)@postgres:5432/(\w+)", url)
    assert match is not None, url
    assert match.groups() == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )


def test_spans_go_to_the_collector_and_on_to_jaeger() -> None:
    collector = yaml.safe_load((ROOT / "deploy/otel-collector/config.yaml").read_text())
    receiver = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    for name in OUR_IMAGE_SERVICES:
        endpoint = services()[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        assert endpoint == f"http://otel-collector:{port_of(receiver)}"
    mounted = services()["otel-collector"]["volumes"][0].split(":")
    assert mounted[0] == "./deploy/otel-collector/config.yaml"
    assert services()["otel-collector"]["command"] == [f"--config={mounted[1]}"]
    pipeline = collector["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    (exporter,) = pipeline["exporters"]
    assert collector["exporters"][exporter]["endpoint"].startswith("jaeger:")
    assert "jaeger" in services()["otel-collector"]["depends_on"]


# --- the image ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "deploy/Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), " ".join(rest.split())))
    return instructions


def test_the_image_is_python_311_slim() -> None:
    assert dockerfile_instructions()[0] == ("FROM", "python:3.11-slim")


def test_the_image_installs_what_make_setup_installs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r requirements.lock" in makefile
    assert "pip install --quiet --no-deps -e ." in makefile
    runs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]
    copies = [rest for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    assert runs[:2] == ["pip install -r requirements.lock", "pip install --no-deps ."]
    assert copies[0] == "requirements.lock ./"
    assert "services ./services" in copies
    # pyproject.toml names README.md as the readme: the build needs both.
    assert "pyproject.toml README.md ./" in copies


def test_the_image_sets_only_variables_the_code_or_python_reads() -> None:
    names: list[str] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            names += re.findall(r"([A-Z_]+)=", rest)
    ours = [name for name in names if not name.startswith(("PYTHON", "PIP_"))]
    assert ours
    assert set(ours) <= variables_read_by_code()


def test_processes_start_in_a_writable_folder() -> None:
    # faust creates `<app id>-data` in the working directory; the code's files are root's.
    workdirs = [rest for keyword, rest in dockerfile_instructions() if keyword == "WORKDIR"]
    assert workdirs[-1] == "/var/lib/ctroute"
    env = dict(
        re.findall(
            r"([A-Z_]+)=(\S+)", " ".join(r for k, r in dockerfile_instructions() if k == "ENV")
        )
    )
    assert env["CTROUTE_DATA_DIR"].startswith(workdirs[-1] + "/")


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".run", ".git", "deploy/kafka/lib"} <= ignored
