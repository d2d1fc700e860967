"""``pxq.access``: the permission each request needs and who has it; the ``[tls]`` and
``[[principals]]`` tables of the cluster file.

Behaviours checked: produce, consume (base topic and retry levels), redrive (dead letters),
seek, locks and admin permissions are derived from the request; probes need none; ``admin``
and node identities may do everything, an unlisted principal nothing but probes, a listed
one what its patterns say (``*`` per segment); no identity (TLS off) is never refused; a
refusal is a definite error of the request's service naming the permission; the tables'
defaults, the relative TLS directory, and errors naming the key path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pxq.access import AccessPolicy, refusal_response, required_permission, token_digest
from pxq.config import ConfigError, default_toml, load_config, loads_config
from pxq.lock.messages import Acquire, LockError, ReadLock
from pxq.store.messages import CommitCursor, Enqueue, Get, Retry, Seek, SeekPreview, StoreError

BASE = """
[cluster]
name = "t"
[[stores]]
name = "store0"
groups = 1
[[stores.replicas]]
node = "s0"
port = 7000
[[topics]]
name = "orders"
queues = 2
[[topics.consumer_groups]]
name = "billing"
retries = [{ delay_ms = 10 }]
"""


def get(topic: str, items_max: int = 10) -> Get:
    return Get(topic=topic, group="billing", queue=0, cursor=0, items_max=items_max, bytes_max=1)


def test_the_permission_each_request_needs() -> None:
    enqueue = Enqueue(topic="orders", queue=0, producer="p", seq=1, items=())
    assert required_permission(enqueue) == "produce:orders"
    derived = Enqueue(topic="orders.dlq.billing", queue=0, producer="p", seq=1, items=())
    assert required_permission(derived) == "admin"
    assert required_permission(get("orders")) == "consume:orders/billing"
    assert required_permission(get("orders.retry.billing.1")) == "consume:orders/billing"
    assert required_permission(get("orders.dlq.billing")) == "redrive:orders/billing"
    assert required_permission(get("orders", items_max=0)) is None  # a master probe
    commit = CommitCursor(topic="orders", group="billing", queue=0, cursor=5)
    assert required_permission(commit) == "consume:orders/billing"
    retry = Retry(topic="orders", group="billing", queue=0, offset=1)
    assert required_permission(retry) == "consume:orders/billing"
    seek = Seek(topic="orders", group="billing", queue=None, back_ms=1)
    assert required_permission(seek) == "seek:orders/billing"
    preview = SeekPreview(topic="orders", group="billing", queue=0, offset=3)  # seek --dry-run
    assert required_permission(preview) == "seek:orders/billing"
    assert required_permission(Acquire(key="k", holder="h", lease_ms=10)) == "locks"
    assert required_permission(ReadLock(key="k")) == "locks"
    assert required_permission(ReadLock(key="pxq-probe-3")) is None
    assert required_permission(ReadLock(key="pxq-probe-3", through_log=True)) == "locks"
    assert required_permission(object()) == "admin"


def test_who_may_do_what() -> None:
    config = loads_config(
        BASE
        + """
[[principals]]
name = "shop"
produce = ["orders"]
[[principals]]
name = "biller"
consume = ["orders/billing"]
seek = ["*/billing"]
locks = true
[[principals]]
name = "ops"
admin = true
"""
    )
    policy = AccessPolicy.for_cluster(config)
    assert policy.allows("client:admin", "admin")
    assert policy.allows("node:s0", "produce:orders")
    assert policy.allows("client:ops", "redrive:orders/billing")
    assert policy.allows("client:shop", "produce:orders")
    assert not policy.allows("client:shop", "produce:other")
    assert not policy.allows("client:shop", "consume:orders/billing")
    assert policy.allows("client:biller", "consume:orders/billing")
    assert not policy.allows("client:biller", "consume:orders/other")
    assert policy.allows("client:biller", "seek:anything/billing")
    assert policy.allows("client:biller", "locks")
    assert not policy.allows("client:shop", "locks")
    assert not policy.allows("client:biller", "redrive:orders/billing")
    assert not policy.allows("client:stranger", "produce:orders")  # not listed
    assert not policy.allows("admin", "admin")  # not an identity a certificate carries
    # TLS off: no identity, nothing refused; probes are open to anyone authenticated.
    assert policy.refusal(None, get("orders")) is None
    assert policy.refusal("client:stranger", get("orders", items_max=0)) is None
    refusal = policy.refusal("client:shop", get("orders"))
    assert refusal is not None
    assert refusal.message == "permission denied: client:shop lacks consume:orders/billing"
    store = refusal_response(get("orders"), refusal)
    assert store == StoreError(code="permission_denied", message=refusal.message, definite=True)
    lock = refusal_response(Acquire(key="k", holder="h", lease_ms=1), refusal)
    assert isinstance(lock, LockError) and lock.code == "permission_denied" and lock.definite


def test_a_token_authenticates_the_principal_whose_digest_the_file_holds() -> None:
    digest = token_digest("t0k3n")
    assert digest == hashlib.sha256(b"t0k3n").hexdigest()
    config = loads_config(BASE + f'[[principals]]\nname = "shop"\ntoken_sha256 = ["{digest}"]\n')
    policy = AccessPolicy.for_cluster(config)
    assert policy.principal_of_token("t0k3n") == "client:shop"
    assert policy.principal_of_token("guess") is None


def test_the_tls_table(tmp_path: Path) -> None:
    assert not loads_config(BASE).tls.enabled  # absent: off
    on = loads_config(BASE + "[tls]\n")
    assert (on.tls.enabled, on.tls.dir, on.tls.identity) == (True, "tls", "admin")
    path = tmp_path / "c.toml"
    path.write_text(BASE + '[tls]\nidentity = "ops"\n', encoding="utf-8")
    loaded = load_config(path)
    assert loaded.tls.dir == str(tmp_path / "tls") and loaded.tls.identity == "ops"
    assert loads_config(default_toml()).tls.enabled
    assert not loads_config(default_toml(tls=False)).tls.enabled


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ("[tls]\nenabled = 1\n", "tls.enabled", "expected a boolean"),
        ("[tls]\nport = 1\n", "tls.port", "unknown key"),
        ('[tls]\ndir = ""\n', "tls.dir", "must not be empty"),
        ('[[principals]]\nname = "admin"\n', "principals[0].name", "may always do everything"),
        ('[[principals]]\nname = "a"\nproduce = ["a/b"]\n', "principals[0].produce[0]", "a topic"),
        (
            '[[principals]]\nname = "a"\nconsume = ["a"]\n',
            "principals[0].consume[0]",
            "topic/group",
        ),
        ('[[principals]]\nname = "a"\nseek = ["a/b*"]\n', "principals[0].seek[0]", "name or *"),
        ('[[principals]]\nname = "a"\nlocks = "yes"\n', "principals[0].locks", "boolean"),
        ('[[principals]]\nname = "a"\n[[principals]]\nname = "a"\n', "principals[1].name", "dup"),
        (
            '[[principals]]\nname = "a"\ntoken_sha256 = ["abc"]\n',
            "principals[0].token_sha256[0]",
            "64",
        ),
        (
            f'[[principals]]\nname = "a"\ntoken_sha256 = ["{"0" * 64}"]\n'
            f'[[principals]]\nname = "b"\ntoken_sha256 = ["{"0" * 64}"]\n',
            "principals[1].token_sha256[0]",
            "same token digest",
        ),
    ],
)
def test_tls_and_principal_errors_name_the_key(extra: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads_config(BASE + extra, file="x.toml")
    assert info.value.key_path == key
    assert reason in info.value.reason
