"""TLS of the `shoal` CLI towards a tcp:// daemon, with the docker CLI's flags and
environment: --tls (encrypt, don't verify the daemon), --tlsverify (or DOCKER_TLS_VERIFY
set: verify the daemon against --tlscacert), --tlscacert/--tlscert/--tlskey defaulting to
ca.pem, cert.pem and key.pem in DOCKER_CERT_PATH (else ~/.docker). A client certificate
that was not named and does not exist is simply not sent, as the docker CLI does."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass


class ClientTLSError(Exception):
    """A TLS file can't be used; the message names it."""


@dataclass(frozen=True)
class ClientTLS:
    verify: bool
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.verify:
            try:
                ctx.load_verify_locations(cafile=self.cacert)
            except (OSError, ssl.SSLError) as err:
                raise ClientTLSError(f"cannot load the CA certificate {self.cacert}: "
                                     f"{err}") from err
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert and self.key:
            try:
                ctx.load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError) as err:
                raise ClientTLSError(f"cannot load the client certificate {self.cert} / key "
                                     f"{self.key}: {err}") from err
        return ctx


def cert_dir(env: Mapping[str, str]) -> str:
    return env.get("DOCKER_CERT_PATH") or os.path.join(os.path.expanduser("~"), ".docker")


def client_tls(tls: bool, tlsverify: bool, cacert: str | None, cert: str | None,
               key: str | None, env: Mapping[str, str]) -> ClientTLS | None:
    """What TLS to use, if any, from the flags (None when not given) and the environment."""
    verify = tlsverify or bool(env.get("DOCKER_TLS_VERIFY"))
    if not (tls or verify or env.get("DOCKER_TLS")):
        return None
    base = cert_dir(env)

    def pick(given: str | None, name: str) -> str | None:
        if given:
            return given
        default = os.path.join(base, name)
        return default if os.path.exists(default) else None

    ca = pick(cacert, "ca.pem")
    if verify and ca is None:
        raise ClientTLSError(f"--tlsverify needs the CA certificate: --tlscacert FILE or "
                             f"ca.pem in {base} (DOCKER_CERT_PATH)")
    return ClientTLS(verify=verify, cacert=ca, cert=pick(cert, "cert.pem"),
                     key=pick(key, "key.pem"))
