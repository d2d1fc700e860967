"""``LockNode``: one replica of the lock service, a ``Node`` that serves the lock client API.

It is a ``pxq.paxos.service.ReplicatedService`` whose replica's groups apply ``LockTable``
state machines (one per Paxos group; a key lives in group ``group_of_key(key, groups)``, the
group of its directory): the service owns the ``Node`` protocol, the inner calls to the
replica, the per-group ticks and the translation of the replica's answers. This module owns
only what is the lock service's:

* validation of client requests (empty or too long key or holder, a lease outside
  1..``LEASE_MS_MAX``, a negative version, a value over ``VALUE_BYTES_MAX``, a ``ListLocks``
  prefix that is empty or does not end with "/", ``entries_max`` outside
  1..``LIST_ENTRIES_MAX``, a register fence that is not ``(lock key, version)`` of a lock in
  the register's group): answered at once with a definite ``LockError`` naming the problem,
  nothing proposed;
* encoding of ``Acquire`` / ``Renew`` / ``Release`` / ``ReadLock(through_log=True)`` /
  ``ListLocks(through_log=True)`` into commands stamped with this master's *term clock* (the
  proposer's time travels inside the command, so replicas never read a clock while applying;
  see "Time across masters" below), proposed to the key's (or the listed directory's) group;
  the service translates the replica's answers: ``ProposeOk`` -> the state machine's
  ``LockOk`` / ``LockDenied`` / ``LockList`` (or its ``LockError``), ``Redirect`` ->
  ``LockRedirect``, ``ProposeRejected`` -> a definite ``LockError``, ``ProposeUnknown`` ->
  ``LockError("unknown", definite=False)``;
* registers (``ReadRegister``, ``WriteRegister``, ``CasRegister``): proposed like the lock
  commands, stamped the same way (a fence is judged at the stamp's time); a
  ``ReadRegister(through_log=False)`` is a local read like ``ReadLock``'s, from the applied
  state of the group's lease holder (a register has no time to be read as of);
* local reads (``ReadLock`` and ``ListLocks`` with ``through_log=False``), served by the
  lease holder of the group from applied state **as of the group's time** (the time of the
  last applied command), not of this node's wall clock. A read at the local wall clock could
  report a lease as expired at a time later than the next master (whose clock may lag) then
  applies a renewal at, which no sequential order explains; the group's time is what every
  replica agrees on. The master keeps that time fresh: a lease that expired on its clock is
  freed by a cleanup command, which advances the group's time (below), so a local read sees
  an expiry at most one ``cleanup_tick_ms`` plus one round trip late. Reads that must
  reflect the master's clock go through the log;
* cleanup: every ``cleanup_tick_ms`` (the service's tick, staggered over the groups) the
  master of each group proposes a ``CleanupCmd`` stamped with its term clock, if its table
  says one would free an expired entry. Every due group's term clock is read, even when no
  cleanup is proposed.

Time across masters. Leases are judged by the log's time, which each master advances with
its stamps. Wall clocks of different replicas disagree (skew), and a new master whose wall
clock runs ahead of its predecessor's would expire every lease early by that skew: a holder
that still trusts its grant (``lease - margin`` after it sent the request, on its own clock)
and the next owner would both act (found by the simulator: ``consumer-lock-master-partition``
with 1 s of skew). So a master does not stamp its wall clock directly: from the start of its
term (a new Paxos ballot) its clock is anchored at the group's time and advances by its
*monotonic* elapsed time (plus 1/``CATCH_UP_DIV`` of it, so a lagging log time catches up
with the wall clock slowly), re-anchored whenever the applied group time is ahead, and
never ahead of its wall clock: a wall clock behind it re-anchors it there, so it never
jumps back up when the wall clock is restored (a stamp of min(wall, term clock) did: the
log's time stood still while a stepped-back wall clock lagged, a lease renewed meanwhile
ended early by the lag once the stamps were the term clock again, 1.1 s beyond its holder's
margin: ``swarm-consumers`` seed 429); while no lease can be running (every expiry the table ever
granted is behind the log's time) it is the wall clock itself. Only a master's stamps are
proposed: a replica that is not master (a leader still recovering included) answers a
command with a redirect instead of queueing it for when it is master. A stamp made before
the term began, from the replica's wall clock or from its applied state, is wrong either
way (found by the simulator): the wall clock may run ahead of the previous master's
(``consumer-lock-master-partition`` seed 206: 1.4 s ahead, it expired a lease its holder
still trusted), and the applied state of a recovering leader may be stale by any amount
(``swarm-consumers`` seeds 19 and 20: a group that had never applied anything stamped a
queued acquire 0, granted a lease that ended at ``lease_ms`` on the log's time, and its
next command, stamped with the wall clock once no lease seemed to run, gave the key to
another holder at once). The last stamp of the previous master was made before this
term began, so this clock is never ahead of the previous master's: no lease ends earlier
than the master that granted it would have ended it (up to clock drift and the catch-up rate,
which the holders' margin covers). Skew between lock replicas then only makes leases last
longer, never shorter.

One input drives at most one step of the replica (see ``pxq.paxos.service``): a cleanup that
falls due while the replica's own timer is due waits for the next (immediate) ``Wake``.
"""

