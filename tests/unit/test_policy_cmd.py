"""`refctl policy explain` and `refctl policy simulate` on the demo referrals, and the benchmark.

The commands are run through refctl's own entry point, as a policy officer runs them. Every
decision is taken at a fixed instant (``--at``), after the demo consents were granted and before
they expire, so the expected outcome does not depend on the day the tests run. The candidate
policies are copies of the shipped default with one edit each, made the way an officer would.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from ctroute.referral.v1 import referral_pb2 as R
from devstack import bench_policy
from plumbing.validation import violations_of
from refctl import policy_cmd
from refctl.__main__ import main
from referral.adapters.facts import facts_from_referral
from referral.domain.policy import default_policy_path, load_default_policy

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo"
AT = "2027-01-01T00:00:00Z"
SMUGGLING = "cbp-ofo-screening/OFO-2026-55102"
FARM = "nht-hotline/NHTH-2026-88120"


@pytest.fixture(autouse=True)
def _shipped_default_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The current policy is the shipped default unless a test says otherwise."""
    monkeypatch.delenv("CTROUTE_POLICY", raising=False)


def edited_policy(tmp_path: Path, name: str, *edits: tuple[str, str, str]) -> Path:
    """A copy of the default policy with ``(anchor, before, after)`` edits after each anchor."""
    text = default_policy_path().read_text(encoding="utf-8")
    for anchor, before, after in edits:
        start = text.index(anchor)
        at = text.index(before, start)
        text = text[:at] + after + text[at + len(before) :]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def r10_to_ccht(tmp_path: Path) -> Path:
    return edited_policy(
        tmp_path, "r10-ccht.yaml", ("  - id: R10\n", "route_to: [hsi]", "route_to: [ccht]")
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- explain --------------------------------------------------------------------------------


def test_explain_prints_rules_priority_and_what_each_partner_receives(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(
        capsys,
        "policy",
        "explain",
        str(DEMO / "02-georgia-farm-labor-trafficking.json"),
        "--at",
        AT,
    )

    assert code == 0, err
    assert f"referral   {FARM}" in out
    assert f"version {load_default_policy().version}" in out
    assert "priority   HIGH" in out
    matched = out.split("matched rules:\n")[1].split("\npartners")[0]
    rules = [line.split()[0] for line in matched.splitlines() if re.match(r"  R\d", line)]
    assert rules == ["R1", "R7", "R8", "R9"]
    assert "R8  adult victim v1 consented to a victim-services referral; ngo-southeast" in out
    partners = out.split("partners (4):")[1]
    expected = {
        "hsi": ("HIGH", "R1", "none", "v1, v2"),
        "hsi-vap": ("HIGH", "R7", "v1 (partner profile), v2 (partner profile)", "none"),
        "ngo-southeast": ("HIGH", "R8", "v1 (consent to a victim-services referral)", "v2"),
        "uscis": ("ROUTINE", "R9", "v1 (consent to immigration-relief screening)", "v2"),
    }
    blocks = {block.split()[0]: block for block in re.split(r"\n  (?=\S)", partners)[1:]}
    assert sorted(blocks) == sorted(expected)
    for partner, (priority, rule, released, withheld) in expected.items():
        block = blocks[partner]
        assert block.startswith(f"{partner}  {priority}  rules {rule}\n"), block
        assert f"identity released: {released}\n" in block
        assert f"identity withheld: {withheld}" in block
    assert (
        "classes:           OPERATIONAL, VICTIM_NEEDS, VICTIM_IDENTITY\n" in blocks["ngo-southeast"]
    )
    assert "nothing was published" in out
    # Victims are named by their references only.
    assert "Demo Worker" not in out


def test_explain_names_the_minor_and_imminent_danger_overrides(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, minor, _ = run(
        capsys, "policy", "explain", str(DEMO / "01-baltimore-sex-trafficking.json"), "--at", AT
    )
    _, danger, _ = run(
        capsys, "policy", "explain", str(DEMO / "05-blue-lightning-flight.json"), "--at", AT
    )

    assert "priority   URGENT" in minor
    assert "  hsi  URGENT  rules R1, R2\n" in minor
    assert "identity released: v1 (minor override)\n    identity withheld: v2" in minor
    assert "  cbp  URGENT  rules R3, R6\n" in danger
    assert "identity released: v1 (imminent-danger override)" in danger


def test_explain_json_holds_the_same_decision(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "policy",
        "explain",
        str(DEMO / "02-georgia-farm-labor-trafficking.json"),
        "--at",
        AT,
        "--json",
    )

    assert code == 0
    explained = json.loads(out)
    assert explained["priority"] == "HIGH"
    assert explained["published"] is False
    assert [m["rule_id"] for m in explained["matched_rules"]] == ["R1", "R7", "R8", "R9"]
    by_partner = {p["partner"]: p for p in explained["partners"]}
    assert sorted(by_partner) == ["hsi", "hsi-vap", "ngo-southeast", "uscis"]
    assert by_partner["uscis"] == {
        "partner": "uscis",
        "description": by_partner["uscis"]["description"],
        "priority": "ROUTINE",
        "rule_ids": ["R9"],
        "released_classes": ["OPERATIONAL", "VICTIM_NEEDS", "VICTIM_IDENTITY", "IMMIGRATION"],
        "victim_identities": [
            {
                "victim_ref": "v1",
                "basis": "CONSENT",
                "basis_text": "consent to immigration-relief screening",
            }
        ],
        "withheld_victim_refs": ["v2"],
    }
    assert by_partner["hsi"]["victim_identities"] == []
    assert by_partner["hsi"]["withheld_victim_refs"] == ["v1", "v2"]


def test_explain_uses_the_policy_given(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    candidate = r10_to_ccht(tmp_path)
    code, out, _ = run(
        capsys,
        "policy",
        "explain",
        str(DEMO / "06-smuggling-only.json"),
        "--policy",
        str(candidate),
        "--at",
        AT,
    )

    assert code == 0
    assert "partners (1):\n  ccht  ROUTINE  rules R10\n" in out
    assert str(candidate) in out


# --- simulate -------------------------------------------------------------------------------


def summary_counts(out: str) -> dict[str, int]:
    """The "changes by kind" table of the summary as kind -> referrals affected."""
    table = out.split("changes by kind (referrals affected; partners):\n")[1]
    counts: dict[str, int] = {}
    for line in table.splitlines():
        words = line.split()
        number_at = next(i for i, word in enumerate(words) if word.isdigit())
        counts[" ".join(words[:number_at])] = int(words[number_at])
    return counts


def listed(out: str) -> list[str]:
    """The differing referrals the simulation listed: the lines between header and summary."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("candidate: "))
    end = next(i for i, line in enumerate(lines) if line.startswith("evaluated "))
    return lines[start + 1 : end]


def test_simulate_reports_exactly_the_referrals_that_change(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    candidate = r10_to_ccht(tmp_path)

    code, out, err = run(
        capsys,
        "policy",
        "simulate",
        "--policy",
        str(candidate),
        "--referrals",
        str(DEMO),
        "--at",
        AT,
    )

    assert code == 0, err
    assert listed(out) == [
        f"{SMUGGLING} ({DEMO / '06-smuggling-only.json'}): +ccht (ROUTINE); -hsi"
    ]
    assert "evaluated 6 referrals in " in out
    assert "): 1 would route or release differently" in out
    assert summary_counts(out) == {
        "recipient added": 1,
        "recipient removed": 1,
        "referral priority": 0,
        "partner priority": 0,
        "released classes": 0,
        "victim identity release": 0,
    }
    assert "  recipient added                1  ccht 1" in out
    assert "  recipient removed              1  hsi 1" in out
    assert f"current:   {default_policy_path()} (version {load_default_policy().version})" in out


def test_simulate_counts_priority_class_and_identity_changes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # USCIS screens at HIGH, and no longer receives any victim's identity.
    candidate = edited_policy(
        tmp_path,
        "uscis.yaml",
        ("  - id: R9\n", "priority: ROUTINE", "priority: HIGH"),
        (
            "  uscis:\n",
            "victim_identity:\n      with_consent: IMMIGRATION_RELIEF",
            "victim_identity: never",
        ),
    )
    # The current policy comes from CTROUTE_POLICY when --against is not given.
    monkeypatch.setenv("CTROUTE_POLICY", str(default_policy_path()))

    code, out, err = run(
        capsys,
        "policy",
        "simulate",
        "--policy",
        str(candidate),
        "--referrals",
        str(DEMO / "02-georgia-farm-labor-trafficking.json"),
        str(DEMO / "06-smuggling-only.json"),
        "--at",
        AT,
    )

    assert code == 0, err
    assert listed(out) == [
        f"{FARM} ({DEMO / '02-georgia-farm-labor-trafficking.json'}): uscis priority "
        "ROUTINE->HIGH; uscis classes -VICTIM_IDENTITY; uscis identity -v1"
    ]
    assert "evaluated 2 referrals" in out
    assert summary_counts(out) == {
        "recipient added": 0,
        "recipient removed": 0,
        "referral priority": 0,
        "partner priority": 1,
        "released classes": 1,
        "victim identity release": 1,
    }


def test_simulate_reads_jsonl_and_lists_of_referrals_and_honours_limit_and_show(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    requests = [json.loads(p.read_text()) for p in sorted(DEMO.glob("*.json"))]
    (tmp_path / "all.jsonl").write_text("\n".join(json.dumps(r) for r in requests * 3) + "\n\n")
    (tmp_path / "list.json").write_text(json.dumps(requests))
    candidate = r10_to_ccht(tmp_path)

    code, out, _ = run(
        capsys,
        "policy",
        "simulate",
        "--policy",
        str(candidate),
        "--referrals",
        str(tmp_path / "all.jsonl"),
        str(tmp_path / "list.json"),
        "--at",
        AT,
        "--show",
        "2",
    )
    assert code == 0
    assert "evaluated 24 referrals" in out
    assert "): 4 would route or release differently" in out
    assert "(listed the first 2 of 4; use --show N to list more)" in out
    assert f"{SMUGGLING} ({tmp_path / 'all.jsonl'}:6): +ccht" in out
    assert f"{SMUGGLING} ({tmp_path / 'all.jsonl'}:12): +ccht" in out

    code, out, _ = run(
        capsys,
        "policy",
        "simulate",
        "--policy",
        str(candidate),
        "--referrals",
        str(tmp_path / "all.jsonl"),
        "--at",
        AT,
        "--limit",
        "7",
    )
    assert code == 0
    assert "evaluated 7 referrals" in out
    assert "): 1 would route or release differently" in out


def test_simulate_reports_progress_on_long_runs() -> None:
    referrals = [
        (json_format.Parse(json.dumps(json.loads(p.read_text())["referral"]), R.Referral()), "")
        for p in sorted(DEMO.glob("*.json"))
    ] * 100
    policy = load_default_policy()
    stream = io.StringIO()
    # A run that started a while ago (no sleeping): progress is due every second.
    progress = policy_cmd.Progress(stream, started=time.monotonic() - 5)
    progress.last_time = progress.started

    result = policy_cmd.simulate(referrals, policy_cmd.Simulator(policy, policy), progress=progress)

    assert result.evaluated == 600
    lines = stream.getvalue().splitlines()
    assert lines, "no progress line"
    assert lines[0].startswith("simulate: 256 referrals, ")
    assert lines[0].endswith("/s, 0 differ")


ERROR_CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    (
        "missing file",
        lambda tmp: ["policy", "explain", str(tmp / "nope.json")],
        "cannot read",
    ),
    (
        "invalid JSON",
        lambda tmp: ["policy", "explain", str(write(tmp / "bad.json", '{"referral": {"source": '))],
        "bad.json:1: not valid JSON",
    ),
    (
        "not a referral",
        lambda tmp: [
            "policy",
            "explain",
            str(write(tmp / "typo.json", '{"referral": {"sourse": "x"}}')),
        ],
        "not a referral in protobuf's JSON mapping",
    ),
    (
        "two referrals to explain",
        lambda tmp: [
            "policy",
            "explain",
            str(write(tmp / "two.json", json.dumps([{"referral": {}}, {"referral": {}}]))),
        ],
        "explain takes one",
    ),
    (
        "bad --at",
        lambda tmp: [
            "policy",
            "explain",
            str(DEMO / "01-baltimore-sex-trafficking.json"),
            "--at",
            "yesterday",
        ],
        "is not an ISO 8601 time",
    ),
    (
        "broken candidate policy",
        lambda tmp: [
            "policy",
            "simulate",
            "--referrals",
            str(DEMO),
            "--policy",
            str(
                write(
                    tmp / "p.yaml",
                    default_policy_path()
                    .read_text()
                    .replace("route_to: [ccht]", "route_to: [cchtt]"),
                )
            ),
        ],
        "p.yaml:",
    ),
    (
        "missing current policy",
        lambda tmp: [
            "policy",
            "simulate",
            "--referrals",
            str(DEMO),
            "--policy",
            str(default_policy_path()),
            "--against",
            str(tmp / "none.yaml"),
        ],
        "cannot read the policy",
    ),
    (
        "empty directory",
        lambda tmp: [
            "policy",
            "simulate",
            "--policy",
            str(r10_to_ccht(tmp)),
            "--referrals",
            str((tmp / "empty").resolve()),
        ],
        "holds no .json or .jsonl files",
    ),
    (
        "bad line in a JSONL file",
        lambda tmp: [
            "policy",
            "simulate",
            "--policy",
            str(r10_to_ccht(tmp)),
            "--referrals",
            str(write(tmp / "r.jsonl", '{"referral": {}}\n{oops}\n')),
        ],
        "r.jsonl:2: not valid JSON",
    ),
]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("argv", "expected"),
    [pytest.param(argv, expected, id=name) for name, argv, expected in ERROR_CASES],
)
def test_errors_exit_1_with_one_line_saying_what_to_do(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: Callable[[Path], list[str]],
    expected: str,
) -> None:
    (tmp_path / "empty").mkdir()

    code, out, err = run(capsys, *argv(tmp_path))

    assert code == 1
    # A bad line deep in a file is found mid-run, after the header naming the policies.
    assert all(line.startswith(("current:", "candidate:")) for line in out.splitlines())
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("refctl: ")
    assert expected in lines[0]


def test_a_referral_that_cannot_be_evaluated_is_skipped_without_its_data(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The contract forbids this date, but a file is not checked by the intake.
    bad = {
        "referral": {
            "source": "nht-hotline",
            "sourceReference": "BAD-1",
            "victims": [{"victimRef": "v1", "dateOfBirth": "1990-13-45"}],
        }
    }
    path = write(tmp_path / "bad.jsonl", json.dumps(bad) + "\n")

    code, out, err = run(
        capsys,
        "policy",
        "simulate",
        "--policy",
        str(default_policy_path()),
        "--referrals",
        str(path),
        str(DEMO),
    )

    assert code == 0
    assert f"nht-hotline/BAD-1 ({path}:1): cannot be evaluated (ValueError)" in err
    assert "1990-13-45" not in err + out
    assert "evaluated 6 referrals" in out
    assert "1 could not be evaluated (skipped)" in out


# --- fast facts -----------------------------------------------------------------------------


def edge_case_referrals() -> list[R.Referral]:
    """Shapes the synthetic generator does not produce, each a trap for a facts extractor."""
    cases: list[R.Referral] = []

    def add(**victim: object) -> R.PotentialVictim:
        referral = R.Referral(referral_id=f"edge-{len(cases)}", source="hsi-tipline")
        cases.append(referral)
        return referral.victims.add(victim_ref="v1", **victim)

    add(email="someone@example.org")
    add(phone="+1 555 000 0000")
    add(description="a description only")
    add(age=0)
    add(date_of_birth="2012-02-29", age=40)
    add().home_address.city = "Somewhere"
    add().documents.add(number="X1")
    add(nationality="US", us_state="PR")
    consent = add().consents.add(scope=R.CONSENT_SCOPE_LAW_ENFORCEMENT_CONTACT)  # no times at all
    consent = add().consents.add(scope=R.CONSENT_SCOPE_UNSPECIFIED)
    consent.expires_at.seconds = 2_000_000_000
    consent = add().consents.add(scope=R.CONSENT_SCOPE_IMMIGRATION_RELIEF)
    consent.granted_at.seconds = -300_000_000  # before 1970
    consent.granted_at.nanos = 999_999_999
    consent.expires_at.seconds = 1_800_000_000
    consent.expires_at.nanos = 1_500
    consent.withdrawn_at.SetInParent()  # the epoch itself
    referral = R.Referral(referral_id="edge-locations", source="uscg-boarding")
    referral.indicators.extend([R.INDICATOR_UNSPECIFIED, R.INDICATOR_SMUGGLING])
    referral.locations.add(kind=R.LOCATION_KIND_UNSPECIFIED, us_state="TX")
    referral.locations.add(kind=R.LOCATION_KIND_AT_SEA)
    referral.vessel.SetInParent()
    referral.goods.add(destined_for_us=False)
    referral.goods.add(destined_for_us=True)
    referral.received_at.seconds = 1_700_000_000
    cases.append(referral)
    cases.append(R.Referral())
    return cases


def demo_referrals() -> list[R.Referral]:
    return [
        json_format.Parse(json.dumps(json.loads(p.read_text())["referral"]), R.Referral())
        for p in sorted(DEMO.glob("*.json"))
    ]


def test_fast_facts_are_exactly_the_routers_facts() -> None:
    referrals = [
        *demo_referrals(),
        *edge_case_referrals(),
        *bench_policy.synthetic_referrals(2000, seed=7),
    ]
    for referral in referrals:
        assert policy_cmd.fast_facts(referral) == facts_from_referral(referral), (
            referral.referral_id
        )


@settings(max_examples=200, deadline=None)
@given(
    seconds=st.integers(min_value=-62_135_596_800, max_value=253_402_300_799),
    nanos=st.integers(min_value=0, max_value=999_999_999),
)
def test_fast_timestamps_are_protobufs_own(seconds: int, nanos: int) -> None:
    stamp = Timestamp(seconds=seconds, nanos=nanos)
    assert policy_cmd._instant(seconds, nanos) == stamp.ToDatetime(tzinfo=UTC)


def test_fast_facts_refuse_what_the_adapter_refuses() -> None:
    unknown = R.Referral(indicators=[99])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="99"):
        facts_from_referral(unknown)
    with pytest.raises(KeyError):
        policy_cmd.fast_facts(unknown)


def test_the_simulator_falls_back_to_the_adapter_when_fast_facts_disagree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def wrong(referral: R.Referral) -> object:
        return replace(facts_from_referral(referral), imminent_danger=True)

    monkeypatch.setattr(policy_cmd, "fast_facts", wrong)
    monkeypatch.setattr(policy_cmd, "FACTS_CHECK_FIRST", 1)
    noticed: list[bool] = []
    policy = load_default_policy()
    referrals = [(r, "") for r in demo_referrals()]
    simulator = policy_cmd.Simulator(
        policy, policy, on_facts_disagreement=lambda: noticed.append(True)
    )

    for referral, _ in referrals:
        assert simulator.facts(referral) == facts_from_referral(referral)

    assert simulator.facts_disagreed
    assert noticed == [True]


# --- the benchmark --------------------------------------------------------------------------


def test_bench_runs_and_prints_a_rate(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    output = tmp_path / "results.json"

    code = bench_policy.main(["--count", "200", "--repeat", "1", "--output", str(output)])

    out = capsys.readouterr().out
    assert code == 0
    median = next(line for line in out.splitlines() if line.startswith("median"))
    cells = median.split()
    assert cells[1] == "200"
    assert float(cells[3].replace(",", "")) > 0
    assert cells[-1] in {"PASS", "MISS"}
    assert "20,000/s" in median
    assert "machine:" in out
    assert "python:" in out
    results = json.loads(output.read_text())
    assert results["referrals"] == 200
    assert results["target_per_second"] == 20_000
    assert results["referrals_per_second"] > 0
    assert results["fast_facts_agreed"] is True
    assert results["differing"] > 0


def test_synthetic_referrals_are_deterministic_and_valid_by_the_contract() -> None:
    first = bench_policy.synthetic_referrals(150, seed=11)
    again = bench_policy.synthetic_referrals(150, seed=11)

    assert first == again
    assert len({r.source for r in first}) >= 6
    for referral in first:
        assert violations_of(referral) == [], referral.referral_id
