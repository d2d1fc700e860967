"""``SshHosts``: a room of ``Hosts`` (network namespaces on a bridge) in which every host runs
its own OpenSSH server, so that what deploys over SSH (``pxq deploy``, issue 15) can be tested
against real hosts on one machine.

What ``SshHosts.up(names, root)`` makes, under the room directory ``root``::

    root/hosts.json                   the room (``Hosts``: its number and host names)
    root/_ssh/id_ed25519(.pub)        the room's client key pair, ed25519, 0600; the public key
                                      is every host's authorized key (for root)
    root/_ssh/known_hosts             every host's address with its host key
    root/<name>/sshd/                 the host's sshd: ssh_host_ed25519_key(.pub), sshd_config,
                                      sshd.log (``-E``, and its stdout), sshd.pid
    root/<name>/base/                 the host's base directory (mount namespaces are not
                                      separated: each host gets a directory of its own)

(``_ssh`` cannot be a host's directory: host names start with a letter or a digit.)

Each host runs ``/usr/sbin/sshd -D -f <sshd_config> -E <sshd.log>`` through ``Hosts.run``,
listening on the host's address, port 22 only; root may log in with the room's key and with
nothing else (no password, no PAM, no keyboard-interactive). ``StrictModes no`` because the
room's files live in a test's temporary directory, whose parents sshd would otherwise have
to approve. ``up`` returns once every host's sshd sent its SSH banner on port 22 (bounded by
``READY_TIMEOUT_S``); if one does not, or anything else fails, everything made is torn down
again and the error names the host and ends with its log.

``teardown`` is ``Hosts.teardown``: it SIGKILLs every process in the hosts' namespaces (the
sshds, the sessions they forked and whatever those started), pass after pass until none is
left, removes the namespaces and the bridge, and fails naming whatever survived. A test
keeps it in ``finally`` (the fixture in ``tests/sshd_hosts.py`` does).

Clients verify host keys against ``known_hosts`` (never blindly accept them): asyncssh with
``known_hosts=str(ssh.known_hosts)``, OpenSSH with ``ssh.ssh_command(name)``.

Needs root, ``ip`` and ``nft`` (as ``Hosts``), Debian ``openssh-server`` (``/usr/sbin/sshd``,
its privilege separation user ``sshd``; ``/run/sshd`` is made if missing) and ``ssh-keygen``
(``openssh-client``), and a root account that is not locked: with ``UsePAM no`` sshd refuses
an account whose shadow password starts with ``!``. ``missing_tools`` names what is missing.

``python3 -m net.jepsen.sshd up N DIR`` / ``down DIR`` is the manual tool
(``docs/testing-real-clusters.md``, "SSH hosts").
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from net.files import private_dir, write_private
from net.jepsen import hosts as hosts_module
from net.jepsen.hosts import COMMAND_TIMEOUT_S, Host, Hosts, HostsError

SSHD: Final = Path("/usr/sbin/sshd")
"""sshd re-executes itself for every connection, so it is started by its absolute path."""
PRIVSEP_DIR: Final = Path("/run/sshd")
"""sshd's privilege separation directory (Debian's unit makes it; so do we if missing)."""
SSH_PORT: Final = 22
USER: Final = "root"
CLIENT_DIR: Final = "_ssh"
KEY_NAME: Final = "id_ed25519"
READY_TIMEOUT_S: Final = 10.0
"""How long ``up`` waits for every host's sshd to answer on port 22."""
PROBE_TIMEOUT_S: Final = 1.0
"""One readiness probe: connect and read the banner."""
LOG_TAIL_CHARS: Final = 2000
UNSAFE_PATH_RE: Final = re.compile(r'[\s%"#\\]')
"""What sshd_config would read otherwise (whitespace, ``%`` tokens, quotes, comments)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SshHost:
    """One host of an ``SshHosts`` room: where to reach its sshd and where its files are."""

    name: str
    address: str
    """Its IPv4 address on the room's bridge; sshd listens there, on ``port``."""
    port: int
    netns: str
    base_dir: Path
    """Its own base directory (for what a deploy installs)."""
    host_key: Path
    """sshd's private host key (0600); the public key is ``host_public_key``."""
    host_public_key: Path
    config: Path
    """Its ``sshd_config``."""
    log: Path
    pid_file: Path


def ssh_host_of(host: Host) -> SshHost:
    """The SSH side of ``host`` (paths under its directory)."""
    sshd_dir = host.dir / "sshd"
    return SshHost(
        name=host.name,
        address=host.address,
        port=SSH_PORT,
        netns=host.netns,
        base_dir=host.dir / "base",
        host_key=sshd_dir / "ssh_host_ed25519_key",
        host_public_key=sshd_dir / "ssh_host_ed25519_key.pub",
        config=sshd_dir / "sshd_config",
        log=sshd_dir / "sshd.log",
        pid_file=sshd_dir / "sshd.pid",
    )