from __future__ import annotations

from typing import Final, assert_never

from pxq import codec
from pxq.effects import InvariantViolation, NodeId, Now, Rng, StorageView
from pxq.lock.commands import (
    AcquireCmd,
    CleanupCmd,
    Command,
    ListCmd,
    ReadCmd,
    RegCasCmd,
    RegReadCmd,
    RegWriteCmd,
    ReleaseCmd,
    RenewCmd,
    encode_command,
)
from pxq.lock.messages import (
    HOLDER_BYTES_MAX,
    KEY_BYTES_MAX,
    LEASE_MS_MAX,
    VALUE_BYTES_MAX,
    Acquire,
    CasRegister,
    ListLocks,
    LockDenied,
    LockError,
    LockList,
    LockOk,
    LockRedirect,
    ReadLock,
    ReadRegister,
    RegisterMismatch,
    RegisterOk,
    Release,
    Renew,
    WriteRegister,
    directory_of,
    group_of_key,
)
from pxq.lock.sm import KEYS_MAX_DEFAULT, VALUES_BYTES_MAX_DEFAULT, LockTable, list_problem
from pxq.paxos.config import PaxosConfig
from pxq.paxos.service import Answer, Proposal, ReplicatedService

CLEANUP_TICK_MS_DEFAULT: Final = 500
"""How often the master of a group checks whether a cleanup would free an expired entry."""
VERSION_MAX: Final = 2**64 - 1
"""Largest version (fencing token) a request may name: the commands carry u64 fields."""

__all__ = ["CLEANUP_TICK_MS_DEFAULT", "VERSION_MAX", "LockNode", "directory_of", "group_of_key"]
"""``directory_of`` and ``group_of_key`` live in ``messages.py`` (clients route with them)
and are re-exported here."""


