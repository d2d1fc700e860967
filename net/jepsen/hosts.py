"""``Hosts``: N test "hosts" on this machine, each a network namespace with its own address on
a bridge of its own, and the nftables rules that cut and redirect traffic between them.

The layout of one room (``k`` is the room number, the first free one in 0..255)::

    root namespace   bridge pxqbr<k>, 10.231.<k>.1/24 (the test client and the slow-link
                     proxies live here)
    host i           namespace pxq<k>-<name>, veth pxq<k>n<i> (peer of pxq<k>h<i> on the
                     bridge), 10.231.<k>.<i+2>/24, loopback up
                     nftables table ``ip pxq_net`` (only while a cut or a redirect is in place)

The bridge is created first and claims the room (``ip link add`` of an existing name fails, so
two tests never share one); its alias records the owner's pid and directory
(``pxq-room pid=<pid> dir=<dir>``). A room whose owner died (a killed test) is swept by the
next ``Hosts.up`` that claims it, and by ``sweep()``. ``teardown`` SIGKILLs every process
started in the hosts (by pid: those ``run`` started and those ``ip netns pids`` lists, pass
after pass until a pass finds none), then deletes the namespaces (their veths, tables and
addresses go with them), the root-side veths and finally the bridge; it is idempotent and
also undoes a half-made ``up``.

Faults, all as rules in the *sending* host's ``output`` hook, so each host's table says what
it cannot send:

* ``cut(src, dst)``: drop every IPv4 packet from ``src`` to ``dst`` (chain ``cuts``, priority
  -150: before the NAT of a redirect, so a cut link stays cut even while it is slowed). What
  that does to TCP: a connection needs both directions, so with ``src -> dst`` cut no TCP
  connection can be *set up* either way (``src``'s SYN, or its SYN-ACK, is lost), and on an
  established one ``src``'s data and ``src``'s ACKs of ``dst``'s data are lost: ``dst``'s
  bytes still reach ``src``'s application until ``dst``'s send window is full, then stall.
* ``cut(src, dst, ports=P)``: drop only TCP from ``src`` to ``dst``'s ports ``P``: the
  connections ``src`` opens to ``dst``'s servers. A protocol whose peers send each other
  messages only on the connection the sender opened (pxq's peer links are such one-way
  streams, ``net.node.transport.PeerLink``) then loses exactly ``src``'s messages to ``dst``:
  ``dst``'s connection to ``src`` keeps working, its ACKs go out from ``src``'s server port.
  This is the one-way cut ``NetnsTarget`` uses; a two-way cut is both directions.
* ``redirect(src, dst, port, to)``: new TCP connections from ``src`` to ``dst:port`` are
  DNATed to ``to`` (a slow-link proxy in the root namespace, ``net.jepsen.proxy``), and the
  connections ``src`` already had to ``dst:port`` are reset (``reject with tcp reset`` on
  packets still addressed to ``dst``: only un-NATed ones are, a DNATed packet's destination is
  the proxy by then), so the sender reconnects through the proxy at once. No loop: the proxy
  connects to ``dst`` from the root namespace, whose packets never pass ``src``'s hooks.
* ``cut_client(name)``: drop every packet from ``name`` to the bridge address, the test
  client's: the one fault that reaches the client (an SSH connection to a host that stopped
  answering).
* ``heal()``: delete every host's table. Connections a redirect made keep their NAT mapping
  (conntrack) until they close, which is why ``NetnsTarget`` closes its proxies after healing.

Nothing here knows about pxq nodes: ``run`` starts any command in a host, so the SSH hosts
of issue 15 (``pxq deploy`` against real hosts, ``net.jepsen.sshd``) are a room whose hosts
each ``run`` an ``/usr/sbin/sshd -D -f <conf>`` listening on the host's address.

Every command is bounded (``COMMAND_TIMEOUT_S``); nothing here contacts an address other than
the room's own. ``python3 -m net.jepsen.hosts`` is the manual tool (``up``, ``down``, ``cut``,
``heal``, ``sweep``; see ``docs/testing-real-clusters.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from net.errors import NetError

SUBNET_PREFIX: Final = "10.231"
ROOMS_MAX: Final = 256
"""Room numbers 0..255: the third byte of the room's /24."""
HOSTS_MAX: Final = 252
"""Host addresses .2 to .253 of the room's /24 (.1 is the bridge)."""
NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
COMMAND_TIMEOUT_S: Final = 10.0
KILL_WAIT_S: Final = 5.0
KILL_ROUNDS: Final = 10
"""Passes of killing what runs in a room's namespaces until none is left (see
``_kill_namespaces``)."""
POLL_S: Final = 0.02
TABLE: Final = "pxq_net"
ALIAS_PREFIX: Final = "pxq-room"
STATE_NAME: Final = "hosts.json"


