#!/usr/bin/env bash
# build-box.sh [CACHE_DIR]: builds the offline libvirt box "shoal/bookworm" (Debian 12) with
# mmdebstrap from the apt mirror this machine uses, and adds it to Vagrant.
#
# Idempotent: every step is skipped when its output is already in CACHE_DIR
# (default /var/tmp/shoal-vagrant); delete the directory to rebuild from scratch.
#
# The box bakes in everything a Shoal node needs (docker.io, wireguard-tools, wireguard-go,
# nftables, iproute2, python3-venv, ...) because the VMs have no route to the mirror when
# libvirt runs in a network namespace of its own; provisioning then needs no network at all.
# No bootloader: the Vagrantfile boots CACHE_DIR/vmlinuz and CACHE_DIR/initrd.img directly.
set -euo pipefail
cache=${1:-${SHOAL_VAGRANT_CACHE:-/var/tmp/shoal-vagrant}}
box_name=${SHOAL_VAGRANT_BOX_NAME:-shoal/bookworm}
disk_size=${SHOAL_VAGRANT_DISK:-4G}
packages=linux-image-amd64,systemd-sysv,udev,dbus,openssh-server,ifupdown,isc-dhcp-client
packages+=,iproute2,iputils-ping,sudo,rsync,ca-certificates,procps,less,curl,netbase
packages+=,python3,python3-venv,docker.io,containerd,runc,wireguard-tools,wireguard-go
packages+=,nftables,iptables,busybox-static,kmod,initramfs-tools,apparmor
# (apparmor: Debian's kernel enables AppArmor and dockerd refuses to start containers
# without apparmor_parser to load its docker-default profile.)
docker_json='{"iptables": false, "ip6tables": false, "bridge": "none", "ip-forward": false, "ip-masq": false, "userland-proxy": false}'
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
  || true)
mirror=${SHOAL_VAGRANT_MIRROR:-${mirror:-http://deb.debian.org/debian}}
insecure_key=$(find /usr/share/rubygems-integration /usr/lib/ruby /usr/share/vagrant \
  -path '*keys/vagrant.pub' 2>/dev/null | head -n1 || true)

[ -n "$insecure_key" ] || { echo "Vagrant's insecure public key not found" >&2; exit 1; }
mkdir -p "$cache"
cd "$cache"

# A changed package list or dockerd configuration rebuilds everything.
recipe=$(printf '%s\n%s\n' "$packages" "$docker_json")
if [ -f recipe ] && [ "$(cat recipe)" != "$recipe" ]; then
  echo "the box's recipe changed: rebuilding"
  rm -rf rootfs rootfs.part rootfs.part.ok box.img shoal-bookworm.box pool/*_vagrant_box_image_*
  (cd / && vagrant box remove --force "$box_name" >/dev/null 2>&1) || true
fi

if [ ! -d rootfs ]; then
  if [ ! -f rootfs.part.ok ]; then
    echo "mmdebstrap bookworm from $mirror"
    rm -rf rootfs.part
    mmdebstrap --variant=minbase --format=directory --include="$packages" \
      --customize-hook='chroot "$1" useradd -m -s /bin/bash -G sudo vagrant' \
      bookworm rootfs.part "$mirror"
    touch rootfs.part.ok
  fi
  r=rootfs.part
  echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$r/etc/sudoers.d/vagrant"
  chmod 0440 "$r/etc/sudoers.d/vagrant"
  install -d -m 0700 "$r/home/vagrant/.ssh"
  install -m 0600 "$insecure_key" "$r/home/vagrant/.ssh/authorized_keys"
  chroot "$r" chown -R vagrant:vagrant /home/vagrant/.ssh
  echo 'vagrant:vagrant' | chroot "$r" chpasswd
  printf 'auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n' \
    > "$r/etc/network/interfaces"
  echo 'shoal' > "$r/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 shoal\n' > "$r/etc/hosts"
  echo '/dev/vda / ext4 defaults 0 1' > "$r/etc/fstab"
  # One image, many VMs: each gets its own machine-id and SSH host keys on first boot.
  : > "$r/etc/machine-id"
  rm -f "$r"/etc/ssh/ssh_host_*
  cat > "$r/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
UNIT
  ln -sf /etc/systemd/system/ssh-hostkeys.service \
    "$r/etc/systemd/system/multi-user.target.wants/ssh-hostkeys.service"
  echo 'UseDNS no' > "$r/etc/ssh/sshd_config.d/vagrant.conf"
  # Shoal plumbs task networking itself (as in `shoal lab`): dockerd must add no bridge and
  # no iptables rule; its FORWARD policy DROP would block the routing mesh between VMs.
  install -d "$r/etc/docker"
  echo "$docker_json" > "$r/etc/docker/daemon.json"
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*
  cp -L "$r/vmlinuz" vmlinuz.part && mv vmlinuz.part vmlinuz
  cp -L "$r/initrd.img" initrd.img.part && mv initrd.img.part initrd.img
  mv rootfs.part rootfs
  rm -f rootfs.part.ok
fi

if [ ! -f box.img ]; then
  rm -f disk.raw
  truncate -s "$disk_size" disk.raw
  mkfs.ext4 -q -F -L root -d rootfs disk.raw
  qemu-img convert -c -O qcow2 disk.raw box.img.part
  rm -f disk.raw
  mv box.img.part box.img
fi

if [ ! -f shoal-bookworm.box ]; then
  size=$(qemu-img info --output=json box.img | python3 -c \
    'import json,sys; print(-(-json.load(sys.stdin)["virtual-size"] // 2**30))')
  printf '{"provider":"libvirt","format":"qcow2","virtual_size":%s}\n' "$size" > metadata.json
  printf 'Vagrant.configure("2") do |c|\n  c.vm.provider :libvirt do |l|\n    l.driver = "qemu"\n  end\nend\n' > Vagrantfile
  tar -cf shoal-bookworm.box.part metadata.json Vagrantfile box.img
  mv shoal-bookworm.box.part shoal-bookworm.box
fi

if ! vagrant box list 2>/dev/null | grep -q "^$box_name "; then
  (cd / && vagrant box add --force --name "$box_name" "$cache/shoal-bookworm.box")
fi
printf '%s\n' "$recipe" > recipe
echo "box $box_name ready; kernel $cache/vmlinuz initrd $cache/initrd.img"
