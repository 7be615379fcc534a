"""Generate the Python code of the protobuf contracts and guard how the contracts evolve.

The contracts under ``protos/`` import ``buf/validate/validate.proto``, but the development and CI
machines cannot reach the Buf Schema Registry, so neither ``buf generate`` with remote plugins nor
``deps:`` in ``buf.yaml`` work. Everything needed is installed from PyPI instead:

* the protovalidate wheel embeds the serialized ``FileDescriptorProto`` of
  ``buf/validate/validate.proto``; together with the well-known types it imports it becomes a
  FileDescriptorSet (``build/protos/deps.binpb``) that ``protoc --descriptor_set_in`` resolves the
  import from, and from which the ``buf.validate.validate_pb2`` module is generated;
* ``grpc_tools.protoc`` (+ ``protoc-gen-mypy`` from mypy-protobuf) generates ``services/generated``;
* a FileDescriptorSet with imports and source info is a Buf image, so the ``buf`` binary from
  ``buf-bin`` lints it and compares it with the image of the previous commit.

``services/generated`` belongs to this tool: ``generate`` makes it hold exactly what the protos
produce (stale modules are deleted) and ``check`` fails when the committed tree differs. Run as
``python -m devstack.codegen {generate,check,lint,breaking}`` with ``services`` on the import path.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]

VALIDATE_PROTO = "buf/validate/validate.proto"
# Where protoc-gen-py puts the generated module of validate.proto inside the protovalidate wheel.
_VALIDATE_MODULE = "protovalidate._gen.buf.validate.validate_pb"
_VALIDATE_SOURCE = Path("_gen", "buf", "validate", "validate_pb.py")

REGENERATE_HINT = "run `make generate` and commit the result"
NO_BASE_MESSAGE = "buf breaking: no previous contract to compare against, skipped"

# Branches whose tip is the published contract, in order of preference.
_MAINLINE_REFS = ("origin/main", "main")
# Left behind by Python in the generated tree; never part of the comparison.
_IGNORED_PARTS = frozenset({"__pycache__"})


class CodegenError(Exception):
    """A step failed; the message says which and carries the tool's output."""


@dataclass(frozen=True)
class Layout:
    """Where the contracts, the build output and the generated code live."""

    root: Path

    @property
    def protos_dir(self) -> Path:
        return self.root / "protos"

    @property
    def build_dir(self) -> Path:
        return self.root / "build" / "protos"

    @property
    def deps_set(self) -> Path:
        return self.build_dir / "deps.binpb"

    @property
    def image(self) -> Path:
        return self.build_dir / "image.binpb"

    @property
    def generated_dir(self) -> Path:
        return self.root / "services" / "generated"

    @property
    def buf_config(self) -> Path:
        return self.root / "buf.yaml"

    def show(self, path: Path) -> str:
        """Names ``path`` relative to the repository when it is inside it."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


# --- tools -------------------------------------------------------------------------------------


def _module_dir(module: str) -> Path:
    """Finds an installed package's directory without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CodegenError(f"{module} is not installed (see requirements.lock)")
    return Path(next(iter(spec.submodule_search_locations)))


def wkt_include_dir() -> Path:
    """The well-known protos (google/protobuf/*.proto) bundled with grpcio-tools."""
    include = _module_dir("grpc_tools") / "_proto"
    if not (include / "google" / "protobuf" / "descriptor.proto").is_file():
        raise CodegenError(f"grpcio-tools ships no well-known protos under {include}")
    return include


def _venv_tool(name: str) -> Path:
    """Finds a console script installed next to the running interpreter, else on PATH.

    ``sys.executable`` is deliberately not resolved: in a virtualenv it is a symlink, and the
    scripts live next to the link, not next to the base interpreter.
    """
    bin_dir = Path(sys.executable).parent
    for candidate in (bin_dir / name, bin_dir / f"{name}.exe"):
        if candidate.is_file():
            return candidate
    found = shutil.which(name)
    if found is None:
        raise CodegenError(f"{name} not found next to {sys.executable} or on PATH")
    return Path(found)


def _run(
    argv: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.fspath(arg) for arg in argv], cwd=cwd, capture_output=True, text=True, check=False
    )