class LockNode(ReplicatedService[LockTable]):
    """A replica of the lock service; a ``pxq.effects.Node``."""

    def __init__(
        self,
        node_id: NodeId,
        config: PaxosConfig,
        storage: StorageView,
        rng: Rng,
        *,
        keys_max: int = KEYS_MAX_DEFAULT,
        values_bytes_max: int = VALUES_BYTES_MAX_DEFAULT,
        cleanup_tick_ms: int = CLEANUP_TICK_MS_DEFAULT,
    ) -> None:
        if cleanup_tick_ms < 1:
            raise ValueError("cleanup_tick_ms must be >= 1")
        self.config = config
        self.keys_max = keys_max
        self.values_bytes_max = values_bytes_max
        self.cleanup_tick_ms = cleanup_tick_ms
        super().__init__(node_id, config, storage, rng, tick_ms=cleanup_tick_ms)
        self.terms: dict[int, tuple[object, int, int]] = {}
        """group -> (ballot, anchor time, anchor monotonic ms) of this master's term clock."""

    # -- hooks of ReplicatedService -------------------------------------------------------------

    def new_state_machine(self, group: int) -> LockTable:
        return LockTable(
            self.storage, group, keys_max=self.keys_max, values_bytes_max=self.values_bytes_max
        )

    def tick_time_ms(self, now: Now, group: int) -> int:
        # Every due group's term clock is read (and so anchored), as a client call would.
        return self.stamp(now, group)

    def tick_command(self, group: int, time_ms: int) -> bytes | None:
        if not self.sms[group].cleanup_due(time_ms):
            return None
        return encode_command(CleanupCmd(now_ms=time_ms))

    def decode_result(self, result: bytes) -> object:
        try:
            decoded = codec.decode(result)
        except codec.CodecError as exc:
            raise InvariantViolation(f"undecodable lock table result: {exc}") from exc
        if not isinstance(
            decoded, LockOk | LockDenied | LockList | LockError | RegisterOk | RegisterMismatch
        ):
            raise InvariantViolation(f"unexpected lock table result {type(decoded).__name__}")
        return decoded

    def redirect_response(self, master: NodeId | None) -> LockRedirect:
        return LockRedirect(master=master)

    def error_response(self, code: str, message: str, *, definite: bool) -> LockError:
        return LockError(code=code, message=message, definite=definite)

    def plan_request(self, now: Now, request: object) -> Answer | Proposal:
        cmd = self._command(now, request)
        if isinstance(cmd, LockError):
            return Answer(response=cmd)
        if isinstance(cmd, ReadLock):  # a local read
            return Answer(response=self._local_read(now, cmd.key))
        if isinstance(cmd, ListLocks):  # a local listing
            return Answer(response=self._local_list(now, cmd))
        if isinstance(cmd, ReadRegister):  # a local register read
            return Answer(response=self._local_register_read(now, cmd.key))
        group = self.group_of(_key_of(cmd))
        if not self.replica.is_master(group, now):
            # Only a master's stamp may be proposed (see "Time across masters"): a leader
            # still recovering would queue the command with a stamp from stale applied state.
            return Answer(response=LockRedirect(master=self.master_hint(group)))
        value = encode_command(cmd)
        if len(value) > self.config.value_bytes_max:
            return Answer(
                response=_bad("too_large", f"command of {len(value)} bytes over the limit")
            )
        return Proposal(group=group, value=value)

    # -- queries --------------------------------------------------------------------------------

    def group_of(self, key: str) -> int:
        return group_of_key(key, self.groups)

    def stamp(self, now: Now, group: int) -> int:
        """The time this replica stamps ``group``'s commands with (the module docstring's
        term clock). When it is not the group's master, the group's applied time, which
        nothing proposes (``plan_request`` redirects; a tick proposes only on a master)."""
        wall = _wall(now)
        if not self.replica.is_master(group, now):
            self.terms.pop(group, None)
            return min(wall, self.sms[group].time_ms)
        ballot = self.replica.groups[group].ballot
        sm = self.sms[group]
        applied = sm.time_ms
        term = self.terms.get(group)
        if term is None or term[0] != ballot:
            term = (ballot, applied, now.mono_ms)
        elapsed = max(0, now.mono_ms - term[2])
        clock = term[1] + elapsed + elapsed // CATCH_UP_DIV
        if sm.expiry_high_ms <= max(applied, clock):
            # No lease can be running: nothing can end early, so the wall clock is safe.
            term, clock = (ballot, wall, now.mono_ms), wall
        elif applied > clock:
            term, clock = (ballot, applied, now.mono_ms), applied
        if wall < clock:
            term, clock = (ballot, wall, now.mono_ms), wall
        self.terms[group] = term
        return clock

    # -- local reads ----------------------------------------------------------------------------

    def _local_read(self, now: Now, key: str) -> LockOk | LockRedirect:
        group = self.group_of(key)
        if not self.replica.is_master(group, now):
            return LockRedirect(master=self.master_hint(group))
        # As of the group's time (see the module docstring): 0 never raises it.
        return self.sms[group].read(key, 0)

    def _local_register_read(self, now: Now, key: str) -> RegisterOk | LockRedirect:
        group = self.group_of(key)
        if not self.replica.is_master(group, now):
            return LockRedirect(master=self.master_hint(group))
        return self.sms[group].read_register(key, 0)

    def _local_list(self, now: Now, req: ListLocks) -> LockList | LockRedirect:
        group = self.group_of(req.prefix)
        if not self.replica.is_master(group, now):
            return LockRedirect(master=self.master_hint(group))
        # As of the group's time, as for a local read.
        return self.sms[group].list_dir(req.prefix, req.entries_max, req.start_after, 0)

    # -- requests -------------------------------------------------------------------------------

    def _command(
        self, now: Now, request: object
    ) -> Command | ReadLock | ListLocks | ReadRegister | LockError:
        """The command for ``request`` (a local ``ReadLock``, ``ListLocks`` or
        ``ReadRegister`` as is), or why it is refused."""
        target = getattr(request, "key", None)
        if target is None:
            target = getattr(request, "prefix", None)
        wall = self.stamp(now, self.group_of(target)) if isinstance(target, str) else _wall(now)
        match request:
            case Acquire(
                key=key, holder=holder, lease_ms=lease_ms, expected_version=expected, value=value
            ):
                problem = _check(key, holder, lease_ms) or _value_problem(value, none_ok=False)
                if problem is None and expected is not None and not _version_ok(expected):
                    problem = _bad("bad_request", f"expected_version must be 0..{VERSION_MAX}")
                if problem is not None:
                    return problem
                return AcquireCmd(
                    key=key,
                    holder=holder,
                    lease_ms=lease_ms,
                    expected_version=expected,
                    now_ms=wall,
                    value=value,
                )
            case Renew(key=key, holder=holder, version=version, lease_ms=lease_ms, value=value):
                problem = _check(key, holder, lease_ms) or _value_problem(value, none_ok=True)
                if problem is None and not _version_ok(version):
                    problem = _bad("bad_request", f"version must be 0..{VERSION_MAX}")
                if problem is not None:
                    return problem
                return RenewCmd(
                    key=key,
                    holder=holder,
                    version=version,
                    lease_ms=lease_ms,
                    now_ms=wall,
                    value=value,
                )
            case Release(key=key, holder=holder, version=version):
                problem = _check(key, holder, None)
                if problem is None and not _version_ok(version):
                    problem = _bad("bad_request", f"version must be 0..{VERSION_MAX}")
                if problem is not None:
                    return problem
                return ReleaseCmd(key=key, holder=holder, version=version, now_ms=wall)
            case ReadLock(key=key, through_log=through_log):
                if not _name_ok(key, KEY_BYTES_MAX):
                    return _bad("bad_request", f"key must be 1..{KEY_BYTES_MAX} UTF-8 bytes")
                if through_log is True:
                    return ReadCmd(key=key, now_ms=wall)
                if through_log is not False:
                    return _bad("bad_request", "through_log must be a bool")
                return request
            case ListLocks(
                prefix=prefix,
                entries_max=entries_max,
                through_log=through_log,
                start_after=start_after,
            ):
                why = list_problem(prefix, entries_max, start_after)
                if why is not None:
                    return _bad("bad_request", why)
                if through_log is True:
                    return ListCmd(
                        prefix=prefix,
                        entries_max=entries_max,
                        start_after=start_after,
                        now_ms=wall,
                    )
                if through_log is not False:
                    return _bad("bad_request", "through_log must be a bool")
                return request
            case ReadRegister(key=key, through_log=through_log):
                if not _name_ok(key, KEY_BYTES_MAX):
                    return _bad("bad_request", f"key must be 1..{KEY_BYTES_MAX} UTF-8 bytes")
                if through_log is True:
                    return RegReadCmd(key=key, now_ms=wall)
                if through_log is not False:
                    return _bad("bad_request", "through_log must be a bool")
                return request
            case WriteRegister(key=key, value=value, fence=fence):
                problem = self._register_problem(key, value, fence)
                if problem is not None:
                    return problem
                return RegWriteCmd(key=key, value=value, fence=fence, now_ms=wall)
            case CasRegister(key=key, expected=expected, value=value, fence=fence):
                problem = self._register_problem(key, value, fence) or _value_problem(
                    expected, none_ok=True
                )
                if problem is not None:
                    return problem
                return RegCasCmd(key=key, expected=expected, value=value, fence=fence, now_ms=wall)
            case _:
                return _bad("bad_request", f"not a lock request: {type(request).__name__}")

    def _register_problem(self, key: object, value: object, fence: object) -> LockError | None:
        """Why a register write's key, value or fence is refused, or None."""
        if not _name_ok(key, KEY_BYTES_MAX):
            return _bad("bad_request", f"key must be 1..{KEY_BYTES_MAX} UTF-8 bytes")
        problem = _value_problem(value, none_ok=False)
        if problem is not None or fence is None:
            return problem
        if not (
            type(fence) is tuple
            and len(fence) == 2
            and _name_ok(fence[0], KEY_BYTES_MAX)
            and _version_ok(fence[1])
        ):
            return _bad("bad_request", "fence must be (lock key, version)")
        if self.group_of(fence[0]) != self.group_of(str(key)):
            return _bad(
                "bad_request",
                f"fence lock {fence[0]!r} lives in another group than register {key!r} "
                "(keep them in one directory)",
            )
        return None


