"""Generate Python code and typed stubs for protos/ into libs/contracts (package onefold.contracts).

protoc names Python modules after proto paths (onefold/common/v1/x.proto -> onefold.common.v1.x_pb2);
we move them under onefold.contracts so generated code never collides with the services' own
packages (onefold.ingest, ...), and rewrite the import lines to match. `--check` regenerates into a
temporary directory and fails if the committed files differ.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "libs" / "contracts" / "src" / "onefold" / "contracts"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
# Module references (not proto full names inside serialized descriptors, which stay untouched).
_MODULE_REF = re.compile(r"\bonefold\.(?!contracts\.)((?:\w+\.)*\w+_pb2(?:_grpc)?)\b")
_IMPORT_LINE = re.compile(r"^(\s*)(from|import) onefold\.(?!contracts\.)", re.MULTILINE)
_BUILDER_NAME = re.compile(r"'onefold\.(?!contracts\.)((?:\w+\.)*\w+_pb2)'")


def _rewrite(text: str) -> str:
    text = _IMPORT_LINE.sub(r"\1\2 onefold.contracts.", text)
    text = _BUILDER_NAME.sub(r"'onefold.contracts.\1'", text)
    return _MODULE_REF.sub(r"onefold.contracts.\1", text)


_SERVICE = re.compile(r"^\s*service\s+\w+", re.MULTILINE)


def _grpc_module_without_services(path: Path, raw: Path) -> bool:
    """protoc writes an empty *_pb2_grpc module for every file; keep only those with services."""
    name = path.name
    if "_pb2_grpc." not in name:
        return False
    proto = PROTOS / path.relative_to(raw).parent / (name.split("_pb2_grpc.")[0] + ".proto")
    return not _SERVICE.search(proto.read_text())


def generate(out: Path) -> None:
    protos = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as raw_dir:
        raw = Path(raw_dir)
        bin_dir = Path(sys.executable).parent
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{PROTOS}", f"-I{well_known}",
            f"--python_out={raw}", f"--grpc_python_out={raw}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={raw}", f"--mypy_grpc_out={raw}",
            *protos,
        ]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=PROTOS)
        for src in sorted((raw / "onefold").rglob("*")):
            if not src.is_file() or _grpc_module_without_services(src, raw):
                continue
            dest = out / src.relative_to(raw / "onefold")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(_rewrite(src.read_text()))
    # Every generated directory is a regular package (typed), so type checkers resolve it.
    (out / "py.typed").write_text("")
    for directory in [out, *(d for d in out.rglob("*") if d.is_dir() and d.name != "__pycache__")]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from protos/ by scripts/gen_protos.py. Do not edit."""\n')


def _generated_files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and (p.name.endswith(GENERATED_SUFFIXES) or p.name in ("__init__.py", "py.typed"))
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args()
    if not args.check:
        for stale in _generated_files(TARGET):
            if stale.endswith(GENERATED_SUFFIXES):
                (TARGET / stale).unlink()
        generate(TARGET)
        print(f"generated {len(_generated_files(TARGET))} files into {TARGET.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = _generated_files(fresh), _generated_files(TARGET)
        problems = sorted(f"missing: {f}" for f in want - have) + sorted(f"extra: {f}" for f in have - want)
        problems += sorted(
            f"stale: {f}" for f in want & have if not filecmp.cmp(fresh / f, TARGET / f, shallow=False)
        )
        if problems:
            print("generated code is stale; run `make proto` and commit:\n  " + "\n  ".join(problems))
            return 1
        print(f"generated code is fresh ({len(want)} files)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