def _protoc(args: Sequence[str | os.PathLike[str]]) -> None:
    """Runs grpcio-tools' protoc in a child process so its output can be captured and shown."""
    result = _run([sys.executable, "-m", "grpc_tools.protoc", *args])
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise CodegenError(f"protoc failed:\n{output}")
    if output:
        # Warnings such as unused imports; worth seeing, not worth failing the build for.
        print(output, file=sys.stderr)


def _write_atomically(path: Path, data: bytes) -> None:
    """Replaces ``path`` in one step so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp creates the file private (0600); give it the mode an ordinary write would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def project_protos(protos_dir: Path) -> list[str]:
    """The project's proto files as protoc import paths, sorted so output is deterministic."""
    if not protos_dir.is_dir():
        raise CodegenError(f"no protos directory at {protos_dir}")
    return sorted(path.relative_to(protos_dir).as_posix() for path in protos_dir.rglob("*.proto"))


# --- step 1: the dependency set ----------------------------------------------------------------


def validate_descriptor_bytes() -> bytes:
    """The serialized FileDescriptorProto of validate.proto, taken from the protovalidate wheel.

    The wheel's generated module passes it as the first argument of ``file_desc(...)``. Reading it
    from the source with ``ast`` gives the exact bytes without executing the module; if a future
    wheel lays the module out differently, fall back to importing it and serializing its
    descriptor.
    """
    source = _module_dir("protovalidate") / _VALIDATE_SOURCE
    data = _validate_bytes_from_source(source) if source.is_file() else None
    if data is None:
        data = _validate_bytes_from_import()
    proto = descriptor_pb2.FileDescriptorProto.FromString(data)
    if proto.name != VALIDATE_PROTO:
        raise CodegenError(f"protovalidate embeds {proto.name!r}, expected {VALIDATE_PROTO!r}")
    return data


def _validate_bytes_from_source(source: Path) -> bytes | None:
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), filename=str(source))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "file_desc"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            return node.args[0].value
    return None


def _validate_bytes_from_import() -> bytes:
    module = importlib.import_module(_VALIDATE_MODULE)
    data = module.desc().proto.to_binary()
    if not isinstance(data, bytes):
        raise CodegenError(
            f"cannot read the descriptor of {VALIDATE_PROTO} from {_VALIDATE_MODULE}"
        )
    return data


def build_deps_set(out: Path) -> list[str]:
    """Writes validate.proto and the well-known types it imports as one FileDescriptorSet.

    The well-known types are compiled from grpcio-tools' bundled protos, the same files protoc
    reads for every other google/protobuf import, so one build never holds two versions of
    descriptor.proto. Returns the names of the files in the set.
    """
    validate = descriptor_pb2.FileDescriptorProto.FromString(validate_descriptor_bytes())
    with tempfile.TemporaryDirectory(prefix="ctroute-wkt-") as tmp:
        wkt_set = Path(tmp) / "wkt.binpb"
        _protoc(
            [
                f"-I{wkt_include_dir()}",
                "--include_imports",
                f"--descriptor_set_out={wkt_set}",
                *sorted(validate.dependency),
            ]
        )
        deps = descriptor_pb2.FileDescriptorSet.FromString(wkt_set.read_bytes())
    deps.file.append(validate)
    _write_atomically(out, deps.SerializeToString(deterministic=True))
    return [file.name for file in deps.file]


# --- step 2: code ------------------------------------------------------------------------------


def _include_args(protos_dir: Path, deps_set: Path) -> list[str]:
    return [f"-I{protos_dir}", f"--descriptor_set_in={deps_set}", f"-I{wkt_include_dir()}"]


