"""``LockNode``: one replica of the lock service, a ``Node`` that serves the lock client API.

It composes a ``pxq.paxos.replica.Replica`` whose groups apply ``LockTable`` state machines
(one per Paxos group; a key lives in group ``group_of_key(key, groups)``, the group of its
directory), and owns only what sits around the log:

* validation of client requests (empty or too long key or holder, a lease outside
  1..``LEASE_MS_MAX``, a negative version, a value over ``VALUE_BYTES_MAX``, a ``ListLocks``
  prefix that is empty or does not end with "/", ``entries_max`` outside
  1..``LIST_ENTRIES_MAX``): answered at once with a definite ``LockError`` naming the problem,
  nothing proposed;
* encoding of ``Acquire`` / ``Renew`` / ``Release`` / ``ReadLock(through_log=True)`` /
  ``ListLocks(through_log=True)`` into commands stamped with this master's *term clock* (the
  proposer's time travels inside the command, so replicas never read a clock while applying;
  see "Time across masters" below), proposed to the key's (or the listed directory's) group, and the
  translation of the replica's answers: ``ProposeOk`` -> the state machine's ``LockOk`` /
  ``LockDenied`` / ``LockList`` (or its ``LockError``), ``Redirect`` -> ``LockRedirect``,
  ``ProposeRejected`` -> a definite ``LockError``, ``ProposeUnknown`` ->
  ``LockError("unknown", definite=False)``;
* local reads (``ReadLock`` and ``ListLocks`` with ``through_log=False``), served by the
  lease holder of the group from applied state **as of the group's time** (the time of the
  last applied command), not of this node's wall clock. A read at the local wall clock could
  report a lease as expired at a time later than the next master (whose clock may lag) then
  applies a renewal at, which no sequential order explains; the group's time is what every
  replica agrees on. The master keeps that time fresh: a lease that expired on its clock is
  freed by a cleanup command, which advances the group's time (below), so a local read sees
  an expiry at most one ``cleanup_tick_ms`` plus one round trip late. Reads that must
  reflect the master's clock go through the log;
* cleanup: every ``cleanup_tick_ms`` (staggered over the groups) the master of each group
  proposes a ``CleanupCmd`` if its table says one would free an expired entry.

Time across masters. Leases are judged by the log's time, which each master advances with
its stamps. Wall clocks of different replicas disagree (skew), and a new master whose wall
clock runs ahead of its predecessor's would expire every lease early by that skew: a holder
that still trusts its grant (``lease - margin`` after it sent the request, on its own clock)
and the next owner would both act (found by the simulator: ``consumer-lock-master-partition``
with 1 s of skew). So a master does not stamp its wall clock directly: from the start of its
term (a new Paxos ballot) its clock is anchored at the group's time and advances by its
*monotonic* elapsed time (plus 1/``CATCH_UP_DIV`` of it, so a lagging log time catches up
with the wall clock slowly), re-anchored whenever the applied group time is ahead, and
never ahead of its wall clock; while no lease can be running (every expiry the table ever
granted is behind the log's time) it is the wall clock itself. The last stamp of the previous master was made before this
term began, so this clock is never ahead of the previous master's: no lease ends earlier
than the master that granted it would have ended it (up to clock drift and the catch-up rate,
which the holders' margin covers). Skew between lock replicas then only makes leases last
longer, never shorter.

One input drives at most one step of the replica (the driver applies writes between steps,
and the replica relies on it). A cleanup that falls due while the replica's own timer is due
waits for the next (immediate) ``Wake``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, assert_never

from pxq import codec
from pxq.effects import (
    NO_EFFECTS,
    Boot,
    ClientCall,
    Effects,
    Input,
    InvariantViolation,
    NodeId,
    Now,
    Received,
    Reply,
    Rng,
    StorageView,
    Wake,
)
from pxq.lock.commands import (
    AcquireCmd,
    CleanupCmd,
    Command,
    ListCmd,
    ReadCmd,
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
    ListLocks,
    LockDenied,
    LockError,
    LockList,
    LockOk,
    LockRedirect,
    ReadLock,
    Release,
    Renew,
    directory_of,
    group_of_key,
)
from pxq.lock.sm import KEYS_MAX_DEFAULT, VALUES_BYTES_MAX_DEFAULT, LockTable, list_problem
from pxq.paxos.config import PaxosConfig
from pxq.paxos.messages import Propose, ProposeOk, ProposeRejected, ProposeUnknown, Redirect
from pxq.paxos.replica import Replica

if TYPE_CHECKING:
    from pxq.paxos.sm import StateMachine

CLEANUP_TICK_MS_DEFAULT: Final = 500
"""How often the master of a group checks whether a cleanup would free an expired entry."""
VERSION_MAX: Final = 2**64 - 1
"""Largest version (fencing token) a request may name: the commands carry u64 fields."""

_CLEANUP: Final = -1
"""Outer call id of an internal cleanup (its result is not answered to anyone)."""


__all__ = ["CLEANUP_TICK_MS_DEFAULT", "VERSION_MAX", "LockNode", "directory_of", "group_of_key"]
"""``directory_of`` and ``group_of_key`` live in ``messages.py`` (clients route with them)
and are re-exported here."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Call:
    """A proposal in flight: whom to answer (``outer``, or ``_CLEANUP``) and its group."""

    outer: int
    group: int


