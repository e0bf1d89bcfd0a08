"""No secret value anywhere after a real demo run (docs/architecture.md, Credentials; issue 7.4).

`ops up --demo` (real supervisord, embedded Postgres, simulator, every role) trades on
both accounts; along the way the run is made to exercise error paths (a hostile signal
by plain SQL, `ops doctor`, `ops signal add` with a bad value, a config edit that fails
validation). Then every place a secret could leak is searched for the api keys and
secrets of both accounts (whole values, and 12-character pieces of them, so a truncated
print is caught too):
- every file under OPS_HOME except secrets.json itself, as bytes: logs, supervisord's
  rendered config, the SQLite outage buffer and alert outbox (+ WAL), the embedded
  Postgres data directory and its WAL;
- every text / varchar / json / jsonb column of every table in Postgres
  (information_schema);
- the output of `ops status --json`, `ops dash --once`, `ops gaps`, `ops doctor`;
- the command lines and environments of every process supervisord runs.
Also: supervisord is controlled only over a unix socket in a 0700 directory, never TCP.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.store.embedded import embedded_url
from ops.supervise.supervisor import SupervisorClient, socket_path
from tests.e2e.conftest import Stack, running_demo

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_demo() as stack:
        yield stack


def secret_values(stack: Stack) -> dict[str, str]:
    data = json.loads((stack.env.home / "secrets.json").read_text())
    out = {}
    for secret_id, entry in data.items():
        out[f"{secret_id} api_key"] = entry["api_key"]
        out[f"{secret_id} api_secret"] = entry["api_secret"]
    assert len(out) == 4 and all(len(v) >= 16 for v in out.values()), "demo secrets"
    return out


def needles(secrets: dict[str, str]) -> dict[bytes, str]:
    """Whole values and 12-char windows (stride 4) -> which secret they come from."""
    out: dict[bytes, str] = {}
    for what, value in secrets.items():
        out[value.encode()] = what
        for i in range(0, len(value) - 11, 4):
            out[value[i:i + 12].encode()] = f"{what} (chars {i}-{i + 11})"
    return out


class Scanner:
    def __init__(self, secrets: dict[str, str]) -> None:
        self._needles = needles(secrets)
        self._re = re.compile(b"|".join(re.escape(n) for n in sorted(self._needles,
                                                                      key=len, reverse=True)))
        self.found: list[str] = []
        self.scanned = 0

    def scan(self, where: str, data: bytes | str) -> None:
        raw = data.encode("utf-8", "backslashreplace") if isinstance(data, str) else data
        self.scanned += 1
        for m in self._re.finditer(raw):
            self.found.append(f"{where}: {self._needles[m.group(0)]}")


def exercise_error_paths(stack: Stack) -> None:
    """Provoke the paths that print and store error text."""
    stack.query("INSERT INTO signals (account, symbol, side, qty) VALUES "
                "('large', 'NVDA', 'buy', 'NaN'), ('tiny', 'ÄPFEL', 'sell', -1), "
                "('ghost', 'NVDA', 'buy', 1)")
    bad = stack.ops("signal", "add", "--account", "tiny", "--symbol", "NVDA", "--side", "buy",
                    "--qty", "-3")
    assert bad.returncode != 0
    config = stack.env.config_path
    good = config.read_text()
    config.write_text(good + "\n[accounts.large.risk]\nmax_qty = -1\n")  # invalid edit
    try:
        stack.poll("the invalid config edit recorded as an incident",
                   lambda: stack.query("SELECT 1 FROM incidents WHERE kind = 'config-invalid'"),
                   timeout_s=30)
    finally:
        config.write_text(good)


def test_no_secret_anywhere_after_a_demo_run(stack: Stack) -> None:
    assert stack.up.returncode == 0, stack.up.stdout + stack.up.stderr
    secrets = secret_values(stack)
    scanner = Scanner(secrets)
    assert stat.S_IMODE((stack.env.home / "secrets.json").stat().st_mode) == 0o600

    def trading() -> bool:
        rows = stack.query("SELECT account, count(*) AS n FROM order_events "
                           "WHERE event = 'fill' GROUP BY account")
        return {r["account"] for r in rows if r["n"] > 0} >= {"large", "tiny"}
    stack.poll("fills on both accounts", trading, timeout_s=60)
    exercise_error_paths(stack)
    stack.poll("the hostile signals decided",
               lambda: not stack.query("SELECT 1 FROM signals WHERE status = 'pending' AND "
                                       "(qty = 'NaN' OR account = 'ghost' OR qty < 0)"),
               timeout_s=30)

    outputs = {}
    for argv in (("status", "--json"), ("dash", "--once"), ("gaps",), ("doctor",),
                 ("signal", "add", "--account", "tiny", "--symbol", "NVDA", "--side", "buy",
                  "--qty", "abc")):
        done = stack.ops(*argv, timeout=90)
        outputs[" ".join(argv)] = done
        scanner.scan(f"`ops {' '.join(argv)}` stdout", done.stdout)
        scanner.scan(f"`ops {' '.join(argv)}` stderr", done.stderr)
    status = json.loads(outputs["status --json"].stdout)
    assert {a["name"] for a in status["accounts"]} >= {"large", "tiny"}
    assert "large" in outputs["dash --once"].stdout, outputs["dash --once"].stderr

    # Every process supervisord runs: command line and environment.
    client = SupervisorClient.for_env(stack.env)
    pids = [p.pid for p in client.processes() if p.pid]
    assert len(pids) >= 8, pids
    for pid in pids:
        for part in ("cmdline", "environ"):
            scanner.scan(f"/proc/{pid}/{part}", Path(f"/proc/{pid}/{part}").read_bytes())

    # Every text-like column of every table.
    cols = stack.query("""SELECT table_name, column_name FROM information_schema.columns
                          WHERE table_schema = 'public' AND data_type IN
                            ('text', 'character varying', 'json', 'jsonb', 'character')""")
    assert len(cols) > 20, cols
    for c in cols:
        table = '"' + c["table_name"].replace('"', '""') + '"'
        col = '"' + c["column_name"].replace('"', '""') + '"'
        for r in stack.query(f"SELECT {col}::text AS v FROM {table} WHERE {col} IS NOT NULL"):
            scanner.scan(f"postgres {c['table_name']}.{c['column_name']}", r["v"])
    rows = stack.query("SELECT count(*) AS n FROM order_events")[0]["n"]
    assert rows > 0

    # Every file under OPS_HOME (the secrets file itself excepted).
    files = 0
    for path in sorted(stack.env.home.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != "secrets.json":
            try:
                data = path.read_bytes()
            except (PermissionError, FileNotFoundError):
                continue  # e.g. a WAL segment recycled under us
            scanner.scan(str(path.relative_to(stack.env.home)), data)
            files += 1
    logs = list(stack.env.log_dir.rglob("*.log"))
    assert len(logs) >= 8 and any(p.suffix in (".sqlite3", ".db") or "buffer" in p.name
                                  for p in stack.env.home.rglob("*")), (logs, files)
    assert scanner.found == [], "\n".join(scanner.found)
    print(f"scanned {scanner.scanned} items ({files} files under OPS_HOME, {len(cols)} "
          f"columns, {len(pids)} processes): no secret found")


def test_the_scanner_finds_a_planted_secret(stack: Stack) -> None:
    """The scan can fail: a secret planted in a log line and a database row is found."""
    secrets = secret_values(stack)
    value = next(iter(secrets.values()))
    scanner = Scanner(secrets)
    scanner.scan("log", f"2026 INFO something key={value[3:17]} more")
    scanner.scan("row", json.dumps({"error": f"auth failed for {value}"}))
    assert len(scanner.found) == 2, scanner.found


def test_supervisord_control_is_a_private_unix_socket(stack: Stack) -> None:
    env = stack.env
    assert stat.S_IMODE(env.run_dir.stat().st_mode) == 0o700
    sock = socket_path(env)
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o077 == 0, oct(st.st_mode)
    assert st.st_uid == os.getuid()
    conf_texts = [p.read_text() for p in env.home.rglob("*.conf")]
    assert conf_texts and not any("inet_http_server" in t for t in conf_texts)
    # No TCP listener belongs to supervisord: its XML-RPC is the unix socket only.
    pid = int((env.run_dir / "supervisord.pid").read_text().split()[0])
    inodes = {os.readlink(f).split("[")[1].rstrip("]")
              for f in Path(f"/proc/{pid}/fd").iterdir()
              if os.readlink(f).startswith("socket:[")}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            assert fields[9] not in inodes, f"supervisord has a TCP socket: {line}"
    assert embedded_url(env).startswith("postgresql://")
