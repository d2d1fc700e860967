"""TLS of the production wire: the cluster's certificates, the SSL contexts, peer identities.

With ``[tls]`` on (``pxq.config.TlsConfig``), every connection to a node is TLS 1.3 with a
certificate on both ends signed by the cluster's own CA:

* Identity. A certificate names exactly one identity in its subject's common name:
  ``node:<name>`` for a replica (store or lock), ``client:<name>`` for a client principal
  (``client:admin`` is the cluster administrator). The CA signs only what ``pxq cluster up``
  and ``pxq tls issue`` make, so a verified certificate's CN is the identity the holder of its
  key proved. No hostname is checked (nodes move between addresses; the CN is what counts).
* A node's server context requires a client certificate of the CA (a connection without one
  fails its handshake and never reaches the node), unless some principal of the cluster file
  has login tokens (``token_sha256``): then a certificate is optional (one that is presented
  is still verified), and a connection without one must send ``Login(token)`` first, its
  identity being the principal the token's SHA-256 names (``pxq.access``); the runner believes a ``Hello(node=X)``
  only on a connection whose certificate says ``node:X`` and checks every client call against
  the principal the certificate names (``pxq.access``).
* A client or a node connecting out verifies the server's certificate against the CA and then
  checks that it names the node it meant to reach (``expect``); a mismatch closes the
  connection before anything is sent (``PeerIdentityMismatch``).
* Files in the TLS directory (``[tls] dir``), 0600 in a 0700 directory (``net.files``):
  ``ca.pem``/``ca.key`` (EC P-256, self-signed, 10 years), ``node-<name>.pem``/``.key`` and
  ``client-<name>.pem``/``.key`` (EC P-256, signed by the CA, 10 years).
  ``ensure_cluster_material`` creates what is missing (``pxq cluster up``: the CA, a
  certificate per node of the configuration and one for ``admin``); ``issue`` adds one
  identity (``pxq tls issue NAME``). Revoking a certificate means a new CA (delete the
  directory's files and ``up`` again with new client certificates): there is no CRL.

Generation uses the ``cryptography`` package, the contexts Python's ``ssl`` module; both
asyncio's loop and uvloop take them the same way (``create_server(ssl=)``,
``create_connection(ssl=, server_hostname=)``), and ``connection_made`` runs once the
handshake is done, with the peer's certificate at ``get_extra_info("ssl_object")``.
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from net.errors import TlsError
from net.files import private_dir, write_private
from pxq.access import CLIENT_PREFIX, NODE_PREFIX
from pxq.config import ClusterConfig

CA_CERT: Final = "ca.pem"
CA_KEY: Final = "ca.key"
VALID_DAYS: Final = 3650
IDENTITY_ENV: Final = "PXQ_IDENTITY"
CERT_ENV: Final = "PXQ_TLS_CERT"
KEY_ENV: Final = "PXQ_TLS_KEY"
TOKEN_ENV: Final = "PXQ_TOKEN"
"""Environment variables a client command takes its identity from (``--identity``,
``--cert``, ``--key`` set the first three); with ``$PXQ_TOKEN`` a client logs in with that
token instead of presenting a certificate."""


def node_identity(node: str) -> str:
    return f"{NODE_PREFIX}{node}"


def client_identity(name: str) -> str:
    return f"{CLIENT_PREFIX}{name}"


def _file_stem(identity: str) -> str:
    kind, _, name = identity.partition(":")
    if kind not in ("node", "client") or not name:
        raise ValueError(f"not an identity: {identity!r} (node:NAME or client:NAME)")
    return f"{kind}-{name}"


def cert_path(tls_dir: Path, identity: str) -> Path:
    return tls_dir / f"{_file_stem(identity)}.pem"


def key_path(tls_dir: Path, identity: str) -> Path:
    return tls_dir / f"{_file_stem(identity)}.key"


# -- generation --------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_ca(tls_dir: Path, cluster: str) -> None:
    """A new CA for ``cluster`` in ``tls_dir`` (replacing any): ``ca.pem`` and ``ca.key``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private_dir(tls_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pxq CA of cluster {cluster}")])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(
        tls_dir / CA_KEY,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_private(tls_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))


