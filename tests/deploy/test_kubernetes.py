"""deploy/k8s, resolved like `kubectl apply -k deploy/k8s/base` and checked without a cluster.

Structure (every object well formed, selectors that select, probes, resources, references that
resolve), the Kafka side against the code (topics, partitions, compaction) and the isolation
design (each principal's ACLs), and the generated file against its generator.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import kafka_resources
from devstack.stack import SERVICES
from plumbing import access, topics
from plumbing.access import Grant
from referral.domain.policy import default_policy_path, load_policy
from tests.deploy.manifests import (
    K8S_BASE,
    OPERATIONS_GUIDE,
    PENDING_SECURITY_VARIABLES,
    ROOT,
    kustomize_build,
    of_kind,
    variables_read_by_code,
)

RESOURCES = kustomize_build(K8S_BASE)
DEPLOYMENTS = of_kind(RESOURCES, "Deployment")
KAFKA_USERS = of_kind(RESOURCES, "KafkaUser")
KAFKA_TOPICS = of_kind(RESOURCES, "KafkaTopic")
PARTNERS = sorted(load_policy(default_policy_path()).partners)
SERVICE_PRINCIPALS = {
    "svc-intake",
    "svc-router",
    "svc-tracker",
    "svc-timeline",
    "svc-enforcement",
    "svc-victim-services",
    "svc-operator",
}
SINGLE_WRITERS = {"tracker", "enforcement", "victim-services"}
TLS_APIS = {
    # Deployment: (its TLS folder variable, its trusted keys variable)
    "intake": ("CTROUTE_INTAKE_TLS_DIR", "CTROUTE_INTAKE_TRUSTED_KEYS"),
    "tracker": ("CTROUTE_PARTNER_API_TLS_DIR", "CTROUTE_PARTNER_API_TRUSTED_KEYS"),
}
"""The authenticated APIs: TLS everywhere but local test fixtures."""
PLAINTEXT_APIS = {"timeline", "victim-services"}
"""Still plaintext (a known gap in the operations guide): probed with `grpc:` probes."""
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
ACL_OPERATIONS = {"Read", "Write", "Describe", "Create", "IdempotentWrite"}


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return found


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def documented_secrets() -> set[str]:
    """Secret names in the operations guide's table of Secrets to create (in its Kubernetes
    section: a row whose first cell is a name and whose second names the keys)."""
    guide = OPERATIONS_GUIDE.read_text()
    start = guide.index("\n## Kubernetes\n")
    kubernetes = guide[start : guide.index("\n## ", start + 1)]
    return set(re.findall(r"^\| `([a-z0-9-]+)` \| `[^`|]+`", kubernetes, re.M))


def secret_mounts(deployment: dict[str, Any]) -> dict[str, str]:
    """Mount path -> Secret name of the first container's Secret volumes."""
    pod = deployment["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    return {
        m["mountPath"]: secrets[m["name"]]
        for m in containers(deployment)[0]["volumeMounts"]
        if m["name"] in secrets
    }


def test_every_object_is_well_formed() -> None:
    seen = set()
    for resource in RESOURCES:
        assert {"apiVersion", "kind", "metadata"} <= set(resource)
        name = resource["metadata"]["name"]
        assert DNS_SUBDOMAIN.match(name), name
        assert resource["metadata"]["namespace"] == "ctroute"
        key = (resource["kind"], name)
        assert key not in seen, f"{key} defined twice"
        seen.add(key)


def test_kubectl_kustomize_builds_the_same_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the Python resolver is checked instead")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S_BASE)], capture_output=True, text=True, check=True
    ).stdout
    theirs = [doc for doc in yaml.safe_load_all(built) if doc]

    def key(resource: dict[str, Any]) -> tuple[str, str]:
        name = resource["metadata"]["name"]
        if resource["kind"] == "ConfigMap":
            name = re.sub(r"-[a-z0-9]{10}$", "", name)
        return resource["kind"], name

    assert sorted(map(key, theirs)) == sorted(map(key, RESOURCES))
    for resource in theirs:
        if resource["kind"] == "Deployment":
            ours = DEPLOYMENTS[resource["metadata"]["name"]]
            assert env_of(containers(resource)[0]) == env_of(containers(ours)[0])


