"""SSH test hosts (``net.jepsen.sshd``): rooms whose hosts each run an OpenSSH server, reached
with asyncssh from the root namespace.

The first tests run anywhere (the files a room would be made of, a directory refused). The others need root,
``ip``, ``nft`` and Debian ``openssh-server`` and skip without them, naming what is missing
(the ``ssh_hosts`` fixture, ``tests/sshd_hosts.py``): root logs into every host with the
room's key and sees the host's own address; a wrong key and a host key not in known_hosts are
refused; a host cut from the client fails a login within its timeout and drops an established
connection within two keepalives; teardown leaves no process and no room, also after a failed
``up``; the manual tool's ``ssh`` line works. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import time
from pathlib import Path

import asyncssh
import pytest

from net.jepsen import sshd as sshd_module
from net.jepsen.hosts import Hosts, HostsError, host_of
from net.jepsen.sshd import SshHost, SshHosts, main, sshd_config
from tests.sshd_hosts import SshHostsMaker, connect, needs_sshd

pytestmark = pytest.mark.xdist_group("real-clusters")

TIMEOUT_S = 10.0


def unmade(root: Path, names: list[str], room: int = 7) -> SshHosts:
    """The ``SshHosts`` of a room that was never made (paths and names only)."""
    hosts = [host_of(room, i, n, root) for i, n in enumerate(names)]
    return SshHosts(Hosts(room, hosts, root))


# -- the files of a room (anywhere) -------------------------------------------------------------


def directives(config: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in config.splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split(None, 1)
            found.setdefault(key, []).append(value)
    return found


def test_sshd_config_listens_on_the_host_address_only_and_lets_root_in_with_the_key_only(
    tmp_path: Path,
) -> None:
    ssh = unmade(tmp_path, ["a", "b"])
    host = ssh.host("b")
    conf = directives(sshd_config(host, ssh.public_key))
    assert conf["ListenAddress"] == ["10.231.7.3"] and conf["Port"] == ["22"]
    assert conf["HostKey"] == [str(tmp_path / "b" / "sshd" / "ssh_host_ed25519_key")]
    assert conf["PidFile"] == [str(tmp_path / "b" / "sshd" / "sshd.pid")]
    assert conf["AuthorizedKeysFile"] == [str(tmp_path / "_ssh" / "id_ed25519.pub")]
    assert conf["PermitRootLogin"] == ["prohibit-password"]
    assert conf["AllowUsers"] == ["root"]
    for off in ("PasswordAuthentication", "KbdInteractiveAuthentication", "UsePAM", "StrictModes"):
        assert conf[off] == ["no"], off
    # Every host has its own files and base directory.
    a = ssh.host("a")
    assert a.base_dir != host.base_dir and a.base_dir.parent == tmp_path / "a"
    assert len({h.config for h in ssh.hosts.values()}) == 2


def test_the_ssh_line_verifies_the_host_key_against_the_room_known_hosts(tmp_path: Path) -> None:
    ssh = unmade(tmp_path, ["a"])
    argv = ssh.ssh_argv("a")
    assert argv[0] == "ssh" and argv[-1] == "root@10.231.7.2"
    assert argv[argv.index("-i") + 1] == str(tmp_path / "_ssh" / "id_ed25519")
    options = [argv[i + 1] for i, word in enumerate(argv) if word == "-o"]
    assert f"UserKnownHostsFile={tmp_path / '_ssh' / 'known_hosts'}" in options
    assert "StrictHostKeyChecking=yes" in options
    assert shlex.split(ssh.ssh_command("a")) == argv


def test_a_room_directory_sshd_config_cannot_hold_is_refused_before_anything_is_made(
    tmp_path: Path,
) -> None:
    with pytest.raises(HostsError, match="sshd_config"):
        SshHosts.up(["a"], tmp_path / "with space")
    assert not (tmp_path / "with space").exists()


# -- real hosts ---------------------------------------------------------------------------------


def run_in(ssh: SshHosts, name: str, command: str) -> str:
    async def main() -> str:
        async with await connect(ssh, name) as conn:
            done = await conn.run(command, check=True, timeout=TIMEOUT_S)
        return str(done.stdout)

    return asyncio.run(main())


def test_root_logs_into_every_host_with_the_room_key_and_sees_its_own_address(
    ssh_hosts: SshHostsMaker, tmp_path: Path
) -> None:
    ssh = ssh_hosts(3)
    addresses = [h.address for h in ssh.hosts.values()]
    assert addresses == [f"10.231.{ssh.room}.{i}" for i in (2, 3, 4)]
    assert ssh.known_hosts.read_text(encoding="utf-8").count("ssh-ed25519") == 3
    for path in (
        ssh.key,
        ssh.public_key,
        ssh.known_hosts,
        *(h.host_key for h in ssh.hosts.values()),
    ):
        assert path.stat().st_mode & 0o777 == 0o600, path

    payload = tmp_path / "payload"
    payload.write_bytes(bytes(range(256)) * 1000)

    async def main() -> dict[str, tuple[str, str]]:
        async def one(host: SshHost) -> tuple[str, str]:
            async with await connect(ssh, host.name) as conn:
                addr = await conn.run("ip -4 -o addr show", check=True, timeout=TIMEOUT_S)
                # The base directory is the host's own, and the files are shared with the
                # root namespace (one mount namespace).
                touch = f"echo {host.name} > {shlex.quote(str(host.base_dir / 'mark'))} && id -u"
                who = await conn.run(touch, check=True, timeout=TIMEOUT_S)
                # SFTP (sshd's internal-sftp) carries files, as a deploy's wheelhouse.
                async with conn.start_sftp_client() as sftp:
                    await sftp.put(str(payload), str(host.base_dir / "payload"))
            return str(addr.stdout), str(who.stdout).strip()

        hosts = list(ssh.hosts.values())
        results = await asyncio.gather(*(one(h) for h in hosts))
        return {h.name: r for h, r in zip(hosts, results, strict=True)}

    seen = asyncio.run(main())
    for name, (addr_out, uid) in seen.items():
        host = ssh.host(name)
        inet = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", addr_out)
        assert sorted(inet) == sorted(["127.0.0.1", host.address]), (name, addr_out)
        assert uid == "0"
        assert (host.base_dir / "mark").read_text(encoding="utf-8") == f"{name}\n"
        assert (host.base_dir / "payload").read_bytes() == payload.read_bytes()


def test_a_wrong_key_and_an_unknown_host_key_are_refused(
    ssh_hosts: SshHostsMaker, tmp_path: Path
) -> None:
    ssh = ssh_hosts(2)
    wrong_key = tmp_path / "wrong_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(wrong_key))
    lines = ssh.known_hosts.read_text(encoding="utf-8").splitlines()
    h0, h1 = ssh.host("h0"), ssh.host("h1")
    without_h1 = tmp_path / "known_hosts_without_h1"
    without_h1.write_text(
        "".join(f"{line}\n" for line in lines if not line.startswith(f"{h1.address} ")),
        encoding="utf-8",
    )
    # h1's address with h0's host key: what a host whose key changed (or an impostor) looks like.
    swapped = tmp_path / "known_hosts_swapped"
    h0_key = next(line for line in lines if line.startswith(f"{h0.address} ")).split(None, 1)[1]
    swapped.write_text(f"{h1.address} {h0_key}\n", encoding="utf-8")

    async def main() -> None:
        with pytest.raises(asyncssh.PermissionDenied):
            await connect(ssh, "h0", key=wrong_key)
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            await connect(ssh, "h1", known_hosts=without_h1)
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            await connect(ssh, "h1", known_hosts=swapped)
        async with await connect(ssh, "h0", known_hosts=without_h1) as conn:  # h0 is in it
            assert (await conn.run("true", timeout=TIMEOUT_S)).exit_status == 0

    asyncio.run(main())
    assert "Accepted publickey for root" in ssh.host("h0").log.read_text(encoding="utf-8")


def test_a_host_cut_from_the_client_fails_logins_in_bounded_time_and_drops_connections(
    ssh_hosts: SshHostsMaker,
) -> None:
    ssh = ssh_hosts(2)
    timeout_s = 1.5
    keepalive_s = 0.5

    async def main() -> tuple[float, float, str]:
        async with await connect(ssh, "h0", keepalive_s=keepalive_s) as established:
            await asyncio.to_thread(ssh.net.cut_client, "h0")
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await connect(ssh, "h0", timeout_s=timeout_s)
            login_s = time.monotonic() - started
            # Two keepalives unanswered: asyncssh closes the established connection.
            started = time.monotonic()
            await asyncio.wait_for(established.wait_closed(), TIMEOUT_S)
            dropped_s = time.monotonic() - started
        # The other host still answers; after a heal, h0 does again.
        async with await connect(ssh, "h1") as conn:
            assert (await conn.run("true", timeout=TIMEOUT_S)).exit_status == 0
        await asyncio.to_thread(ssh.net.heal)
        async with await connect(ssh, "h0") as conn:
            hostname = await conn.run("ip -4 -o addr show", check=True, timeout=TIMEOUT_S)
        return login_s, dropped_s, str(hostname.stdout)

    login_s, dropped_s, after_heal = asyncio.run(main())
    assert timeout_s <= login_s < timeout_s + 2.0
    assert dropped_s < 3 * keepalive_s + 2.0
    assert ssh.host("h0").address in after_heal
    assert ssh.net.client_cuts == frozenset()


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def leftovers(root: Path) -> list[str]:
    """What of the room made under ``root`` still exists: a link whose alias names it (the
    bridge), a process whose command line does (an sshd). By the directory, not the room
    number: another test may claim the number as soon as it is free."""
    root = root.resolve()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    found = [line for line in links.stdout.splitlines() if f"dir={root}" in line]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(root).encode() in arg for arg in argv) and not gone(int(cmdline.parent.name)):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


@needs_sshd
def test_teardown_kills_every_sshd_and_what_sessions_left_running(tmp_path: Path) -> None:
    with SshHosts.up(["a", "b"], tmp_path / "room") as ssh:
        sshd_pids = [pid for n in ssh.hosts if (pid := ssh.sshd_pid(n)) is not None]
        assert len(sshd_pids) == 2
        # A process a session leaves behind, detached from it (as a deployed node would be).
        detached = run_in(ssh, "a", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!")
        sleeper = int(detached.strip())
        assert not gone(sleeper)
        assert leftovers(tmp_path / "room")  # the test sees a live room
    assert all(gone(pid) for pid in [*sshd_pids, sleeper])
    assert leftovers(tmp_path / "room") == []
    assert not any(h.pid_file.exists() for h in ssh.hosts.values())
    ssh.teardown()  # idempotent


@needs_sshd
def test_an_up_whose_sshd_does_not_start_removes_everything_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(host: SshHost, authorized_keys: Path) -> str:
        return sshd_config(host, authorized_keys) + "NoSuchOption yes\n"

    monkeypatch.setattr(sshd_module, "sshd_config", broken)
    with pytest.raises(HostsError, match="NoSuchOption") as caught:
        SshHosts.up(["a"], tmp_path / "room")
    assert "sshd of host a exited" in str(caught.value)
    assert not (tmp_path / "room" / "hosts.json").exists()
    assert leftovers(tmp_path / "room") == []


@needs_sshd
def test_the_manual_tool_prints_an_ssh_line_that_logs_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    room_dir = tmp_path / "manual"
    assert main(["up", "2", str(room_dir)]) == 0
    try:
        out = capsys.readouterr().out
        login = next(line for line in out.splitlines() if line.startswith("login "))
        room = int(re.match(r"room (\d+):", out).group(1))  # type: ignore[union-attr]
        assert f"h1: 10.231.{room}.3:22  base {room_dir.resolve() / 'h1' / 'base'}" in out
        assert f"known_hosts  {room_dir.resolve() / '_ssh' / 'known_hosts'}" in out
        done = subprocess.run(
            [*shlex.split(login.removeprefix("login")), "ip -4 -o addr show"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    finally:
        assert main(["down", str(room_dir)]) == 0
    assert done.returncode == 0, done.stderr
    assert f"inet 10.231.{room}.2/" in done.stdout
    assert leftovers(room_dir) == []
    assert main(["down", str(room_dir)]) == 2  # nothing left to remove
