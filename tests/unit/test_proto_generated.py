"""The generated protobuf modules must match proto/*.proto: regenerate and compare."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    (tmp_path / "proto").mkdir()
    for src in (ROOT / "proto").glob("*.proto"):
        shutil.copy(src, tmp_path / "proto" / src.name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    base = [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--mypy_out=."]
    subprocess.run([*base, "proto/objects.proto", "proto/store.proto"], cwd=tmp_path,
                   check=True, env=env, capture_output=True)
    subprocess.run([*base, "--grpc_python_out=.", "--mypy_grpc_out=.", "proto/cluster.proto"],
                   cwd=tmp_path, check=True, env=env, capture_output=True)
    generated = sorted(p.name for p in (tmp_path / "proto").iterdir() if "_pb2" in p.name)
    committed = sorted(p.name for p in (ROOT / "proto").iterdir() if "_pb2" in p.name)
    assert generated == committed
    for name in generated:
        assert (tmp_path / "proto" / name).read_bytes() == (ROOT / "proto" / name).read_bytes(), (
            f"proto/{name} is stale: run `make proto`")
