"""The demo's identity per OPS_HOME: its simulator's port, account numbers and keys.

Every home that runs `ops up --demo` gets its own random account numbers and keys,
generated once. The numbers and the port the home's simulator runs on are kept in
`$OPS_HOME/demo.json`; the keys only in the demo's secret source (the file credential
provider's `$OPS_HOME/secrets.json`, mode 0600), where the roles read them and the
simulator (`ops sim --accounts demo.json --secrets secrets.json`) takes them from; they are
never printed or logged. So another stack's simulator answers this one's keys with 401,
and the account-number binding refuses a foreign account.

Readers: `ops.runtime.config` takes the port and numbers for accounts marked `simulator = true`;
`ops.commands.stack` writes both files; `ops sim` serves them. Nothing here imports the simulator.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "demo.json"
UNGENERATED = "DEMO-NOT-GENERATED"
_ALNUM = string.ascii_uppercase + string.digits


def ungenerated(name: str) -> str:
    """Account number of simulator account `name` in a home that never ran `ops up
    --demo`: no simulator serves it, so a role bound to it refuses to trade."""
    return f"{UNGENERATED}-{name.replace('_', '-')}"


class DemoIdentityError(Exception):
    """A demo identity or secrets file is unreadable or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class DemoAccount:
    name: str
    account_number: str


@dataclass(frozen=True, slots=True)
class DemoIdentity:
    port: int | None
    accounts: tuple[DemoAccount, ...]

    def account(self, name: str) -> DemoAccount | None:
        return next((a for a in self.accounts if a.name == name), None)


def identity_path(home: Path) -> Path:
    return home / FILE_NAME


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def generate_number() -> str:
    """Alpaca-shaped (PA + 10); unique with overwhelming odds."""
    return f"PA{_random(10)}"


def generate_keys() -> tuple[str, str]:
    """A throwaway simulator key pair, Alpaca-shaped: (PK + 18, 40 characters)."""
    return f"PK{_random(18)}", secrets.token_urlsafe(30)[:40]


def read_identity(home: Path) -> DemoIdentity | None:
    """This home's demo identity, or None if `ops up --demo` never ran here."""
    return read_identity_file(identity_path(home))


def read_identity_file(path: Path) -> DemoIdentity | None:
    """The identity kept in `path`, or None if there is no such file."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DemoIdentityError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = json.loads(raw)
        port = doc.get("port")
        accounts = tuple(DemoAccount(str(a["name"]), str(a["account_number"]))
                         for a in doc["accounts"])
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError("port")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DemoIdentityError(
            f"{path}: not a demo identity file ({type(exc).__name__}); remove it and run "
            "`ops up --demo` again to generate a new one") from None
    return DemoIdentity(port, accounts)


def _write(path: Path, identity: DemoIdentity) -> None:
    doc = {"port": identity.port,
           "accounts": [{"name": a.name, "account_number": a.account_number}
                        for a in identity.accounts]}
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_identity(home: Path, names: Iterable[str], port: int | None) -> DemoIdentity:
    """This home's identity with an account number for each of `names` (missing ones
    generated, existing ones kept: generated once per home) and `port` recorded when
    given."""
    current = read_identity(home) or DemoIdentity(None, ())
    accounts = list(current.accounts)
    for name in names:
        if current.account(name) is None:
            accounts.append(DemoAccount(name, generate_number()))
    updated = DemoIdentity(port if port is not None else current.port, tuple(accounts))
    if updated != current:
        _write(identity_path(home), updated)
    return updated


def keys_by_account(secrets_path: Path) -> dict[str, tuple[str, str]]:
    """(api_key, api_secret) by account name, from a file credential provider's file
    (`{secret_id: {api_key, api_secret, account_name}}`); {} when there is none."""
    try:
        doc = json.loads(secrets_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DemoIdentityError(f"{secrets_path}: unreadable secrets file "
                                f"({type(exc).__name__})") from None
    out: dict[str, tuple[str, str]] = {}
    for entry in doc.values() if isinstance(doc, dict) else ():
        if isinstance(entry, dict) and all(
                isinstance(entry.get(k), str) for k in ("api_key", "api_secret", "account_name")):
            out[entry["account_name"]] = (entry["api_key"], entry["api_secret"])
    return out


def served_accounts(identity: DemoIdentity, secrets_path: Path
                    ) -> list[tuple[str, str, str, str]]:
    """(name, account number, key id, secret) of each identity account, for its simulator."""
    keys = keys_by_account(secrets_path)
    missing = [a.name for a in identity.accounts if a.name not in keys]
    if missing:
        raise DemoIdentityError(f"{secrets_path}: no keys for demo account(s) "
                                f"{', '.join(missing)} (`ops up --demo` writes them)")
    return [(a.name, a.account_number, *keys[a.name]) for a in identity.accounts]
