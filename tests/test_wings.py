"""The architecture as the code has it: the wings of geoalign_store, who imports whom, no circle.

Run as a script to print the map (`python tests/test_wings.py`); under pytest each rule is a
test. Imports are read from the source (every `import`, including the ones inside functions),
so a lazy import that runs the wrong way is caught as well as a top-level one.
Rules (docs/ARCHITECTURE.md):
- each wing imports only the wings its face declares (`IMPORTS` in `<wing>/__init__.py`), and
  those declarations form no circle; no module imports another module in a circle either;
- the library never imports `pipelines` (stages sit on top of it) nor `benchmarks`;
- `pipelines/` and `benchmarks/` import the library through the wings' faces only;
  a test reaches into a wing's module only for what the face does not offer (private helpers,
  a module to patch);
- a stage imports no other stage (the CLI and the demo, which run stages, aside).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = "geoalign_store"
SHELLS = {"cli", "demo", "__init__"}  # pipelines modules that run stages; all others are stages


def wings() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / LIB).glob("*/__init__.py"))


def face(wing: str) -> ast.Module:
    return ast.parse((ROOT / LIB / wing / "__init__.py").read_text())


def declared_imports(wing: str) -> tuple[str, ...]:
    for node in face(wing).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "IMPORTS" for t in targets):
                return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"{LIB}/{wing}/__init__.py declares no IMPORTS")


def face_exports(wing: str) -> dict[str, str]:
    """name -> module, from the face's `face(__name__, {...})` call."""
    for node in ast.walk(face(wing)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "face":
            table = ast.literal_eval(node.args[1])
            return {name: module for module, names in table.items() for name in names}
    raise AssertionError(f"{LIB}/{wing}/__init__.py has no face(...)")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names imported from it, line) for every import in the file; relative
    imports resolved; `from pkg import name` where name is a submodule reads as pkg.name."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            names = [a.name for a in node.names]
            submodules = [n for n in names if _is_module(f"{target}.{n}")]
            found += [(f"{target}.{n}", [], node.lineno) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                found.append((target, rest, node.lineno))
    return found


def face_attributes(path: Path) -> list[tuple[str, str, int]]:
    """(wing, attribute, line) of every `st.name` where `st` is a wing's face imported as a
    module (`from geoalign_store import store as st`), outside that wing."""
    tree = ast.parse(path.read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module == LIB or (node.level == 2 and not node.module)):
            aliases.update({a.asname or a.name: a.name for a in node.names if a.name in wings()})
    own = wing_of(module_name(path))
    return [(aliases[n.value.id], n.attr, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
            and aliases[n.value.id] != own]


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def wing_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if parts[0] == LIB and len(parts) > 1 and parts[1] in wings() else None


def library_files() -> list[Path]:
    return sorted((ROOT / LIB).rglob("*.py"))


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("*.py"))


def wing_edges() -> dict[tuple[str, str], list[str]]:
    """(importing wing, imported wing) -> 'module:line' of each such import."""
    edges = defaultdict(list)
    for path in library_files():
        src = wing_of(module_name(path))
        for target, _, line in imports_of(path):
            dst = wing_of(target)
            if src and dst and dst != src:
                edges[(src, dst)].append(f"{path.relative_to(ROOT)}:{line}")
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layers() -> list[list[str]]:
    """Wings in import order: each layer imports only layers below it."""
    deps = {w: set(declared_imports(w)) for w in wings()}
    order, placed = [], set()
    while len(placed) < len(deps):
        layer = sorted(w for w in deps if w not in placed and deps[w] <= placed)
        if not layer:
            raise AssertionError(f"the declared imports have a circle: {find_cycle(deps)}")
        order.append(layer)
        placed |= set(layer)
    return order


# ------------------------------------------------------------------------------------ the rules
def test_each_wing_imports_only_what_its_face_declares():
    undeclared = [f"{src} -> {dst} ({', '.join(where)})" for (src, dst), where in wing_edges().items()
                  if dst not in declared_imports(src)]
    assert not undeclared, "imports a face does not declare:\n" + "\n".join(undeclared)


def test_the_wings_and_the_modules_have_no_circle():
    assert layers()  # raises on a circle among the declared imports
    modules = defaultdict(set)
    for path in library_files():
        for target, _, _ in imports_of(path):
            if target.startswith(LIB + ".") and _is_module(target):
                modules[module_name(path)].add(target)
    # a face (package __init__) reached by a sibling is how names travel, not a dependency of
    # the face on its importer: faces import nothing of their wing at import time (lazy)
    graph = {m: {t for t in ts if t != m.rsplit(".", 1)[0]} for m, ts in modules.items()}
    assert find_cycle(graph) is None, f"modules import each other in a circle: {find_cycle(graph)}"


def test_the_library_never_imports_the_stages_or_benchmarks():
    upward = [f"{path.relative_to(ROOT)}:{line} imports {target}" for path in library_files()
              for target, _, line in imports_of(path) if target.split(".")[0] in ("pipelines", "benchmarks")]
    assert not upward, "\n".join(upward)


def test_stages_and_benchmarks_import_the_library_through_the_faces():
    deep = [f"{path.relative_to(ROOT)}:{line} imports {target}"
            for folder in ("pipelines", "benchmarks") for path in files(folder)
            for target, _, line in imports_of(path)
            if target.startswith(LIB + ".") and target.count(".") > 1]
    assert not deep, "import the wing's face instead:\n" + "\n".join(deep)


def test_tests_reach_into_a_module_only_for_what_the_face_does_not_offer():
    offered = {w: face_exports(w) for w in wings()}
    needless = []
    for path in files("tests"):
        for target, names, line in imports_of(path):
            wing = wing_of(target)
            if wing and target.count(".") > 1:
                needless += [f"{path.name}:{line} {target}.{n}" for n in names if n in offered[wing]]
    assert not needless, "these names are on the wing's face: import them from it\n" + "\n".join(needless)


def test_a_stage_imports_no_other_stage():
    stages = {p.stem for p in files("pipelines")} - SHELLS
    crossing = [f"pipelines/{path.name}:{line} imports {target}"
                for path in files("pipelines") if path.stem not in SHELLS
                for target, _, line in imports_of(path)
                if target.split(".")[0] == "pipelines" and target.split(".")[-1] in stages]
    assert not crossing, "\n".join(crossing)


def test_every_name_imported_from_a_face_is_on_it():
    """Checked from the source, so a benchmark or a lazy import that is rarely run cannot hold
    an import the face does not offer."""
    offered = {w: face_exports(w) for w in wings()}
    missing = []
    for path in [*library_files(), *(p for d in ("pipelines", "benchmarks", "tests") for p in files(d))]:
        for target, names, line in imports_of(path):
            wing = wing_of(target)
            if wing and target == f"{LIB}.{wing}" and wing_of(module_name(path)) != wing:
                missing += [f"{path.relative_to(ROOT)}:{line} {n}" for n in names if n not in offered[wing]]
        missing += [f"{path.relative_to(ROOT)}:{line} {wing}.{n}" for wing, n, line in face_attributes(path)
                    if n not in offered[wing] and not _is_module(f"{LIB}.{wing}.{n}")]
    assert not missing, "names the faces do not offer:\n" + "\n".join(missing)


def test_every_name_on_a_face_resolves_and_none_shadows_a_module():
    import importlib
    for wing in wings():
        package = importlib.import_module(f"{LIB}.{wing}")
        for name, module in face_exports(wing).items():
            assert not _is_module(f"{LIB}.{wing}.{name}"), f"{wing}: {name} is also a module's name"
            assert getattr(package, name) is getattr(importlib.import_module(f"{LIB}.{wing}.{module}"), name)


# ------------------------------------------------------------------------------------ the map
def print_map() -> None:
    edges = wing_edges()
    print("wings, bottom to top (each imports only wings below it):")
    for depth, layer in enumerate(layers()):
        for wing in layer:
            used = sorted(dst for (src, dst) in edges if src == wing)
            counts = ", ".join(f"{dst} ({len(edges[(wing, dst)])})" for dst in used) or "-"
            print(f"  {depth}  {wing:<10} declares {', '.join(declared_imports(wing)) or '-':<44} imports {counts}")
    for folder in ("pipelines", "benchmarks"):
        used = defaultdict(int)
        for path in files(folder):
            for target, _, _ in imports_of(path):
                if wing_of(target) or target.split(".")[0] == "pipelines":
                    used[wing_of(target) or "stages" + (" (from cli, demo)" if folder == "pipelines" else "")] += 1
        print(f"  {folder:<13} imports " + ", ".join(f"{k} ({v})" for k, v in sorted(used.items())))
    checks = [f for name, f in globals().items() if name.startswith("test_")]
    failed = 0
    for check in checks:
        try:
            check()
            print(f"ok    {check.__name__}")
        except AssertionError as e:
            failed += 1
            print(f"FAIL  {check.__name__}: {e}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    print_map()
