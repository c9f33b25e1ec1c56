"""Generate the Python stubs of protos/microturn/v1 into services/microturn/v1.

The proto package ``microturn.v1`` maps onto the Python module ``microturn.v1``, so generated
imports (``from microturn.v1 import chunk_pb2``) resolve inside the installed distribution.
Run with ``make protos``; tests/test_protos.py regenerates into a temporary folder and fails
when the committed stubs differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO_ROOT / "protos"
STUB_ROOT = REPO_ROOT / "services"
PROTO_DIR = PROTO_ROOT / "microturn" / "v1"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every .proto; return the files written under out_root."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    out_root.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    pkg = out_root / "microturn" / "v1"
    init = pkg / "__init__.py"
    init.write_text('"""Generated protobuf and gRPC stubs of protos/microturn/v1 (make protos)."""\n')
    return sorted(p for p in pkg.iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=STUB_ROOT, help="root folder to write microturn/v1 into")
    ns = parser.parse_args(argv)
    for path in generate(ns.out):
        print(path.relative_to(ns.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
