"""SSH test hosts for tests: ``make_ssh_hosts`` (behind the ``ssh_hosts`` fixture of
``tests/conftest.py``) and ``connect``, an asyncssh login that verifies host keys.

``ssh_hosts`` is a maker: ``ssh_hosts(3)`` (hosts ``h0``, ``h1``, ``h2``) or
``ssh_hosts(names=["s0", "s1"])`` makes a room of hosts, each running its own sshd
(``net.jepsen.sshd.SshHosts``: addresses ``ssh.hosts[name].address``, base directories
``ssh.hosts[name].base_dir``, the room's key ``ssh.key``, ``ssh.known_hosts``). Every room made
is torn down when the test ends, also when it failed, and the test errors if anything of it
is left. Without root, ``ip``, ``nft`` or ``/usr/sbin/sshd`` the test is skipped, naming what
is missing. A test file that uses it marks itself
``pytestmark = pytest.mark.xdist_group("real-clusters")``: rooms and fixed ports share one
pytest-xdist worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

from net.jepsen.sshd import SshHosts, missing_tools

if TYPE_CHECKING:
    import asyncssh

MISSING = missing_tools()
SKIP_REASON = f"SSH test hosts need: {', '.join(MISSING)}"
needs_sshd = pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)
CONNECT_TIMEOUT_S = 10.0


class SshHostsMaker(Protocol):
    """What the ``ssh_hosts`` fixture yields."""

    def __call__(self, count: int = 3, *, names: Sequence[str] | None = None) -> SshHosts: ...


@contextlib.contextmanager
def make_ssh_hosts(root: Path) -> Iterator[SshHostsMaker]:
    """A maker of SSH host rooms under ``root`` (``root/ssh<i>``); skips the test if this
    machine cannot make them; tears every room down on the way out, the last made first."""
    if MISSING:
        pytest.skip(SKIP_REASON)
    made: list[SshHosts] = []

    def make(count: int = 3, *, names: Sequence[str] | None = None) -> SshHosts:
        chosen = list(names) if names is not None else [f"h{i}" for i in range(count)]
        ssh = SshHosts.up(chosen, root / f"ssh{len(made)}")
        made.append(ssh)
        return ssh

    try:
        yield make
    finally:
        with contextlib.ExitStack() as stack:  # every room is torn down even if one fails
            for ssh in made:
                stack.callback(ssh.teardown)


async def connect(
    ssh: SshHosts,
    name: str,
    *,
    key: Path | None = None,
    known_hosts: Path | None = None,
    timeout_s: float = CONNECT_TIMEOUT_S,
    keepalive_s: float = 0,
) -> asyncssh.SSHClientConnection:
    """Log into host ``name`` as root with the room's key (or ``key``), checking its host key
    against the room's known_hosts (or ``known_hosts``); nothing of ``~/.ssh`` or an agent
    is used. ``keepalive_s`` > 0: the connection closes after two unanswered keepalives."""
    # Imported here, not at the top: conftest.py imports this module for every test file,
    # and asyncssh warns on import (cryptography's DSA deprecation).
    import asyncssh

    host = ssh.host(name)
    return await asyncssh.connect(
        host.address,
        port=host.port,
        username=ssh.user,
        client_keys=[str(key or ssh.key)],
        known_hosts=str(known_hosts or ssh.known_hosts),
        agent_path=None,
        config=[],
        connect_timeout=timeout_s,
        keepalive_interval=keepalive_s,
        keepalive_count_max=2,
    )
