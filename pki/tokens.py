"""Join tokens (SWMTKN-1-<CA digest>-<secret>) and the CA digest they carry."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from pki.certs import load_cert
from pki.errors import TokenError

TOKEN_PREFIX = "SWMTKN-1-"
DIGEST_LEN = 50  # sha256 (256 bits) in base36 needs 50 digits
SECRET_LEN = 25  # 128 bits in base36 needs 25 digits
_SECRET_BYTES = 16
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_TOKEN_RE = re.compile(
    rf"^{re.escape(TOKEN_PREFIX)}(?P<digest>[0-9a-z]{{{DIGEST_LEN}}})"
    rf"-(?P<secret>[0-9a-z]{{{SECRET_LEN}}})$"
)


def _base36(value: int, width: int) -> str:
    digits = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_B36[rem])
    return "".join(reversed(digits)).rjust(width, "0")


def ca_digest(ca_cert_pem: bytes) -> str:
    """sha256 of the CA certificate's DER, in base36 padded to 50 digits."""
    der = load_cert(ca_cert_pem).public_bytes(serialization.Encoding.DER)
    return _base36(int.from_bytes(hashlib.sha256(der).digest(), "big"), DIGEST_LEN)


@dataclass(frozen=True)
class JoinToken:
    digest: str
    secret: str


def new_token_secret() -> str:
    return _base36(int.from_bytes(secrets.token_bytes(_SECRET_BYTES), "big"), SECRET_LEN)


def format_join_token(digest: str, secret: str) -> str:
    return f"{TOKEN_PREFIX}{digest}-{secret}"


def _redact(text: str) -> str:
    # A malformed token may still be most of a real one; don't echo all of it into logs.
    return text if len(text) <= 16 else text[:16] + "..."


def parse_join_token(text: str) -> JoinToken:
    match = _TOKEN_RE.match(text.strip())
    if match is None:
        raise TokenError(
            f'invalid join token "{_redact(text.strip())}": malformed, expected '
            f"{TOKEN_PREFIX}<{DIGEST_LEN}-char CA digest>-<{SECRET_LEN}-char secret>"
        )
    return JoinToken(digest=match["digest"], secret=match["secret"])