def generate_code(protos_dir: Path, deps_set: Path, out_dir: Path) -> list[str]:
    """Generates messages, gRPC stubs and type stubs into the empty directory ``out_dir``.

    Type stubs (.pyi) cover the messages only. mypy-protobuf's gRPC stubs are left out: grpcio
    ships no type information, so under ``mypy --strict`` they add errors rather than types.
    Returns the generated files relative to ``out_dir``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    mypy = _venv_tool("protoc-gen-mypy")
    includes = _include_args(protos_dir, deps_set)
    # validate_pb2 comes from the descriptor set alone: the wheel ships no validate.proto source.
    _protoc(
        [
            *includes,
            f"--plugin=protoc-gen-mypy={mypy}",
            f"--python_out={out_dir}",
            f"--mypy_out=quiet:{out_dir}",
            VALIDATE_PROTO,
        ]
    )
    protos = project_protos(protos_dir)
    if protos:
        _protoc(
            [
                *includes,
                f"--plugin=protoc-gen-mypy={mypy}",
                f"--python_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                f"--mypy_out=quiet:{out_dir}",
                *protos,
            ]
        )
    # protoc writes modules only; mypy and setuptools need regular packages around them.
    for directory in sorted({path.parent for path in out_dir.rglob("*") if path.is_file()}):
        while directory != out_dir:
            (directory / "__init__.py").touch()
            directory = directory.parent
    return sorted(_tree_files(out_dir))


def _tree_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative POSIX path, without Python's bytecode caches."""
    if not root.is_dir():
        return {}
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and not _IGNORED_PARTS.intersection(path.relative_to(root).parts)
    }


def _sync_tree(source: Path, target: Path) -> tuple[int, int]:
    """Makes ``target`` hold exactly the files of ``source``; touches only what changed.

    Returns the number of files written and removed.
    """
    new, old = _tree_files(source), _tree_files(target)
    written = 0
    for rel, data in sorted(new.items()):
        if old.get(rel) != data:
            _write_atomically(target / rel, data)
            written += 1
    stale = sorted(old.keys() - new.keys())
    for rel in stale:
        (target / rel).unlink()
    # Drop directories left without files (a removed proto package), caches included.
    for directory in sorted((p for p in target.rglob("*") if p.is_dir()), reverse=True):
        if (
            directory.exists()
            and directory.name not in _IGNORED_PARTS
            and not _holds_files(directory)
        ):
            shutil.rmtree(directory)
    return written, len(stale)


def _holds_files(directory: Path) -> bool:
    return any(
        path.is_file() and not _IGNORED_PARTS.intersection(path.relative_to(directory).parts)
        for path in directory.rglob("*")
    )


# --- step 3: the Buf image ---------------------------------------------------------------------


def build_image(protos_dir: Path, deps_set: Path, out: Path) -> list[str]:
    """Compiles the protos into a Buf image (a FileDescriptorSet with imports and source info).

    Returns the project's files in it; ``buf`` is limited to those, because a FileDescriptorSet
    written by protoc does not mark which files are imports and ``buf lint`` would otherwise lint
    google/protobuf and buf/validate too.
    """
    protos = project_protos(protos_dir)
    if not protos:
        return []
    with tempfile.TemporaryDirectory(prefix="ctroute-image-") as tmp:
        image = Path(tmp) / "image.binpb"
        _protoc(
            [
                *_include_args(protos_dir, deps_set),
                "--include_imports",
                "--include_source_info",
                "--retain_options",
                f"--descriptor_set_out={image}",
                *protos,
            ]
        )
        _write_atomically(out, image.read_bytes())
    return protos


# --- buf ---------------------------------------------------------------------------------------


def _buf(args: Sequence[str | os.PathLike[str]], config: Path) -> subprocess.CompletedProcess[str]:
    if not config.is_file():
        raise CodegenError(f"no buf configuration at {config}")
    # An explicit --config: with an image as input buf otherwise reads whatever buf.yaml is in the
    # working directory, or silently falls back to its defaults when there is none.
    return _run([_venv_tool("buf"), *args, "--config", config], cwd=config.parent)


def _path_args(files: Sequence[str]) -> list[str]:
    return [arg for name in files for arg in ("--path", name)]


# --- git ---------------------------------------------------------------------------------------


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("git") is None:
        raise CodegenError("git not found on PATH; use --against-dir")
    return _run(["git", "-C", root, *args])


def _commit_of(root: Path, ref: str) -> str | None:
    result = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    return result.stdout.strip() if result.returncode == 0 else None


