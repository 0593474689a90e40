#!/usr/bin/env bash
# The Vagrant smoke run (docs/vagrant.md): boot the VMs of the repository's Vagrantfile, provision
# them with the toolkit, verify them, and destroy them again, whatever happened.
#
#   vagrant up  ->  provision plan  ->  provision apply  ->  provision verify  ->  vagrant destroy -f
#
# Usage: scripts/vagrant-smoke.sh [VM ...]     (default: all four: ubuntu2204 ubuntu2404 debian12 rocky9)
# Needs Vagrant with a working provider (libvirt or VirtualBox; pick one with
# VAGRANT_DEFAULT_PROVIDER) and the project's venv (`make venv`). The VMs are destroyed on every
# exit (success, failure, Ctrl-C). Exit status: the first failing step's, else 1 if the destroy
# failed, else 0.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

export VAGRANT_CHECKPOINT_DISABLE=1
export VAGRANT_CWD="$root"
provision="${PROVISION:-$root/.venv/bin/provision}"
inventory=inventories/vagrant.py

if [[ $# -gt 0 ]]; then vms=("$@"); else vms=(ubuntu2204 ubuntu2404 debian12 rocky9); fi
limit=()
for vm in "${vms[@]}"; do limit+=(--limit "@vagrant/$vm"); done

if ! command -v vagrant >/dev/null 2>&1; then
    echo "vagrant-smoke: vagrant is not installed (see docs/vagrant.md)" >&2
    exit 2
fi
if [[ ! -x "$provision" ]]; then
    echo "vagrant-smoke: $provision not found: run 'make venv' first" >&2
    exit 2
fi

step() {  # step NAME COMMAND...: run one step and say how long it took
    local name=$1 start=$SECONDS
    shift
    echo "== vagrant-smoke: $name"
    "$@"
    echo "== vagrant-smoke: $name done in $((SECONDS - start)) s"
}

destroy() {
    local rc=$?
    trap - EXIT INT TERM
    echo "== vagrant-smoke: vagrant destroy -f ${vms[*]}"
    if ! vagrant destroy -f "${vms[@]}"; then
        echo "vagrant-smoke: vagrant destroy failed: check 'vagrant status' for leftover VMs" >&2
        [[ $rc -eq 0 ]] && rc=1
    fi
    echo "== vagrant-smoke: finished in $SECONDS s with exit status $rc"
    exit "$rc"
}
trap destroy EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "vagrant up ${vms[*]}" vagrant up "${vms[@]}"
step "provision plan" "$provision" plan "$inventory" "${limit[@]}"
step "provision apply" "$provision" apply "$inventory" "${limit[@]}"
step "provision verify" "$provision" verify "$inventory" "${limit[@]}"
