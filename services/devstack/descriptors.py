"""The contract as one FileDescriptorSet, for partners in other languages.

A consumer in Go (``clients/go-partner``), Java or anything else with a protobuf runtime can
decode every event from this file alone, without generated code. It is committed next to the Go
consumer; ``make generate`` rewrites it and the security tests check it is current.

    python -m devstack.descriptors [OUT]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

from devstack.broker import find_project_root
from devstack.codegen import build_deps_set, build_image

GO_PARTNER_DESCRIPTORS = Path("clients", "go-partner", "ctroute.binpb")


def contract_descriptor_set(root: Path) -> bytes:
    """Every contract file and its imports, without source info, serialized deterministically."""
    with tempfile.TemporaryDirectory(prefix="ctroute-descriptors-") as tmp:
        deps, image = Path(tmp, "deps.binpb"), Path(tmp, "image.binpb")
        build_deps_set(deps)
        build_image(root / "protos", deps, image)
        files = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes())
    for file in files.file:
        file.ClearField("source_code_info")
    return files.SerializeToString(deterministic=True)


def main(argv: list[str]) -> int:
    root = find_project_root()
    out = Path(argv[0]) if argv else root / GO_PARTNER_DESCRIPTORS
    out.write_bytes(contract_descriptor_set(root))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
