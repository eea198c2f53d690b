"""Build hook: generates keybroker/v1/*_pb2*.py from the repository's proto/ with grpcio-tools.

The proto package `keybroker.v1` maps onto this package's `keybroker.v1` subpackage, so the
generated imports (`from keybroker.v1 import common_pb2`) resolve inside the installed package.
Set KEYBROKER_PROTO_DIR to build from elsewhere than a checkout of the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def proto_root() -> Path:
    root = Path(os.environ.get("KEYBROKER_PROTO_DIR", HERE.parent.parent / "proto"))
    if not (root / "keybroker" / "v1" / "datakeys.proto").is_file():
        raise SystemExit(f"keybroker: protos not found under {root} (set KEYBROKER_PROTO_DIR)")
    return root


def generate(out_root: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    root = proto_root()
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(root)) for p in (root / "keybroker" / "v1").glob("*.proto"))
    out = out_root / "keybroker" / "v1"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc", f"-I{root}", f"-I{wkt}", f"--python_out={out_root}",
        f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("keybroker: protoc failed")
    (out / "__init__.py").write_text('"""Generated from proto/keybroker/v1 at build time."""\n')


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        generate(Path(self.build_lib))


setup(cmdclass={"build_py": BuildPyWithStubs})
