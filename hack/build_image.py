"""Build the operator image without Docker: an OCI image layout tarball that the real node's
containerd imports (hack/realnode.py import), equivalent to what `docker build .` makes from the
project's Dockerfile (same user, entrypoint, ports, environment; tests/unit/test_image.py checks
that the two agree).

    python -m hack.build_image [--out FILE] [--import --state-dir S] [--rebuild]

Three layers, each cached under ~/.cache/necrocode/image and rebuilt only when its inputs change:

  1. base: a Debian bookworm minbase rootfs from `debootstrap` (python3, python3-venv,
     ca-certificates), with the user necrocode (uid/gid 10001) added as in the Dockerfile;
     docs, man pages, locales, apt lists and caches removed. Key: the suite and package list.
  2. deps: /opt/venv, a venv made in that rootfs (chroot) with `pip install --no-deps -r
     requirements.lock` from PyPI. Key: layer 1 and requirements.lock.
  3. project: `pip install --no-deps .` of the project's source (pyproject.toml, README.md,
     operator/: the files .dockerignore lets into the Docker build), installed with `--root` so
     the layer holds only the project's files. Key: layer 2 and those files' contents.

Python is Debian's python3.11 (3.11.2 in bookworm) where the Dockerfile's python:3.11.7-slim
has its own build of 3.11.7; wheels and behaviour are the same (cp311). Bytecode is compiled at
build time with checked hashes (SOURCE_DATE_EPOCH), as the root filesystem is read-only at run
time. Prints the image name, the manifest digest, the size of each layer and the build time of
each step. Needs root (debootstrap, chroot) and debootstrap (hack/realnode-deps.sh); reaches
only deb.debian.org and PyPI. debootstrap mounts /proc and /sys inside the rootfs while it
runs; anything it leaves mounted is unmounted before this script exits. Only the standard
library is used.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hack import ociimage  # stdlib only, as this

REPO = Path(__file__).resolve().parent.parent

CACHE = Path(os.environ.get("NECROCODE_CACHE", Path.home() / ".cache" / "necrocode"))
IMAGE_CACHE = CACHE / "image"
SUITE = "bookworm"
MIRROR = os.environ.get("NECROCODE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("python3", "python3-venv", "ca-certificates")
REPOSITORY = "necrocode.local/necrocode-cancel"
LAYER_FORMAT = 1  # bump when a layer's recipe changes without its inputs changing

# What the Dockerfile's final stage declares (tests/unit/test_image.py compares the two).
USER = "10001:10001"
ENTRYPOINT = ["necrocode-operator"]
EXPOSED = (8000, 8080, 8081)
VENV = "/opt/venv"
ENV = [f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"]
# the project's files that .dockerignore lets into the Docker build context (beside requirements.lock)
PROJECT_FILES = ("pyproject.toml", "README.md")
PROJECT_DIRS = ("operator",)

# left out of the base layer: what the runtime provides or mounts, caches, docs
BASE_EXCLUDE_DIRS = ("proc", "sys", "dev", "run", "tmp", "var/cache/apt", "var/lib/apt/lists", "var/log",
                     "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
                     "var/cache/debconf", "root")
BASE_EMPTY_FILES = ("etc/resolv.conf", "etc/hostname", "etc/hosts", "etc/machine-id")
CHROOT_ENV = {"PATH": f"{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
              "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
              "SOURCE_DATE_EPOCH": "315532800", "PYTHONDONTWRITEBYTECODE": "1"}


def log(msg: str) -> None:
    print(f"[build-image {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def image_config() -> dict[str, Any]:
    """The OCI image config section: what the Dockerfile's USER, ENTRYPOINT, EXPOSE and ENV say."""
    return {"User": USER, "Entrypoint": list(ENTRYPOINT), "Env": list(ENV),
            "ExposedPorts": {f"{p}/tcp": {} for p in EXPOSED}, "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.source": "https://github.com/necrocode/necrocode-cancel",
                       "org.opencontainers.image.title": "necrocode-cancel"}}


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def project_files(repo: Path = REPO) -> list[Path]:
    out = [repo / f for f in PROJECT_FILES]
    for d in PROJECT_DIRS:
        out += sorted(p for p in (repo / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts
                      and not p.name.endswith((".pyc", ".pyo")) and ".egg-info" not in str(p))
    return out


def keys(repo: Path = REPO) -> dict[str, str]:
    """The cache key of each layer (a layer's key covers the layers below it)."""
    base = _sha(str(LAYER_FORMAT), SUITE, MIRROR, *PACKAGES, USER)
    deps = _sha(base, (repo / "requirements.lock").read_bytes())
    proj_parts: list[bytes | str] = [deps]
    for f in project_files(repo):
        proj_parts += [str(f.relative_to(repo)), f.read_bytes()]
    return {"base": base, "deps": deps, "project": _sha(*proj_parts)}


def version(repo: Path = REPO) -> str:
    for line in (repo / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return "0.0.0"


def image_name(repo: Path = REPO) -> str:
    """Tagged with the version and the project layer's key: a changed source is a new tag."""
    return f"{REPOSITORY}:{version(repo)}-{keys(repo)['project'][:10]}"


# ----------------------------------------------------------------------------- host hygiene
def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split(" - ")[0].split()[4].replace("\\040", " ")
        if mp.startswith(prefix):
            out.append(mp)
    return out


def unmount_all(path: Path) -> None:
    """Unmount whatever is mounted under `path` (what a failed debootstrap leaves), deepest first."""
    for _ in range(3):
        left = _mounts_under(path)
        if not left:
            return
        for mp in sorted(left, key=lambda m: -m.count("/")):
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)
    left = _mounts_under(path)
    if left:
        raise SystemExit(f"mounts left under {path}: {left}")


def rmtree(path: Path) -> None:
    """rm -rf that first unmounts anything inside (never deletes through a mount)."""
    if path.exists():
        unmount_all(path)
        shutil.rmtree(path)


def host_ca_bundle() -> Path | None:
    """The host's CA bundle (what the host's pip trusts: $PIP_CERT, $SSL_CERT_FILE or Debian's
    bundle, which may hold a proxy's CA), for pip inside the chroot; used at build time only."""
    for cand in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def chroot(rootfs: Path, *args: str) -> None:
    env = dict(CHROOT_ENV)
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "PIP_INDEX_URL",
              "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    if (rootfs / "tmp" / "build" / "ca.pem").exists():
        env["PIP_CERT"] = "/tmp/build/ca.pem"
    proc = subprocess.run(["chroot", str(rootfs), *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"chroot {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


# ----------------------------------------------------------------------------- the layers
def _excluder(dirs: tuple[str, ...]) -> Callable[[str], bool]:
    def exclude(rel: str) -> bool:
        # keep the directory itself (empty), drop what is inside
        return any(rel.startswith(d + "/") for d in dirs) or rel.startswith(".necrocode") or rel == VENV.lstrip("/")
    return exclude


class Builder:
    def __init__(self, cache: Path = IMAGE_CACHE, repo: Path = REPO) -> None:
        self.cache, self.repo = cache, repo
        self.rootfs = cache / "rootfs"  # layers 1 + 2 unpacked: the chroot for pip
        self.keys = keys(repo)
        self.timings: dict[str, float] = {}
        self.built: list[str] = []

    def _meta(self, kind: str) -> Path:
        return self.cache / f"{kind}-{self.keys[kind][:16]}.json"

    def _cached(self, kind: str) -> ociimage.Layer | None:
        meta = self._meta(kind)
        if not meta.exists():
            return None
        layer = ociimage.Layer.from_json(json.loads(meta.read_text()))
        return layer if layer.path.exists() and layer.path.stat().st_size == layer.size else None

    def _save(self, kind: str, layer: ociimage.Layer) -> ociimage.Layer:
        self._meta(kind).write_text(json.dumps(layer.to_json()))
        for old in self.cache.glob(f"{kind}-*"):  # one version of each layer is kept
            if not old.name.startswith(f"{kind}-{self.keys[kind][:16]}"):
                old.unlink()
        return layer

    def _rootfs_key(self) -> str:
        f = self.rootfs / ".necrocode-key"
        return f.read_text().strip() if f.exists() else ""

    def base(self) -> ociimage.Layer:
        layer = self._cached("base")
        if layer and self._rootfs_key().startswith(self.keys["base"]):
            return layer
        t0 = time.monotonic()
        if not shutil.which("debootstrap"):
            raise SystemExit("debootstrap is missing: run hack/realnode-deps.sh (apt-get install debootstrap)")
        if os.geteuid() != 0:
            raise SystemExit("building the base layer needs root (debootstrap, chroot)")
        rmtree(self.rootfs)
        log(f"debootstrap --variant=minbase {SUITE} (+{','.join(PACKAGES)}) from {MIRROR}")
        try:
            proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
                                   str(self.rootfs), MIRROR], capture_output=True, text=True)
        finally:
            unmount_all(self.rootfs)
        if proc.returncode != 0:
            log_tail = (self.rootfs / "debootstrap" / "debootstrap.log")
            tail = log_tail.read_text()[-3000:] if log_tail.exists() else proc.stderr[-3000:]
            rmtree(self.rootfs)
            raise SystemExit(f"debootstrap failed:\n{tail}")
        # as the Dockerfile's final stage: a system user and group 10001, no home, no shell
        uid, gid = USER.split(":")
        chroot(self.rootfs, "groupadd", "--gid", gid, "necrocode")
        chroot(self.rootfs, "useradd", "--uid", uid, "--gid", gid, "--no-create-home", "--shell", "/usr/sbin/nologin",
               "necrocode")
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (self.rootfs / d).glob("*"):
                if p.is_file():
                    p.unlink()
        self.timings["debootstrap"] = time.monotonic() - t0
        t1 = time.monotonic()
        layer = ociimage.tree_layer(self.rootfs, self.cache / f"base-{self.keys['base'][:16]}.tar",
                                       exclude=_excluder(BASE_EXCLUDE_DIRS), empty_files=BASE_EMPTY_FILES,
                                       created_by=f"debootstrap --variant=minbase --include={','.join(PACKAGES)} "
                                                  f"{SUITE}; groupadd/useradd necrocode 10001")
        (self.rootfs / ".necrocode-key").write_text(self.keys["base"] + "\n")
        self.timings["base layer tar"] = time.monotonic() - t1
        self.built.append("base")
        return self._save("base", layer)

    @staticmethod
    def _ca(build: Path) -> None:
        ca = host_ca_bundle()
        if ca:
            shutil.copy(ca, build / "ca.pem")

    def deps(self) -> ociimage.Layer:
        layer = self._cached("deps")
        if layer and self._rootfs_key() == f"{self.keys['base']} {self.keys['deps']}":
            return layer
        t0 = time.monotonic()
        venv = self.rootfs / VENV.lstrip("/")
        if venv.exists():
            shutil.rmtree(venv)
        (self.rootfs / ".necrocode-key").write_text(self.keys["base"] + "\n")
        build = self.rootfs / "tmp" / "build"
        rmtree(build)
        build.mkdir(parents=True)
        shutil.copy(self.repo / "requirements.lock", build / "requirements.lock")
        self._ca(build)
        resolv = self.rootfs / "etc" / "resolv.conf"
        saved_resolv = resolv.read_bytes() if resolv.exists() else b""
        shutil.copy("/etc/resolv.conf", resolv)  # pip inside the chroot resolves PyPI with the host's resolver
        try:
            log(f"venv {VENV} + pip install --no-deps -r requirements.lock (PyPI)")
            chroot(self.rootfs, "/usr/bin/python3", "-m", "venv", VENV)
            chroot(self.rootfs, f"{VENV}/bin/pip", "install", "--no-deps", "-r", "/tmp/build/requirements.lock")
        finally:
            resolv.write_bytes(saved_resolv)
            rmtree(build)
        self.timings["pip install requirements.lock"] = time.monotonic() - t0
        t1 = time.monotonic()
        layer = ociimage.tree_layer(venv, self.cache / f"deps-{self.keys['deps'][:16]}.tar",
                                       exclude=lambda rel: "__pycache__/" in rel and rel.endswith(".opt-1.pyc"),
                                       prefix=VENV, created_by="pip install --no-deps -r requirements.lock")
        (self.rootfs / ".necrocode-key").write_text(f"{self.keys['base']} {self.keys['deps']}\n")
        self.timings["deps layer tar"] = time.monotonic() - t1
        self.built.append("deps")
        return self._save("deps", layer)

    def project(self) -> ociimage.Layer:
        layer = self._cached("project")
        if layer:
            return layer
        t0 = time.monotonic()
        build = self.rootfs / "tmp" / "build"
        rmtree(build)
        src = build / "src"
        src.mkdir(parents=True)
        self._ca(build)
        for f in project_files(self.repo):
            dest = src / f.relative_to(self.repo)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
        resolv = self.rootfs / "etc" / "resolv.conf"
        saved_resolv = resolv.read_bytes() if resolv.exists() else b""
        shutil.copy("/etc/resolv.conf", resolv)  # build isolation fetches setuptools from PyPI
        try:
            log("pip install --no-deps . (the project; --root: only its files)")
            chroot(self.rootfs, f"{VENV}/bin/pip", "install", "--no-deps", "--root", "/tmp/build/out", "/tmp/build/src")
            out = build / "out" / VENV.lstrip("/")
            # pip records where it installed from: a path that exists only at build time
            for direct in out.glob("lib/python*/site-packages/*.dist-info/direct_url.json"):
                direct.unlink()
                record = direct.parent / "RECORD"
                record.write_text("".join(line for line in record.read_text().splitlines(keepends=True)
                                          if "direct_url.json" not in line))
            self.timings["pip install ."] = time.monotonic() - t0
            t1 = time.monotonic()
            layer = ociimage.tree_layer(out, self.cache / f"project-{self.keys['project'][:16]}.tar",
                                           prefix=VENV, created_by="pip install --no-deps .")
            self.timings["project layer tar"] = time.monotonic() - t1
        finally:
            resolv.write_bytes(saved_resolv)
            rmtree(build)
        self.built.append("project")
        return self._save("project", layer)

    def image(self) -> ociimage.Image:
        img = ociimage.Image(image_name(self.repo))
        img.layers = [self.base(), self.deps(), self.project()]
        img.config = image_config()
        return img


def build(out: Path | None = None, rebuild: bool = False, cache: Path = IMAGE_CACHE) -> dict[str, Any]:
    """Build (or reuse) the image and write its OCI layout tarball; returns a report."""
    t0 = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time shares the cached rootfs
        if rebuild:
            for p in cache.glob("*"):
                if p.name != ".lock":
                    rmtree(p) if p.is_dir() else p.unlink()
        b = Builder(cache)
        img = b.image()
        out = out or cache / f"necrocode-cancel-{b.keys['project'][:10]}.tar"
        t1 = time.monotonic()
        last = json.loads((cache / "last.json").read_text()) if (cache / "last.json").exists() else {}
        if out.exists() and not b.built and last.get("tarball") == str(out) and last.get("image") == img.name:
            digest = last["digest"]  # the same layers and config: the same tarball
        else:
            digest = img.write(out)
        for old in cache.glob("necrocode-cancel-*.tar"):
            if old != out:
                old.unlink()
        b.timings["OCI layout tarball"] = time.monotonic() - t1
    report = {
        "image": img.name, "digest": digest, "tarball": str(out), "tarball_bytes": out.stat().st_size,
        "layers": [{"created_by": lay.created_by, "bytes": lay.size, "digest": lay.digest} for lay in img.layers],
        "image_bytes": sum(lay.size for lay in img.layers),
        "rebuilt": b.built, "seconds": round(time.monotonic() - t0, 1),
        "steps": {k: round(v, 1) for k, v in b.timings.items()},
        "config": img.config,
    }
    (cache / "last.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="the OCI layout tarball (default: in the cache)")
    ap.add_argument("--rebuild", action="store_true", help="throw the cache away and build every layer")
    ap.add_argument("--import", dest="do_import", action="store_true",
                    help="import it into the real node's containerd (hack/realnode.py)")
    ap.add_argument("--state-dir", type=Path, default=None, help="the real node's state dir (with --import)")
    ap.add_argument("--name", action="store_true", help="print only the image name it would have, build nothing")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    a = ap.parse_args(argv)
    if a.name:
        print(image_name())
        return 0
    report = build(a.out, a.rebuild)
    if a.do_import:
        from hack import realnode

        node = realnode.RealNode(state_dir=a.state_dir or realnode.DEFAULT_STATE)
        t0 = time.monotonic()
        node.import_image(Path(report["tarball"]))
        report["import_seconds"] = round(time.monotonic() - t0, 1)
    if a.json:
        print(json.dumps(report, indent=1))
        return 0
    mib = 1024 * 1024
    print(f"{report['image']} {report['digest']}")
    print(f"  size: {report['image_bytes'] / mib:.1f} MiB uncompressed ("
          + ", ".join(f"{kind} {lay['bytes'] / mib:.1f} MiB" for kind, lay in zip(("base", "deps", "project"),
                                                                               report["layers"], strict=True))
          + f"); tarball {report['tarball']}")
    steps = ", ".join(f"{k} {v}s" for k, v in report["steps"].items())
    rebuilt = "rebuilt: " + ", ".join(report["rebuilt"]) if report["rebuilt"] else "all layers cached"
    imported = f"; imported in {report['import_seconds']}s" if "import_seconds" in report else ""
    print(f"  built in {report['seconds']}s ({rebuilt}; {steps}){imported}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