def sshd_config(host: SshHost, authorized_keys: Path) -> str:
    """The ``sshd_config`` of ``host``: its address and port only, its host key, root with
    the keys of ``authorized_keys`` and nothing else."""
    return (
        f"# net.jepsen.sshd: host {host.name}\n"
        f"ListenAddress {host.address}\n"
        f"Port {host.port}\n"
        "AddressFamily inet\n"
        f"HostKey {host.host_key}\n"
        f"PidFile {host.pid_file}\n"
        f"AuthorizedKeysFile {authorized_keys}\n"
        # The room lives in a test's temporary directory: its parents are not sshd's to judge.
        "StrictModes no\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "PermitRootLogin prohibit-password\n"
        f"AllowUsers {USER}\n"
        "UseDNS no\n"
        "PrintMotd no\n"
        # Built into sshd: file transfers (asyncssh's SFTP) need no sftp-server binary.
        "Subsystem sftp internal-sftp\n"
        "LogLevel VERBOSE\n"
    )


def _root_locked() -> bool:
    """Whether root's shadow password starts with ``!`` (a locked account, which sshd
    refuses without PAM). False when /etc/shadow cannot be read (then root is missing)."""
    try:
        lines = Path("/etc/shadow").read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    return any(line.startswith(f"{USER}:!") for line in lines)


def missing_tools() -> list[str]:
    """What this machine lacks for SSH hosts (empty: they can be made)."""
    missing = hosts_module.missing_tools()
    if not SSHD.is_file():
        missing.append(f"{SSHD} (Debian openssh-server)")
    if shutil.which("ssh-keygen") is None:
        missing.append("ssh-keygen (Debian openssh-client)")
    try:
        pwd.getpwnam("sshd")
    except KeyError:
        missing.append("the user sshd (sshd's privilege separation; openssh-server makes it)")
    if _root_locked():
        missing.append(f"an unlocked {USER} account (sshd without PAM refuses a locked one)")
    return missing


