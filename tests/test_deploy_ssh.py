"""net.deploy.ssh on real sshd hosts: logins verified against known_hosts (an unknown host
refused, or with accept-new its key appended and then verified; a changed key refused even
with accept-new), a wrong key, an unreachable host, commands with a bound, files written
0600 and read back."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from net.deploy.ssh import (
    AuthFailed,
    CommandFailed,
    HostKeyMismatch,
    HostKeys,
    HostKeyUnknown,
    HostUnreachable,
    session,
)
from net.jepsen.sshd import SshHosts
from pxq.config import HostConfig
from tests.sshd_hosts import SshHostsMaker

pytestmark = pytest.mark.xdist_group("real-clusters")


def host_config(ssh: SshHosts, name: str, **changes: object) -> HostConfig:
    h = ssh.host(name)
    fields: dict[str, object] = {
        "name": name,
        "address": h.address,
        "zone": "z0",
        "ssh_user": ssh.user,
        "ssh_port": h.port,
        "ssh_key": str(ssh.key),
        "base_dir": str(h.base_dir),
    }
    fields.update(changes)
    return HostConfig(**fields)  # type: ignore[arg-type]


def test_login_runs_commands_and_writes_private_files(ssh_hosts: SshHostsMaker) -> None:
    ssh = ssh_hosts(1)
    host = host_config(ssh, "h0")
    target = f"{host.base_dir}/secret.toml"

    async def go() -> None:
        async with session(host, HostKeys(ssh.known_hosts)) as s:
            done = await s.run(["echo", "hello world"])
            assert done.stdout == "hello world\n"
            with pytest.raises(CommandFailed, match=r"h0 \(10\.231\..*exited 3: oops"):
                await s.run("echo oops >&2; exit 3")
            with pytest.raises(CommandFailed, match=r"did not finish within 0\.3 s"):
                await s.run(["sleep", "5"], timeout_s=0.3)
            await s.write_file(target, b"token = 1\n")
            assert await s.read_file(target) == b"token = 1\n"
            assert await s.read_file(f"{host.base_dir}/absent") is None
            await s.make_dirs(f"{host.base_dir}/a/b")

    asyncio.run(go())
    # The test hosts share this machine's file system: the file is where the host wrote it.
    assert stat.S_IMODE(Path(target).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(host.base_dir, "a", "b").stat().st_mode) == 0o700


def test_unknown_host_refused_unless_accept_new_then_verified(
    ssh_hosts: SshHostsMaker, tmp_path: Path
) -> None:
    ssh = ssh_hosts(2)
    known = tmp_path / "kh" / "known_hosts"
    h0 = host_config(ssh, "h0")

    async def login(keys: HostKeys) -> str:
        async with session(h0, keys) as s:
            return (await s.run(["hostname", "-I"])).stdout

    with pytest.raises(HostKeyUnknown, match="no known_hosts file"):
        asyncio.run(login(HostKeys(known)))
    known.parent.mkdir()
    known.write_text("")
    with pytest.raises(HostKeyUnknown, match=r"h0 \(.*host key unknown.*accept-new-host-keys"):
        asyncio.run(login(HostKeys(known)))
    keys = HostKeys(known, accept_new=True)
    assert h0.address in asyncio.run(login(keys))
    assert keys.added == ["h0"]
    line = known.read_text()
    assert line.startswith(f"{h0.address} ssh-ed25519 ")
    # The appended key is what the room's known_hosts has for the host.
    assert line.split()[2] in ssh.known_hosts.read_text()
    again = HostKeys(known, accept_new=True)
    asyncio.run(login(again))
    assert again.added == []
    assert known.read_text() == line
    # Without accept-new now, the entry verifies.
    asyncio.run(login(HostKeys(known)))


def test_changed_host_key_refused_even_with_accept_new(
    ssh_hosts: SshHostsMaker, tmp_path: Path
) -> None:
    ssh = ssh_hosts(2)
    h0, h1 = host_config(ssh, "h0"), host_config(ssh, "h1")
    room = ssh.known_hosts.read_text().splitlines()
    h1_key = next(line for line in room if line.split()[0] == h1.address).split(None, 1)[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"{h0.address} {h1_key}\n")  # h0's entry holds h1's key

    async def login() -> None:
        async with session(h0, HostKeys(known, accept_new=True)):
            pass

    with pytest.raises(HostKeyMismatch, match=r"h0 \(.*host key mismatch"):
        asyncio.run(login())
    assert known.read_text() == f"{h0.address} {h1_key}\n"


def test_wrong_key_and_unreachable_host_named(ssh_hosts: SshHostsMaker, tmp_path: Path) -> None:
    ssh = ssh_hosts(1)
    import asyncssh

    wrong = tmp_path / "wrong_key"
    wrong.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    wrong.chmod(0o600)
    bad_key = host_config(ssh, "h0", ssh_key=str(wrong))
    closed_port = host_config(ssh, "h0", ssh_port=2222)

    async def login(host: HostConfig, keys: HostKeys) -> None:
        async with session(host, keys, timeout_s=3):
            pass

    with pytest.raises(AuthFailed, match=rf"h0 \(.*authentication failed as root with {wrong}"):
        asyncio.run(login(bad_key, HostKeys(ssh.known_hosts)))
    with pytest.raises(HostUnreachable, match=r"h0 \(.*:2222\): unreachable"):
        asyncio.run(login(closed_port, HostKeys(ssh.known_hosts)))
    with pytest.raises(HostUnreachable, match=r"h0 \(.*:2222\): unreachable"):
        asyncio.run(login(closed_port, HostKeys(ssh.known_hosts, accept_new=True)))