def test_deployments_select_their_own_pods() -> None:
    for name, deployment in DEPLOYMENTS.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        others = [d for d in DEPLOYMENTS.values() if d is not deployment]
        for other in others:
            assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()


def test_containers_have_probes_and_resources() -> None:
    for name, deployment in DEPLOYMENTS.items():
        for container in containers(deployment):
            assert "readinessProbe" in container, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


def test_services_run_in_a_writable_state_folder() -> None:
    # The image's working directory and data folder; faust creates `<app id>-data` there.
    for name, deployment in DEPLOYMENTS.items():
        if name == "refctl":
            continue
        (container,) = containers(deployment)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/var/lib/ctroute" in mounts, name


def test_grpc_servers_are_probed_on_their_grpc_health_service() -> None:
    servers = 0
    for name, deployment in DEPLOYMENTS.items():
        for container in containers(deployment):
            for item in env_of(container).values():
                value = item.get("value", "")
                if not item["name"].endswith("_GRPC_ADDR") or not value.startswith("0.0.0.0:"):
                    continue
                servers += 1
                port = int(value.rsplit(":", 1)[1])
                assert [p["containerPort"] for p in container["ports"]] == [port], name
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if name in PLAINTEXT_APIS:
                        assert container[probe]["grpc"]["port"] == port, f"{name} {probe}"
                        continue
                    # `grpc:` probes cannot speak TLS: the health check runs in the pod.
                    assert "grpc" not in container[probe], f"{name} {probe}"
                    tls_dir = env_of(container)[TLS_APIS[name][0]]["value"]
                    assert container[probe]["exec"]["command"] == [
                        "python",
                        "-m",
                        "plumbing.healthcheck",
                        "grpc",
                        f"127.0.0.1:{port}",
                        "--ca",
                        f"{tls_dir}/ca.pem",
                    ], f"{name} {probe}"
                    # A Python process with gRPC loaded takes longer than the 1 s default.
                    assert container[probe]["timeoutSeconds"] >= 5, f"{name} {probe}"
    assert servers == len(TLS_APIS) + len(PLAINTEXT_APIS)


def test_the_authenticated_apis_speak_tls_from_mounted_secrets() -> None:
    documented = documented_secrets()
    for name, (tls_variable, keys_variable) in TLS_APIS.items():
        deployment = DEPLOYMENTS[name]
        env = env_of(containers(deployment)[0])
        mounted = secret_mounts(deployment)
        tls_secret = mounted[env[tls_variable]["value"]]
        keys_secret = mounted[env[keys_variable]["value"]]
        assert tls_secret != keys_secret, name
        assert {tls_secret, keys_secret} <= documented, f"{name}: undocumented Secret"
        for mount in containers(deployment)[0]["volumeMounts"]:
            if mount["mountPath"] in mounted:
                assert mount["readOnly"] is True, name
        pod = deployment["spec"]["template"]["spec"]
        (tls_volume,) = [
            v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == tls_secret
        ]
        # The server's private key: owner and the pod's group (fsGroup) only.
        assert tls_volume["secret"]["defaultMode"] & 0o007 == 0, name
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]


def test_workers_are_probed_on_their_consumer_group() -> None:
    groups = {spec.consumer_group for spec in SERVICES if spec.consumer_group}
    for name in ("router", "enforcement"):
        command = containers(DEPLOYMENTS[name])[0]["readinessProbe"]["exec"]["command"]
        assert command[:4] == ["python", "-m", "plumbing.healthcheck", "group"]
        assert command[4] in groups


def test_every_service_of_make_run_is_deployed() -> None:
    started = set()
    for deployment in DEPLOYMENTS.values():
        command = containers(deployment)[0]["command"]
        if command[:2] == ["python", "-m"]:
            started.add(tuple(command[2:]))
            assert importlib.util.find_spec(command[2]) is not None
    assert started == {spec.module_args for spec in SERVICES}


def test_replicas_where_safe() -> None:
    for name in SINGLE_WRITERS:
        spec = DEPLOYMENTS[name]["spec"]
        assert spec["replicas"] == 1, name
        assert spec["strategy"]["type"] == "Recreate", name
    # The router's parallelism is bounded by the partitions of its source topic.
    assert 1 < DEPLOYMENTS["router"]["spec"]["replicas"] <= topics.PARTITIONS
    assert DEPLOYMENTS["intake"]["spec"]["replicas"] > 1
    assert DEPLOYMENTS["timeline"]["spec"]["replicas"] > 1