def default_base_ref(root: Path, protos_rel: str) -> tuple[str, str] | None:
    """The commit whose contract the working tree must stay compatible with, and how it was found.

    On a branch it is the fork point from main (``origin/main``, else local ``main``), so
    changes that landed on main later do not show up as ours. On main itself it is ``HEAD``
    while the protos have uncommitted changes, else the previous commit (what CI on main sees).
    ``None`` when there is no earlier commit.
    """
    head = _commit_of(root, "HEAD")
    if head is None:
        return None
    for mainline in _MAINLINE_REFS:
        if _commit_of(root, mainline) is not None:
            merge_base = _git(root, "merge-base", "HEAD", mainline)
            fork_point = merge_base.stdout.strip()
            if merge_base.returncode == 0 and fork_point != head:
                return fork_point, f"fork point from {mainline}"
            break
    changes = _git(root, "status", "--porcelain", "--untracked-files=all", "--", protos_rel)
    if changes.stdout.strip():
        return head, "HEAD"
    previous = _commit_of(root, "HEAD^")
    return None if previous is None else (previous, "previous commit")


def export_protos_at(root: Path, commit: str, protos_rel: str, dest: Path) -> int:
    """Writes the proto files under ``protos_rel`` at ``commit`` into ``dest``; returns how many."""
    listing = _git(root, "ls-tree", "-r", "-z", "--name-only", commit, "--", f"{protos_rel}/")
    if listing.returncode != 0:
        raise CodegenError(f"git ls-tree {commit} failed:\n{listing.stderr.strip()}")
    count = 0
    for name in filter(None, listing.stdout.split("\0")):
        if not name.endswith(".proto"):
            continue
        blob = subprocess.run(
            ["git", "-C", str(root), "show", f"{commit}:{name}"], capture_output=True, check=False
        )
        if blob.returncode != 0:
            raise CodegenError(
                f"git show {commit}:{name} failed:\n{blob.stderr.decode(errors='replace').strip()}"
            )
        target = dest / Path(name).relative_to(protos_rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob.stdout)
        count += 1
    return count


# --- commands ----------------------------------------------------------------------------------


def cmd_generate(layout: Layout) -> int:
    files = build_deps_set(layout.deps_set)
    print(
        f"deps: {layout.show(layout.deps_set)} ({VALIDATE_PROTO} from protovalidate"
        f" + {len(files) - 1} imports)"
    )
    with tempfile.TemporaryDirectory(prefix="ctroute-codegen-") as tmp:
        generated = generate_code(layout.protos_dir, layout.deps_set, Path(tmp))
        written, removed = _sync_tree(Path(tmp), layout.generated_dir)
    protos = project_protos(layout.protos_dir)
    print(
        f"code: {layout.show(layout.generated_dir)} ({len(protos)} protos -> {len(generated)}"
        f" files, {written} written, {removed} removed)"
    )
    imaged = build_image(layout.protos_dir, layout.deps_set, layout.image)
    if imaged:
        print(f"image: {layout.show(layout.image)} ({len(imaged)} project files + imports)")
    else:
        print(f"image: skipped, no .proto files under {layout.show(layout.protos_dir)}")
    return 0


def compare_generated(layout: Layout) -> list[str]:
    """What would change in services/generated if ``generate`` ran now, one line per file."""
    with tempfile.TemporaryDirectory(prefix="ctroute-check-") as tmp:
        deps = Path(tmp) / "deps.binpb"
        build_deps_set(deps)
        out = Path(tmp) / "generated"
        generate_code(layout.protos_dir, deps, out)
        expected = _tree_files(out)
    actual = _tree_files(layout.generated_dir)
    problems = [
        f"differs: {rel}"
        for rel in sorted(expected.keys() & actual.keys())
        if expected[rel] != actual[rel]
    ]
    problems += [f"missing: {rel}" for rel in sorted(expected.keys() - actual.keys())]
    problems += [f"extra:   {rel}" for rel in sorted(actual.keys() - expected.keys())]
    return problems


def cmd_check(layout: Layout) -> int:
    problems = compare_generated(layout)
    where = layout.show(layout.generated_dir)
    if not problems:
        print(f"check: {where} matches the protos")
        return 0
    print(
        f"check: {where} is out of date with the protos ({len(problems)} files):", file=sys.stderr
    )
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    print(f"check: {REGENERATE_HINT}", file=sys.stderr)
    return 1