class HostsError(NetError):
    """A command that makes, changes or removes the room failed; the message says which and
    what it printed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    """One host of a room."""

    name: str
    """The caller's name for it (a node name)."""
    index: int
    netns: str
    """Its network namespace (``ip netns exec <netns> ...``)."""
    address: str
    """Its IPv4 address on the room's bridge."""
    veth: str
    """The root-side end of its veth (on the bridge)."""
    peer: str
    """The end inside its namespace."""
    dir: Path
    """Its own base directory (mount namespaces are not separated: give each host its own)."""


def room_names(room: int) -> tuple[str, str, str]:
    """The bridge, the namespace prefix and the bridge address of room ``room``."""
    return f"pxqbr{room}", f"pxq{room}-", f"{SUBNET_PREFIX}.{room}.1"


def host_of(room: int, index: int, name: str, root: Path) -> Host:
    """Host ``index`` (named ``name``) of room ``room``, its directory under ``root``."""
    if not NAME_RE.match(name):
        raise HostsError(f"host name {name!r}: use 1-32 of a-z, 0-9, '-', '_'")
    if not 0 <= index < HOSTS_MAX:
        raise HostsError(f"at most {HOSTS_MAX} hosts in a room, asked for host {index}")
    return Host(
        name=name,
        index=index,
        netns=f"pxq{room}-{name}",
        address=f"{SUBNET_PREFIX}.{room}.{index + 2}",
        veth=f"pxq{room}h{index}",
        peer=f"pxq{room}n{index}",
        dir=root / name,
    )


# -- commands ---------------------------------------------------------------------------------


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    """Run a command (bounded); its stdout. ``HostsError`` naming it and its stderr if it
    fails and ``check``."""
    try:
        done = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostsError(f"{' '.join(argv)}: {exc}") from exc
    if check and done.returncode != 0:
        raise HostsError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _ip(*args: str, check: bool = True) -> str:
    return _run(["ip", *args], check=check)


def _nft(netns: str, script: str) -> None:
    _run(["ip", "netns", "exec", netns, "nft", "-f", "-"], stdin=script)


def missing_tools() -> list[str]:
    """What this machine lacks for a room (empty: rooms can be made): root, ``ip``, ``nft``."""
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.insert(0, "root (network namespaces need CAP_SYS_ADMIN)")
    return missing


def _links() -> dict[str, str]:
    """Every link of the root namespace: name -> its alias ("" without one)."""
    out = _ip("-o", "link", "show")
    links: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) < 3:
            continue
        name = parts[1].strip().split("@", 1)[0]
        match = re.search(r"\balias (.*)$", line)
        links[name] = match.group(1).strip() if match else ""
    return links