def _keygen(private: Path, comment: str) -> None:
    """A new ed25519 key pair at ``private`` and ``private.pub``, both 0600 (bounded)."""
    for path in (private, private.with_name(private.name + ".pub")):
        path.unlink(missing_ok=True)  # ssh-keygen asks before overwriting
    argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostsError(f"{shlex.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise HostsError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    for path in (private, private.with_name(private.name + ".pub")):
        os.chmod(path, 0o600)


def _public_key(path: Path) -> str:
    """``<type> <base64>`` of an OpenSSH public key file (its comment dropped)."""
    fields = path.read_text(encoding="utf-8").split()
    if len(fields) < 2:
        raise HostsError(f"{path}: not an OpenSSH public key")
    return f"{fields[0]} {fields[1]}"


def _tail(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return text[-LOG_TAIL_CHARS:].strip() or "(empty log)"


def _banner(address: str, port: int) -> bool:
    """Whether an SSH server answers at ``address:port`` with its banner."""
    try:
        with socket.create_connection((address, port), timeout=PROBE_TIMEOUT_S) as conn:
            conn.settimeout(PROBE_TIMEOUT_S)
            return conn.recv(8).startswith(b"SSH-")
    except OSError:
        return False


class SshHosts:
    """A room of hosts each running an sshd (see the module docstring). Make one with
    ``SshHosts.up``; always ``teardown`` it (``with SshHosts.up(...) as ssh`` does)."""

    def __init__(self, net: Hosts) -> None:
        self.net = net
        """The room underneath: ``run``, ``exec``, ``cut``, ``cut_client``, ``heal``."""
        self.dir = net.root / CLIENT_DIR
        self.key = self.dir / KEY_NAME
        """The room's private key (0600): root's only way into every host."""
        self.public_key = self.dir / f"{KEY_NAME}.pub"
        self.known_hosts = self.dir / "known_hosts"
        """Every host's address with its host key (OpenSSH's known_hosts format)."""
        self.user = USER
        hosts = sorted(net.hosts.values(), key=lambda h: h.index)
        self.hosts: dict[str, SshHost] = {h.name: ssh_host_of(h) for h in hosts}
        self._sshd: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def room(self) -> int:
        return self.net.room

    def host(self, name: str) -> SshHost:
        try:
            return self.hosts[name]
        except KeyError:
            raise HostsError(f"no host {name!r} (hosts: {', '.join(self.hosts)})") from None

    # -- making and removing ------------------------------------------------------------------

    @classmethod
    def up(cls, names: Sequence[str], root: Path, *, owner_pid: int | None = None) -> SshHosts:
        """Make a room of hosts named ``names`` under ``root`` (``Hosts.up``, with
        ``owner_pid``), each with its sshd answering. On any failure everything made is torn
        down again."""
        unsafe = UNSAFE_PATH_RE.search(str(root.resolve()))
        if unsafe:
            raise HostsError(f"{root}: sshd_config cannot hold a path with {unsafe.group()!r}")
        missing = missing_tools()
        if missing:
            raise HostsError(f"cannot make SSH hosts here: missing {', '.join(missing)}")
        ssh = cls(Hosts.up(names, root, owner_pid=owner_pid))
        try:
            ssh._start()
        except BaseException:
            ssh.teardown()
            raise
        return ssh

    def _start(self) -> None:
        private_dir(self.dir)
        _keygen(self.key, f"pxq-room-{self.room}")
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        for host in self.hosts.values():
            private_dir(host.base_dir)
            private_dir(host.config.parent)
            _keygen(host.host_key, f"pxq-room-{self.room}-{host.name}")
            write_private(host.config, sshd_config(host, self.public_key).encode())
        known = "".join(
            f"{host.address} {_public_key(host.host_public_key)}\n" for host in self.hosts.values()
        )
        write_private(self.known_hosts, known.encode())
        for host in self.hosts.values():
            # Its stdout (what sshd says before -E applies) goes to the same log, appended.
            with host.log.open("ab") as log:
                self._sshd[host.name] = self.net.run(
                    host.name,
                    [str(SSHD), "-D", "-f", str(host.config), "-E", str(host.log)],
                    stdout=log,
                )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = list(self.hosts.values())
        while waiting:
            for host in list(waiting):
                proc = self._sshd.get(host.name)
                if proc is not None and proc.poll() is not None:
                    raise HostsError(
                        f"sshd of host {host.name} exited ({proc.returncode}): {_tail(host.log)}"
                    )
                if _banner(host.address, host.port):
                    waiting.remove(host)
            if waiting and time.monotonic() >= deadline:
                host = waiting[0]
                raise HostsError(
                    f"sshd of host {host.name} did not answer on {host.address}:{host.port} "
                    f"within {READY_TIMEOUT_S:g} s: {_tail(host.log)}"
                )
            if waiting:
                time.sleep(hosts_module.POLL_S)

    @classmethod
    def attach(cls, root: Path) -> SshHosts:
        """The SSH hosts made under ``root`` (by ``up``), for the manual tool; ``HostsError``
        if there are none."""
        ssh = cls(Hosts.attach(root))
        if not ssh.key.is_file() or not ssh.known_hosts.is_file():
            raise HostsError(f"room {ssh.room} of {root} has no SSH hosts (no {ssh.key})")
        return ssh

    def teardown(self) -> None:
        """Kill every sshd and everything the sessions started, remove the room (see
        ``Hosts.teardown``). Idempotent; ``HostsError`` naming what survived."""
        self.net.teardown()
        self._sshd.clear()
        for host in self.hosts.values():
            host.pid_file.unlink(missing_ok=True)  # a SIGKILLed sshd leaves it

    def __enter__(self) -> SshHosts:
        return self

    def __exit__(self, *_: object) -> None:
        self.teardown()

    # -- clients ------------------------------------------------------------------------------

    def sshd_pid(self, name: str) -> int | None:
        """The pid of host ``name``'s sshd while it runs (None: not started here, or gone)."""
        proc = self._sshd.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def ssh_argv(self, name: str) -> list[str]:
        """An OpenSSH client command line that logs into host ``name`` as root with the
        room's key, verifying the host key against ``known_hosts`` (append a command)."""
        host = self.host(name)
        return [
            "ssh",
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            f"{self.user}@{host.address}",  # port 22: the default
        ]

    def ssh_command(self, name: str) -> str:
        """``ssh_argv`` as one shell line (what the manual tool prints)."""
        return shlex.join(self.ssh_argv(name))


# -- the manual tool --------------------------------------------------------------------------


def describe(ssh: SshHosts) -> str:
    """What ``up`` prints: the hosts, their addresses and base directories, the key, the
    known_hosts file and an ``ssh`` line."""
    lines = [f"room {ssh.room}: bridge {ssh.net.bridge} {ssh.net.bridge_address}"]
    for host in ssh.hosts.values():
        lines.append(f"  {host.name}: {host.address}:{host.port}  base {host.base_dir}")
    first = next(iter(ssh.hosts))
    lines += [
        f"key          {ssh.key}",
        f"known_hosts  {ssh.known_hosts}",
        f"login        {ssh.ssh_command(first)}",
        f"remove with  python3 -m net.jepsen.sshd down {shlex.quote(str(ssh.net.root))}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m net.jepsen.sshd``: make and remove SSH hosts by hand."""
    parser = argparse.ArgumentParser(
        prog="python3 -m net.jepsen.sshd",
        description="Hosts in network namespaces, each running an sshd "
        "(docs/testing-real-clusters.md, SSH hosts).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="make N SSH hosts h0..h<N-1> (kept until down)")
    up.add_argument("count", type=int, metavar="N")
    up.add_argument("dir", type=Path, metavar="DIR", help="the room's directory")
    down = commands.add_parser("down", help="stop the sshds and remove the room made in DIR")
    down.add_argument("dir", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            if args.count < 1:
                parser.error("N must be at least 1")
            names = [f"h{i}" for i in range(args.count)]
            print(describe(SshHosts.up(names, args.dir, owner_pid=0)))
        else:
            ssh = SshHosts.attach(args.dir)
            ssh.teardown()
            print(f"room {ssh.room} removed")
    except (HostsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
