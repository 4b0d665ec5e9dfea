#!/usr/bin/env bash
# test.sh: `make vagrant-test`. A real VM cluster end to end (not part of `make test`):
#   builds the offline box if missing and Shoal's wheels, brings up 1 manager + 2 workers
#   (SHOAL_VAGRANT_MANAGERS / SHOAL_VAGRANT_WORKERS) under libvirt in a network namespace of
#   its own, checks `vagrant ssh m1 -c 'shoal node ls'` lists every VM Ready, deploys a
#   service on an encrypted overlay network, checks it answers by name (from a task on every
#   VM) and through the published port (on every VM's address, from every VM), kills a
#   worker VM and sees its tasks replaced, destroys everything and checks that no interface,
#   route, firewall rule or libvirt object is left on the machine.
# KEEP=1 leaves the cluster up on failure (then: vagrant/test.sh down).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${SHOAL_VAGRANT_CACHE:-/var/tmp/shoal-vagrant}
export SHOAL_VAGRANT_CACHE=$cache SHOAL_VAGRANT_POOL=shoal-vagrant
export SHOAL_VAGRANT_MANAGERS=${SHOAL_VAGRANT_MANAGERS:-1}
export SHOAL_VAGRANT_WORKERS=${SHOAL_VAGRANT_WORKERS:-2}
export VAGRANT_CWD=$here VAGRANT_DEFAULT_PROVIDER=libvirt
run=$cache/run
start=$(date +%s)
managers=$(seq -f 'm%g' 1 "$SHOAL_VAGRANT_MANAGERS")
workers=$(seq -f 'w%g' 1 "$SHOAL_VAGRANT_WORKERS")
vms="$managers $workers"
victim=w$SHOAL_VAGRANT_WORKERS

log() { printf '[%4ds] %s\n' $(($(date +%s) - start)) "$*"; }
fail() { log "FAIL: $*"; exit 1; }
ns() { "$here/netns.sh" run "$@"; }
quiet_vagrant() { ns vagrant "$@" 2>&1 | tr '\r' '\n' | grep -v 'Progress:' \
  | sed 's/\x1b\[[0-9;]*[A-Za-z]//g' | grep -v '^\s*$' >> "$run/vagrant.log"; }
on() { local vm=$1; shift; ns ssh -F "$run/ssh-config" -o LogLevel=ERROR "$vm" "$@"; }
# wait_for SECONDS DESCRIPTION COMMAND...: retries until COMMAND succeeds.
wait_for() {
  local deadline=$(($(date +%s) + $1)) what=$2; shift 2
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 3
  done
}
host_state() {
  { ip -o link | sed 's/^[0-9]*: //; s/ qlen.*//' | cut -d' ' -f1 | sort
    ip route; ip -6 route
    nft list ruleset 2>/dev/null | grep -Ei 'libvirt|virbr|vnet|192\.168\.(56|121)' || true
    iptables-save 2>/dev/null | grep -Ei 'libvirt|virbr|vnet|192\.168\.(56|121)' || true
    ls /etc/libvirt/qemu/networks/ /etc/libvirt/qemu/ /etc/libvirt/storage/ 2>/dev/null
  } | sort
}
memory_mib() { ps -o rss= -C qemu-system-x86_64 | awk '{s += $1; n++} END {
  printf "%d VMs, %d MiB resident in all, %d MiB each", n, s/1024, n ? s/1024/n : 0}'; }

teardown() {
  log "destroying the VMs"
  quiet_vagrant destroy -f || true
  "$here/netns.sh" down >> "$run/vagrant.log" 2>&1 || true
}

down_only() { mkdir -p "$run"; teardown; }
[ "${1:-}" = down ] && { down_only; exit 0; }

mkdir -p "$run"
: > "$run/vagrant.log"
host_state > "$run/host-before"
trap 'rc=$?; if [ $rc -ne 0 ] && [ -z "${KEEP:-}" ]; then teardown; fi;
      [ $rc -ne 0 ] && log "log: $run/vagrant.log"; exit $rc' EXIT

