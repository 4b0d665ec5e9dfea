#!/usr/bin/env python3
"""Build the test images as one `docker load`-able tarball, without a Docker daemon.

`python3 images/build.py [OUT]` writes OUT (default images/out/busybox.tar) in the format of
`docker save` (manifest.json, repositories, <config>.json, <layer>/layer.tar), which dockerd
20.10 loads (it does not load OCI layouts). Two images share one layer made from Debian's
busybox-static: /bin/busybox and a symlink per applet (sh, httpd, nc, wget, nslookup, ...),
/etc/passwd and /etc/group with root and nobody, /tmp, /root, /var/www.

- `shoal/busybox:latest` (also tagged `shoal/busybox:v1`), CMD ["sh"];
- `shoal/busybox:v2`: the same files, a different image ID (label and env SHOAL_IMAGE=v2),
  for tests that update a service to a new image.

Deterministic: every timestamp, owner and order is fixed, so the same busybox gives a
byte-identical tarball. Standard library only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
from pathlib import Path

BUSYBOX = Path(os.environ.get("SHOAL_BUSYBOX", "/bin/busybox"))
REPO = "shoal/busybox"
CREATED = "2024-01-01T00:00:00Z"
MTIME = 1704067200  # CREATED as seconds since the epoch
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "busybox.tar"

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\n"
INDEX_HTML = "hello from shoal/busybox\n"


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def _applets() -> list[str]:
    """Paths (relative, e.g. `usr/bin/wget`) of every applet this busybox has."""
    out = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True,
                         check=True).stdout
    paths = {line.strip() for line in out.splitlines() if line.strip()}
    return sorted(p for p in paths if "/" in p and p != "bin/busybox")


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
    return info


def layer_tar() -> bytes:
    """The image's only layer: a rootfs tar with fixed metadata, entries sorted by path."""
    if not BUSYBOX.is_file():
        sys.exit(f"build.py: {BUSYBOX} not found; install Debian's busybox-static "
                 "(`apt-get install busybox-static`, or `make sysdeps`)")
    files: dict[str, tuple[int, bytes]] = {
        "bin/busybox": (0o755, BUSYBOX.read_bytes()),
        "etc/passwd": (0o644, PASSWD.encode()),
        "etc/group": (0o644, GROUP.encode()),
        "var/www/index.html": (0o644, INDEX_HTML.encode()),
    }
    links = {path: os.path.relpath("bin/busybox", os.path.dirname(path))
             for path in _applets()}
    dirs = {"tmp": 0o1777, "root": 0o700}
    for path in [*files, *links]:
        parent = os.path.dirname(path)
        while parent:
            dirs.setdefault(parent, 0o755)
            parent = os.path.dirname(parent)
    entries = [(p, "d") for p in dirs] + [(p, "f") for p in files] + [(p, "l") for p in links]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, kind in sorted(entries):
            if kind == "d":
                tar.addfile(_info(path + "/", tarfile.DIRTYPE, dirs[path]))
            elif kind == "f":
                mode, data = files[path]
                tar.addfile(_info(path, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
            else:
                tar.addfile(_info(path, tarfile.SYMTYPE, 0o777, link=links[path]))
    return buf.getvalue()


def _config(diff_id: str, tag: str) -> bytes:
    env, labels = [PATH_ENV], {"org.shoal.image": f"{REPO}:{tag}"}
    if tag != "latest":
        env.append(f"SHOAL_IMAGE={tag}")
    config = {
        "architecture": _arch(), "os": "linux", "created": CREATED,
        "config": {"Env": env, "Cmd": ["sh"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": CREATED,
                     "created_by": f"images/build.py: {BUSYBOX} and an applet symlink each"}],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def save_tar(layer: bytes) -> bytes:
    """The `docker save` tarball of both images over `layer`."""
    layer_hex = hashlib.sha256(layer).hexdigest()
    members: dict[str, bytes] = {
        f"{layer_hex}/VERSION": b"1.0",
        f"{layer_hex}/json": json.dumps({"id": layer_hex, "created": CREATED}).encode(),
        f"{layer_hex}/layer.tar": layer,
    }
    manifest = []
    for tags in (["latest", "v1"], ["v2"]):
        config = _config("sha256:" + layer_hex, tags[0])
        name = hashlib.sha256(config).hexdigest() + ".json"
        members[name] = config
        manifest.append({"Config": name, "RepoTags": [f"{REPO}:{t}" for t in tags],
                         "Layers": [f"{layer_hex}/layer.tar"]})
    members["manifest.json"] = json.dumps(manifest, separators=(",", ":")).encode()
    repositories = {REPO: {t: layer_hex for t in ("latest", "v1", "v2")}}
    members["repositories"] = json.dumps(repositories, separators=(",", ":")).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(_info(layer_hex + "/", tarfile.DIRTYPE, 0o755))
        for name in sorted(members):
            data = members[name]
            tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return buf.getvalue()


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    data = save_tar(layer_tar())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    print(f"{out}: {REPO}:latest, :v1, :v2 ({len(data)} bytes, "
          f"sha256 {hashlib.sha256(data).hexdigest()[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