def test_disruption_budgets_each_select_one_replicated_deployment() -> None:
    budgets = of_kind(RESOURCES, "PodDisruptionBudget")
    assert budgets
    for name, budget in budgets.items():
        selector = budget["spec"]["selector"]["matchLabels"].items()
        selected = [
            d
            for d in DEPLOYMENTS.values()
            if selector <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, name
        assert selected[0]["spec"]["replicas"] > 1, f"{name} would block every drain"


def test_services_route_to_a_named_container_port() -> None:
    for name, service in of_kind(RESOURCES, "Service").items():
        (deployment,) = [
            d
            for d in DEPLOYMENTS.values()
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        port_names = {p["name"] for p in containers(deployment)[0]["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, name


def test_every_variable_set_is_read_by_the_code() -> None:
    allowed = variables_read_by_code() | PENDING_SECURITY_VARIABLES
    for name, config_map in of_kind(RESOURCES, "ConfigMap").items():
        if name == "ctroute-config":
            assert set(config_map["data"]) <= allowed
    for name, deployment in DEPLOYMENTS.items():
        for container in containers(deployment):
            unknown = set(env_of(container)) - allowed
            assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"


def test_the_pending_security_variables_are_the_ones_the_code_reads_once_it_reads_any() -> None:
    read = {v for v in variables_read_by_code() if v.startswith("CTROUTE_KAFKA_")}
    if read:
        assert read >= PENDING_SECURITY_VARIABLES, (
            "the code now reads Kafka security variables: rename them in "
            "deploy/k8s/components/kafka-scram/credentials.yaml and the operations guide, "
            "then empty PENDING_SECURITY_VARIABLES"
        )


def test_security_variables_are_named_in_one_place() -> None:
    holders = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "deploy").rglob("*.yaml")
        if "CTROUTE_KAFKA_" in path.read_text()
    }
    assert holders == {"deploy/k8s/components/kafka-scram/credentials.yaml"}


def test_references_resolve() -> None:
    config_maps = set(of_kind(RESOURCES, "ConfigMap"))
    claims = set(of_kind(RESOURCES, "PersistentVolumeClaim"))
    secrets = set(KAFKA_USERS) | documented_secrets()
    for name, deployment in DEPLOYMENTS.items():
        pod = deployment["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, name
            if "secret" in volume:
                secret = volume["secret"]["secretName"]
                assert secret in secrets, f"{name}: unknown Secret {secret}"
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
        for container in containers(deployment):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, name
            for item in env_of(container).values():
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] in secrets, f"{name}: unknown Secret {ref['name']}"


def test_each_deployment_authenticates_as_its_own_principal() -> None:
    expected = {
        "intake": "svc-intake",
        "router": "svc-router",
        "tracker": "svc-tracker",
        "timeline": "svc-timeline",
        "enforcement": "svc-enforcement",
        "victim-services": "svc-victim-services",
        "refctl": "svc-operator",
    }
    assert set(DEPLOYMENTS) == set(expected)
    for name, principal in expected.items():
        env = env_of(containers(DEPLOYMENTS[name])[0])
        assert env["CTROUTE_KAFKA_SASL_USERNAME"]["value"] == principal
        password = env["CTROUTE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": principal, "key": "password"}
        # The cluster's listener; the mechanism (SCRAM-SHA-512) is fixed in the code.
        assert env["CTROUTE_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_PLAINTEXT"
        kafka_variables = {v for v in env if v.startswith("CTROUTE_KAFKA_")}
        assert kafka_variables == {
            v for v in variables_read_by_code() if v.startswith("CTROUTE_KAFKA_")
        }, name


def test_the_policy_config_map_is_the_shipped_default() -> None:
    deployed = (K8S_BASE / "policy" / "policy.yaml").read_bytes()
    assert deployed == default_policy_path().read_bytes()
    router = containers(DEPLOYMENTS["router"])[0]
    mount = next(m for m in router["volumeMounts"] if m["name"] == "policy")
    assert env_of(router)["CTROUTE_POLICY"]["value"] == f"{mount['mountPath']}/policy.yaml"


# --- Kafka --------------------------------------------------------------------------------


def test_the_kafka_cluster_is_kraft_with_three_nodes_and_scram() -> None:
    (kafka,) = of_kind(RESOURCES, "Kafka").values()
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert kafka["metadata"]["annotations"]["strimzi.io/node-pools"] == "enabled"
    (pool,) = of_kind(RESOURCES, "KafkaNodePool").values()
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert pool["spec"]["replicas"] == 3
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["authentication"]["type"] == "scram-sha-512"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert {"topicOperator", "userOperator"} <= set(kafka["spec"]["entityOperator"])
    bootstrap = of_kind(RESOURCES, "ConfigMap")["ctroute-config"]["data"]
    assert bootstrap["KAFKA_BOOTSTRAP_SERVERS"] == (
        f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    )
    for resource in [*KAFKA_TOPICS.values(), *KAFKA_USERS.values()]:
        assert resource["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]


def test_topics_match_the_code() -> None:
    by_topic = {t["spec"]["topicName"]: t["spec"] for t in KAFKA_TOPICS.values()}
    assert set(by_topic) == set(topics.all_topics(PARTNERS))
    for name, spec in by_topic.items():
        assert spec["partitions"] == topics.PARTITIONS, name
        assert spec["replicas"] == 3, name
        assert int(spec["config"]["min.insync.replicas"]) == 2, name
        for key, value in topics.configs(name).items():
            assert spec["config"][key] == value, name
        compacted = spec["config"].get("cleanup.policy") == "compact"
        assert compacted == (name in topics.ROUTER_STATE), name


def test_users_are_the_service_and_partner_principals() -> None:
    assert set(KAFKA_USERS) == SERVICE_PRINCIPALS | {f"partner-{p}" for p in PARTNERS}
    for name, user in KAFKA_USERS.items():
        assert user["spec"]["authentication"]["type"] == "scram-sha-512", name
        assert user["spec"]["authorization"]["type"] == "simple", name


def acls_of(principal: str) -> list[dict[str, Any]]:
    acls: list[dict[str, Any]] = KAFKA_USERS[principal]["spec"]["authorization"]["acls"]
    return acls


def grants(principal: str) -> set[tuple[str, str, str, str]]:
    """(resource type, name, pattern, operation) for every operation a principal is allowed."""
    return {
        (
            acl["resource"]["type"],
            acl["resource"].get("name", ""),
            acl["resource"].get("patternType", ""),
            operation,
        )
        for acl in acls_of(principal)
        for operation in acl["operations"]
    }


def topic_grants(principal: str, operation: str) -> set[str]:
    return {
        name
        for kind, name, pattern, op in grants(principal)
        if kind == "topic" and op == operation and pattern == "literal"
    }


def test_partner_acls_follow_the_isolation_scheme() -> None:
    for partner in PARTNERS:
        assert grants(f"partner-{partner}") == {
            ("topic", f"partner.{partner}.inbox", "literal", "Read"),
            ("topic", f"partner.{partner}.inbox", "literal", "Describe"),
            ("topic", f"partner.{partner}.status", "literal", "Write"),
            ("topic", f"partner.{partner}.status", "literal", "Describe"),
            ("group", f"partner.{partner}.", "prefix", "Read"),
        }


def test_acls_name_existing_topics_and_valid_operations_only() -> None:
    existing = {t["spec"]["topicName"] for t in KAFKA_TOPICS.values()}
    for principal in KAFKA_USERS:
        for kind, name, pattern, operation in grants(principal):
            assert operation in ACL_OPERATIONS
            if kind == "topic":
                # No prefix on topics: `partner.` would cover every inbox and status topic.
                assert pattern == "literal", f"{principal}: {name} {pattern}"
                assert name in existing, f"{principal}: no topic {name}"


def test_service_acls_are_what_the_code_needs() -> None:
    inboxes = {topics.inbox(p) for p in PARTNERS}
    statuses = {topics.status(p) for p in PARTNERS}
    assert topic_grants("svc-intake", "Write") == {topics.SUBMITTED}
    assert topic_grants("svc-intake", "Read") == set()
    assert topic_grants("svc-router", "Read") == {topics.SUBMITTED, *topics.ROUTER_STATE}
    assert topic_grants("svc-router", "Write") == {
        *inboxes,
        topics.LIFECYCLE,
        topics.DEAD_LETTER,
        *topics.ROUTER_STATE,
    }
    assert ("group", "referral-router", "literal", "Read") in grants("svc-router")
    assert topic_grants("svc-tracker", "Read") == {topics.LIFECYCLE, *statuses}
    assert topic_grants("svc-timeline", "Read") == {topics.LIFECYCLE, topics.SUBMITTED, *statuses}
    assert topic_grants("svc-timeline", "Write") == set()
    enforcement = {"hsi", "cbp", "uscg", "ccht"}
    assert topic_grants("svc-enforcement", "Read") == {topics.inbox(p) for p in enforcement}
    assert topic_grants("svc-enforcement", "Write") == {
        *(topics.status(p) for p in enforcement),
        topics.DEAD_LETTER,
    }
    victim_services = set(PARTNERS) - enforcement
    assert topic_grants("svc-victim-services", "Read") == {topics.inbox(p) for p in victim_services}
    # No principal but a partner's own desk and the router-side services reads an inbox.
    for principal in SERVICE_PRINCIPALS - {"svc-enforcement", "svc-victim-services"}:
        assert not topic_grants(principal, "Read") & inboxes, principal


def test_consumer_groups_of_the_services_are_granted() -> None:
    expected = {
        "svc-router": "referral-router",
        "svc-tracker": "referral-tracker",
        "svc-timeline": "referral-timeline",
        "svc-enforcement": "enforcement",
        "svc-victim-services": "victim-services",
    }
    groups = {spec.consumer_group for spec in SERVICES if spec.consumer_group}
    assert set(expected.values()) == groups
    for principal, group in expected.items():
        assert ("group", group, "literal", "Read") in grants(principal)


def as_grants(held: tuple[Grant, ...]) -> set[tuple[str, str, str, str]]:
    """`plumbing.access` grants in the terms of :func:`grants`."""
    kinds = {"topic": "topic", "group": "group", "transactional_id": "transactionalId"}
    return {
        (kinds[grant.resource.value], grant.name, grant.pattern.value.removesuffix("ed"), op)
        for grant in held
        for op in (operation.value.capitalize() for operation in grant.operations)
    }


def test_kafka_users_are_the_access_table_but_for_the_kubernetes_differences() -> None:
    table = access.system_grants(PARTNERS)
    assert set(kafka_resources.KUBERNETES_DIFFERENCES) <= set(table)
    for principal, held in table.items():
        if principal not in kafka_resources.KUBERNETES_DIFFERENCES:
            assert grants(principal) == as_grants(held), principal
    for partner in PARTNERS:
        principal = access.partner_principal(partner)
        assert grants(principal) == as_grants(access.partner_grants(partner)), principal
    # The timeline only observes: no dead-letter Write, IdempotentWrite for its producer id.
    timeline = as_grants(table["svc-timeline"])
    dead_letters = {("topic", topics.DEAD_LETTER, "literal", op) for op in ("Write", "Describe")}
    assert dead_letters <= timeline
    assert grants("svc-timeline") == (timeline - dead_letters) | {
        ("cluster", "", "", "IdempotentWrite")
    }
    # The router's transactions (`referral-router-<instance id>`).
    assert ("transactionalId", "referral-router-", "prefix", "Write") in grants("svc-router")
    assert ("transactionalId", "referral-router-", "prefix", "Describe") in grants("svc-router")
    assert "svc-refctl" not in KAFKA_USERS


def test_the_generated_access_file_is_current() -> None:
    policy = ROOT / kafka_resources.POLICY
    expected = kafka_resources.render(kafka_resources.partners_of(policy))
    assert (ROOT / kafka_resources.OUTPUT).read_text() == expected, "run `make manifests`"


def test_the_generator_writes_what_it_checks(tmp_path: Path) -> None:
    output = tmp_path / "access.yaml"
    policy = str(ROOT / kafka_resources.POLICY)
    assert kafka_resources.main(["check", "--output", str(output), "--policy", policy]) == 1
    assert kafka_resources.main(["write", "--output", str(output), "--policy", policy]) == 0
    assert kafka_resources.main(["check", "--output", str(output), "--policy", policy]) == 0
