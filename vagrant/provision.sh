#!/usr/bin/env bash
# provision.sh NAME ROLE ADDRESS FIRST_MANAGER_ADDRESS
set -euo pipefail
name=$1 role=$2 addr=$3 first=$4
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv make iproute2 nftables
cd /shoal
make venv
install -d /run/shoal /var/lib/shoal
cat > /etc/systemd/system/shoald.service <<UNIT
[Unit]
Description=Shoal node daemon
After=network-online.target
[Service]
ExecStart=/shoal/.venv/bin/shoald --data-root /var/lib/shoal --host unix:///run/shoal/shoal.sock --hostname $name
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now shoald
sleep 2
shoal=/shoal/.venv/bin/shoal
if [ "$name" = "m1" ]; then
  $shoal swarm init --advertise-addr "$addr" || true
  $shoal swarm join-token -q worker > /shoal/vagrant/.worker-token
  $shoal swarm join-token -q manager > /shoal/vagrant/.manager-token
else
  $shoal swarm join --token "$(cat /shoal/vagrant/.$role-token)" --advertise-addr "$addr" \
    "$first:2377" || true
fi