log "box (built only if missing) and Shoal's wheels"
"$here/build-box.sh" "$cache" > "$run/build-box.log" 2>&1 || fail "build-box.sh: $run/build-box.log"
"$here/build-dist.sh" > "$run/build-dist.log" 2>&1 || fail "build-dist.sh: $run/build-dist.log"
"$here/netns.sh" up >> "$run/vagrant.log"
daemons=$(cat "$cache"/netns/*.pid)

log "vagrant up m1"
quiet_vagrant up m1 || fail "vagrant up m1"
log "vagrant up $(echo "$vms" | tr '\n' ' ' | sed 's/^m1 //')(in parallel)"
# shellcheck disable=SC2046
quiet_vagrant up $(echo "$vms" | grep -v '^m1$') || fail "vagrant up"
ns vagrant ssh-config $vms > "$run/ssh-config" 2>/dev/null
log "all VMs up ($(memory_mib))"

ready() {
  local out; out=$(ns vagrant ssh m1 -c 'shoal node ls' 2>/dev/null) || return 1
  for vm in $vms; do echo "$out" | grep -E "\s$vm\s+Ready\s+Active" >/dev/null || return 1; done
  echo "$out" > "$run/node-ls"
}
wait_for 180 "every VM Ready in 'shoal node ls'" ready
log "vagrant ssh m1 -c 'shoal node ls':"; sed 's/^/    /' "$run/node-ls"

log "an encrypted overlay network and a service publishing port 8080"
on m1 'shoal network create -d overlay --opt encrypted web' >/dev/null
on m1 'shoal service create --detach --name web --network web --replicas 3 -p 8080:8080 \
  shoal/busybox:latest httpd -f -p 8080 -h /etc' >/dev/null
on m1 'shoal service create --detach --name probe --mode global --network web \
  shoal/busybox:latest sleep 1000000' >/dev/null
# running SERVICE N [NODE]: N tasks desired and currently Running (none on NODE).
running() { [ "$(on m1 "shoal service ps $1 -f desired-state=running" \
  | awk -v skip="${3:-}" '$4 != skip && $5 == "Running" && $6 == "Running"' | wc -l)" -eq "$2" ]; }
n_vms=$(echo "$vms" | wc -w)
all_running() { running web 3 && running probe "$n_vms"; }
wait_for 300 "3 web tasks and $n_vms probe tasks running" all_running
on m1 'shoal service ps web' | sed 's/^/    /'
# shoald's log lines, with their component and node, in each VM's journal
for vm in $vms; do
  line=$(on "$vm" 'sudo journalctl -u shoald --no-pager -o cat' | grep -E '^.* INFO [a-z_.]+ \[node=[a-z0-9]+' | tail -n 1)
  [ -n "$line" ] || fail "journalctl -u shoald on $vm shows no shoald log line naming its node"
  log "  $vm: journalctl -u shoald: $line"
done

by_name() {  # from the probe task on VM $1, GET http://web:8080/hostname
  on "$1" 'c=$(sudo docker ps -q -f label=com.docker.swarm.service.name=probe | head -n1);
           [ -n "$c" ] && sudo docker exec "$c" sh -c "wget -O - http://web:8080/hostname 2>/dev/null"'
}
published() { on "$1" "curl -sf -m 5 http://$2:8080/hostname"; }
addr_of() { case $1 in m*) echo "192.168.56.$((10 + ${1#m}))" ;; w*) echo "192.168.56.$((20 + ${1#w}))" ;; esac; }
check_answers() {
  local vm peer
  for vm in $1; do
    wait_for 90 "web by name from $vm" by_name "$vm" >/dev/null
    log "  $vm: http://web:8080 (by name, from a task) answers $(by_name "$vm")"
    for peer in $1; do
      wait_for 60 "published port $(addr_of "$peer"):8080 from $vm" \
        published "$vm" "$(addr_of "$peer")" >/dev/null
    done
    log "  $vm: published port 8080 answers on $(echo $1 | wc -w) VMs' addresses"
  done
}
log "checking the service answers from every VM"
check_answers "$vms"

log "killing worker VM $victim"
on_victim=$(on m1 'shoal service ps web -f desired-state=running' | awk -v v="$victim" '$4 == v' | wc -l)
virsh destroy "vagrant_$victim" >/dev/null
log "  $victim had $on_victim web task(s)"
down_node() { on m1 'shoal node ls' | grep -E "\s$victim\s+Down" >/dev/null; }
wait_for 120 "$victim Down" down_node
replaced() { running web 3 "$victim"; }
wait_for 180 "web's tasks replaced on the live VMs" replaced
on m1 'shoal service ps web' | sed 's/^/    /'
check_answers "$(echo "$vms" | grep -v "^$victim$")"
log "all VMs up ($(memory_mib))"

trap - EXIT
teardown
sleep 1
host_state > "$run/host-after"
# Other tests on the machine may add or remove their own links meanwhile: only what libvirt,
# QEMU or Vagrant name (bridges, taps, their subnets, definitions) counts as ours.
new=$(diff "$run/host-before" "$run/host-after" | grep '^>' || true)
left=$(echo "$new" | grep -Ei 'virbr|vnet|vagrant|libvirt|192\.168\.(56|121)\.' || true)
[ -z "$new" ] || [ -n "$left" ] || log "changed on the machine meanwhile (not ours): $new"
[ -z "$left" ] || fail "left on the machine:
$left"
ps -C qemu-system-x86_64 >/dev/null && fail "a qemu process is still running"
for pid in $daemons; do kill -0 "$pid" 2>/dev/null && fail "PID $pid (libvirtd, virtlogd or the netns holder) still runs"; done
log "PASS: nothing left on the machine (interfaces, routes, firewall rules, libvirt objects)"
