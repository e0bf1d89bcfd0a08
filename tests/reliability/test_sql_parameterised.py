"""SQL is only ever parameterised: no value is formatted into a statement's text.

Every string in ops/ and tui/ that reads as SQL (a SELECT ... FROM, INSERT INTO, UPDATE
... SET, DELETE FROM, CREATE/DROP/ALTER, PRAGMA, LISTEN/NOTIFY, pg_notify, ...) is found
by walking the AST. Plain literals pass. A statement built with an f-string may only
interpolate the names whitelisted below for its file, each of which is checked to be what
the whitelist says (a module-level constant built from literals, a helper of the store's
that joins constant column names, a parameter every caller passes a literal for). `%`
formatting, `.format()` and `+` concatenation of SQL text are refused outright.
The whitelist is exact: a new interpolated name fails this test until someone decides
(here, with a reason) that it is an identifier and never a value.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Case-sensitive on purpose: SQL here is written in upper case; log text ("listen on")
# is not SQL.
SQL = re.compile(r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|"
                 r"\bDELETE\s+FROM\b|\b(CREATE|DROP|ALTER)\s+(TABLE|DATABASE|INDEX|ROLE|USER|"
                 r"SCHEMA|EXTENSION|FUNCTION|TRIGGER)\b|\bPRAGMA\s|\bLISTEN\s|\bNOTIFY\s|"
                 r"pg_notify|\bTRUNCATE\s|\bGRANT\s")

# file -> {interpolated name: why it can only ever be an identifier or a constant}
ALLOWED: dict[str, dict[str, str]] = {
    "ops/store/ops.py": {
        **{c: "module-level tuple of (column, type) string literals" for c in (
            "_EVENT_COLS", "_ORDER_COLS", "_HB_COLS", "_RUN_COLS", "_POS_COLS",
            "_HIST_COLS", "_CTRL_COLS", "_INC_COLS", "_SIG_COLS")},
        **{c: "module-level tuple of column-name string literals" for c in (
            "TRADE_UPDATE_FIELDS", "_TU_SET", "_TU_NUM", "_TU_TS")},
        "_names": "joins the column names of such a tuple",
        "_placeholders": "renders $n::type placeholders for such a tuple",
        "enumerate": "builtin over such a tuple", "range": "builtin", "len": "builtin",
    },
    "ops/store/signals.py": {"_COLUMNS": "module-level string literal of column names"},
    "ops/store/incidents.py": {"_COLUMNS": "module-level string literal of column names"},
    "ops/store/buffer.py": {"BUSY_TIMEOUT_MS": "module-level int literal (PRAGMA takes no "
                                               "parameters)"},
    "ops/store/fills.py": {"TERMINAL_ORDER_STATUSES": "ops.core.models frozenset of string "
                                                      "literals"},
    "ops/notify/alerts.py": {"where": "parameter of Outbox._rows; every caller passes a literal "
                               "(checked below)"},
}
CONSTANTS = {  # (defining file, name): the literal kind it must be
    ("ops/store/signals.py", "_COLUMNS"): str, ("ops/store/buffer.py", "BUSY_TIMEOUT_MS"): int,
    ("ops/store/incidents.py", "_COLUMNS"): str,
    ("ops/core/models.py", "TERMINAL_ORDER_STATUSES"): frozenset,
    **{("ops/store/ops.py", c): tuple for c in ALLOWED["ops/store/ops.py"]
       if c.startswith("_") and c.endswith("_COLS")},
    **{("ops/store/ops.py", c): tuple for c in (
        "TRADE_UPDATE_FIELDS", "_TU_SET", "_TU_NUM", "_TU_TS")},
}


def _sources() -> list[Path]:
    return sorted([*(REPO / "ops").rglob("*.py"), *(REPO / "tui").rglob("*.py")])


def _literal_text(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values
                       if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return ""


def _free_names(expr: ast.AST) -> set[str]:
    """Names an expression reads, minus those its own comprehensions bind."""
    bound = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)
             and isinstance(n.ctx, ast.Store)}
    return {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Load)} - bound


def _scan(rel: str, source: str) -> list[str]:
    out = []
    allowed = ALLOWED.get(rel, {})
    for node in ast.walk(ast.parse(source, rel)):
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.JoinedStr) and SQL.search(_literal_text(node)):
            for v in node.values:
                if isinstance(v, ast.FormattedValue):
                    extra = _free_names(v.value) - set(allowed)
                    if extra:
                        out.append(f"{where}: SQL f-string interpolates {sorted(extra)}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
            literals = all(isinstance(s, ast.Constant) for s in (node.left, node.right))
            if not literals and any(SQL.search(_literal_text(s))
                                    for s in (node.left, node.right)):
                out.append(f"{where}: SQL built with "
                           f"{'%' if isinstance(node.op, ast.Mod) else '+'}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "format" and SQL.search(_literal_text(node.func.value))):
            out.append(f"{where}: SQL built with .format()")
    return out


def test_no_sql_is_built_from_values() -> None:
    found = [v for path in _sources()
             for v in _scan(path.relative_to(REPO).as_posix(), path.read_text())]
    assert found == []


def _module_value(rel: str, name: str) -> ast.expr:
    tree = ast.parse((REPO / rel).read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign):
            targets: list[ast.expr] = [node.target]
            value = node.value
        elif isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            assert value is not None
            return value
    raise AssertionError(f"{name} not assigned at module level in {rel}")


def test_whitelisted_names_are_literal_constants() -> None:
    for (rel, name), kind in CONSTANTS.items():
        value = _module_value(rel, name)
        if kind is frozenset:
            assert isinstance(value, ast.Call) and ast.unparse(value.func) == "frozenset"
            value = value.args[0]
        literal: object = ast.literal_eval(value)  # raises unless built from literals only
        assert isinstance(literal, set if kind is frozenset else kind), (rel, name)
        if isinstance(literal, tuple):  # column names, or (column name, type) pairs
            names = [item if isinstance(item, str) else item[0] for item in literal]
            assert all(isinstance(item, str) or (len(item) == 2 and isinstance(item[1], str))
                       for item in literal), (rel, name)
            assert all(isinstance(c, str) and c.isidentifier() for c in names), (rel, name)


def test_alerts_where_clause_is_always_a_literal() -> None:
    tree = ast.parse((REPO / "ops/notify/alerts.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "_rows"]
    assert calls, "Outbox._rows is no longer called: drop its whitelist entry"
    for c in calls:
        arg = c.args[0]
        parts = [arg] if not isinstance(arg, ast.BinOp) else [arg.left, arg.right]
        assert all(isinstance(p, ast.Constant) and isinstance(p.value, str) for p in parts), \
            ast.unparse(c)


def test_the_scan_catches_a_formatted_value() -> None:
    """The detector itself flags each way of building SQL from a value."""
    bad = ('x = 1\nq = f"SELECT * FROM t WHERE id = {x}"\n'
           'r = "DELETE FROM t WHERE id = %s" % x\n'
           's = "UPDATE t SET a = {}".format(x)\n'
           'u = "INSERT INTO t VALUES (" + str(x) + ")"\n'
           'ok = f"SELECT {_COLUMNS} FROM signals WHERE id = $1"\n')
    found = _scan("ops/store/signals.py", bad)
    assert [f.split(": ", 1)[1] for f in found] == [
        "SQL f-string interpolates ['x']", "SQL built with %", "SQL built with .format()",
        "SQL built with +"], found
