"""The contracts stay lint-clean, compatible with the previous commit, and in step with the code.

These run ``python -m devstack.codegen`` exactly as ``make`` and CI do, so a failure here shows
the same buf or protoc output a person would see. The scratch-proto tests prove the gates are
wired up: a lint or breaking check that cannot fail would pass everything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# A zero enum value without the _UNSPECIFIED suffix: buf's STANDARD rules reject it.
_BAD_ENUM_PROTO = """\
syntax = "proto3";

package ctroute.scratch.v1;

// Colour is a scratch enum whose zero value has a meaning of its own.
enum Colour {
  // COLOUR_RED is the zero value, so an unset field would read as red.
  COLOUR_RED = 0;
}
"""

_PREVIOUS_PROTO = """\
syntax = "proto3";

package ctroute.scratch.v1;

// Parcel is a scratch message.
message Parcel {
  // parcel_id identifies the parcel.
  string parcel_id = 1;
  // weight_grams is what the parcel weighs.
  int64 weight_grams = 2;
}
"""

# The same file with field 2 deleted and not reserved: a breaking change in the FILE category.
_CURRENT_PROTO = """\
syntax = "proto3";

package ctroute.scratch.v1;

// Parcel is a scratch message.
message Parcel {
  // parcel_id identifies the parcel.
  string parcel_id = 1;
}
"""

_SCRATCH_FILE = Path("ctroute", "scratch", "v1", "scratch.proto")


def run_codegen(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    services = str(REPO_ROOT / "services")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [services, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "devstack.codegen", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"


def write_proto(protos_dir: Path, text: str) -> Path:
    path = protos_dir / _SCRATCH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_protos_pass_buf_lint() -> None:
    result = run_codegen("lint")
    assert result.returncode == 0, describe(result)


def test_generated_code_matches_protos() -> None:
    result = run_codegen("check")
    assert result.returncode == 0, describe(result)


def test_protos_keep_previous_contract() -> None:
    result = run_codegen("breaking")
    assert result.returncode == 0, describe(result)


def test_lint_rejects_enum_without_unspecified_zero_value(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(REPO_ROOT / "protos", protos)
    write_proto(protos, _BAD_ENUM_PROTO)

    result = run_codegen("lint", "--protos-dir", str(protos))

    assert result.returncode != 0, describe(result)
    assert _SCRATCH_FILE.as_posix() in result.stderr, describe(result)
    assert "_UNSPECIFIED" in result.stderr, describe(result)


def test_breaking_rejects_deleted_field(tmp_path: Path) -> None:
    previous = tmp_path / "previous"
    current = tmp_path / "current"
    write_proto(previous, _PREVIOUS_PROTO)
    write_proto(current, _CURRENT_PROTO)

    result = run_codegen("breaking", "--protos-dir", str(current), "--against-dir", str(previous))

    assert result.returncode != 0, describe(result)
    assert "weight_grams" in result.stderr, describe(result)
