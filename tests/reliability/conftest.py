"""Fixtures for the reliability tests: re-exported from the role and dispatcher tests.

`sim`, `large_broker` and `role_env` come from tests/roles/conftest.py (a real simulator,
a fresh migrated database, a test config and 0600 secrets); `store` and `rig` from
tests/roles/test_dispatcher.py (an in-process Dispatcher for `tiny` on real Postgres and
the real simulator). Imported, not copied, so both suites exercise the same rig.
"""

from __future__ import annotations

from tests.roles.conftest import large_broker, role_env, sim  # noqa: F401
from tests.roles.test_dispatcher import rig, store  # noqa: F401
