#!/usr/bin/env python3
"""Write OCI image layout tarballs without Docker, for the real node (hack/realnode.py).

An image here is uncompressed layer tars plus a config and a manifest, packed as an OCI image
layout (oci-layout, index.json, blobs/sha256/...) that `ctr -n k8s.io images import` accepts;
pods use them with `imagePullPolicy: Never`. A layer is either built in memory from a few files
(`Image.files`; mtime 0, uid/gid 0: same inputs, same digests) or written from a directory tree
on disk (`tree_layer`: a root filesystem, with its modes, owners, mtimes, symlinks and hard links,
streamed to a file; hack/build_image.py makes the operator image from three such layers).

    python -m hack.ociimage pause  OUT.tar   # the sandbox image: the static pause binary
    python -m hack.ociimage runner OUT.tar   # examples/runner on busybox-static

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import stat as st_mod
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

HACK = Path(__file__).resolve().parent
REPO = HACK.parent
CACHE = Path(os.environ.get("NECROCODE_CACHE", Path.home() / ".cache" / "necrocode"))

PAUSE_IMAGE = "necrocode.local/pause:{version}"
RUNNER_IMAGE = "necrocode.local/runner:v1"
BUSYBOX = Path("/bin/busybox")
# the applets the runner scripts use (busybox-static provides them all)
RUNNER_APPLETS = ("sh", "cat", "date", "echo", "grep", "ls", "mkdir", "sed", "sleep", "kill", "mv", "rm", "touch", "wc")


@dataclass(frozen=True)
class Layer:
    """An uncompressed layer tar on disk (its digest is also its diff_id)."""
    path: Path
    digest: str
    size: int
    created_by: str = ""

    def to_json(self) -> dict[str, object]:
        return {"path": str(self.path), "digest": self.digest, "size": self.size, "created_by": self.created_by}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Layer:
        return cls(Path(str(d["path"])), str(d["digest"]), int(str(d["size"])), str(d.get("created_by", "")))


class _HashingWriter:
    """A file object that hashes and counts what is written through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.f.flush()


def _walk(root: Path, exclude: Callable[[str], bool], rel: str = "") -> Iterator[tuple[str, Path]]:
    """(path inside the layer, path on disk) of every entry under root, depth first in name
    order (parents before children); `exclude(rel)` drops an entry and everything under it."""
    for name in sorted(os.listdir(root / rel if rel else root)):
        child = f"{rel}/{name}" if rel else name
        if exclude(child):
            continue
        path = root / child
        yield child, path
        if path.is_dir() and not path.is_symlink():
            yield from _walk(root, exclude, child)


