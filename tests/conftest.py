"""Fixtures that more than one test file uses: ``ssh_hosts``, a maker of SSH test hosts
(``tests/sshd_hosts.py``)."""

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
