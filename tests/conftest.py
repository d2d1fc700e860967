"""Fixtures that more than one test file uses: ``ssh_hosts``, a maker of SSH test hosts
(``tests/sshd_hosts.py``), and ``wheel_cache``, the ``pxq deploy`` wheelhouses of a session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sshd_hosts import SshHostsMaker, make_ssh_hosts


@pytest.fixture
def ssh_hosts(tmp_path: Path) -> Iterator[SshHostsMaker]:
    """``ssh_hosts(n)`` or ``ssh_hosts(names=[...])``: a room of hosts, each running its own
    sshd; skipped where they cannot be made; torn down always (``tests/sshd_hosts.py``)."""
    with make_ssh_hosts(tmp_path) as make:
        yield make


@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheelhouse cache for the session's ``pxq deploy`` tests (``--wheel-cache``): a
    release is built once (a minute or so), whichever test needs it first."""
    return tmp_path_factory.mktemp("wheels")
