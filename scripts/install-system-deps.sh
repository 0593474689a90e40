#!/usr/bin/env bash
# Install the Debian packages the lab and the test suite need (idempotent; needs root).
# Used by `make test`, `make demo` and .ci/run on a fresh Debian 12 machine.
set -euo pipefail
PACKAGES=(
  python3-venv            # the project's virtual environment
  debootstrap             # builds the lab's base root filesystems
  systemd-container       # systemd-nspawn boots each lab host
  iproute2                # network namespaces and veth pairs
  openssh-client          # ssh-keygen and the testinfra ssh backend
  apt-cacher-ng           # Debian packages for the lab hosts (no route out)
  apt-utils dpkg-dev      # apt-ftparchive and dpkg-deb: the lab's signed apt repository
  gnupg                   # signs that repository with a throwaway test key
  docker-registry         # CNCF Distribution: the lab's OCI model registry
  curl ca-certificates zstd
  pciutils                # the real lspci the lspci test double is compared with
  prometheus              # promtool: `promtool check/test rules` of templates/monitoring/
  vagrant vagrant-libvirt # `vagrant validate` of the Vagrantfile (no VMs run here)
)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-system-deps: missing ${missing[*]}; run as root (or: sudo $0)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts these services on install; the lab runs its own instances on its own address.
for svc in apt-cacher-ng docker-registry prometheus; do
  if command -v systemctl >/dev/null && systemctl is-active -q "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
