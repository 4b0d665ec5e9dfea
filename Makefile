# Two commands set up everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := iproute2 nftables docker.io containerd runc wireguard-go wireguard-tools busybox-static procps iperf3 tcpdump \
	chromium chromium-driver
STAMP := $(VENV)/.installed

.PHONY: deps sysdeps venv images proto test lint unit system demo bench clean vagrant-deps vagrant-test

deps: sysdeps venv

# $(call apt_ensure,PACKAGES,APT OPTIONS): apt packages, installed only when one is missing
# (idempotent, no network if all present).
define apt_ensure
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) $$missing >/dev/null; \
	fi
endef

sysdeps:
	$(call apt_ensure,$(APT_PACKAGES),)

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Test images (shoal/busybox:latest, :v1, :v2) as a `docker save` tarball that `lab up` loads;
# rebuilt only when missing or when images/build.py changes (no Docker daemon needed).
IMAGES := images/out/busybox.tar

images: $(IMAGES)

$(IMAGES): images/build.py | sysdeps
	python3 images/build.py $@

# Regenerates proto/*_pb2*.py(i); tests/unit/test_proto_generated.py checks they are current.
proto: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I. --python_out=. --mypy_out=. proto/objects.proto proto/store.proto
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I. --python_out=. --mypy_out=. --grpc_python_out=. --mypy_grpc_out=. proto/cluster.proto

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy proto pki manager worker netdriver shoal
	$(VENV)/bin/lint-imports

unit: venv
	$(VENV)/bin/pytest -q tests/unit tests/integration

# Tests run on two pytest-xdist workers: system tests mostly wait on daemons and networks
# (a serial run took 34 min, two workers ~18); every lab has its own names and subnet.
# Whole files go to one worker: tests of a file may share a module-scoped lab in order.
PARALLEL := -n 2 --dist loadfile

system: deps images
	$(VENV)/bin/pytest -q $(PARALLEL) tests/system

# The whole suite. pytest exits 5 when it collects nothing; that is a failure here.
test: deps lint images
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PARALLEL) --durations=30 tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

demo: deps images
	$(PY) -m shoal.demo

bench: deps images
	$(PY) bench/store_bench.py
	$(PY) bench/scheduler_bench.py --all
	$(PY) bench/start_latency.py
	$(PY) bench/recovery.py
	$(PY) bench/failover.py
	$(PY) bench/scale_sim.py
	$(PY) bench/idle_cpu.py

# A real VM cluster (libvirt, QEMU) end to end: box built offline if missing, 1 manager +
# 2 workers, overlay service, a worker VM killed, everything destroyed. Not part of `test`.
VAGRANT_APT := qemu-system-x86 qemu-utils mmdebstrap vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients dnsmasq-base

vagrant-deps:
	$(call apt_ensure,$(VAGRANT_APT),--no-install-recommends)

vagrant-test: deps images vagrant-deps
	PYTHON=$(CURDIR)/$(PY) vagrant/test.sh

clean:
	rm -rf $(VENV) build *.egg-info images/out