def issue(tls_dir: Path, identity: str) -> tuple[Path, Path]:
    """A certificate and key for ``identity`` (``node:NAME`` or ``client:NAME``) signed by the
    CA in ``tls_dir`` (replacing any); returns their paths. ``TlsError`` without a CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    crt_file, key_file = cert_path(tls_dir, identity), key_path(tls_dir, identity)
    try:
        ca_cert = x509.load_pem_x509_certificate((tls_dir / CA_CERT).read_bytes())
        ca_key = serialization.load_pem_private_key((tls_dir / CA_KEY).read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read the cluster CA in {tls_dir}: {exc}") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"{tls_dir / CA_KEY} is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    private_dir(tls_dir)
    write_private(
        key_file,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_private(crt_file, cert.public_bytes(serialization.Encoding.PEM))
    return crt_file, key_file


def ensure_cluster_material(config: ClusterConfig) -> list[str]:
    """With ``[tls]`` on: create what is missing in the TLS directory: the CA, a certificate
    for every node of ``config`` and one for the default client identity. Returns the files
    created (empty when everything was there, or TLS is off). A new CA re-issues every
    certificate (the old ones are not signed by it)."""
    tls = config.tls
    if not tls.enabled:
        return []
    tls_dir = Path(tls.dir)
    created: list[str] = []
    fresh_ca = not (tls_dir / CA_CERT).exists() or not (tls_dir / CA_KEY).exists()
    if fresh_ca:
        create_ca(tls_dir, config.name)
        created += [CA_CERT, CA_KEY]
    identities = [node_identity(n.node) for n in config.all_nodes()]
    identities.append(client_identity(tls.identity))
    for identity in identities:
        crt, key = cert_path(tls_dir, identity), key_path(tls_dir, identity)
        if fresh_ca or not crt.exists() or not key.exists():
            issue(tls_dir, identity)
            created += [crt.name, key.name]
    return created


# -- contexts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsContexts:
    """The SSL contexts of one process: ``identity`` is what its own certificate says (a
    token client's: ``token``); ``server`` (nodes only) accepts connections, ``client`` opens
    them; ``token``: log in with it (a client without a certificate)."""

    identity: str
    client: ssl.SSLContext
    server: ssl.SSLContext | None = None
    token: str | None = field(default=None, repr=False)


def _context(
    purpose: int, ca: Path, cert: Path | None, key: Path | None, *, optional: bool = False
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the certificate's CN is checked instead (see the docstring)
    ctx.verify_mode = ssl.CERT_OPTIONAL if optional else ssl.CERT_REQUIRED
    if not ca.is_file():
        raise TlsError(f"TLS is on but the cluster CA {ca} is missing (pxq cluster up makes it)")
    if cert is None or key is None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"cannot load the cluster CA {ca}: {exc}") from exc
        return ctx
    for path, what in ((cert, "the certificate"), (key, "the key")):
        if not path.is_file():
            raise TlsError(
                f"TLS is on but {what} {path} is missing (pxq cluster up creates the cluster's "
                f"CA and certificates; pxq tls issue NAME one for a client)"
            )
    try:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the TLS material {cert} / {key} / {ca}: {exc}") from exc
    return ctx


def node_contexts(config: ClusterConfig, node: str) -> TlsContexts | None:
    """A node's contexts (its own certificate both ways); None with TLS off."""
    if not config.tls.enabled:
        return None
    tls_dir = Path(config.tls.dir)
    identity = node_identity(node)
    crt, key, ca = cert_path(tls_dir, identity), key_path(tls_dir, identity), tls_dir / CA_CERT
    tokens = any(p.token_sha256 for p in config.principals)
    return TlsContexts(
        identity=identity,
        client=_context(ssl.PROTOCOL_TLS_CLIENT, ca, crt, key),
        server=_context(ssl.PROTOCOL_TLS_SERVER, ca, crt, key, optional=tokens),
    )


def client_contexts(
    config: ClusterConfig,
    *,
    identity: str | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
) -> TlsContexts | None:
    """A client's context; None with TLS off. The principal is ``identity``, else
    ``$PXQ_IDENTITY``, else ``[tls] identity`` (``admin``); its certificate and key are
    ``cert``/``key``, else ``$PXQ_TLS_CERT``/``$PXQ_TLS_KEY``, else
    ``client-<name>.pem``/``.key`` in the TLS directory. With ``token`` (else
    ``$PXQ_TOKEN``) and no certificate given, the client presents none and logs in with the
    token."""
    if not config.tls.enabled:
        return None
    tls_dir = Path(config.tls.dir)
    token = token or os.environ.get(TOKEN_ENV)
    if token and cert is None and not os.environ.get(CERT_ENV):
        return TlsContexts(
            identity="token",
            client=_context(ssl.PROTOCOL_TLS_CLIENT, tls_dir / CA_CERT, None, None),
            token=token,
        )
    name = identity or os.environ.get(IDENTITY_ENV) or config.tls.identity
    who = client_identity(name)
    cert = cert or _env_path(CERT_ENV) or cert_path(tls_dir, who)
    key = key or _env_path(KEY_ENV) or key_path(tls_dir, who)
    return TlsContexts(
        identity=who, client=_context(ssl.PROTOCOL_TLS_CLIENT, tls_dir / CA_CERT, cert, key)
    )


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def peer_identity(transport: object) -> str | None:
    """The identity (common name) of the verified certificate of a TLS transport's peer; None
    for a plain transport or a certificate without one."""
    get_extra_info = getattr(transport, "get_extra_info", None)
    if get_extra_info is None:
        return None
    ssl_object = get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName" and isinstance(value, str):
                return value
    return None