def _namespaces() -> list[str]:
    out = _ip("netns", "list")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _namespace_pids(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def _used_rooms() -> set[int]:
    """Rooms whose /24 already has an address in the root namespace (whoever made it)."""
    out = _ip("-4", "-o", "addr", "show")
    return {int(m.group(1)) for m in re.finditer(rf"inet {SUBNET_PREFIX}\.(\d+)\.", out)}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL every pid (gone already is fine), then wait (bounded) until they are gone."""
    pending = set(pids)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    while pending and time.monotonic() < deadline:
        pending = {p for p in pending if _zombie_or_alive(p)}
        time.sleep(POLL_S)


def _zombie_or_alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie of ours is reaped here; one of others is gone)."""
    with contextlib.suppress(ChildProcessError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] not in (["Z"], ["X"])


def _kill_namespaces(spaces: Sequence[str]) -> list[int]:
    """SIGKILL every process in the namespaces ``spaces``, pass after pass until a pass finds
    none: a process may fork while the pass kills it (an sshd accepting a connection, a shell
    starting a command), and its new child, not yet listed, would outlive the pass. Once a
    pass finds none, nothing is left to fork into them. The pids still there after
    ``KILL_ROUNDS`` passes (empty: none)."""
    for _ in range(KILL_ROUNDS):
        pids = [pid for ns in spaces for pid in _namespace_pids(ns)]
        if not pids:
            return []
        _kill_pids(pids)
    return [pid for ns in spaces for pid in _namespace_pids(ns)]


def remove_room(room: int) -> list[int]:
    """Remove everything of room ``room`` by its names: kill the processes in its namespaces,
    delete the namespaces, its veths and its bridge. Idempotent. The pids that could not be
    killed (empty: none; the rest is removed all the same)."""
    bridge, prefix, _ = room_names(room)
    spaces = [ns for ns in _namespaces() if ns.startswith(prefix)]
    survivors = _kill_namespaces(spaces)
    for ns in spaces:
        _ip("netns", "del", ns, check=False)
    veth = re.compile(rf"^pxq{room}h\d+$")
    for name in _links():
        if veth.match(name):
            _ip("link", "del", name, check=False)
    _ip("link", "del", bridge, check=False)
    return survivors


def _owner(alias: str) -> int | None:
    """The owner pid of a room's alias (None: not a room alias)."""
    match = re.match(rf"^{ALIAS_PREFIX} pid=(\d+)\b", alias)
    return int(match.group(1)) if match else None


def sweep() -> list[int]:
    """Remove every room whose owner process is dead (a test killed before its teardown);
    rooms of live owners, and of ``pid=0`` (made by hand with ``up``), stay. The rooms
    removed."""
    swept: list[int] = []
    for name, alias in sorted(_links().items()):
        match = re.match(r"^pxqbr(\d+)$", name)
        owner = _owner(alias)
        if match and owner is not None and owner != 0 and not _pid_alive(owner):
            remove_room(int(match.group(1)))
            swept.append(int(match.group(1)))
    return swept


# -- a room -----------------------------------------------------------------------------------


class Hosts:
    """A room of hosts (see the module docstring). Make one with ``Hosts.up``; always
    ``teardown`` it (``with Hosts.up(...) as hosts`` does)."""

    def __init__(self, room: int, hosts: Sequence[Host], root: Path) -> None:
        self.room = room
        self.root = root
        self.hosts: dict[str, Host] = {h.name: h for h in hosts}
        self.bridge, _, self.bridge_address = room_names(room)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._cuts: set[tuple[str, str, tuple[int, ...]]] = set()
        self._client_cuts: set[str] = set()
        self._redirects: set[tuple[str, str, int, str, int]] = set()

    # -- making and removing ------------------------------------------------------------------

    @classmethod
    def up(cls, names: Sequence[str], root: Path, *, owner_pid: int | None = None) -> Hosts:
        """Claim a free room and make a host per name (directories under ``root``). On any
        failure everything made so far is removed again. ``owner_pid`` (default: this
        process; 0: kept until ``down``) is recorded so ``sweep`` can tell abandoned rooms."""
        if len(set(names)) != len(names) or not names:
            raise HostsError(f"host names must be distinct and at least one: {list(names)}")
        for index, name in enumerate(names):
            host_of(0, index, name, root)  # names and count checked before claiming a room
        missing = missing_tools()
        if missing:
            raise HostsError(f"cannot make hosts here: missing {', '.join(missing)}")
        root = root.resolve()
        owner = os.getpid() if owner_pid is None else owner_pid
        room = cls._claim(root, owner)
        hosts = cls(room, [host_of(room, i, n, root) for i, n in enumerate(names)], root)
        try:
            hosts._make()
            hosts._save()
        except BaseException:
            hosts.teardown()
            raise
        return hosts

    @staticmethod
    def _claim(root: Path, owner: int) -> int:
        """Create the bridge of the first free room (the bridge name is the claim) with the
        owner alias and the bridge address; the room number."""
        sweep()
        used = _used_rooms()
        for room in range(ROOMS_MAX):
            if room in used:
                continue
            bridge, prefix, address = room_names(room)
            created = subprocess.run(
                ["ip", "link", "add", bridge, "type", "bridge"],
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
            if created.returncode != 0:
                continue  # taken (or in the way): try the next room
            try:
                alias = f"{ALIAS_PREFIX} pid={owner} dir={root}"
                _ip("link", "set", bridge, "alias", alias[:120])
                # Namespaces of this number without a bridge were left by a crashed run:
                # they are no one's now, and would clash with ours.
                for ns in _namespaces():
                    if ns.startswith(prefix):
                        _kill_namespaces([ns])
                        _ip("netns", "del", ns, check=False)
                _ip("addr", "add", f"{address}/24", "dev", bridge)
                _ip("link", "set", bridge, "up")
            except BaseException:
                remove_room(room)
                raise
            return room
        raise HostsError(
            f"no free room: every {SUBNET_PREFIX}.<k>.0/24 (k < {ROOMS_MAX}) is in use"
        )

    def _make(self) -> None:
        for host in self.hosts.values():
            host.dir.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(HostsError):
                _ip("link", "del", host.veth)  # a stale end of a crashed run of this room
            _ip("netns", "add", host.netns)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", host.peer)
            _ip("link", "set", host.peer, "netns", host.netns)
            _ip("link", "set", host.veth, "master", self.bridge)
            _ip("link", "set", host.veth, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.peer)
            _ip("-n", host.netns, "link", "set", host.peer, "up")

    def _save(self) -> None:
        state = {
            "room": self.room,
            "hosts": [h.name for h in sorted(self.hosts.values(), key=lambda h: h.index)],
        }
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def attach(cls, root: Path) -> Hosts:
        """The room recorded in ``root`` (made by ``up`` with that root), for the manual
        tool; ``HostsError`` if there is none or its bridge is gone."""
        root = root.resolve()
        try:
            state = json.loads((root / STATE_NAME).read_text(encoding="utf-8"))
            room, names = int(state["room"]), [str(n) for n in state["hosts"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HostsError(f"no room recorded in {root}: {exc}") from exc
        if room_names(room)[0] not in _links():
            raise HostsError(f"room {room} of {root} is gone (its bridge does not exist)")
        return cls(room, [host_of(room, i, n, root) for i, n in enumerate(names)], root)

    def teardown(self) -> None:
        """Kill every process in the hosts, delete the namespaces, veths and the bridge.
        Idempotent; ``HostsError`` only if something is still there afterwards."""
        _kill_pids(p.pid for p in self._procs if p.poll() is None)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_WAIT_S)
        self._procs.clear()
        survivors = remove_room(self.room)
        self._cuts.clear()
        self._client_cuts.clear()
        self._redirects.clear()
        left = [f"process {pid}" for pid in survivors] + self.leftovers()
        if left:
            raise HostsError(f"teardown of room {self.room} left {', '.join(left)}")
        with contextlib.suppress(OSError):
            (self.root / STATE_NAME).unlink()

    def leftovers(self) -> list[str]:
        """What of this room still exists (namespaces, links): empty after ``teardown``."""
        _, prefix, _ = room_names(self.room)
        found = [f"namespace {ns}" for ns in _namespaces() if ns.startswith(prefix)]
        ours = {self.bridge} | {h.veth for h in self.hosts.values()}
        found += [f"link {name}" for name in sorted(_links()) if name in ours]
        return found

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *_: object) -> None:
        self.teardown()

    # -- processes ----------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise HostsError(f"no host {name!r} (hosts: {', '.join(self.hosts)})") from None

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: IO[bytes] | int | None = subprocess.DEVNULL,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside host ``name``'s namespace, in a session of its own, and
        return its handle (``ip netns exec`` execs the command: the pid is the command's).
        ``teardown`` kills it if it still runs. stderr goes where stdout goes."""
        host = self.host(name)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd if cwd is not None else host.dir,
            start_new_session=True,
        )
        self._procs = [p for p in self._procs if p.poll() is None]
        self._procs.append(proc)
        return proc

    def exec(self, name: str, argv: Sequence[str], *, check: bool = True) -> str:
        """Run a short command inside host ``name`` (bounded); its stdout."""
        return _run(["ip", "netns", "exec", self.host(name).netns, *argv], check=check)

    # -- faults -------------------------------------------------------------------------------

    def _table(self) -> str:
        # Declaring an existing table or chain is a no-op in an nft script: this makes them if
        # missing. Priorities: cut (-150) before NAT (-100) before the resets (0).
        return (
            f"table ip {TABLE} {{\n"
            f"  chain cuts {{ type filter hook output priority -150; policy accept; }}\n"
            f"  chain slow_nat {{ type nat hook output priority -100; policy accept; }}\n"
            f"  chain slow_reset {{ type filter hook output priority 0; policy accept; }}\n"
            f"}}\n"
        )

    def cut(self, src: str, dst: str, *, ports: Sequence[int] = ()) -> None:
        """Drop what ``src`` sends to ``dst``: every packet, or only TCP to ``dst``'s ``ports``
        (see the module docstring). Cutting a link already cut is a no-op."""
        a, b = self.host(src), self.host(dst)
        key = (src, dst, tuple(sorted(set(ports))))
        if src == dst or key in self._cuts:
            return
        match = f"ip daddr {b.address}"
        if key[2]:
            match += f" tcp dport {{ {', '.join(str(p) for p in key[2])} }}"
        _nft(a.netns, self._table() + f"add rule ip {TABLE} cuts {match} drop\n")
        self._cuts.add(key)

    def cut_client(self, name: str) -> None:
        """Drop every packet host ``name`` sends to the root namespace (the bridge address,
        where the test client lives): the client's connections to it can no longer be set up
        (the host's SYN-ACK is lost) and established ones stall, as if the host were gone.
        The one fault that reaches the test client, for tests of what a client does when a
        host stops answering (an SSH connection to a dead host). Cutting it again is a
        no-op; ``heal`` removes it."""
        host = self.host(name)
        if name in self._client_cuts:
            return
        rule = f"add rule ip {TABLE} cuts ip daddr {self.bridge_address} drop\n"
        _nft(host.netns, self._table() + rule)
        self._client_cuts.add(name)

    def redirect(self, src: str, dst: str, port: int, to: tuple[str, int]) -> None:
        """Send ``src``'s new TCP connections to ``dst:port`` to ``to`` instead, and reset the
        ones it has (see the module docstring). Redirecting a link already redirected to the
        same place is a no-op."""
        a, b = self.host(src), self.host(dst)
        key = (src, dst, port, to[0], to[1])
        if key in self._redirects:
            return
        match = f"ip daddr {b.address} tcp dport {port}"
        _nft(
            a.netns,
            self._table()
            + f"add rule ip {TABLE} slow_nat {match} dnat to {to[0]}:{to[1]}\n"
            + f"add rule ip {TABLE} slow_reset {match} reject with tcp reset\n",
        )
        self._redirects.add(key)

    def heal(self) -> None:
        """Remove every cut and redirect (each host's table)."""
        for host in self.hosts.values():
            # Declared first so the delete never fails on a host that had no table.
            _nft(host.netns, f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")
        self._cuts.clear()
        self._client_cuts.clear()
        self._redirects.clear()

    @property
    def cuts(self) -> frozenset[tuple[str, str, tuple[int, ...]]]:
        """The cuts in place: (source, destination, ports; () for every packet)."""
        return frozenset(self._cuts)

    @property
    def client_cuts(self) -> frozenset[str]:
        """The hosts cut from the test client (``cut_client``)."""
        return frozenset(self._client_cuts)

    def rules(self, name: str) -> str:
        """Host ``name``'s ruleset as ``nft`` prints it (for reports and debugging)."""
        return self.exec(name, ["nft", "list", "ruleset"])


# -- the manual tool --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m net.jepsen.hosts``: make, fault and remove a room by hand."""
    parser = argparse.ArgumentParser(
        prog="python3 -m net.jepsen.hosts",
        description="Hosts in network namespaces for trying faults by hand "
        "(docs/testing-real-clusters.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="make a room of hosts (kept until down)")
    up.add_argument("--dir", type=Path, required=True, help="the room's directory")
    up.add_argument("names", nargs="+", help="host names (a-z, 0-9, -, _)")
    down = commands.add_parser("down", help="remove the room recorded in --dir")
    down.add_argument("--dir", type=Path, required=True)
    cut = commands.add_parser("cut", help="drop what SRC sends to DST (--port: only TCP to it)")
    cut.add_argument("--dir", type=Path, required=True)
    cut.add_argument("src")
    cut.add_argument("dst")
    cut.add_argument("--port", type=int, action="append", default=[])
    heal = commands.add_parser("heal", help="remove every cut and redirect of the room")
    heal.add_argument("--dir", type=Path, required=True)
    commands.add_parser("sweep", help="remove rooms whose owner process died")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            hosts = Hosts.up(args.names, args.dir, owner_pid=0)
            print(f"room {hosts.room}: bridge {hosts.bridge} {hosts.bridge_address}")
            for host in hosts.hosts.values():
                print(f"  {host.name}: {host.address}  ip netns exec {host.netns} ...")
        elif args.command == "down":
            hosts = Hosts.attach(args.dir)
            hosts.teardown()
            print(f"room {hosts.room} removed")
        elif args.command == "cut":
            Hosts.attach(args.dir).cut(args.src, args.dst, ports=args.port)
        elif args.command == "heal":
            Hosts.attach(args.dir).heal()
        else:
            print(f"swept rooms: {sweep() or 'none'}")
    except HostsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
