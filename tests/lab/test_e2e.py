"""End to end on the lab: apply → verify → converged re-apply → model update → broken on purpose.

The tests of this module run in order and share one lab (the session `lab` fixture): each step
builds on the state the previous one left, as an operator's day would. Every step asserts its
result; nothing is only printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.ollama.registry import fetch_manifest, push_model

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
REGISTRY = "http://169.254.100.1:5000"


def provision(
    *args: str, timeout: int = 1200, env: dict[str, str] | None = None
) -> tuple[int, Any, str]:
    """Run the real CLI; return (exit code, parsed JSON stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", *args, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    try:
        payload = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        payload = None
    return proc.returncode, payload, proc.stderr + proc.stdout[-4000:] * (payload is None)


def failing_checks(report: dict, host: str) -> dict[str, str]:
    return {
        f"{c['layer']}/{c['check']}": c["message"]
        for c in report["hosts"][host]["checks"]
        if c["status"] in ("fail", "error")
    }


@pytest.fixture(scope="module")
def applied(lab):
    """The first `provision apply` of the whole stack on every lab host."""
    code, result, err = provision("apply", str(lab.inventory))
    assert result is not None, err
    return code, result, err


def test_first_apply_provisions_every_host(lab, applied):
    code, result, err = applied
    assert code == 0, err
    assert result["failed_hosts"] == []
    assert set(result["hosts"]) == set(lab.hosts)
    for host, run in result["hosts"].items():
        assert run["status"] == "changed", (host, run)


def test_gpu_hosts_came_back_from_the_driver_reboot_with_the_module_loaded(lab, applied):
    code, facts, err = provision("facts", str(lab.inventory))
    assert code == 0, err
    for name in lab.hosts:
        spec = lab.info["hosts"][name]
        host = facts["hosts"][name]
        if spec["gpus"]:
            assert host["gpu_state"] == "ok", (name, host)
            assert host["driver_version"].startswith("580.")
            assert [g["memory_total_mib"] for g in host["gpus"]] == [
                g["memory_total_mib"] for g in spec["gpus"]
            ]
        else:
            assert host["gpu_state"] == "no-gpu", (name, host)


def test_driver_libraries_are_installed_and_held(lab, applied):
    """The libraries an unattended upgrade would move ahead of the module are held (issue 17)."""
    libraries = {"libnvidia-ml1", "libcuda1", "libnvidia-ptxjitcompiler1"}
    gpu_hosts = [h for h in lab.hosts if lab.info["hosts"][h]["gpus"]]
    assert gpu_hosts, lab.hosts
    for host in gpu_hosts:
        held = set(lab.ssh(host, "apt-mark showhold").stdout.split())
        assert libraries <= held, (host, sorted(held))
        versions = lab.ssh(
            host, "dpkg-query -W -f='${Version}\\n' nvidia-driver " + " ".join(sorted(libraries))
        ).stdout.split()
        assert len(set(versions)) == 1, (host, versions)


def test_verify_passes_on_every_host(lab, applied):
    junit = Path(os.environ.get("LAB_JUNIT_DIR", "/tmp")) / "provisioner-lab-verify.xml"
    code, report, err = provision("verify", str(lab.inventory), "--junit", str(junit))
    assert report is not None, err
    problems = {h: failing_checks(report, h) for h in report["hosts"]}
    assert code == 0 and not any(problems.values()), problems
    assert all(report["hosts"][h]["status"] == "pass" for h in lab.hosts)
    assert junit.exists() and 'failures="0"' in junit.read_text()


def test_resident_set_is_planned_together_and_found_loaded_together(lab, applied):
    """gpu1's chat/code model and embedding model (models_resident) fit its GPU together, and
    verify finds both in /api/ps at once (issue 14)."""
    code, plan, err = provision("plan", str(lab.inventory), "--limit", "gpu1")
    assert code == 0 and plan is not None, err
    host = plan["hosts"]["gpu1"]
    resident = host["resident"]
    assert resident["fits"] and resident["models"] == ["qwen2.5-coder:14b", "nomic-embed-text:v1.5"]
    models = {m["tag"]: m for m in host["models"]}
    assert all(models[t]["resident"] for t in resident["models"])
    assert resident["total_mib"] <= host["budget_mib"]
    assert models["llama3.2:3b"]["resident"] is False and models["llama3.2:3b"]["cold_load_s"] > 0
    code, report, err = provision("verify", str(lab.inventory), "--limit", "gpu1")
    assert report is not None, err
    checks = {f"{c['layer']}/{c['check']}": c for c in report["hosts"]["gpu1"]["checks"]}
    together = checks["ollama/resident_models_loaded_together"]
    assert together["status"] == "pass", together
    assert "qwen2.5-coder:14b, nomic-embed-text:v1.5 loaded together" in together["message"]


def test_second_apply_changes_nothing(lab, applied):
    code, result, err = provision("apply", str(lab.inventory))
    assert code == 0, err
    changed = {h: r["changed"] for h, r in result["hosts"].items() if r["changed"]}
    assert changed == {}, changed


# issue 15: a converged re-run reads each layer's state in one command; the count is what each
# host's sshd saw (bench/lab_bench.py's VERBOSE log, the bench's source of truth). Measured
# 2026-12-06: 62 commands per host before the state probes; the bound is what they reach.
MAX_CONVERGED_COMMANDS = 12


def test_a_converged_re_run_changes_nothing_in_few_remote_commands(lab, applied):
    from bench import lab_bench

    names = lab.hosts
    for name in names:
        lab.ssh(name, lab_bench.SSHD_SETUP)
    sessions = lab_bench.SessionLog({n: lab.fleet.root(lab.host(n)) for n in names})
    sessions.start(names)
    code, result, err = provision("apply", str(lab.inventory))
    seen = sessions.stop(settle=1.0)
    assert code == 0, err
    changed = {h: r["changed"] for h, r in result["hosts"].items() if r["changed"]}
    assert changed == {}, changed
    commands = {name: counts["commands"] for name, counts in seen.items()}
    assert all(0 < n <= MAX_CONVERGED_COMMANDS for n in commands.values()), commands
    assert all(counts["logins"] == 1 for counts in seen.values()), seen


def test_dry_run_shows_no_change_on_a_converged_fleet(lab, applied):
    code, result, err = provision("apply", str(lab.inventory), "--dry")
    assert code == 0, err
    assert result["dry"] is True
    assert all(r["changed"] == [] for r in result["hosts"].values()), result


def test_apply_limit_with_a_comma_runs_on_those_hosts_only(lab, applied):
    """Issue 18 item 1: `--limit gpu1,cpu1` once matched no host and reported success."""
    chosen = ["gpu1", "cpu1"]
    if not set(chosen) <= set(lab.hosts):
        pytest.skip(f"needs gpu1 and cpu1 in the lab, which has {lab.hosts}")
    for host in lab.hosts:  # a change for apply to make on every host: Ollama stopped
        lab.ssh(host, "systemctl stop ollama")
    try:
        code, result, err = provision("apply", str(lab.inventory), "--limit", ",".join(chosen))
        assert code == 0, err
        assert set(result["hosts"]) == set(chosen), result["hosts"].keys()
        for host in chosen:
            run = result["hosts"][host]
            assert run["changed"], (host, run)  # Ollama started again
            assert len(run["changed"]) + run["unchanged"] >= 10, (host, run)  # operations run
            assert lab.ssh(host, "systemctl is-active ollama", False).stdout.strip() == "active"
        for host in set(lab.hosts) - set(chosen):  # never touched
            state = lab.ssh(host, "systemctl is-active ollama", False).stdout.strip()
            assert state == "inactive", (host, state)
    finally:
        for host in lab.hosts:
            lab.ssh(host, "systemctl start ollama")


def test_models_update_picks_up_a_re_pushed_tag(lab, applied):
    before, _ = fetch_manifest(REGISTRY, "library/llama3.2", "3b")
    after = push_model(REGISTRY, "library/llama3.2", "3b", seed="llama3.2:3b republished")
    assert after != before
    try:
        code, result, err = provision("models", "update", str(lab.inventory))
        assert code == 0, err
        holders = [h for h in lab.hosts if h in ("gpu1", "gpu3")]
        assert holders, "gpu1 and gpu3 serve llama3.2:3b; neither is in the lab"
        for host in holders:
            run = result["hosts"][host]
            changes = [c["action"] for c in run["changes"] if c["model"] == "llama3.2:3b"]
            assert changes == ["updated"]
            served = run["models"]["llama3.2:3b"].removeprefix("sha256:")
            assert served == after.removeprefix("sha256:")
        for host in set(lab.hosts) - set(holders):
            assert result["hosts"][host]["changes"] == [], host
        code, result, err = provision("models", "update", str(lab.inventory))
        assert code == 0, err
        assert all(h["changes"] == [] for h in result["hosts"].values()), result
    finally:
        # back to the lab's own bytes, registry and hosts: later tests (the lock's) expect them
        lab.republish_model("library/llama3.2", "3b")
        code, _, err = provision("models", "update", str(lab.inventory))
        assert code == 0, err


def test_a_pinned_model_spelled_in_another_case_is_one_model(lab, applied):
    """Issue 17: gpu3 plans llama3.2:3b and pins "Llama3.2:3B": Ollama compares names without
    case, so plan, sync and verify see one model (model_name's canonical form), not two."""
    host = "gpu3"
    if host not in lab.hosts:
        pytest.skip("gpu3 plans llama3.2:3b")
    env = {"LAB_MODELS_PINNED": json.dumps({host: ["Llama3.2:3B"]})}
    code, plan, err = provision("plan", str(lab.inventory), "--limit", host, env=env)
    assert code == 0 and plan is not None, err
    tags = [m["tag"] for m in plan["hosts"][host]["models"]]
    skipped = [s["tag"] for s in plan["hosts"][host]["skipped"]]
    assert tags == ["llama3.2:3b"] and skipped == [], (tags, skipped)
    code, result, err = provision(
        "models", "sync", str(lab.inventory), "--limit", host, "--prune", env=env
    )
    assert code == 0, err
    run = result["hosts"][host]
    # the model under its one name, and the site registry's copy it was placed from
    site_copy = f"{REGISTRY.removeprefix('http://')}/library/llama3.2:3b"
    assert run["changes"] == [] and sorted(run["models"]) == [site_copy, "llama3.2:3b"], run
    tags = lab.ssh(host, "curl -sf http://127.0.0.1:11434/api/tags").stdout
    names = [m["name"] for m in json.loads(tags)["models"]]
    assert [n for n in names if n.lower().startswith("llama3.2")] == ["llama3.2:3b"], names
    code, report, err = provision("verify", str(lab.inventory), "--limit", host, env=env)
    assert report is not None, err
    assert code == 0, failing_checks(report, host)
    checks = {f"{c['layer']}/{c['check']}": c for c in report["hosts"][host]["checks"]}
    present = checks["ollama/models_present"]
    assert present["status"] == "pass" and present["message"].endswith(": llama3.2:3b"), present


# --- broken on purpose: verify names the broken layer on each host --------------------------


def test_verify_names_each_broken_layer(lab, applied):
    gpu_hosts = [h for h in lab.hosts if lab.info["hosts"][h]["gpus"]]
    broken: dict[str, str] = {}
    if "gpu3" in lab.hosts:
        lab.set_state("gpu3", "driver-mismatch")
        broken["gpu3"] = "driver/"
    if "gpu1" in lab.hosts:
        lab.ssh("gpu1", "systemctl stop ollama")
        broken["gpu1"] = "ollama/service"
    if "gpu2" in lab.hosts:
        lab.ssh("gpu2", "rm -rf /opt/provisioner/torch-venv")
        broken["gpu2"] = "pytorch/"
    if "cpu1" in lab.hosts:
        lab.ssh(
            "cpu1",
            'curl -sf -X DELETE http://127.0.0.1:11434/api/delete -d \'{"model": "llama3.2:1b"}\'',
        )
        broken["cpu1"] = "ollama/models_present"
    assert broken, f"no lab host to break among {lab.hosts} ({gpu_hosts})"
    code, report, err = provision("verify", str(lab.inventory))
    assert code == 1, err
    for host, layer in broken.items():
        failures = failing_checks(report, host)
        assert any(key.startswith(layer) for key in failures), (host, failures)
    assert "Driver/library version mismatch" in " ".join(failing_checks(report, "gpu3").values())
    assert "llama3.2:1b" in " ".join(failing_checks(report, "cpu1").values())


def test_no_reboot_reports_the_mismatched_host_as_pending_reboot(lab, applied):
    if "gpu3" not in lab.hosts:
        pytest.skip("gpu3 is the host broken into driver-mismatch")
    code, result, err = provision("apply", str(lab.inventory), "--no-reboot")
    assert code == 3, err
    assert result["failed_hosts"] == []
    run = result["hosts"]["gpu3"]
    assert run["status"] == "pending-reboot" and "mismatch" in run["pending_reboot"], run
    marker = lab.ssh("gpu3", "cat /var/lib/provisioner/reboot-required").stdout
    assert "mismatch" in marker
    others = {h: r["pending_reboot"] for h, r in result["hosts"].items() if h != "gpu3"}
    assert not any(others.values()), others


def test_apply_repairs_the_broken_hosts(lab, applied):
    boot_before = (
        lab.ssh("gpu3", "cat /proc/sys/kernel/random/boot_id").stdout
        if "gpu3" in lab.hosts
        else None
    )
    code, result, err = provision("apply", str(lab.inventory))
    assert code == 0, err
    if boot_before is not None:  # the driver-mismatch host was repaired by a real reboot
        assert lab.ssh("gpu3", "cat /proc/sys/kernel/random/boot_id").stdout != boot_before
        assert lab.ssh("gpu3", "test -e /var/lib/provisioner/reboot-required", False).returncode
    code, report, err = provision("verify", str(lab.inventory))
    problems = {h: failing_checks(report, h) for h in report["hosts"]}
    assert code == 0 and not any(problems.values()), problems


def test_ollama_listening_on_all_addresses_fails_verify(lab, applied):
    host = lab.hosts[0]
    dropin = "/etc/systemd/system/ollama.service.d/zz-test-exposed.conf"
    lab.ssh(
        host,
        f"printf '[Service]\\nEnvironment=OLLAMA_HOST=0.0.0.0:11434\\n' > {dropin} && "
        "systemctl daemon-reload && systemctl restart ollama && sleep 1",
    )
    try:
        code, report, err = provision("verify", str(lab.inventory), "--limit", host)
        assert code == 1, err
        failures = failing_checks(report, host)
        assert any("0.0.0.0" in message for message in failures.values()), failures
        # ... and it is reachable from another lab host, which is what makes it dangerous
        other = next((h for h in lab.hosts if h != host), None)
        if other:
            probe = lab.ssh(
                other,
                f"curl -s -m 3 http://{lab.addresses[host]}:11434/api/version",
                check=False,
            )
            assert '"version"' in probe.stdout
    finally:
        lab.ssh(host, f"rm -f {dropin} && systemctl daemon-reload && systemctl restart ollama")


def test_ollama_on_loopback_is_unreachable_from_another_host(lab, applied):
    if len(lab.hosts) < 2:
        pytest.skip("needs two lab hosts")
    host, other = lab.hosts[0], lab.hosts[1]
    lab.ssh(host, "curl -sf http://127.0.0.1:11434/api/version")
    probe = lab.ssh(other, f"curl -s -m 3 http://{lab.addresses[host]}:11434/", check=False)
    assert probe.returncode != 0 and "Ollama is running" not in probe.stdout


# --- Ollama install safety, exposure, and the real PyTorch install path -----------------------


def ollama_state(lab, host: str) -> tuple[str, str]:
    version = lab.ssh(host, "ollama --version", check=False).stdout.strip()
    active = lab.ssh(host, "systemctl is-active ollama", check=False).stdout.strip()
    return version, active


def _ends() -> tuple[str, str]:
    """The supported range's ends: the CVE floor and the default (newest verified) version."""
    from provisioner import ollama_release

    return ollama_release.cve_floor(), ollama_release.newest_verified()


def test_the_mirror_offers_both_ends_of_the_supported_range(lab):
    oldest, default = _ends()
    assert {oldest, default} <= set(lab.info["ollama"]["releases"])
    assert lab.info["ollama"]["default"] == default


def test_the_default_release_was_checked_against_its_own_sha256sum_txt(lab, applied):
    """No ollama_sha256 anywhere in the lab's data: the host took the sum from the mirrored
    sha256sum.txt and unpacked the .tar.zst only after it matched."""
    _, default = _ends()
    host = lab.hosts[0]
    marker = lab.ssh(host, f"cat /opt/ollama/{default}/.provisioner-sha256").stdout.strip()
    assert marker == lab.info["ollama"]["releases"][default]["sha256"]
    assert lab.info["ollama"]["releases"][default]["url"].endswith(".tar.zst")
    assert ollama_state(lab, host) == (f"ollama version is {default}", "active")


def test_checksum_mismatch_leaves_the_serving_version_untouched(lab, applied):
    oldest, default = _ends()
    host = lab.hosts[0]
    before = ollama_state(lab, host)
    assert before == (f"ollama version is {default}", "active"), before
    code, result, err = provision(
        "apply", str(lab.inventory), "--limit", host,
        "--data", f"ollama_version={oldest}", "--data", f"ollama_sha256={'0' * 64}",
    )  # fmt: skip
    assert code == 1, err
    assert result["failed_hosts"] == [host]
    assert ollama_state(lab, host) == before
    assert lab.ssh(host, f"test -e /opt/ollama/{oldest}/bin/ollama", check=False).returncode != 0


def test_a_tampered_archive_fails_against_the_release_sums(lab, applied):
    """The mirror serves a changed archive next to the release's unchanged sha256sum.txt: with
    no sum in any data the host fails on the mismatch and keeps serving what it served."""
    oldest, default = _ends()
    host = lab.hosts[0]
    before = ollama_state(lab, host)
    archive = Path(lab.info["ollama"]["releases"][oldest]["path"])
    original = archive.read_bytes()
    archive.write_bytes(original + b"tampered")
    try:
        code, result, err = provision(
            "apply", str(lab.inventory), "--limit", host,
            env={"LAB_OLLAMA_VERSION": oldest},
        )  # fmt: skip
    finally:
        archive.write_bytes(original)
    assert code == 1, err
    assert result["failed_hosts"] == [host]
    assert ollama_state(lab, host) == before
    assert lab.ssh(host, f"test -e /opt/ollama/{oldest}", check=False).returncode != 0


def test_the_oldest_supported_version_passes_apply_and_verify_then_switches_back(lab, applied):
    """The e2e flow on the CVE floor: install it (sum from its sha256sum.txt, a .tar.zst),
    verify every layer against it, then return to the default, atomically both ways."""
    oldest, default = _ends()
    host = lab.hosts[0]
    old = {"LAB_OLLAMA_VERSION": oldest}
    code, result, err = provision("apply", str(lab.inventory), "--limit", host, env=old)
    assert code == 0, err
    assert ollama_state(lab, host) == (f"ollama version is {oldest}", "active")
    assert lab.ssh(host, "readlink /opt/ollama/current").stdout.strip().endswith(oldest)
    code, report, err = provision("verify", str(lab.inventory), "--limit", host, env=old)
    assert code == 0, (err, failing_checks(report, host) if report else None)
    code, result, err = provision("apply", str(lab.inventory), "--limit", host)
    assert code == 0, err
    assert ollama_state(lab, host) == (f"ollama version is {default}", "active")


def test_proxy_refuses_requests_without_credentials(lab, applied):
    import base64
    import hashlib

    if len(lab.hosts) < 2:
        pytest.skip("needs two lab hosts")
    host, client = lab.hosts[0], lab.hosts[1]
    password = "lab-only-" + os.urandom(6).hex()  # made up per run, never stored
    digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
    os.environ["LAB_OLLAMA_HTPASSWD"] = f"ops:{{SHA}}{digest}\n"
    try:
        code, result, err = provision(
            "apply", str(lab.inventory), "--limit", host,
            "--data", "ollama_expose=proxy", "--data", "ollama_htpasswd_env=LAB_OLLAMA_HTPASSWD",
        )  # fmt: skip
        assert code == 0, err
        url = f"https://{lab.addresses[host]}/api/version"
        anonymous = lab.ssh(client, f"curl -sk -o /dev/null -w '%{{http_code}}' {url}", False)
        assert anonymous.stdout.strip() == "401"
        wrong = lab.ssh(
            client, f"curl -sk -u ops:nope -o /dev/null -w '%{{http_code}}' {url}", False
        )
        assert wrong.stdout.strip() == "401"
        good = lab.ssh(client, f"curl -sk -u ops:{password} {url}", False)
        assert '"version"' in good.stdout
        # Ollama itself still only listens on loopback behind the proxy
        direct = lab.ssh(client, f"curl -s -m 3 http://{lab.addresses[host]}:11434/", False)
        assert direct.returncode != 0
    finally:
        del os.environ["LAB_OLLAMA_HTPASSWD"]
        code, result, err = provision("apply", str(lab.inventory), "--limit", host)
        assert code == 0, err
    assert lab.ssh(host, "ss -ltn '( sport = :443 )' | tail -n +2", False).stdout.strip() == ""
    # removing the proxy removes what it installed: credentials, key, site, and the nginx it
    # brought (no default site left on :80)
    left = lab.ssh(host, "ls -d /etc/nginx/ollama /etc/nginx/conf.d/ollama.conf 2>&1", False)
    assert "No such file" in left.stdout and "/etc/nginx/ollama\n" not in left.stdout, left.stdout
    assert lab.ssh(host, "ss -ltn '( sport = :80 )' | tail -n +2", False).stdout.strip() == ""
    assert lab.ssh(host, "systemctl is-enabled nginx", False).stdout.strip() == "disabled"


# --- the nftables allowlist (the hosts have CAP_NET_ADMIN in their own namespaces) -------------

FIREWALL_UNIT = "/etc/systemd/system/provisioner-ollama-firewall.service"
DROPIN = "/etc/systemd/system/ollama.service.d/10-provisioner.conf"


def apply_allowlist(lab, host: str, allowed: str) -> tuple[int, Any, str]:
    return provision(
        "apply", str(lab.inventory), "--limit", host,
        "--data", "ollama_expose=allowlist", "--data", "ollama_listen_address=0.0.0.0",
        "--data", f'ollama_allow_networks=["{lab.addresses[allowed]}/32"]',
    )  # fmt: skip


def serving_state(lab, host: str) -> dict[str, str]:
    """What decides who reaches Ollama on ``host``: its files, listeners and nftables tables."""
    return {
        "dropin": lab.ssh(host, f"cat {DROPIN}").stdout,
        "unit": lab.ssh(host, "cat /etc/systemd/system/ollama.service").stdout,
        "firewall unit": lab.ssh(host, f"cat {FIREWALL_UNIT} 2>&1", False).stdout,
        "active": lab.ssh(host, "systemctl is-active ollama", False).stdout.strip(),
        "listening": lab.ssh(host, "ss -Hltn '( sport = :11434 )' | awk '{print $4}'").stdout,
        "tables": lab.ssh(host, "nft list tables 2>&1", False).stdout,
    }


def test_the_allowlist_admits_the_listed_host_and_refuses_another(lab, applied):
    if len(lab.hosts) < 3:
        pytest.skip("needs three lab hosts")
    host, allowed, refused = lab.hosts[0], lab.hosts[1], lab.hosts[2]
    url = f"http://{lab.addresses[host]}:11434/api/version"
    try:
        code, result, err = apply_allowlist(lab, host, allowed)
        assert code == 0, err
        state = serving_state(lab, host)
        assert "OLLAMA_HOST=0.0.0.0:11434" in state["dropin"]
        assert "table inet provisioner_ollama" in state["tables"]
        assert '"version"' in lab.ssh(allowed, f"curl -s -m 3 {url}", False).stdout
        probe = lab.ssh(refused, f"curl -s -m 3 {url}", False)
        assert probe.returncode != 0 and '"version"' not in probe.stdout
        # converged: a second run changes nothing
        code, result, err = apply_allowlist(lab, host, allowed)
        assert code == 0, err
        assert result["hosts"][host]["status"] == "unchanged", result["hosts"][host]
    finally:
        code, result, err = provision("apply", str(lab.inventory), "--limit", host)
        assert code == 0, err
    # back to loopback: the allowlist is gone with everything it installed
    state = serving_state(lab, host)
    assert state["listening"].split() == ["127.0.0.1:11434"]
    assert "provisioner_ollama" not in state["tables"]
    assert "No such file" in state["firewall unit"]
    assert lab.ssh(allowed, f"curl -s -m 3 {url}", False).returncode != 0


def test_a_firewall_that_does_not_load_leaves_the_serving_state_untouched(lab, applied):
    """nft refuses the ruleset (as on a host without CAP_NET_ADMIN): nothing is switched, the
    host fails with the reason, and the next run with a working nft converges."""
    if len(lab.hosts) < 2:
        pytest.skip("needs two lab hosts")
    host, other = lab.hosts[0], lab.hosts[1]
    # a fault double for nft (diverted, so an nftables install keeps it in place)
    lab.ssh(
        host,
        "dpkg-divert --local --rename --add /usr/sbin/nft >/dev/null && "
        'printf \'#!/bin/sh\\necho "Error: Could not process rule: Operation not permitted" '
        ">&2\\nexit 1\\n' > /usr/sbin/nft && chmod 755 /usr/sbin/nft",
    )
    try:
        before = serving_state(lab, host)
        assert before["active"] == "active"
        code, result, err = apply_allowlist(lab, host, other)
        assert code == 1, err
        assert result["failed_hosts"] == [host]
        assert "the Ollama allowlist: the check `nft -c -f" in err, err[-3000:]
        assert "nothing was changed" in err
        assert "Operation not permitted" in err
        assert serving_state(lab, host) == before
        # ... and a restart does not expose it either: the files on disk are the old ones
        lab.ssh(host, "systemctl restart ollama && sleep 1")
        assert serving_state(lab, host) == before
        probe = lab.ssh(other, f"curl -s -m 3 http://{lab.addresses[host]}:11434/", False)
        assert probe.returncode != 0
    finally:
        lab.ssh(
            host,
            "rm -f /usr/sbin/nft && dpkg-divert --local --rename --remove /usr/sbin/nft >/dev/null",
        )
    code, result, err = apply_allowlist(lab, host, other)
    assert code == 0, err
    code, result, err = provision("apply", str(lab.inventory), "--limit", host)
    assert code == 0, err
    assert serving_state(lab, host)["listening"].split() == ["127.0.0.1:11434"]


def test_real_cpu_torch_installs_through_the_same_deploy(lab, applied):
    """The real CPU wheel (not the lab's stand-in), from a PEP 503 mirror, on a bookworm host."""
    base = lab.info.get("wheels", {}).get("real")
    if not base:
        pytest.skip("the lab was started without LAB_REAL_TORCH=1 (CI sets it)")
    host = next((h for h in lab.hosts if lab.info["hosts"][h]["release"] == "bookworm"), None)
    if host is None:
        pytest.skip("the real CPU wheel is cp311: needs a bookworm host")
    venv = "/opt/provisioner/torch-real"
    data = [f"pytorch_index_url={base}", "torch_version=2.13.0", f"pytorch_venv={venv}"]
    if lab.info["hosts"][host]["gpus"]:
        data.append("pytorch_cuda=cpu")
    args = [arg for item in data for arg in ("--data", item)]
    code, result, err = provision("apply", str(lab.inventory), "--limit", host, *args)
    assert code == 0, err
    probe = (
        "import torch; "
        "print(torch.__version__, torch.cuda.is_available(), hasattr(torch, 'TEST_DOUBLE'))"
    )
    out = lab.ssh(host, f'{venv}/bin/python -c "{probe}"').stdout.split()
    assert out == ["2.13.0+cpu", "False", "False"], out
    code, result, err = provision("apply", str(lab.inventory), "--limit", host, *args)
    assert code == 0, err
    assert result["hosts"][host]["changed"] == [], result["hosts"][host]
    lab.ssh(host, f"rm -rf {venv}")


def test_sync_with_the_registry_down_fails_that_host_and_completes_next_run(lab, applied):
    host = "gpu3" if "gpu3" in lab.hosts else lab.hosts[0]
    api = "http://127.0.0.1:11434/api/delete"
    for name in ("llama3.2:3b", "169.254.100.1:5000/library/llama3.2:3b"):
        lab.ssh(host, f'curl -s -X DELETE {api} -d \'{{"model": "{name}"}}\'', False)
    lab.mirrors.stop("registry")
    try:
        code, result, err = provision("models", "sync", str(lab.inventory), "--limit", host)
        assert code == 1, err
        assert result["failed_hosts"] == [host]
        assert result["hosts"][host]["errors"], result["hosts"][host]
    finally:
        lab.mirrors.start_registry()
    code, result, err = provision("models", "sync", str(lab.inventory), "--limit", host)
    assert code == 0, err
    changed = {c["model"] for c in result["hosts"][host]["changes"]}
    assert changed == {"llama3.2:3b", "169.254.100.1:5000/library/llama3.2:3b"}, changed
    tags = json.loads(lab.ssh(host, "curl -s http://127.0.0.1:11434/api/tags").stdout)
    assert "llama3.2:3b" in {m["name"] for m in tags["models"]}
