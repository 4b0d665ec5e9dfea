#!/usr/bin/env bash
# build-dist.sh: fills vagrant/dist with what every VM installs offline: wheels of Shoal and
# all its dependencies (vagrant/dist/wheels) and the test images (busybox.tar, `make images`).
# The VMs' Python is Debian 12's 3.11, like this machine's, so the host's wheels fit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=python3
images=${SHOAL_IMAGES:-$repo/images/out}
dist=$here/dist
rm -rf "$dist.part" && mkdir -p "$dist.part/wheels"
"$py" -m pip wheel -q --wheel-dir "$dist.part/wheels" "$repo"
cp "$images/busybox.tar" "$dist.part/busybox.tar"
git -C "$repo" describe --always --dirty > "$dist.part/shoal.version" 2>/dev/null || date > "$dist.part/shoal.version"
rm -rf "$dist" && mv "$dist.part" "$dist"
echo "$dist: $(ls "$dist/wheels" | wc -l) wheels, $(cat "$dist/shoal.version")"
