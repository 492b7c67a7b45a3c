"""podman, where installed, set up to build and run the image on a machine like this one
(tests/deploy/test_image_podman.py).

What such a machine needs, each found by trying (docs/deploy.md):

- ulimits no higher than the caller's (podman's defaults raise them, which needs CAP_SYS_RESOURCE), and
  the process limit lower still (``_NPROC``);
- runc where installed: crun 1.8 refuses a host with cgroup v1 controllers and a cgroup2 mount;
- a base image: ``FROM python:X.Y-slim`` is used when podman has it or can pull it; where no container
  registry is reachable, a stand-in is made under that name from Debian's packages (debootstrap from the
  mirror apt uses, Python X.Y with its headers, a virtual environment at /usr/local so that ``python`` and
  ``pip`` are first on PATH as in the official image, and this machine's CA bundle so that TLS to the
  package index verifies here as it does on the host).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_PULL_SECONDS = 120
_STAND_IN_SECONDS = 900  # debootstrap and Python's headers: about 3 minutes here
# Processes per user in a container: runc was refused a higher limit here even below the caller's own
# (96,367), as of 48,183; 4,096 was allowed.
_NPROC = 4096
_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Podman:
    conf: Path  # CONTAINERS_CONF: this machine's ulimits and runtime

    def __call__(self, *args: str, timeout: float, **kwargs) -> subprocess.CompletedProcess:
        """``podman ARGS``; its output, whatever its status."""
        env = os.environ | {"CONTAINERS_CONF": str(self.conf)}
        return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, **kwargs)

    def ok(self, *args: str, timeout: float, **kwargs) -> str:
        done = self(*args, timeout=timeout, **kwargs)
        assert done.returncode == 0, f"podman {' '.join(args[:3])} …: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout


def podman(scratch: Path) -> Podman:
    """podman with a containers.conf for this machine, written into ``scratch``."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[0], _NPROC)
    limits = f'"nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"'
    lines = ["[containers]", f"default_ulimits = [{limits}]"]
    if shutil.which("runc"):
        lines += ["[engine]", 'runtime = "runc"']
    conf = scratch / "containers.conf"
    conf.write_text("\n".join(lines) + "\n")
    return Podman(conf)


def ensure_base(run: Podman, name: str, scratch: Path) -> str:
    """How the base image ``name`` was had: "present", "pulled" or "stand-in" (made with debootstrap)."""
    if run("image", "exists", name, timeout=30).returncode == 0:
        return "present"
    if run("pull", name, timeout=_PULL_SECONDS).returncode == 0:
        return "pulled"
    _make_stand_in(run, name, scratch / "rootfs")
    return "stand-in"


def _make_stand_in(run: Podman, name: str, rootfs: Path) -> None:
    version = re.match(r"python:(\d+\.\d+)-slim$", name)
    assert version, f"no stand-in for base image {name}"
    assert shutil.which("debootstrap"), f"{name}: not pulled, and debootstrap (Debian package) is missing to make it"
    mirror, suite = _apt_source()
    python = f"python{version[1]}"
    # Debian's python3 must be X.Y; its headers come after, debootstrap failing to configure them.
    _ok(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", suite, str(rootfs),
         mirror])  # fmt: skip
    assert (rootfs / "usr" / "bin" / python).exists(), f"{suite}'s python3 is not {python}"
    shutil.copy("/etc/resolv.conf", rootfs / "etc" / "resolv.conf")
    apt = f"apt-get update -qq && apt-get install -y -qq --no-install-recommends {python}-dev"
    _ok(["chroot", str(rootfs), "sh", "-c", f"{apt} && rm -rf /var/lib/apt/lists/*"])
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt")
    _ok(["chroot", str(rootfs), python, "-m", "venv", "/usr/local"])
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run.ok("import", "--change", f"ENV PATH={_PATH}", "--change", 'CMD ["python3"]', "-", f"localhost/{name}",
           stdin=tar.stdout, timeout=_STAND_IN_SECONDS)  # fmt: skip
    assert tar.wait() == 0
    shutil.rmtree(rootfs)


def _ok(command: list[str]) -> None:
    env = {"PATH": _PATH, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=_STAND_IN_SECONDS)
    assert done.returncode == 0, f"{command[0]} {command[-1]} failed: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def _apt_source() -> tuple[str, str]:
    """The Debian mirror apt uses here and this machine's release name."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    text = sources.read_text() if sources.is_file() else Path("/etc/apt/sources.list").read_text()
    mirror = re.search(r"^URIs:\s*(\S+)", text, re.M) or re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M)
    release = re.search(r"^VERSION_CODENAME=(\S+)", Path("/etc/os-release").read_text(), re.M)
    assert mirror and release, "no Debian mirror or release name found in apt's sources and /etc/os-release"
    return mirror[1], release[1]