class LockNode:
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
        self.node_id = node_id
        self.config = config
        self.storage = storage
        self.keys_max = keys_max
        self.values_bytes_max = values_bytes_max
        self.cleanup_tick_ms = cleanup_tick_ms
        self.groups = config.groups
        self.sms: dict[int, LockTable] = {}
        self.replica = Replica(node_id, config, storage, rng, self._make_sm)
        self.calls: dict[int, _Call] = {}
        self.next_inner = 1
        self.cleanup_at: list[int] = [0] * self.groups
        self.cleaning: list[bool] = [False] * self.groups
        self.last_mono = 0
        self.booted = False
        self.terms: dict[int, tuple[object, int, int]] = {}
        """group -> (ballot, anchor time, anchor monotonic ms) of this master's term clock."""

    def _make_sm(self, group: int) -> StateMachine:
        sm = LockTable(
            self.storage, group, keys_max=self.keys_max, values_bytes_max=self.values_bytes_max
        )
        self.sms[group] = sm
        return sm

    # -- Node protocol --------------------------------------------------------------------------

    def step(self, now: Now, inp: Input) -> Effects:
        self.last_mono = now.mono_ms
        own: list[Reply] = []
        fx: Effects | None = None
        match inp:
            case Boot():
                self._boot(now)
                fx = self.replica.step(now, inp)
            case Received():
                fx = self.replica.step(now, inp)
            case ClientCall(call_id=call_id, request=request):
                if not self.booted:
                    raise InvariantViolation("the first input of an incarnation must be Boot")
                fx = self._on_call(now, call_id, request, own)
            case Wake():
                fx = self._on_wake(now)
            case _:
                assert_never(inp)
        if fx is None:
            return Effects(replies=tuple(own)) if own else NO_EFFECTS
        return self._translate(fx, own)

    def next_deadline(self) -> int | None:
        best = self.replica.next_deadline()
        if self.booted:
            tick = min(self.cleanup_at)
            if best is None or tick < best:
                best = tick
        return best

    # -- queries --------------------------------------------------------------------------------

    def is_master(self, group: int, now: Now) -> bool:
        return self.replica.is_master(group, now)

    def master_of(self, group: int) -> NodeId | None:
        return self.replica.master_of(group)

    def applied(self, group: int) -> int:
        return self.replica.applied(group)

    def state_machine(self, group: int) -> LockTable:
        return self.sms[group]

    def group_of(self, key: str) -> int:
        return group_of_key(key, self.groups)

    def stamp(self, now: Now, group: int) -> int:
        """The time this replica stamps ``group``'s commands with (the module docstring's
        term clock); its wall clock when it is not the group's master (nothing it proposes
        is applied then)."""
        wall = _wall(now)
        if not self.replica.is_master(group, now):
            self.terms.pop(group, None)
            return wall
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
        self.terms[group] = term
        return min(wall, clock)

    # -- inputs ---------------------------------------------------------------------------------

    def _boot(self, now: Now) -> None:
        # A new incarnation forgets every call: the driver never answers them.
        self.calls.clear()
        self.sms.clear()
        tick = self.cleanup_tick_ms
        self.cleanup_at = [now.mono_ms + tick * (g + 1) // self.groups for g in range(self.groups)]
        self.cleaning = [False] * self.groups
        self.booted = True

    def _on_wake(self, now: Now) -> Effects | None:
        t = now.mono_ms
        due = self.replica.next_deadline()
        if due is not None and due <= t:
            return self.replica.step(now, Wake())
        for g in range(self.groups):
            if self.cleanup_at[g] > t:
                continue
            self.cleanup_at[g] = t + self.cleanup_tick_ms
            wall = self.stamp(now, g)
            if (
                not self.cleaning[g]
                and self.replica.is_master(g, now)
                and self.sms[g].cleanup_due(wall)
            ):
                self.cleaning[g] = True
                inner = self._new_call(_Call(outer=_CLEANUP, group=g))
                # One proposal per step: other due groups wait for the next (immediate) Wake.
                return self._submit(now, inner, g, encode_command(CleanupCmd(now_ms=wall)))
        return None

    def _on_call(self, now: Now, call_id: int, request: object, own: list[Reply]) -> Effects | None:
        cmd = self._command(now, request)
        if isinstance(cmd, LockError):
            own.append(Reply(call_id=call_id, response=cmd))
            return None
        if isinstance(cmd, ReadLock):  # a local read
            own.append(Reply(call_id=call_id, response=self._local_read(now, cmd.key)))
            return None
        if isinstance(cmd, ListLocks):  # a local listing
            own.append(Reply(call_id=call_id, response=self._local_list(now, cmd)))
            return None
        value = encode_command(cmd)
        if len(value) > self.config.value_bytes_max:
            own.append(
                Reply(
                    call_id=call_id,
                    response=_bad("too_large", f"command of {len(value)} bytes over the limit"),
                )
            )
            return None
        group = self.group_of(_key_of(cmd))
        return self._submit(now, self._new_call(_Call(outer=call_id, group=group)), group, value)

    def _local_read(self, now: Now, key: str) -> LockOk | LockRedirect:
        group = self.group_of(key)
        if not self.replica.is_master(group, now):
            master = self.replica.master_of(group)
            return LockRedirect(master=None if master == self.node_id else master)
        # As of the group's time (see the module docstring): 0 never raises it.
        return self.sms[group].read(key, 0)

    def _local_list(self, now: Now, req: ListLocks) -> LockList | LockRedirect:
        group = self.group_of(req.prefix)
        if not self.replica.is_master(group, now):
            master = self.replica.master_of(group)
            return LockRedirect(master=None if master == self.node_id else master)
        # As of the group's time, as for a local read.
        return self.sms[group].list_dir(req.prefix, req.entries_max, req.start_after, 0)

    # -- requests -------------------------------------------------------------------------------

    def _command(self, now: Now, request: object) -> Command | ReadLock | ListLocks | LockError:
        """The command for ``request`` (a local ``ReadLock`` or ``ListLocks`` as is), or why
        it is refused."""
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
            case _:
                return _bad("bad_request", f"not a lock request: {type(request).__name__}")

    # -- proposals ------------------------------------------------------------------------------

    def _new_call(self, call: _Call) -> int:
        inner = self.next_inner
        self.next_inner += 1
        self.calls[inner] = call
        return inner

    def _submit(self, now: Now, inner: int, group: int, value: bytes) -> Effects:
        return self.replica.step(
            now, ClientCall(call_id=inner, request=Propose(group=group, value=value))
        )

    def _translate(self, fx: Effects, own: list[Reply]) -> Effects:
        """The replica's effects with its replies rewritten into lock responses."""
        if not fx.replies and not own:
            return fx
        replies = list(own)
        for r in fx.replies:
            call = self.calls.pop(r.call_id, None)
            if call is None:
                raise InvariantViolation(f"the replica answered unknown call {r.call_id}")
            if call.outer == _CLEANUP:
                self.cleaning[call.group] = False
                continue
            replies.append(Reply(call_id=call.outer, response=_response(r.response)))
        return Effects(writes=fx.writes, sends=fx.sends, replies=tuple(replies), trace=fx.trace)


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
        case AcquireCmd() | RenewCmd() | ReleaseCmd() | ReadCmd():
            return cmd.key
        case ListCmd():
            return cmd.prefix
        case CleanupCmd():  # pragma: no cover - cleanups are not client commands
            raise InvariantViolation("a cleanup has no key")
        case _:
            assert_never(cmd)


def _response(answer: object) -> object:
    """A lock response for the replica's answer to one proposal."""
    match answer:
        case ProposeOk(result=result):
            try:
                decoded = codec.decode(result)
            except codec.CodecError as exc:
                raise InvariantViolation(f"undecodable lock table result: {exc}") from exc
            if not isinstance(decoded, LockOk | LockDenied | LockList | LockError):
                raise InvariantViolation(f"unexpected lock table result {type(decoded).__name__}")
            return decoded
        case Redirect(master=master):
            return LockRedirect(master=master)
        case ProposeRejected(reason=reason):
            code = "too_large" if "large" in reason else "overloaded"
            return LockError(code=code, message=reason, definite=True)
        case ProposeUnknown(reason=reason):
            return LockError(code="unknown", message=reason, definite=False)
        case _:
            raise InvariantViolation(f"unexpected replica answer {type(answer).__name__}")
