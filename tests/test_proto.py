"""The checked-in generated code must be exactly what proto/build.py makes from the .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_matches_proto() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proto.build", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_one_proto_file() -> None:
    # Pinned like Flower's protoc_test: adding a service file must be deliberate.
    assert [p.name for p in (ROOT / "proto").glob("*.proto")] == ["xmatch.proto"]


def test_stale_code_is_detected(tmp_path: Path) -> None:
    # The check above must be able to fail: a changed .proto gives different code.
    from proto import build

    out = build.generate(tmp_path)
    original = {p.name: p.read_bytes() for p in out}
    staged = tmp_path / "proto" / "xmatch.proto"
    staged.write_text(
        staged.read_text().replace("uint32 max_chunk_bytes = 3;", "uint64 max_chunk_bytes = 3;")
    )
    from grpc_tools import protoc

    assert (
        protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{tmp_path}",
                f"--python_out={tmp_path}",
                str(staged.relative_to(tmp_path)),
            ]
        )
        == 0
    )
    assert (tmp_path / "proto" / "xmatch_pb2.py").read_bytes() != original["xmatch_pb2.py"]


def test_generated_code_loads_on_the_installed_runtime() -> None:
    # protoc's gencode refuses an older protobuf runtime at import time.
    from proto import xmatch_pb2, xmatch_pb2_grpc

    assert xmatch_pb2.DESCRIPTOR.package == "xmatch.v1"
    assert hasattr(xmatch_pb2_grpc, "NodeServicer")