def cmd_lint(layout: Layout, protos_dir: Path) -> int:
    build_deps_set(layout.deps_set)
    # A scratch protos tree gets a scratch image, so linting it never replaces the real one.
    with tempfile.TemporaryDirectory(prefix="ctroute-lint-") as tmp:
        image = layout.image if protos_dir == layout.protos_dir else Path(tmp) / "image.binpb"
        files = build_image(protos_dir, layout.deps_set, image)
        if not files:
            print(f"buf lint: no .proto files under {layout.show(protos_dir)}, skipped")
            return 0
        result = _buf(["lint", image, *_path_args(files)], layout.buf_config)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        print(output, file=sys.stderr)
        print(f"buf lint: {layout.show(protos_dir)} breaks the lint rules", file=sys.stderr)
        return 1
    print(f"buf lint: {len(files)} files of {layout.show(protos_dir)} pass")
    return 0


def _export_previous_contract(layout: Layout, against_ref: str | None, dest: Path) -> str | None:
    """Writes the protos of the contract to compare against into ``dest``.

    Returns how to name that contract, or ``None`` when there is none (no earlier commit, or no
    protos in it).
    """
    protos_rel = layout.show(layout.protos_dir)
    if against_ref is not None:
        commit = _commit_of(layout.root, against_ref)
        if commit is None:
            raise CodegenError(f"{against_ref} is not a commit of this repository")
        label = against_ref
    else:
        base = default_base_ref(layout.root, protos_rel)
        if base is None:
            return None
        commit, label = base
    if export_protos_at(layout.root, commit, protos_rel, dest) == 0:
        return None
    return f"{label} {commit[:12]}"


def cmd_breaking(
    layout: Layout, protos_dir: Path, against_ref: str | None, against_dir: Path | None
) -> int:
    build_deps_set(layout.deps_set)
    with tempfile.TemporaryDirectory(prefix="ctroute-breaking-") as tmp:
        if against_dir is not None:
            previous_dir, label = against_dir, layout.show(against_dir)
        else:
            previous_dir = Path(tmp) / "previous"
            exported = _export_previous_contract(layout, against_ref, previous_dir)
            if exported is None:
                print(NO_BASE_MESSAGE)
                return 0
            label = exported
        image = layout.image if protos_dir == layout.protos_dir else Path(tmp) / "image.binpb"
        files = build_image(protos_dir, layout.deps_set, image)
        previous_image = Path(tmp) / "previous.binpb"
        previous_files = build_image(previous_dir, layout.deps_set, previous_image)
        if not previous_files:
            print(NO_BASE_MESSAGE)
            return 0
        if not files:
            print(f"buf breaking: every proto file of {label} is gone", file=sys.stderr)
            return 1
        # Limit to the project's files of both sides: imports come and go with the protos that
        # use them, and a dropped import is not a breaking change of ours.
        paths = _path_args(sorted(set(files) | set(previous_files)))
        result = _buf(["breaking", image, "--against", previous_image, *paths], layout.buf_config)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        print(output, file=sys.stderr)
        print(
            f"buf breaking: {layout.show(protos_dir)} breaks the contract of {label}",
            file=sys.stderr,
        )
        return 1
    print(f"buf breaking: {layout.show(protos_dir)} is compatible with {label}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.codegen", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "generate", help="write build/protos/deps.binpb, services/generated and the Buf image"
    )
    commands.add_parser(
        "check", help="fail when services/generated differs from what the protos generate"
    )
    lint = commands.add_parser("lint", help="buf lint the project's protos")
    lint.add_argument("--protos-dir", type=Path, help="lint this protos tree instead of protos/")
    breaking = commands.add_parser("breaking", help="buf breaking against the previous contract")
    breaking.add_argument(
        "--protos-dir", type=Path, help="check this protos tree instead of protos/"
    )
    base = breaking.add_mutually_exclusive_group()
    base.add_argument(
        "--against-ref", help="git ref of the previous contract (default: fork point from main)"
    )
    base.add_argument("--against-dir", type=Path, help="protos tree of the previous contract")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    layout = Layout(REPO_ROOT)
    try:
        if args.command == "generate":
            return cmd_generate(layout)
        if args.command == "check":
            return cmd_check(layout)
        protos_dir = args.protos_dir.resolve() if args.protos_dir is not None else layout.protos_dir
        if args.command == "lint":
            return cmd_lint(layout, protos_dir)
        against_dir = args.against_dir.resolve() if args.against_dir is not None else None
        return cmd_breaking(layout, protos_dir, args.against_ref, against_dir)
    except CodegenError as error:
        print(f"{args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
