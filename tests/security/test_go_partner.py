"""A partner in another language: the Go consumer in clients/go-partner decodes a delivery from
the committed descriptor set and the CloudEvents headers, authenticated as the partner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorSet

from devstack.descriptors import GO_PARTNER_DESCRIPTORS, contract_descriptor_set
from plumbing import topics
from tests.conftest import PROJECT_ROOT
from tests.security.conftest import AddPartner, SecureKafka
from tests.security.test_partner_isolation import _deliver, _delivery

GO_CLIENT = PROJECT_ROOT / "clients" / "go-partner"
BUILD_TIMEOUT_S = 600
RUN_TIMEOUT_S = 120


def test_the_committed_descriptor_set_matches_the_protos() -> None:
    # Compared as messages: options re-serialize in another order once their extensions are
    # known to this process, with the same meaning.
    committed = FileDescriptorSet.FromString((PROJECT_ROOT / GO_PARTNER_DESCRIPTORS).read_bytes())
    current = FileDescriptorSet.FromString(contract_descriptor_set(PROJECT_ROOT))

    assert committed == current, "clients/go-partner/ctroute.binpb is stale: run `make generate`"


@pytest.fixture(scope="module")
def go_partner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (needed for the Go partner consumer; CI has it)")
    binary = tmp_path_factory.mktemp("go") / "go-partner"
    result = subprocess.run(
        [go, "build", "-buildvcs=false", "-o", str(binary), "."],
        cwd=GO_CLIENT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"go build failed:\n{result.stderr}"
    return binary


@pytest.mark.broker
def test_the_go_consumer_decodes_its_partners_delivery(
    secure_kafka: SecureKafka, add_partner: AddPartner, go_partner: Path
) -> None:
    partner = add_partner()
    stray = _delivery("someone-else")
    delivery = _delivery(partner.id)
    _deliver(secure_kafka, stray, topics.inbox(partner.id))
    _deliver(secure_kafka, delivery)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        **partner.settings,
    }

    result = subprocess.run(
        [
            str(go_partner),
            "-descriptors",
            str(PROJECT_ROOT / GO_PARTNER_DESCRIPTORS),
            "-max",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert printed == [
        {
            "delivery_id": delivery.delivery_id,
            "referral_id": delivery.referral.referral_id,
            "partner": partner.id,
            "priority": "PRIORITY_UNSPECIFIED",
            "event_id": printed[0]["event_id"],
        }
    ]
    assert "addressed to another partner" in result.stderr
    assert partner.password not in result.stdout + result.stderr
