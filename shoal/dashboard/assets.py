"""The dashboard's static files, shipped inside the package (no CDN): read by name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^[a-z][a-z0-9-]*\.(html|js|css|svg)$")
CONTENT_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css",
                 "svg": "image/svg+xml"}
INDEX = "index.html"

# The page loads its own files and talks to its own origin only: no inline script, no CDN.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def asset(name: str) -> Asset | None:
    """The static file `name` ("" is the index), or None when there is no such file. Only
    plain names are served: no path separators, nothing hidden."""
    name = name or INDEX
    match = _NAME.match(name)
    if match is None:
        return None
    path = resources.files(__package__).joinpath("static", name)
    if not path.is_file():
        return None
    return Asset(path.read_bytes(), CONTENT_TYPES[match.group(1)])
