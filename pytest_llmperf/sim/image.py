"""A container image of the simulated engine, built locally from this host's Python without pulling anything.

``llmperf sim build-image`` (and the container tier's set-up) writes a minimal root filesystem: this
interpreter with its standard library (no tests, no Tk, no site-packages), the shared libraries it and
its extension modules load (found with ``ldd``), ``httptools`` and the ``pytest_llmperf`` package; then
imports it with ``podman import`` / ``docker import``. The tag is the content's hash, so an unchanged
tree is not rebuilt; ``localhost/llmperf-sim:local`` always names the newest build.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["LOCAL_TAG", "build_sim_image"]

LOCAL_TAG = "localhost/llmperf-sim:local"
SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "lib2to3", "__phello__"}
PACKAGES = ("httptools",)  # what ``python -m pytest_llmperf.sim serve`` imports beyond the standard library


def _stdlib_files() -> Iterator[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith("config-")]
        for name in files:
            if not name.endswith((".a", ".opt-1.pyc", ".opt-2.pyc")):
                yield Path(root) / name


def _package_files(name: str) -> Iterator[Path]:
    module = __import__(name)
    root = Path(module.__file__ or "").parent
    for path in root.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def _shared_libraries(binaries: Iterable[Path]) -> set[Path]:
    libs: set[Path] = set()
    for binary in binaries:
        try:
            out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for match in re.finditer(r"(/\S+) \(0x", out):
            libs.add(Path(match.group(1)))
    return libs


def _rootfs() -> dict[str, Path]:
    """Paths in the image -> files on this host."""
    python = Path(os.path.realpath(sys.executable))
    files: dict[str, Path] = {str(python): python}
    for path in _stdlib_files():
        files[str(path)] = path
    site = "/usr/local/lib/llmperf-site"
    for pkg in PACKAGES:
        module_root = Path(__import__(pkg).__file__ or "").parent
        for path in _package_files(pkg):
            files[f"{site}/{pkg}/{path.relative_to(module_root)}"] = path
    own = Path(__file__).resolve().parents[1]
    for path in own.rglob("*.py"):
        files[f"{site}/pytest_llmperf/{path.relative_to(own)}"] = path
    binaries = [python, *(p for p in files.values() if p.suffix == ".so" or ".so." in p.name)]
    for lib in _shared_libraries(binaries):
        files[str(lib)] = Path(os.path.realpath(lib))
    return files


def _tarball(files: dict[str, Path]) -> bytes:
    python = os.path.realpath(sys.executable)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for inside, host in sorted(files.items()):
            info = tar.gettarinfo(str(host), arcname=inside.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            with open(host, "rb") as f:
                tar.addfile(info, f)
        for name, target in (("usr/local/bin/python3", python), ("usr/local/bin/python", python)):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
        for directory in ("tmp", "root", "etc"):
            d = tarfile.TarInfo(directory)
            d.type, d.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(d)
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    return buf.getvalue()


def build_sim_image(runtime: str, *, tag: str = LOCAL_TAG, force: bool = False) -> str:
    """Build (or find) the image; returns its content tag (``localhost/llmperf-sim:<hash>``), also tagged ``tag``."""
    files = _rootfs()
    digest = hashlib.sha256()
    for inside, host in sorted(files.items()):
        digest.update(inside.encode())
        digest.update(host.read_bytes())
    content_tag = f"localhost/llmperf-sim:{digest.hexdigest()[:12]}"
    exists = subprocess.run([runtime, "image", "inspect", content_tag], capture_output=True, timeout=60)
    if force or exists.returncode != 0:
        done = subprocess.run(
            [
                runtime,
                "import",
                "--change",
                "ENV=PATH=/usr/local/bin:/usr/bin:/bin",
                "--change",
                "ENV=PYTHONPATH=/usr/local/lib/llmperf-site",
                "--change",
                'CMD=["python3"]',
                "-",
                content_tag,
            ],
            input=_tarball(files),
            capture_output=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{runtime} import failed: {done.stderr.decode(errors='replace')[-2000:]}")
    if tag:
        subprocess.run([runtime, "tag", content_tag, tag], capture_output=True, timeout=60, check=True)
    return content_tag


def main(argv: list[str] | None = None) -> int:
    import argparse

    from pytest_llmperf.engines.container import find_runtime

    ap = argparse.ArgumentParser(prog="llmperf sim build-image", description=__doc__)
    ap.add_argument("--runtime", default=None, help="podman or docker (default: podman if on PATH, else docker)")
    ap.add_argument("--tag", default=LOCAL_TAG, help=f"also tag the image so (default {LOCAL_TAG})")
    ap.add_argument("--force", action="store_true", help="rebuild even when the content's image exists")
    args = ap.parse_args(argv)
    runtime = find_runtime(args.runtime)
    if runtime is None or shutil.which("ldd") is None:
        print("llmperf sim build-image: needs podman or docker, and ldd, on PATH", file=sys.stderr)
        return 2
    try:
        built = build_sim_image(runtime, tag=args.tag, force=args.force)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"llmperf sim build-image: {exc}", file=sys.stderr)
        return 2
    print(f"llmperf sim build-image: {built} (also {args.tag})")
    return 0
