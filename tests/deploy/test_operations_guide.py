"""docs/operations.md against the code: every variable, every topic, and runbook commands that
exist (refctl subcommands and options as its parser accepts them, make targets, modules).

Runbook blocks marked `<!-- pending: issue 6 -->` hold the `refctl partner ...` commands of the
partner-isolation work (issue 6); they are checked against refctl's parser like the others.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from dataclasses import dataclass

import pytest

from plumbing import topics
from refctl.__main__ import build_parser
from tests.deploy.manifests import (
    K8S_BASE,
    OPERATIONS_GUIDE,
    PENDING_SECURITY_VARIABLES,
    ROOT,
    kustomize_build,
    of_kind,
    variables_read_by_code,
)

GUIDE = OPERATIONS_GUIDE.read_text(encoding="utf-8")
PENDING_MARKER = "<!-- pending: issue 6 -->"
RUNBOOKS = (
    "Onboarding a partner",
    "Changing the policy",
    "Redriving dead letters",
    "Replaying a period",
    "Handling a consent withdrawal",
    "Rotating credentials",
)
EXEC_PREFIX = re.compile(
    r"^kubectl -n ctroute exec deploy/(?P<deployment>[a-z-]+) -- (?P<rest>.*)$"
)


@dataclass(frozen=True)
class Command:
    text: str
    pending: bool
    deployment: str | None = None


def section(title: str) -> str:
    """The text of a `##`/`###` section up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", GUIDE, re.M)
    assert match is not None, f"no section {title!r}"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(GUIDE, match.end())
    return GUIDE[match.end() : end.start() if end else len(GUIDE)]


def commands() -> list[Command]:
    """Every line of the guide's shell blocks that runs refctl, make or a Python module."""
    found = []
    blocks = re.finditer(r"(?P<before>[^\n]*\n)?[ ]*```sh\n(?P<body>.*?)```", GUIDE, re.S)
    for block in blocks:
        pending = PENDING_MARKER in (block.group("before") or "")
        for line in block.group("body").splitlines():
            text = line.strip()
            deployment = None
            prefixed = EXEC_PREFIX.match(text)
            if prefixed:
                deployment, text = prefixed.group("deployment"), prefixed.group("rest")
            if text.startswith(("refctl ", "make ", "python -m ")):
                found.append(Command(text, pending, deployment))
    return found


def variables_in(text: str) -> set[str]:
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", text, re.M))


def test_every_variable_the_code_reads_is_documented() -> None:
    documented = variables_in(section("Configuration"))
    assert variables_in(section("Kafka client security")) >= PENDING_SECURITY_VARIABLES
    assert documented - PENDING_SECURITY_VARIABLES == variables_read_by_code()


def test_the_kafka_client_security_variables_are_the_ones_the_code_reads() -> None:
    kafka = {v for v in variables_read_by_code() if v.startswith("CTROUTE_KAFKA_")}
    assert kafka
    assert variables_in(section("Kafka client security")) == kafka


def test_the_authenticated_apis_secrets_are_documented_with_what_the_code_reads() -> None:
    kubernetes = section("Kubernetes")
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| ([^|]+) \|", kubernetes, re.M))
    for api, variable in (
        ("intake", "CTROUTE_INTAKE_TLS_DIR"),
        ("partner-api", "CTROUTE_PARTNER_API_TLS_DIR"),
    ):
        # plumbing.grpc_auth.ServerTls reads server.pem and server-key.pem; clients ca.pem.
        keys = set(re.findall(r"`([^`]+)`", rows[f"ctroute-{api}-tls"]))
        assert keys == {"server.pem", "server-key.pem", "ca.pem"}, api
        assert f"ctroute-{api}-trusted-keys" in rows, api
        assert f"`{variable}`" in kubernetes
        assert f"--from-file=tls/{api}/server-key.pem" in kubernetes
        assert f"create secret generic ctroute-{api}-trusted-keys --from-file=" in kubernetes


def test_the_topic_map_covers_every_topic() -> None:
    topic_map = section("Topics")
    for name in [topics.SUBMITTED, topics.LIFECYCLE, topics.DEAD_LETTER, *topics.ROUTER_STATE]:
        assert f"| `{name}` |" in topic_map, name
    assert "| `partner.<id>.inbox` |" in topic_map
    assert "| `partner.<id>.status` |" in topic_map
    assert f"`plumbing.topics.PARTITIONS` = {topics.PARTITIONS}" in topic_map


def test_every_runbook_is_there_with_commands() -> None:
    for title in RUNBOOKS:
        assert "```sh" in section(title), f"{title} has no commands"
    assert section("Scaling")
    assert section("Capacity")


def test_the_guide_has_commands_of_every_kind() -> None:
    kinds = {c.text.split()[0] for c in commands()}
    assert kinds == {"refctl", "make", "python"}


def test_refctl_commands_parse() -> None:
    parser = build_parser()
    for command in commands():
        if command.pending or not command.text.startswith("refctl "):
            continue
        try:
            parser.parse_args(shlex.split(command.text)[1:])
        except SystemExit:
            pytest.fail(f"refctl does not accept: {command.text}")


def test_pending_blocks_hold_only_refctl_partner_commands() -> None:
    pending = [c for c in commands() if c.pending]
    assert pending
    for command in pending:
        assert command.text.startswith("refctl partner "), command.text


def test_pending_refctl_partner_commands_parse() -> None:
    parser = build_parser()
    for command in commands():
        if command.pending:
            try:
                parser.parse_args(shlex.split(command.text)[1:])
            except SystemExit:
                pytest.fail(f"refctl does not accept: {command.text}")


def test_make_targets_exist() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    for command in commands():
        if command.text.startswith("make "):
            assert command.text.split()[1] in targets, command.text


def test_python_modules_exist() -> None:
    for command in commands():
        if command.text.startswith("python -m "):
            module = command.text.split()[2]
            assert importlib.util.find_spec(module) is not None, command.text


def test_commands_run_in_deployments_that_exist() -> None:
    deployments = set(of_kind(kustomize_build(K8S_BASE), "Deployment"))
    for command in commands():
        if command.deployment is not None:
            assert command.deployment in deployments, command.text


def test_capacity_figures_are_the_benchmarks() -> None:
    pipeline = json.loads((ROOT / "bench/results/pipeline.json").read_text())
    policy = json.loads((ROOT / "bench/results/policy_simulate.json").read_text())
    capacity = section("Capacity")
    assert "bench/results/pipeline.json" in capacity
    assert "bench/results/policy_simulate.json" in capacity
    end_to_end = int(pipeline["saturation"]["referrals_per_second"])
    assert f"{end_to_end} referrals a second" in capacity
    untraced = int(pipeline["saturation_tracing_off"]["referrals_per_second"])
    assert f"{untraced} with tracing off" in capacity
    assert f"{int(policy['referrals_per_second']):,}/s" in capacity
