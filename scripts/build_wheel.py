#!/usr/bin/env python3
"""Build mpspawn's wheel: dist/mpspawn-<version>-py3-none-<platform>.whl.

    python3 scripts/build_wheel.py --binary bin/mpspawn [--package ipc/python/mpspawn] [--out dist]

The wheel holds the mpspawn binary, which pip installs as bin/mpspawn of
the environment (it sits under mpspawn-<version>.data/scripts/), and the
Python package `mpspawn` (`import mpspawn.ipc`; `python -m mpspawn ARGS`
runs that same binary). The version is the repository's VERSION file, the
one `mpspawn --version` prints. Standard library only: nothing is
downloaded, no build backend is needed (a wheel is a zip file with a
RECORD of hashes, PEP 427).
"""

import argparse
import base64
import hashlib
import os
import re
import stat
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Go's GOARCH as Python's platform tags spell the machine.
ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def read_version():
    with open(os.path.join(ROOT, "VERSION")) as f:
        v = f.read().strip()
    if not re.fullmatch(r"\d+\.\d+\.\d+([a-z]+\d+)?", v):
        sys.exit(f"build_wheel: VERSION {v!r} is not a release version (N.N.N)")
    return v


def elf_arch(path):
    """The Go architecture of an ELF binary, from its e_machine field."""
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        sys.exit(f"build_wheel: {path}: not an ELF binary")
    machine = int.from_bytes(head[18:20], "little")
    return {0x3E: "amd64", 0xB7: "arm64", 0x15: "ppc64le", 0x16: "s390x", 0xF3: "riscv64"}.get(machine) or sys.exit(
        f"build_wheel: {path}: unknown machine {machine:#x}")


def digest(data):
    h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={h}"


class Wheel:
    def __init__(self, path):
        self.zf = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)
        self.record = []

    def add(self, name, data, mode=0o644):
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = (stat.S_IFREG | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        self.zf.writestr(info, data)
        self.record.append(f"{name},{digest(data)},{len(data)}")

    def close(self, record_name):
        self.record.append(f"{record_name},,")
        info = zipfile.ZipInfo(record_name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        self.zf.writestr(info, "\n".join(self.record) + "\n")
        self.zf.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", required=True, help="the mpspawn binary to ship")
    ap.add_argument("--package", default=os.path.join(ROOT, "ipc", "python", "mpspawn"), help="the Python package's directory")
    ap.add_argument("--out", default=os.path.join(ROOT, "dist"), help="output directory (default dist/)")
    a = ap.parse_args()

    version = read_version()
    plat = "linux_" + ARCHES[elf_arch(a.binary)]
    tag = f"py3-none-{plat}"
    dist = f"mpspawn-{version}"
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"{dist}-{tag}.whl")
    tmp = path + ".tmp"
    w = Wheel(tmp)

    for name in sorted(os.listdir(a.package)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(a.package, name), "rb") as f:
            w.add(f"mpspawn/{name}", f.read())
    w.add("mpspawn/_version.py", f'"""Written by scripts/build_wheel.py from VERSION."""\n\nversion = "{version}"\n'.encode())
    with open(a.binary, "rb") as f:
        w.add(f"{dist}.data/scripts/mpspawn", f.read(), 0o755)

    info = f"{dist}.dist-info"
    w.add(f"{info}/METADATA", (
        "Metadata-Version: 2.1\n"
        "Name: mpspawn\n"
        f"Version: {version}\n"
        "Summary: A GPU-aware launcher for training processes: torchrun's command line, in Go\n"
        "Requires-Python: >=3.9\n"
        "Classifier: Operating System :: POSIX :: Linux\n").encode())
    w.add(f"{info}/WHEEL", (
        "Wheel-Version: 1.0\n"
        "Generator: mpspawn scripts/build_wheel.py\n"
        "Root-Is-Purelib: false\n"
        f"Tag: {tag}\n").encode())
    w.close(f"{info}/RECORD")
    os.replace(tmp, path)
    print(path)


if __name__ == "__main__":
    main()
