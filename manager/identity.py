"""Object IDs: 25 characters of base36 from 128 random bits, like swarmkit's."""

import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id() -> str:
    value = secrets.randbits(128)
    chars = []
    for _ in range(25):
        value, rem = divmod(value, 36)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))
