"""A site ledger as its privacy officer creates it (``audit init-ledger``), for tests."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from semiofed.privacy.keys import generate_keypair, load_private_key
from semiofed.privacy.ledger import PrivacyLedger
from semiofed.privacy.ledger_binding import init_ledger

#: Tests bind many state folders to one (module-scoped) synthetic data folder.
TEST_RESET = "tests: another state folder for shared synthetic data"


def officer_key(state: Path) -> Path:
    """The officer key of the site at ``state``: beside STATE, never inside it."""
    path = state.parent / f"officer-{state.name}" / "officer_ed25519.pem"
    if not path.exists():
        generate_keypair(path)
    return path


def officer(state: Path) -> Ed25519PrivateKey:
    return load_private_key(officer_key(state))


def new_ledger(
    state: Path,
    epsilon_max: float = 50.0,
    delta: float = 1e-5,
    accountant: str = "rdp",
    data: Path | None = None,
) -> PrivacyLedger:
    """Create the ledger of ``state`` bound to ``data`` (default: two empty patient folders)."""
    if data is None:
        data = state.parent / f"data-{state.name}"
        for p in ("p-1", "p-2"):
            (data / p).mkdir(parents=True, exist_ok=True)
    init_ledger(state, data, officer_key(state), epsilon_max, delta, accountant, TEST_RESET)
    return PrivacyLedger(state)
