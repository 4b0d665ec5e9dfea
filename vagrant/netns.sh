#!/usr/bin/env bash
# netns.sh up|down|run CMD...: a network namespace of our own for libvirtd, virtlogd and
# vagrant, so the bridges, dnsmasq and firewall rules of libvirt's networks never touch the
# machine and vanish with the namespace. libvirt's unix socket is on the filesystem, so
# `virsh` works from outside too. State (PIDs) in $SHOAL_VAGRANT_CACHE/netns.
#   up    starts the namespace holder, virtlogd, libvirtd and the storage pool shoal-vagrant
#   run   runs a command inside the namespace (e.g. ./netns.sh run vagrant up)
#   down  stops what `up` started (by PID), leaving nothing behind
set -euo pipefail
cache=${SHOAL_VAGRANT_CACHE:-/var/tmp/shoal-vagrant}
state=$cache/netns
pool=shoal-vagrant

alive() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }
in_ns() { nsenter --net="/proc/$(cat "$state/holder.pid")/ns/net" "$@"; }

up() {
  mkdir -p "$state" "$cache/pool" "$cache/console"
  chmod 0777 "$cache/console"
  if ! alive holder; then
    if [ -S /run/libvirt/libvirt-sock ] && virsh -q version >/dev/null 2>&1; then
      echo "a libvirtd we did not start is running: not starting another" >&2; exit 1
    fi
    unshare --net sleep infinity </dev/null >/dev/null 2>&1 &
    echo $! > "$state/holder.pid"
    sleep 0.2
    in_ns ip link set lo up
  fi
  if ! alive virtlogd; then
    # nsenter execs the daemon: $! is the daemon's PID (a function would add a subshell).
    nsenter --net="/proc/$(cat "$state/holder.pid")/ns/net" virtlogd \
      </dev/null >>"$state/virtlogd.log" 2>&1 &
    echo $! > "$state/virtlogd.pid"
  fi
  if ! alive libvirtd; then
    nsenter --net="/proc/$(cat "$state/holder.pid")/ns/net" libvirtd \
      </dev/null >>"$state/libvirtd.log" 2>&1 &
    echo $! > "$state/libvirtd.pid"
  fi
  for _ in $(seq 60); do virsh -q version >/dev/null 2>&1 && break; sleep 0.5; done
  virsh -q version >/dev/null
  if ! virsh pool-info "$pool" >/dev/null 2>&1; then
    virsh -q pool-define-as "$pool" dir --target "$cache/pool" >/dev/null
  fi
  virsh pool-info "$pool" | grep -q running || virsh -q pool-start "$pool" >/dev/null
  echo "libvirtd up in netns of PID $(cat "$state/holder.pid")"
}

down() {
  # The pool's directory keeps the uploaded box volume for the next run; its definition goes.
  if alive libvirtd && virsh pool-info "$pool" >/dev/null 2>&1; then
    virsh -q pool-destroy "$pool" >/dev/null 2>&1 || true
    virsh -q pool-undefine "$pool" >/dev/null 2>&1 || true
  fi
  for d in libvirtd virtlogd holder; do
    if alive "$d"; then
      pid=$(cat "$state/$d.pid")
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$state/$d.pid"
  done
  echo "netns, libvirtd and virtlogd stopped"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  run) shift; in_ns "$@" ;;
  *) echo "usage: $0 up|down|run CMD..." >&2; exit 2 ;;
esac
