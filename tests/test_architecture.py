"""The package's structure, as docs/architecture.md states it: no import cycle, and no module
importing a room it may not import.  Also: the wheel works outside the source checkout."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from harness import require_binary

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "exporter" / "stackwatch"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Every stackwatch module and the stackwatch modules it imports (at any depth of its code)."""
    graph: dict[str, set[str]] = {}
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    for name, path in modules.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_is_read_correctly():
    # The checks below are only as good as the graph: spot-check edges known to exist.
    g = import_graph()
    assert "stackwatch.config" in g["stackwatch.probes.base"]
    assert "stackwatch.probes.base" in g["stackwatch.probes.sql"]
    assert "stackwatch.probes.sqldb" in g["stackwatch.probes.sql"]
    assert "stackwatch.kinds" in g["stackwatch.cli"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


# Every room and what it may import from stackwatch: the table of docs/architecture.md.  A module
# missing here fails the test, so a new room has to say where it stands.  Everyone may import the
# package itself (``stackwatch.__version__``); ``stackwatch.probes`` (the package) comes with
# ``probes.base``.
HELPERS = ("probes.blocking", "probes.http1", "probes.httpclient", "probes.jsonquery", "probes.sqldb", "probes.rediskv",
           "probes.invariants")
KIND_MODULES = ("probes.http", "probes.jsonapi", "probes.sql", "probes.algorand", "probes.consistency", "probes.heartbeat")
FOR_A_KIND = ("probes.base", *HELPERS, "config", "redact", "durations")
TOP = ("app", "server", "cli", "demo", "workers", "report", "kubernetes", "bundle", "__main__")
ROOMS: dict[str, tuple[str, ...] | str] = {
    # the bottom: units, primitives, no stackwatch room below them
    "durations": ("redact",), "redact": (), "exposition": (), "yamlload": (), "cooperative": (), "buckets": (),
    "history": (), "incidents": (), "logsetup": (), "listener": (), "bundle": (), "_bundle": (), "remote": ("redact",),
    "state": ("redact",),
    "loader": ("redact", "yamlload"),
    "config": ("durations", "loader", "redact"),
    "webconfig": ("config", "loader"),
    "probes.base": ("config", "redact"),
    **{h: FOR_A_KIND for h in HELPERS},
    **{k: FOR_A_KIND for k in KIND_MODULES},
    "probes.heartbeat": (*FOR_A_KIND, "state"),
    "loadproc": ("config", "loader"),
    "kinds": ("config", "loadproc", "probes.base", *KIND_MODULES),
    "runner": ("config", "probes.base", "redact"),
    "scheduler": ("buckets", "config", "probes.base", "runner"),
    "store": ("buckets", "config", "history", "incidents", "probes.base"),
    "series": ("config", "exposition", "history", "probes.base", "store"),
    "collector": ("exposition", "probes.base", "series", "store"),
    "selfmetrics": ("buckets", "config", "listener", "runner", "scheduler", "webconfig"),
    "statuspage": ("cooperative", "history", "incidents", "probes.base", "remote", "store"),
    "pages": ("durations", "history", "incidents", "remote", "statuspage"),
    "push": ("probes.heartbeat", "state"),
    "report": ("config", "durations", "history", "kinds", "remote"),
    "workers": ("listener", "loader", "webconfig"),
    "kubernetes": ("bundle",),
    "app": "all but " + " ".join(t for t in TOP if t != "app"),
    "server": "all but " + " ".join(t for t in TOP if t not in ("app", "server")),
    "cli": "all", "__main__": ("cli",), "demo": "all", "demo.fakealgod": (),
}


def room_of(module: str) -> str:
    return module.removeprefix("stackwatch.")


def violations(graph: dict[str, set[str]], rooms: dict[str, tuple[str, ...] | str] = ROOMS) -> list[str]:
    out = []
    everything = {room_of(m) for m in graph}
    for mod, deps in graph.items():
        room = room_of(mod)
        if mod == "stackwatch" or room == "probes":
            continue
        rule = rooms.get(room)
        if rule is None:
            out.append(f"{mod} has no row in the rooms table")
            continue
        if rule == "all":
            allowed = everything
        elif isinstance(rule, str):  # "all but a b c"
            allowed = everything - set(rule.removeprefix("all but ").split())
        else:
            allowed = set(rule)
        if "probes.base" in allowed:
            allowed.add("probes")
        for d in deps:
            if d != "stackwatch" and room_of(d) not in allowed:
                out.append(f"{mod} imports {d}")
    return sorted(set(out))


def test_rooms_import_only_what_the_architecture_allows():
    assert violations(import_graph()) == []
    # The rules do catch a forbidden edge, and a module with no row:
    assert violations({"stackwatch.config": {"stackwatch.probes.base"}}) == [
        "stackwatch.config imports stackwatch.probes.base"]
    assert violations({"stackwatch.probes.sqldb": {"stackwatch.probes.sql"}}) == [
        "stackwatch.probes.sqldb imports stackwatch.probes.sql"]
    assert violations({"stackwatch.app": {"stackwatch.server"}, "stackwatch.server": set()}) == [
        "stackwatch.app imports stackwatch.server"]
    assert violations({"stackwatch.newroom": set()}) == ["stackwatch.newroom has no row in the rooms table"]


def test_every_room_of_the_tree_is_in_the_documented_table():
    """docs/architecture.md's rooms table names every module of the package, and no module that is gone."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("## Rooms"):]
    table = table[: table.index("\n## ", 4)]
    documented = set()
    for row in re.findall(r"^\| (.+?) \|", table, re.M):
        documented.update(re.findall(r"`([a-z0-9_.]+)`", row))
    modules = {room_of(m) for m in import_graph()} - {"stackwatch", "probes", "__main__", "_bundle", "demo.fakealgod"}
    assert sorted(modules - documented) == []
    assert sorted(documented - modules) == []


def test_the_readme_module_table_matches_the_tree():
    """README's "How it works" table names every module file of the package and no file that is gone."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## How it works"):]
    section = section[: section.index("\n## ", 4)]
    named = set()
    for row in re.findall(r"^\|.*\|$", section, re.M):
        named.update(re.findall(r"`([a-z0-9_/]+\.py|[a-z]+/)`", row))
    # a bare "jsonapi.py" beside "probes/http.py" means probes/jsonapi.py
    files = {str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if p.name not in ("__init__.py", "__main__.py", "_bundle.py")}
    files = {f for f in files if not f.startswith("demo/")} | {"demo/"}
    resolved = {n if n in files or n.endswith("/") else (f"probes/{n}" if f"probes/{n}" in files else n) for n in named}
    assert sorted(files - resolved) == []
    assert sorted(resolved - files) == []


def test_no_module_level_mutable_state_in_probes():
    """Kinds keep their state in a KindState owned by the exporter, not in module globals."""
    found = []
    for path in (PKG / "probes").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign | ast.AnnAssign):
                value = node.value
                empty = (isinstance(value, ast.Dict) and not value.keys) or (
                    isinstance(value, ast.List | ast.Set) and not value.elts)  # filled at run time
                made = isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) in (
                    "ThreadPoolExecutor", "Lock", "RLock", "dict", "list", "set", "defaultdict", "OrderedDict")
                names = [t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                         if isinstance(t, ast.Name)]
                if names == ["FAMILIES"] and path.name == "base.py":
                    continue  # filled once at import by the Family declarations in code: a table, not state
                if empty or made:
                    found.append(f"{path.name}:{node.lineno}")
    assert found == []


