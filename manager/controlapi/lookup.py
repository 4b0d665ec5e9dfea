"""Resolving a user's reference to an object the way Docker does: full ID, then name, then a
unique ID prefix; an ambiguous reference is refused rather than guessed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from manager.errors import InvalidArgument, NotFound

T = TypeVar("T")


def resolve(objects: Sequence[T], ref: str, kind: str,
            names: Callable[[T], Iterable[str]] = lambda _: ()) -> T:
    for obj in objects:
        if obj.id == ref:  # type: ignore[attr-defined]
            return obj
    named = [o for o in objects if ref in names(o)]
    if len(named) == 1:
        return named[0]
    prefixed = [o for o in objects if ref and o.id.startswith(ref)]  # type: ignore[attr-defined]
    if len(prefixed) == 1 and not named:
        return prefixed[0]
    matches = len(named) or len(prefixed)
    if matches > 1:
        raise InvalidArgument(f"{kind} {ref} is ambiguous ({matches} matches); use the full ID")
    raise NotFound(f"{kind} {ref} not found")
