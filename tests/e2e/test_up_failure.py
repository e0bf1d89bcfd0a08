"""`ops up` that cannot come up healthy: it fails naming each process, with its log.

The tiny account is configured with an account number the home's demo tiny keys do not
belong to, so every tiny role refuses to run (invariant 5) and never heartbeats. Before
`ops up`, `ops db migrate` leaves an embedded Postgres running under pg_ctl, which `ops up`
must hand over to supervisord (and `ops down` must stop).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ops.store import embedded
from tests.e2e.conftest import ROOT, make_home, tear_down

pytestmark = pytest.mark.timeout(180)


def test_up_names_the_processes_that_did_not_report() -> None:
    home, _port, environ, env = make_home(
        lambda text: text.replace("[accounts.tiny]\n", "[accounts.tiny]\n"
                                  'expected_account_number = "PASIM0000009"\n'))

    def ops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ops", *args], capture_output=True,
                              text=True, env=environ, timeout=120, cwd=ROOT)

    try:
        migrated = ops("db", "migrate")
        assert migrated.returncode == 0, migrated.stderr
        pg_ctl_pid = embedded.for_env(env).postmaster_pid()
        assert pg_ctl_pid is not None  # left running by `ops db migrate`

        up = ops("up", "--demo", "--timeout", "15")
        assert up.returncode == 1, up.stdout + up.stderr
        err = up.stderr
        named = set(re.findall(r"^  (\S+): [A-Z-]+: ", err, re.MULTILINE))
        assert named == {"tiny:tiny-stream", "tiny:tiny-dispatcher",
                         "tiny:tiny-position-manager"}, err
        assert "did not report within 15s" in err
        assert "PASIM0000009" in err  # the end of the role's own log says why
        assert "supervisorctl -c" in err and "ops down" in err
        # supervisord owns Postgres now: the pg_ctl one was stopped and replaced.
        now = embedded.for_env(env).postmaster_pid()
        assert now is not None and now != pg_ctl_pid

        status = ops("status")
        assert status.returncode == 1, status.stdout
        assert "DEGRADED" in status.stdout and "tiny-dispatcher" in status.stdout
    finally:
        tear_down(env, environ)
    assert embedded.for_env(env).postmaster_pid() is None