def test_wheel_works_outside_the_checkout(tmp_path):
    """Build the wheel, install it (without the checkout on the path) and use the bundle from it."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("stackwatch-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def sw(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stackwatch", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=120)

    where = subprocess.run([sys.executable, "-c", "import stackwatch, stackwatch.bundle as b; "
                            "print(stackwatch.__file__); print(b.bundle_dir('prometheus'))"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=60)
    lines = where.stdout.split()
    assert lines and all(line.startswith(str(site)) for line in lines), where.stdout + where.stderr
    out = sw("bundle", "bundle")
    assert out.returncode == 0, out.stderr
    checked = sw("check-config", "bundle/examples/stackwatch.yml")
    assert checked.returncode == 0 and "OK," in checked.stdout, checked.stdout + checked.stderr
    rules = sorted(str(p) for p in (work / "bundle" / "prometheus" / "rules").glob("*.yml"))
    assert len(rules) == 2
    promtool = subprocess.run([require_binary("promtool"), "check", "rules", *rules], capture_output=True, text=True,
                              timeout=60)
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr
    dashboards = list((work / "bundle" / "grafana" / "dashboards").glob("*.json"))
    assert len(dashboards) >= 6


def test_content_negotiation_follows_q_values_and_escaping():
    from stackwatch.exposition import negotiate

    # What Prometheus 3 sends by default (scrape_protocols order), and the 2.x default.
    prom3 = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
             "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
             "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
    assert negotiate(prom3).content_type == (
        "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8")
    assert negotiate("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5"
                     ).content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert negotiate("").openmetrics is False
    assert negotiate("application/json").openmetrics is False
    assert negotiate("application/openmetrics-text;q=0,text/plain").openmetrics is False
    assert negotiate("application/openmetrics-text;version=9.9.9").openmetrics is False
    assert negotiate("application/openmetrics-text;escaping=underscores").escaping == "underscores"
    assert negotiate("application/openmetrics-text;escaping=bogus").escaping is None


def test_the_documented_accept_table_is_what_is_served():
    from stackwatch.exposition import negotiate

    rows = re.findall(r"^\| (.+?) \| `(.+?)` \|$", (ROOT / "docs" / "exposition.md").read_text(), re.M)
    assert len(rows) >= 8
    for accept, served in rows:
        header = "" if accept == "(none)" else accept.split("`")[1]
        assert negotiate(header).content_type == served, accept


def private_uses(sources: dict[str, str] | None = None) -> list[str]:
    """Names starting with one underscore taken from another stackwatch module: imported by name
    (``from stackwatch.x import _y``) or reached through the module (``x._y``)."""
    if sources is None:
        sources = {module_name(p): p.read_text() for p in PKG.rglob("*.py")}
    modules = set(sources)
    out = []
    for name, source in sources.items():
        tree = ast.parse(source, name)
        aliases: dict[str, str] = {}  # local name -> stackwatch module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stackwatch"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if full in modules:
                        aliases[a.asname or a.name] = full
                    elif a.name.startswith("_") and not a.name.startswith("__"):
                        out.append(f"{name} imports {node.module}.{a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in modules and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != name):
                out.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    return sorted(set(out))


def test_no_module_uses_another_modules_private_names():
    assert private_uses() == []
    # The check does catch both forms:
    fake = {"stackwatch.a": "def _x(): pass\n",
            "stackwatch.b": "from stackwatch import a as sp\nfrom stackwatch.a import _x\nsp._x()\n"}
    assert private_uses(fake) == ["stackwatch.b imports stackwatch.a._x", "stackwatch.b uses stackwatch.a._x"]