CATCH_UP_DIV: Final = 64
"""A master's term clock runs this much faster than its monotonic clock (1/64, ~1.6 %) while
it lags the wall clock: holders' margins must cover it (the default margin is 20 % of the
lease)."""


def _wall(now: Now) -> int:
    return max(0, now.wall_ms)


def _bad(code: str, message: str) -> LockError:
    return LockError(code=code, message=message, definite=True)


def _name_ok(name: object, limit: int) -> bool:
    if type(name) is not str:
        return False
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return 0 < len(raw) <= limit


def _version_ok(v: object) -> bool:
    return type(v) is int and 0 <= v <= VERSION_MAX


def _check(key: object, holder: object, lease_ms: object) -> LockError | None:
    if not _name_ok(key, KEY_BYTES_MAX):
        return _bad("bad_request", f"key must be 1..{KEY_BYTES_MAX} UTF-8 bytes")
    if not _name_ok(holder, HOLDER_BYTES_MAX):
        return _bad("bad_request", f"holder must be 1..{HOLDER_BYTES_MAX} UTF-8 bytes")
    if lease_ms is not None and not (type(lease_ms) is int and 1 <= lease_ms <= LEASE_MS_MAX):
        return _bad("bad_request", f"lease_ms must be 1..{LEASE_MS_MAX}")
    return None


def _value_problem(value: object, *, none_ok: bool) -> LockError | None:
    if value is None and none_ok:
        return None
    if type(value) is not bytes:
        return _bad("bad_request", f"value must be bytes, got {type(value).__name__}")
    if len(value) > VALUE_BYTES_MAX:
        return _bad(
            "bad_request",
            f"value of {len(value)} bytes exceeds VALUE_BYTES_MAX = {VALUE_BYTES_MAX}",
        )
    return None


def _key_of(cmd: Command) -> str:
    """The key whose group the command goes to (a listing: its directory's)."""
    match cmd:
        case (
            AcquireCmd()
            | RenewCmd()
            | ReleaseCmd()
            | ReadCmd()
            | RegReadCmd()
            | RegWriteCmd()
            | RegCasCmd()
        ):
            return cmd.key
        case ListCmd():
            return cmd.prefix
        case CleanupCmd():  # pragma: no cover - cleanups are not client commands
            raise InvariantViolation("a cleanup has no key")
        case _:
            assert_never(cmd)
