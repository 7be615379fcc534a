"""Authentication for the gRPC APIs: TLS on the wire, a signed token naming the caller.

Server side, :class:`TokenAuthenticator` turns a call's `authorization: Bearer <token>` metadata
into the caller's identity or ends the call with UNAUTHENTICATED. Client side,
:func:`authenticated_channel` opens a TLS channel that sends such a token with every call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from plumbing.tokens import InvalidToken, TokenVerifier, issue_token, load_signing_key

log = logging.getLogger(__name__)


class TokenAuthenticator:
    """Who is calling, from the bearer token in the call's metadata."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    def identity(self, context: grpc.ServicerContext) -> str:
        """The caller's verified identity; aborts the call with UNAUTHENTICATED otherwise."""
        metadata = dict(context.invocation_metadata() or ())
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "no credentials: send `authorization: Bearer <token>` signed with your "
                "system's key",
            )
        try:
            return self._verifier.verify(token.strip())
        except InvalidToken as error:
            log.warning("refused a call: %s", error)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"invalid credentials: {error}")
            raise AssertionError("unreachable") from error


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate chain and key (PEM)."""

    certificate_chain: bytes
    private_key: bytes

    @classmethod
    def from_dir(cls, folder: Path) -> ServerTls:
        return cls((folder / "server.pem").read_bytes(), (folder / "server-key.pem").read_bytes())

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key, self.certificate_chain)])


def client_channel(
    address: str, tls_dir: Path | None, key_path: Path | None, *, audience: str, key_setting: str
) -> grpc.Channel:
    """The channel a command-line client opens: plaintext without `tls_dir` (local test
    fixtures); else TLS trusting `tls_dir/ca.pem`, with a token signed by `key_path` as the
    identity its file name names (`<id>.key`). `key_setting` names the variable to set."""
    if tls_dir is None:
        return grpc.insecure_channel(address)
    if key_path is None:
        raise ValueError(f"the API speaks TLS: set {key_setting} to your <id>.key file")
    token = issue_token(key_path.stem, load_signing_key(key_path), audience=audience)
    return authenticated_channel(address, (tls_dir / "ca.pem").read_bytes(), token)


def authenticated_channel(address: str, ca_pem: bytes, token: str | None) -> grpc.Channel:
    """A TLS channel to `address` trusting `ca_pem`; with a token, every call carries it."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.secure_channel(address, credentials)
