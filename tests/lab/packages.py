"""Build the lab's stand-in artifacts from their sources: .deb packages and the torch wheel.

* `build_debs` builds the stand-in NVIDIA packages defined in `debs/packages.toml` with `dpkg-deb`,
  once per driver version / CUDA toolkit / repository as the definition says, versions from
  `fleet.toml` (`[mirror.nvidia]`).
* `build_torch_wheel` zips `wheels/torch-double/` into a wheel (PEP 427) for one variant of the
  PyTorch index (`cu130`, `cpu`, ...), without any build backend.

Both are deterministic (fixed timestamps), so the same sources give the same bytes.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import platform
import re
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEBS = HERE / "debs"
WHEELS = HERE / "wheels"
DOUBLES = HERE.parent / "doubles"

EPOCH = 1735689600  # 2025-01-01: file times in every built artifact
PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


def fill(text: str, values: dict[str, str]) -> str:
    """Replace @NAME@ placeholders; an unknown name is an error, not a silent blank."""

    def one(m: re.Match) -> str:
        if m.group(1) not in values:
            raise KeyError(f"no value for @{m.group(1)}@")
        return values[m.group(1)]

    return PLACEHOLDER.sub(one, text)


def kernel_release() -> str:
    return platform.release()


def variants(package: dict, nvidia: dict, distros: dict[str, str]) -> list[dict[str, str]]:
    """The placeholder values for each build of one package definition."""
    kernel = kernel_release()
    common = {
        "BRANCH": nvidia["branch"],
        "CUDA": nvidia["cuda_driver_api"],
        "KERNEL": kernel,
        **package.get("vars", {}),
    }
    per = package["per"]
    if per == "driver":
        return [
            {**common, "VERSION": v, "DRIVER": v.rsplit("-", 1)[0]}
            for v in nvidia["driver_versions"]
        ]
    if per == "toolkit":
        out = []
        for t in nvidia["toolkits"]:
            major, minor = t["series"].split(".")
            out.append(
                {
                    **common,
                    "VERSION": t["version"],
                    "TOOLKIT_VERSION": t["version"].rsplit("-", 1)[0],
                    "SERIES": t["series"],
                    "SERIES_DASH": f"{major}-{minor}",
                    "MAJOR": major,
                    "PRIORITY": str(int(major) * 10 + int(minor)),
                    "NVCC": t["nvcc"],
                    "NVCC_BUILT": t["built"],
                    "NVCC_BUILD": t["build"],
                }
            )
        return out
    if per == "distro":
        return [
            {**common, "VERSION": nvidia["keyring_version"], "DISTRO": d, "REPO_URL": url}
            for d, url in distros.items()
        ]
    if per == "once":
        numeric = re.match(r"[0-9.]+", kernel)
        return [{**common, "VERSION": f"{numeric.group(0) if numeric else '0'}-1~lab"}]
    raise ValueError(f"{package['name']}: unknown per = {per!r}")


def build_debs(
    nvidia: dict, distros: dict[str, str], out: Path, generated: dict[str, Path]
) -> dict[str, list[Path]]:
    """Build every stand-in package into `out`.

    `distros` maps a repository name (`debian12`) to its URL; `generated` maps the names used as
    `generated:NAME` sources (the keyring) to files. Returns the .debs per repository: the common
    ones appear in every list, a `per = "distro"` package only in its own.
    """
    spec = tomllib.loads((DEBS / "packages.toml").read_text())
    out.mkdir(parents=True, exist_ok=True)
    common: list[Path] = []
    per_distro: dict[str, list[Path]] = {d: [] for d in distros}
    for package in spec["package"]:
        for values in variants(package, nvidia, distros):
            if package["per"] == "distro":  # same file name in every repository
                deb = build_deb(package, values, out / values["DISTRO"], generated)
                per_distro[values["DISTRO"]].append(deb)
            else:
                common.append(build_deb(package, values, out, generated))
    return {d: common + debs for d, debs in per_distro.items()}


def build_deb(package: dict, values: dict[str, str], out: Path, generated: dict[str, Path]) -> Path:
    name = fill(package["name"], values)
    version = values["VERSION"]
    arch = package.get("architecture", "amd64")
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".stage-{name}_{version}"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "DEBIAN").mkdir(parents=True)
    conffiles = []
    for f in package.get("files", []):
        path = fill(f["path"], values)
        target = stage / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if "link" in f:
            target.symlink_to(fill(f["link"], values))
            continue
        source = f["source"]
        if source.startswith("generated:"):
            target.write_bytes(generated[source.split(":", 1)[1]].read_bytes())
        else:
            src = DOUBLES / source.split(":", 1)[1] if source.startswith("doubles:") else None
            src = src or DEBS / "files" / source
            if not src.exists():
                raise FileNotFoundError(f"{name}: source {src} is missing")
            data = src.read_bytes()
            # our own sources carry placeholders; the doubles are installed as they are
            if not source.startswith("doubles:"):
                data = fill(data.decode(), values).encode()
            target.write_bytes(data)
        target.chmod(int(f.get("mode", "0644"), 8))
        if path.startswith("/etc/"):
            conffiles.append(path)
    size_kib = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file()) // 1024 + 1
    fields = {
        "Package": name,
        "Version": version,
        "Architecture": arch,
        "Maintainer": "provisioner lab <lab@provisioner.invalid>",
        "Installed-Size": str(size_kib),
        "Depends": fill(package.get("depends", ""), values),
        "Conflicts": package.get("conflicts", ""),
        "Replaces": package.get("replaces", ""),
        "Section": "multiverse/devel",
        "Priority": "optional",
        "Description": fill(package["description"].strip(), values),
    }
    control = "".join(f"{k}: {v}\n" for k, v in fields.items() if v)
    (stage / "DEBIAN/control").write_text(control)
    if conffiles:
        (stage / "DEBIAN/conffiles").write_text("".join(c + "\n" for c in conffiles))
    for script in ("preinst", "postinst", "prerm", "postrm"):
        if script in package:
            s = stage / "DEBIAN" / script
            s.write_text(fill((DEBS / "files" / package[script]).read_text(), values))
            s.chmod(0o755)
    for p in [stage, *stage.rglob("*")]:
        os.utime(p, (EPOCH, EPOCH), follow_symlinks=False)
    deb = out / f"{name}_{version}_{arch}.deb"
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(stage), str(deb)],
        check=True,
        capture_output=True,
        env=env,
    )
    shutil.rmtree(stage)
    return deb


# --------------------------------------------------------------------------------------------------
# The stand-in torch wheel


def build_torch_wheel(version: str, tag: str, cuda: str, out: Path) -> Path:
    """Zip `wheels/torch-double/torch/` into `torch-<version>+<tag>-py3-none-any.whl`.

    `cuda` is what `torch.version.cuda` reports ("13.0"; "" for the CPU build, where it is None).
    """
    src = WHEELS / "torch-double"
    local = f"{version}+{tag}"
    dist_info = f"torch-{local}.dist-info"
    files: dict[str, bytes] = {}
    for path in sorted((src / "torch").rglob("*.py")):
        files[path.relative_to(src).as_posix()] = path.read_bytes()
    files["torch/_build.py"] = (
        '"""Written by the lab when the wheel was built (TEST DOUBLE)."""\n\n'
        f"__version__ = {local!r}\ncuda = {cuda or None!r}\n"
    ).encode()
    summary = (src / "SUMMARY").read_text().strip()
    files[f"{dist_info}/METADATA"] = (
        "Metadata-Version: 2.1\n"
        "Name: torch\n"
        f"Version: {local}\n"
        f"Summary: {summary}\n"
        "Requires-Python: >=3.9\n"
        "License: BSD-3-Clause\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: provisioner-lab\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    files[f"{dist_info}/top_level.txt"] = b"torch\n"
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([name, f"sha256={digest}", len(data)])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    files[f"{dist_info}/RECORD"] = record.getvalue().encode()
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"torch-{local}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return wheel
