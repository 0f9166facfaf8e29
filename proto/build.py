"""Regenerate the Python code and mypy stubs for proto/*.proto.

One script, one place (after Flower's ``flwr_tool/protoc.py``): ``make proto``
runs it into ``proto/``; the test suite runs it into a temporary folder and
fails on any difference from what is checked in.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc (grpcio-tools' bundled copy) with mypy-protobuf into ``out_root/proto``."""
    (out_root / "proto").mkdir(parents=True, exist_ok=True)
    for source in proto_files():
        staged = out_root / "proto" / source.name
        if staged != source:
            shutil.copyfile(source, staged)
        bindir = Path(sys.executable).parent  # the venv's protoc-gen-mypy plugins
        args = [
            "grpc_tools.protoc",
            f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            f"-I{out_root}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--mypy_out={out_root}",
            f"--mypy_grpc_out={out_root}",
            str(staged.relative_to(out_root)),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {source.name}")
    return sorted(p for p in (out_root / "proto").iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the checked-in code differs"
    )
    args = parser.parse_args(argv)
    if not args.check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [
            p.name
            for p in generate(Path(tmp))
            if not (PROTO_DIR / p.name).exists()
            or (PROTO_DIR / p.name).read_bytes() != p.read_bytes()
        ]
    if stale:
        print(
            "generated code is stale: " + ", ".join(stale) + " (run `make proto`)", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
