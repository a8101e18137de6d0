"""Regenerate python/icgw/core.py from the public names of python/icgw/_core.pyi.

The facade re-exports exactly what the stubs declare (stubtest checks the stubs against the compiled module),
so the two cannot drift apart. Run after adding a function to the core: `python scripts/gen_core_facade.py`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT / "python" / "icgw" / "_core.pyi"
FACADE = ROOT / "python" / "icgw" / "core.py"

HEADER = '''"""Typed facade over icgw's compiled core (`icgw._core`); the only module that imports it.

Everything here is a pure function over bytes (or a small immutable object); errors are `ValueError`
subclasses whose message says what is wrong. The signatures are a contract used by the gateway, the
replica emulator, the tests, the tools and the benchmarks. Generated from `_core.pyi` by
`scripts/gen_core_facade.py`; the documentation of each name is in the stubs.
"""

from __future__ import annotations

'''


def public_names() -> list[str]:
    tree = ast.parse(STUBS.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return sorted(n for n in names if not n.startswith("_"))


def render(names: list[str]) -> str:
    imports = "".join(f"    {n},\n" for n in names)
    exported = "".join(f'    "{n}",\n' for n in names)
    return f"{HEADER}from icgw._core import (\n{imports})\n\n__all__ = [\n{exported}]\n"


if __name__ == "__main__":
    FACADE.write_text(render(public_names()))