def tree_layer(root: Path, out: Path, exclude: Callable[[str], bool] = lambda _rel: False,
               prefix: str = "", created_by: str = "", empty_files: tuple[str, ...] = ()) -> Layer:
    """Write the tree under `root` as a layer tar at `out` (paths prefixed with `prefix`, whose
    own parent directories are added root-owned 0755). Regular files, directories, symlinks and
    hard links keep mode, owner and mtime; device nodes, sockets and fifos are left out (the
    runtime provides /dev). Paths in `empty_files` are written empty (files the runtime mounts
    over, such as etc/resolv.conf)."""
    entries = list(_walk(root, exclude))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    seen_inodes: dict[tuple[int, int], str] = {}
    with open(tmp, "wb") as raw:
        hw = _HashingWriter(raw)
        with tarfile.open(fileobj=hw, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            parts = [p for p in prefix.strip("/").split("/") if p]
            for i in range(len(parts)):
                info = tarfile.TarInfo("/".join(parts[: i + 1]))
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
            for rel, path in entries:
                name = "/".join([*parts, rel])
                st = os.lstat(path)
                info = tarfile.TarInfo(name)
                info.mode = st.st_mode & 0o7777
                info.uid, info.gid, info.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
                info.uname = info.gname = ""
                if st_mod.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif st_mod.S_ISLNK(st.st_mode):
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                    tar.addfile(info)
                elif st_mod.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in seen_inodes:
                        info.type, info.linkname = tarfile.LNKTYPE, seen_inodes[key]
                        tar.addfile(info)
                        continue
                    seen_inodes[key] = name
                    if rel in empty_files:
                        info.size = 0
                        tar.addfile(info, io.BytesIO(b""))
                        continue
                    info.size = st.st_size
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
    digest = "sha256:" + hw.sha.hexdigest()
    tmp.replace(out)
    return Layer(out, digest, hw.size, created_by)


@dataclass
class Image:
    name: str
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (content, mode)
    symlinks: dict[str, str] = field(default_factory=dict)  # path -> target
    dirs: dict[str, int] = field(default_factory=dict)  # path -> mode
    config: dict = field(default_factory=dict)  # OCI image config "config" section
    layers: list[Layer] = field(default_factory=list)  # layers on disk, below the in-memory one (if any)

    def add_file(self, path: str, src: Path | bytes, mode: int = 0o755) -> None:
        data = src if isinstance(src, bytes) else src.read_bytes()
        self.files[path.lstrip("/")] = (data, mode)
        parent = os.path.dirname(path.lstrip("/"))
        while parent:
            self.dirs.setdefault(parent, 0o755)
            parent = os.path.dirname(parent)

    def layer(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            entries: list[tuple[str, str]] = [(p, "d") for p in self.dirs] + [(p, "f") for p in self.files] + [
                (p, "l") for p in self.symlinks]
            for path, kind in sorted(entries):
                info = tarfile.TarInfo(path)
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if kind == "d":
                    info.type, info.mode = tarfile.DIRTYPE, self.dirs[path]
                    tar.addfile(info)
                elif kind == "l":
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, self.symlinks[path], 0o777
                    tar.addfile(info)
                else:
                    data, info.mode = self.files[path]
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def config_json(self) -> dict[str, object]:
        """The OCI image configuration (its "config" section is `self.config`)."""
        layers = self.all_layers()
        return {
            "architecture": "amd64", "os": "linux",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": [digest for digest, _size, _by, _data in layers]},
            "history": [{"created_by": by} for _digest, _size, by, _data in layers],
        }

    def all_layers(self) -> list[tuple[str, int, str, bytes | Path]]:
        """(digest, size, created_by, content or file) of every layer, bottom first."""
        out: list[tuple[str, int, str, bytes | Path]] = [
            (lay.digest, lay.size, lay.created_by or "hack/ociimage.py", lay.path) for lay in self.layers]
        if self.files or self.dirs or self.symlinks or not out:
            data = self.layer()
            out.append(("sha256:" + hashlib.sha256(data).hexdigest(), len(data), "hack/ociimage.py", data))
        return out

    def write(self, out: Path) -> str:
        """Write the OCI layout tarball; returns the manifest digest."""
        layers = self.all_layers()
        config_b = json.dumps(self.config_json(), sort_keys=True, separators=(",", ":")).encode()
        config_digest = "sha256:" + hashlib.sha256(config_b).hexdigest()
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(config_b)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size}
                       for digest, size, _by, _data in layers],
        }
        manifest_b = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest = "sha256:" + hashlib.sha256(manifest_b).hexdigest()
        tag = self.name.rsplit(":", 1)[1] if ":" in self.name.rsplit("/", 1)[-1] else "latest"
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": len(manifest_b),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": self.name,
                                "org.opencontainers.image.ref.name": tag},
            }],
        }
        blobs: dict[str, bytes | Path] = {config_digest: config_b, manifest_digest: manifest_b}
        for digest, _size, _by, data in layers:
            blobs[digest] = data
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            def put(name: str, data: bytes | Path) -> None:
                info = tarfile.TarInfo(name)
                info.mtime, info.mode = 0, 0o644
                if isinstance(data, Path):
                    info.size = data.stat().st_size
                    with open(data, "rb") as f:
                        tar.addfile(info, f)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            put("index.json", json.dumps(index, sort_keys=True).encode())
            for digest, data in sorted(blobs.items(), key=lambda kv: kv[0]):
                put("blobs/sha256/" + digest.split(":", 1)[1], data)
        tmp.replace(out)
        return manifest_digest


def kube_version() -> str:
    for line in (HACK / "versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip()
    raise SystemExit("KUBERNETES_VERSION not in hack/versions.env")


def pause_image(pause_bin: Path | None = None) -> Image:
    version = kube_version()
    pause_bin = pause_bin or CACHE / "bin" / f"pause-{version}"
    if not pause_bin.exists():
        raise SystemExit(f"{pause_bin} is missing: run hack/build-tools.sh realnode")
    img = Image(PAUSE_IMAGE.format(version=version))
    img.add_file("/pause", pause_bin)
    img.config = {"Entrypoint": ["/pause"], "User": "65535:65535"}
    return img


def runner_image() -> Image:
    """examples/runner/*.sh on a static busybox: /bin/sh and a few applets, nothing else."""
    if not BUSYBOX.exists() or (shutil.which("ldd") and os.system(f"ldd {BUSYBOX} >/dev/null 2>&1") == 0):
        raise SystemExit(f"{BUSYBOX} is missing or not static: install busybox-static (hack/realnode-deps.sh)")
    img = Image(RUNNER_IMAGE)
    img.add_file("/bin/busybox", BUSYBOX)
    for applet in RUNNER_APPLETS:
        img.symlinks[f"bin/{applet}"] = "busybox"
    for script in sorted((REPO / "examples" / "runner").glob("*.sh")):
        img.add_file(f"/runner/{script.name}", script)
    for d in ("tmp", "work", "artifacts", "etc", "proc", "sys", "dev"):
        img.dirs.setdefault(d, 0o1777 if d == "tmp" else 0o755)
    img.add_file("/etc/passwd", b"root:x:0:0:root:/:/bin/sh\nrunner:x:1000:1000:runner:/work:/bin/sh\n", 0o644)
    img.add_file("/etc/group", b"root:x:0:\nrunner:x:1000:\n", 0o644)
    img.config = {"Entrypoint": ["/runner/runner.sh"], "Env": ["PATH=/bin"], "WorkingDir": "/work"}
    return img


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", choices=["pause", "runner"])
    ap.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    img = pause_image() if a.image == "pause" else runner_image()
    digest = img.write(a.out)
    print(f"{img.name} {digest} {a.out} ({a.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
