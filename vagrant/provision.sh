#!/usr/bin/env bash
# provision.sh NAME ROLE ADDRESS FIRST_MANAGER_ADDRESS (run as root in the VM by Vagrant)
# Installs Shoal into the VM's own virtual environment (/opt/shoal/venv) from the wheels the
# file provisioner copied to /tmp/shoal-dist (no network needed), runs shoald under systemd,
# and on the first manager initialises the swarm and keeps the join tokens in
# /var/lib/shoal-vagrant, where the Vagrantfile's join trigger reads them (vagrant ssh).
set -euo pipefail
name=$1 role=$2 addr=$3 first=$4
dist=/tmp/shoal-dist
packages="python3-venv docker.io containerd runc wireguard-tools wireguard-go nftables iproute2
  busybox-static"

missing=$(for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"
done)
if [ -n "$missing" ]; then  # debian/bookworm64 from the internet; the offline box has them all
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

if [ ! -x /opt/shoal/venv/bin/shoald ] || [ "$dist/shoal.version" -nt /opt/shoal/venv ]; then
  python3 -m venv /opt/shoal/venv
  /opt/shoal/venv/bin/pip install -q --no-index --find-links "$dist/wheels" --force-reinstall \
    --no-deps "$dist"/wheels/shoal-*.whl
  /opt/shoal/venv/bin/pip install -q --no-index --find-links "$dist/wheels" shoal
  touch /opt/shoal/venv
fi
# shoald's socket is root's (0600, like Docker's without a docker group): `vagrant ssh -c
# 'shoal ...'` runs as vagrant, which has passwordless sudo.
rm -f /usr/local/bin/shoal
cat > /usr/local/bin/shoal <<'SCRIPT'
#!/bin/sh
[ "$(id -u)" = 0 ] || exec sudo /opt/shoal/venv/bin/shoal "$@"
exec /opt/shoal/venv/bin/shoal "$@"
SCRIPT
chmod 0755 /usr/local/bin/shoal

# Shoal plumbs task networking itself: dockerd adds no bridge and no iptables rule (the
# offline box has this file already; debian/bookworm64's dockerd needs a restart).
docker_json='{"iptables": false, "ip6tables": false, "bridge": "none", "ip-forward": false, "ip-masq": false, "userland-proxy": false}'
if [ "$(cat /etc/docker/daemon.json 2>/dev/null)" != "$docker_json" ]; then
  install -d /etc/docker
  echo "$docker_json" > /etc/docker/daemon.json
  systemctl restart docker || true
  iptables -P FORWARD ACCEPT || true
  ip link del docker0 2>/dev/null || true
fi
systemctl enable --now docker >/dev/null 2>&1
for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
[ -f "$dist/busybox.tar" ] && docker load -q -i "$dist/busybox.tar"

install -d /var/lib/shoal /var/lib/shoal-vagrant
cat > /etc/systemd/system/shoald.service <<UNIT
[Unit]
Description=Shoal node daemon
After=network-online.target docker.service
Wants=docker.service
[Service]
ExecStart=/opt/shoal/venv/bin/shoald --data-root /var/lib/shoal --host unix:///run/shoal/shoal.sock --hostname $name
RuntimeDirectory=shoal
RuntimeDirectoryPreserve=yes
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable shoald >/dev/null 2>&1
systemctl restart shoald
state() { curl -s --unix-socket /run/shoal/shoal.sock http://shoal/info \
  | sed -n 's/.*"LocalNodeState": *"\([a-z]*\)".*/\1/p'; }
for _ in $(seq 60); do [ -n "$(state)" ] && break; sleep 1; done
if [ "$name" = "m1" ] && [ "$(state)" != "active" ]; then
  shoal swarm init --advertise-addr "$addr"
fi
if [ "$name" = "m1" ]; then
  shoal swarm join-token -q worker > /var/lib/shoal-vagrant/worker-token
  shoal swarm join-token -q manager > /var/lib/shoal-vagrant/manager-token
fi
# The Vagrantfile's trigger calls this with m1's token once m1 is up (idempotent).
cat > /usr/local/sbin/shoal-vagrant-join <<SCRIPT
#!/bin/sh
set -e
state=\$(curl -s --unix-socket /run/shoal/shoal.sock http://shoal/info | grep -o '"LocalNodeState": *"[a-z]*"')
case "\$state" in *'"active"') echo "$name is already in the swarm"; exit 0 ;; esac
exec shoal swarm join --token "\$1" --advertise-addr $addr $first:2377
SCRIPT
chmod 0755 /usr/local/sbin/shoal-vagrant-join
echo "$name ($role) provisioned; shoald: $(systemctl is-active shoald)"
