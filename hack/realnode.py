"""A real Kubernetes node (containerd + kubelet) joined to a running local control plane
(hack/localcluster.py), next to its kwok nodes: kwok nodes for scale, the real node for fidelity.

    python -m hack.realnode up   --cluster-dir DIR [--state-dir S]  start; prints the node name
    python -m hack.realnode down [--state-dir S]                    stop and restore the host
    python -m hack.realnode status [--state-dir S]
    python -m hack.realnode run  --cluster-dir DIR                  up, wait for Ctrl-C/SIGTERM, down
    python -m hack.realnode check                                   what this host lacks (exit 1 if anything)
    python -m hack.realnode import IMAGE.tar [--state-dir S]        ctr import into the node's containerd
    python -m hack.realnode reclaim                                 stop a node whose owner and processes died

The node:
  - name `necrocode-real-0`, label `necrocode.io/node-kind=real`, taint
    `necrocode.io/real-node=true:NoSchedule` (pods that want it tolerate the taint; nothing else
    lands there, so kwok-based tests are unaffected);
  - node IP 10.213.0.1 on a bridge `ncnode0` this script creates (10.213.0.0/24; pods get
    10.213.0.10-250 from the bridge CNI plugin, no gateway, no masquerade, no forwarding);
    the API server stays on 127.0.0.1, pods that must reach it use hostNetwork;
  - a client certificate O=system:nodes, CN=system:node:<name> signed by the cluster CA, bound
    to the ClusterRole system:node (the only RBAC it gets); the kubelet serves TLS with a
    certificate from the same CA, with webhook authentication and authorization (no anonymous
    access, no AlwaysAllow);
  - containerd (Debian's, 1.6) with its own root, state, socket, runc root and CNI config; the
    kubelet with its own root dir, pod-log dir and cgroup root (`/necrocode-realnode` in every
    cgroup hierarchy); images are imported (`imagePullPolicy: Never`): the pause image (static
    pause.c) and the reference runner (examples/runner).

Host restoration: `up` snapshots the host (sysctls, iptables, links, mounts, cgroup dirs, the
host paths the kubelet and containerd create), puts back every kernel setting the kubelet
changed as soon as the node is Ready, and `down` kills every process, unmounts, removes the
bridge, veths, cgroups, iptables chains and rules, directories and sysctl changes, then compares
the host with the snapshot and prints any difference (exit 1 if one is left). `down` is
idempotent and also runs after Ctrl-C or SIGTERM during `up`/`run`. A node whose owner was killed
with no chance to run `down` (kill -9, the machine's processes lost) leaves its bridge, cgroups,
shims and mounts: `up` finds it through POINTER and stops it first (`reclaim_abandoned`), once
its owner and every process it started are gone. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import calendar
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hack.localcluster import die_with_parent, versions  # versions: the one reader of hack/versions.env

HACK = Path(__file__).resolve().parent
REPO = HACK.parent
CACHE = Path(os.environ.get("NECROCODE_CACHE", Path.home() / ".cache" / "necrocode"))
DEFAULT_STATE = CACHE / "realnode"
DEFAULT_CLUSTER = CACHE / "cluster"

NODE_NAME = "necrocode-real-0"
BRIDGE = "ncnode0"
SUBNET = ipaddress.ip_network("10.213.0.0/24")
NODE_IP = "10.213.0.1"
POD_RANGE = ("10.213.0.10", "10.213.0.250")
CGROUP_ROOT = "necrocode-realnode"
TAINT_KEY = "necrocode.io/real-node"
LABEL = "necrocode.io/node-kind"
CNI_BIN = Path("/usr/lib/cni")
CGROUP_FS = Path("/sys/fs/cgroup")
# Host paths that the kubelet or containerd create whatever they are configured with (the
# kubelet's legacy log symlinks, libcni's cache, containerd 1.6's shim sockets). Each one that
# did not exist before `up` is removed by `down`.
HOST_PATHS = ("/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/containerd", "/var/lib/kubelet",
              "/var/lib/containerd", "/etc/cni", "/usr/libexec/kubernetes", "/run/netns", "/var/run/netns",
              "/etc/kubernetes", "/run/runc", "/opt/cni")
SHIM_SOCKETS = Path("/run/containerd/s")
# Which state dir the node on this host (there is one bridge name, so one node) was started
# from: how the next `up` finds a node whose owner died without `down`. In /run, which a reboot
# empties together with the bridge and cgroups it speaks of.
POINTER = Path("/run/necrocode-realnode.json")
# Sysctls that move by themselves (counters, random state): never compared, never restored.
VOLATILE_SYSCTL = ("kernel.random.", "fs.dentry-state", "fs.inode-", "fs.file-nr", "kernel.ns_last_pid",
                   "net.netfilter.nf_conntrack_count", "kernel.pty.nr", "fs.quota.", "kernel.sched_domain",
                   "vm.stat_refresh", "fs.binfmt_misc.", "kernel.tainted", "vm.drop_caches",
                   "kernel.perf_event_max_sample_rate", "kernel.hung_task_", "net.ipv6.route.flush",
                   "net.ipv4.route.flush", "kernel.warn_count", "kernel.oops_count", "fs.aio-nr",
                   "net.core.netdev_rss_key", "kernel.io_uring", "fs.pipe-user-pages")
KUBE_VERSION_KEY = "KUBERNETES_VERSION"
# Kernel settings a kubelet, the CNI plugins or kube-proxy are known to change. Right after the
# node is Ready every sysctl that changed since the snapshot is put back (that window is the
# kubelet's start); later (a kubelet restart, `down`) only these and the ones found changed then,
# so that a setting someone else changed on purpose while the node ran is reported, not reverted.
KNOWN_SYSCTLS = ("kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory", "vm.panic_on_oom",
                 "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
                 "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.route_localnet",
                 "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")


# ----------------------------------------------------------------------------- small helpers
def log(msg: str) -> None:
    print(f"[realnode {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, input=input)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22): with the
    pid, it names one process, not whichever one reuses the pid later."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return None


def alive_as_recorded(pid: int, start: str | None) -> bool:
    return alive(pid) and (start is None or start_time(pid) == start)


def kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process(pid: int, grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; reaps it when it is our child."""
    if not alive(pid):
        return
    kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(pid):
        _reap(pid)
        time.sleep(0.1)
    if alive(pid):
        kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and alive(pid):
            _reap(pid)
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _preexec(tie: bool):  # type: ignore[no-untyped-def]
    def fn() -> None:  # pragma: no cover - runs between fork and exec
        os.setsid()
        if tie:
            die_with_parent()
    return fn


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, named ones, and the v2 one if any)."""
    out: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split()[0] if right else ""
        if fstype in ("cgroup", "cgroup2"):
            mp = Path(left.split()[4])
            if mp not in out:
                out.append(mp)
    return out


def mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, source) of every mount, in mount order."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        r = right.split()
        mp = left.split()[4].replace("\\040", " ")
        out.append((mp, r[0] if r else "", r[1] if len(r) > 1 else ""))
    return out


def read_sysctls() -> dict[str, str]:
    out: dict[str, str] = {}
    root = Path("/proc/sys")
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            key = str(p.relative_to(root)).replace("/", ".")
            if key.startswith(VOLATILE_SYSCTL):
                continue
            try:
                if not os.access(p, os.R_OK):
                    continue
                out[key] = " ".join(p.read_text().split())
            except OSError:
                continue
    return out


def write_sysctl(key: str, value: str) -> None:
    Path("/proc/sys", *key.split(".")).write_text(value + "\n")


def links() -> dict[str, str]:
    """interface name -> kind and master (for the comparison; not indexes or counters)."""
    out: dict[str, str] = {}
    try:
        data = json.loads(run("ip", "-d", "-j", "link", "show").stdout or "[]")
    except (subprocess.CalledProcessError, ValueError, FileNotFoundError):
        return out
    for link in data:
        kind = (link.get("linkinfo") or {}).get("info_kind", link.get("link_type", ""))
        out[link["ifname"]] = f"{kind} master={link.get('master', '-')}"
    return out


def iptables_save() -> dict[str, list[str]]:
    """table -> rules and chain declarations (no counters), for every iptables variant present."""
    out: dict[str, list[str]] = {}
    for tool in ("iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save"):
        if not shutil.which(tool):
            continue
        res = run(tool, check=False)
        table = ""
        for line in res.stdout.splitlines():
            if line.startswith("*"):
                table = f"{tool}:{line[1:]}"
                out.setdefault(table, [])
            elif line.startswith(":"):
                out.setdefault(table, []).append(line.split()[0])  # ":CHAIN" without policy counters
            elif line.startswith("-A"):
                out.setdefault(table, []).append(line)
    return out


def cgroup_dirs() -> list[str]:
    """The top level of every hierarchy (where a kubelet would put kubepods, system.slice, ...)
    and everything under the node's cgroup root; deeper cgroups of other software (which come
    and go on a shared machine) are not ours to compare."""
    out: list[str] = []
    for h in cgroup_hierarchies():
        out.append(str(h))
        try:
            out += [str(h / d) for d in os.listdir(h) if (h / d).is_dir()]
        except OSError:
            continue
        for dirpath, _dirs, _files in os.walk(h / CGROUP_ROOT):
            out.append(dirpath)
    return sorted(set(out))


def own_processes(sock: str | None = None) -> list[str]:
    """Processes that belong to a real node: kubelet, containerd (with a config of ours),
    shims, runc, pause, and anything in the node's cgroups."""
    out = []
    in_cgroups: set[int] = set()
    for h in cgroup_hierarchies():
        for dirpath, _d, files in os.walk(h / CGROUP_ROOT):
            if "cgroup.procs" in files:
                try:
                    in_cgroups.update(int(x) for x in (Path(dirpath) / "cgroup.procs").read_text().split())
                except OSError:
                    pass
    for pid in all_pids():
        cl = cmdline(pid)
        if not cl or not cl[0]:
            continue
        exe = os.path.basename(cl[0])
        ours = pid in in_cgroups or exe in ("containerd", "runc", "pause") or exe.startswith(
            ("containerd-shim", "kubelet")) or (sock is not None and sock in cl)
        if ours and pid != os.getpid():
            out.append(f"{pid} {' '.join(cl).strip()[:160]}")
    return out


def snapshot(state_dir: Path | None = None) -> dict[str, Any]:
    sock = str(state_dir / "containerd.sock") if state_dir else None
    return {
        "sysctls": read_sysctls(),
        "iptables": iptables_save(),
        "ip_tables_names": Path("/proc/net/ip_tables_names").read_text().split()
        if Path("/proc/net/ip_tables_names").exists() else [],
        "links": links(),
        "addresses": sorted(run("ip", "-o", "addr", "show", check=False).stdout.split("\n")),
        "routes": sorted(run("ip", "route", "show", "table", "all", check=False).stdout.split("\n")),
        "mounts": sorted(f"{mp} {fs} {src}" for mp, fs, src in mounts()),
        "cgroups": cgroup_dirs(),
        "paths": {p: os.path.lexists(p) for p in HOST_PATHS},
        "shim_sockets": sorted(os.listdir(SHIM_SOCKETS)) if SHIM_SOCKETS.is_dir() else [],
        "processes": own_processes(sock),
    }


def _strip_ifaces(sysctls: dict[str, str], present: set[str]) -> dict[str, str]:
    """Per-interface sysctls of interfaces that come and go (our bridge, pod veths) are left out."""
    out = {}
    for k, v in sysctls.items():
        parts = k.split(".")
        if len(parts) > 3 and parts[0] == "net" and parts[2] in ("conf", "neigh") and parts[3] not in present:
            continue
        out[k] = v
    return out


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable differences between two host snapshots (empty: the host is as it was)."""
    diffs: list[str] = []
    common = set(before["links"]) & set(after["links"]) | {"all", "default"}
    sb, sa = _strip_ifaces(before["sysctls"], common), _strip_ifaces(after["sysctls"], common)
    for k in sorted(set(sb) | set(sa)):
        if sb.get(k) != sa.get(k):
            diffs.append(f"sysctl {k}: {sb.get(k)!r} -> {sa.get(k)!r}")
    for key in ("iptables",):
        for table in sorted(set(before[key]) | set(after[key])):
            b, a = set(before[key].get(table, [])), set(after[key].get(table, []))
            diffs += [f"iptables {table} added: {x}" for x in sorted(a - b)]
            diffs += [f"iptables {table} removed: {x}" for x in sorted(b - a)]
    for key in ("ip_tables_names", "addresses", "routes", "mounts", "cgroups", "shim_sockets", "processes"):
        b, a = set(before[key]), set(after[key])
        diffs += [f"{key} added: {x}" for x in sorted(a - b) if x]
        diffs += [f"{key} removed: {x}" for x in sorted(b - a) if x]
    for name in sorted(set(before["links"]) | set(after["links"])):
        if before["links"].get(name) != after["links"].get(name):
            diffs.append(f"link {name}: {before['links'].get(name)} -> {after['links'].get(name)}")
    for p in HOST_PATHS:
        if before["paths"].get(p) != after["paths"].get(p):
            diffs.append(f"path {p}: exists {before['paths'].get(p)} -> {after['paths'].get(p)}")
    return diffs


# ----------------------------------------------------------------------------- what the host needs
def missing(cluster_dir: Path | None = None, bins: Path | None = None) -> list[str]:
    """Everything this host lacks for a real node, each said exactly (empty: it can run one)."""
    out: list[str] = []
    if os.geteuid() != 0:
        out.append(f"root (the kubelet and containerd need uid 0; running as uid {os.geteuid()})")
    if sys.platform != "linux":
        out.append(f"Linux (this is {sys.platform})")
        return out
    for tool in ("containerd", "ctr", "containerd-shim-runc-v2", "runc"):
        if not shutil.which(tool):
            out.append(f"`{tool}` on PATH (apt-get install containerd runc, or hack/realnode-deps.sh)")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN / plugin).exists():
            out.append(f"CNI plugin {CNI_BIN / plugin} (apt-get install containernetworking-plugins)")
    if not shutil.which("ip"):
        out.append("`ip` (iproute2)")
    if not shutil.which("openssl"):
        out.append("`openssl`")
    if not Path("/bin/busybox").exists():
        out.append("/bin/busybox (apt-get install busybox-static; the runner image is built from it)")
    if not any((CGROUP_FS / c).is_dir() for c in ("memory", "unified", "cpu")) and not (
            CGROUP_FS / "cgroup.controllers").exists():
        out.append("cgroups mounted at /sys/fs/cgroup")
    hier = {h.name for h in cgroup_hierarchies()}
    if (CGROUP_FS / "cgroup.controllers").exists() is False:
        for c in ("cpu", "cpuacct", "cpuset", "memory", "pids"):
            if c not in hier and not any(c in n.split(",") for n in hier):
                out.append(f"cgroup v1 controller `{c}` mounted under /sys/fs/cgroup")
    fs = Path("/proc/filesystems").read_text() if Path("/proc/filesystems").exists() else ""
    if "overlay" not in fs:
        out.append("the overlay filesystem (containerd's overlayfs snapshotter)")
    b = bins or CACHE / "bin"
    ver = versions()[KUBE_VERSION_KEY]
    for name in ("kubelet", "pause"):
        if not os.path.exists(b / f"{name}-{ver}") and not shutil.which("go" if name == "kubelet" else "gcc"):
            out.append(f"{b / (name + '-' + ver)} (hack/build-tools.sh realnode; needs "
                       f"{'Go' if name == 'kubelet' else 'gcc and libc6-dev'})")
    if cluster_dir is not None:
        for f in ("pki/ca.crt", "pki/ca.key", "pki/admin.crt", "ports.json"):
            if not os.path.exists(cluster_dir / f):
                out.append(f"{cluster_dir / f} (a local control plane started by hack/localcluster.py)")
    return out


def conflicts() -> list[str]:
    """What on this host stops a real node from starting right now (another one running, an
    address collision)."""
    out: list[str] = []
    owner = read_pointer()
    down = f"`python -m hack.realnode down --state-dir {owner}`" if owner else "`python -m hack.realnode down`"
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        out.append(f"interface {BRIDGE} exists (another real node is running; {down})")
    for h in cgroup_hierarchies():
        if (h / CGROUP_ROOT).exists():
            out.append(f"cgroup {h / CGROUP_ROOT} exists (another real node; {down})")
            break
    for line in run("ip", "-o", "route", "show", "table", "all", check=False).stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest.startswith(("broadcast", "local", "multicast", "anycast", "unreachable")):
            dest = line.split()[1]
        try:
            net = ipaddress.ip_network("0.0.0.0/0" if dest == "default" else dest, strict=False)
        except ValueError:
            continue
        if dest != "default" and net.version == 4 and net.overlaps(SUBNET):
            out.append(f"route `{line.strip()}` overlaps the node subnet {SUBNET}")
    return out


def read_pointer() -> Path | None:
    """The state dir POINTER names (None: no node started here, or an unreadable pointer)."""
    try:
        return Path(json.loads(POINTER.read_text())["state_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def reclaim_abandoned() -> list[str]:
    """Stop the node POINTER names if it is abandoned: its owner and every process it started
    are gone (`RealNode.abandoned`). A node that still has one of them is somebody's and is left
    alone. Returns what its `down` could not put back (empty: the host is as before its `up`, or
    there was nothing to reclaim)."""
    state_dir = read_pointer()
    if state_dir is None:
        if POINTER.exists():
            log(f"{POINTER} names no state dir; removing it")
            POINTER.unlink(missing_ok=True)
        return []
    node = RealNode(state_dir=state_dir)
    if not node.state:  # its `down` ended after removing the state file and before the pointer
        POINTER.unlink(missing_ok=True)
        return []
    if not node.abandoned():
        return []
    log(f"node {node.state.get('name')} of {state_dir}: its owner and its processes are gone; stopping it")
    return node.down(verify=True)


# ----------------------------------------------------------------------------- the node
class RealNode:
    def __init__(self, state_dir: Path = DEFAULT_STATE, cluster_dir: Path | None = None, name: str = NODE_NAME,
                 bins: Path | None = None, tie_to_parent: bool = False) -> None:
        self.dir = state_dir.resolve()
        self.cluster_dir = cluster_dir.resolve() if cluster_dir else None
        self.name = name
        self.bins = bins or CACHE / "bin"
        self.tie_to_parent = tie_to_parent
        self.version = versions()[KUBE_VERSION_KEY]
        self.sock = self.dir / "containerd.sock"
        self.logs = self.dir / "logs"
        self.state_file = self.dir / "state.json"
        self.state: dict[str, Any] = self._load()
        if self.cluster_dir is None and self.state.get("cluster_dir"):
            self.cluster_dir = Path(self.state["cluster_dir"])

    # ------------------------------------------------------------ state (written before each host change)
    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_file)

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubelet.kubeconfig"

    # ------------------------------------------------------------ API access with the cluster's admin cert
    def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.cluster_dir is not None
        port = json.loads((self.cluster_dir / "ports.json").read_text())["apiserver"]
        pki = self.cluster_dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            raw = r.read()
        return json.loads(raw) if raw.strip().startswith(b"{") else {"raw": raw.decode()}

    def node_ready(self, heartbeat_after: float | None = None) -> bool:
        """Ready, and (after a kubelet restart) with a heartbeat from the new kubelet."""
        try:
            node = self._api("GET", f"/api/v1/nodes/{self.name}")
        except Exception:
            return False
        for c in node.get("status", {}).get("conditions", []):
            if c.get("type") == "Ready" and c.get("status") == "True":
                if heartbeat_after is None:
                    return True
                beat = calendar.timegm(time.strptime(c.get("lastHeartbeatTime", "1970-01-01T00:00:00Z"),
                                                     "%Y-%m-%dT%H:%M:%SZ"))
                return beat >= heartbeat_after
        return False

    # ------------------------------------------------------------ up
    def up(self, timeout: float = 120) -> str:
        if self.running():
            log(f"node {self.name} already running ({self.dir})")
            return self.name
        if self.cluster_dir is None:
            raise SystemExit("--cluster-dir is required (the state dir of a running hack/localcluster.py)")
        gaps = missing(self.cluster_dir, self.bins)
        if gaps:
            raise SystemExit("this host cannot run the real node; missing:\n  - " + "\n  - ".join(gaps))
        self.down(verify=False, quiet=True)  # anything half-started before
        left = reclaim_abandoned()
        if left:
            raise SystemExit("an abandoned real node was stopped but left the host changed:\n  - " + "\n  - ".join(left))
        problems = conflicts()
        if problems:
            raise SystemExit("cannot start the real node:\n  - " + "\n  - ".join(problems))
        started = time.monotonic()
        self._build()
        for d in (self.dir, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        me = os.getpid()
        self.state = {"name": self.name, "cluster_dir": str(self.cluster_dir), "pids": {}, "starts": {},
                      "owner": {"pid": me, "start": start_time(me)}, "cgroups": [], "bridge": False,
                      "sysctls_restored": {}}
        before = snapshot(self.dir)
        (self.dir / "host-before.json").write_text(json.dumps(before, indent=1))
        self.state["sysctls_before"] = before["sysctls"]
        self.state["paths_before"] = before["paths"]
        self.state["shim_sockets_before"] = before["shim_sockets"]
        self.state["iptables_before"] = before["iptables"]
        self._save()
        self._point_here()
        try:
            self._certs()
            self._rbac()
            self._network()
            self._cgroups()
            self._start_containerd()
            self._import_images()
            self._start_kubelet()
            self._wait_ready(timeout)
            self.restore_sysctls(every=True)
        except BaseException:
            log("start failed; tearing down")
            self.down(verify=True)
            raise
        log(f"node {self.name} Ready in {time.monotonic() - started:.1f}s (node IP {NODE_IP}, state {self.dir})")
        return self.name

    def _build(self) -> None:
        ver = self.version
        if (self.bins / f"kubelet-{ver}").exists() and (self.bins / f"pause-{ver}").exists():
            return
        log("building kubelet and pause (hack/build-tools.sh realnode)")
        proc = subprocess.run(["bash", str(HACK / "build-tools.sh"), "realnode"], stdout=subprocess.PIPE,
                              text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit("hack/build-tools.sh realnode failed (see the lines above)")

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.dir / "pki", check=True, capture_output=True)

    def _certs(self) -> None:
        assert self.cluster_dir is not None
        pki = self.dir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca = self.cluster_dir / "pki"
        shutil.copy(ca / "ca.crt", pki / "ca.crt")
        for name, subject, ext in (
            ("kubelet-client", f"/O=system:nodes/CN=system:node:{self.name}", "extendedKeyUsage=clientAuth\n"),
            ("kubelet-serving", f"/O=system:nodes/CN=system:node:{self.name}",
             f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:{NODE_IP},DNS:{self.name}\n"),
        ):
            self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                          "-subj", subject)
            (pki / f"{name}.ext").write_text(ext)
            self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca / "ca.crt"), "-CAkey", str(ca / "ca.key"),
                          "-CAcreateserial", "-CAserial", str(pki / "ca.srl"), "-out", f"{name}.crt", "-days", "365",
                          "-extfile", f"{name}.ext")
        port = json.loads((self.cluster_dir / "ports.json").read_text())["apiserver"]
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: local\n  cluster:\n    server: https://127.0.0.1:{port}\n"
            f"    certificate-authority: {pki / 'ca.crt'}\n"
            f"users:\n- name: node\n  user:\n    client-certificate: {pki / 'kubelet-client.crt'}\n"
            f"    client-key: {pki / 'kubelet-client.key'}\n"
            "contexts:\n- name: local\n  context: {cluster: local, user: node}\ncurrent-context: local\n")

    def _rbac(self) -> None:
        """The node's identity gets the ClusterRole system:node and nothing else (this API server
        authorizes with RBAC only, and system:node has no default binding)."""
        body = {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": f"necrocode-realnode:{self.name}", "labels": {LABEL: "real"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{self.name}"}],
        }
        try:
            self._api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", body)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
        self.state["rbac"] = body["metadata"]["name"]
        self._save()

    def _network(self) -> None:
        self.state["bridge"] = True  # recorded first: `down` removes it even if the next lines fail
        self._save()
        run("ip", "link", "add", "name", BRIDGE, "type", "bridge")
        # no IPv6 on it (no router solicitations, no DAD traffic); the per-interface sysctl goes with it
        if Path(f"/proc/sys/net/ipv6/conf/{BRIDGE}").exists():
            write_sysctl(f"net.ipv6.conf.{BRIDGE}.disable_ipv6", "1")
        run("ip", "addr", "add", f"{NODE_IP}/{SUBNET.prefixlen}", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        cni = self.dir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        conf = {
            "cniVersion": "0.4.0", "name": "necrocode-realnode",
            "plugins": [{
                "type": "bridge", "bridge": BRIDGE,
                # no gateway, no masquerade: the bridge plugin then changes no sysctl (ip_forward)
                # and adds no iptables rule; pods reach the node IP on the same subnet
                "isGateway": False, "isDefaultGateway": False, "ipMasq": False, "hairpinMode": False,
                "ipam": {"type": "host-local", "dataDir": str(cni / "ipam"),
                         "ranges": [[{"subnet": str(SUBNET), "rangeStart": POD_RANGE[0],
                                      "rangeEnd": POD_RANGE[1], "gateway": NODE_IP}]]},
            }],
        }
        (cni / "net.d" / "10-necrocode.conflist").write_text(json.dumps(conf, indent=1))

    def _cgroups(self) -> None:
        """The kubelet's cgroup root, in every hierarchy (the kubelet refuses a missing one)."""
        for h in cgroup_hierarchies():
            d = h / CGROUP_ROOT
            self.state["cgroups"].append(str(d))
            self._save()
            d.mkdir(exist_ok=True)
            for f in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset: an empty set admits no task
                if (d / f).exists() and not (d / f).read_text().strip():
                    (d / f).write_text((h / f).read_text())

    def _spawn(self, name: str, args: list[str]) -> int:
        logf = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_preexec(self.tie_to_parent), cwd=self.dir)
        self.state["pids"][name] = proc.pid
        self.state.setdefault("starts", {})[name] = start_time(proc.pid)
        self._save()
        return proc.pid

    def _start_containerd(self) -> None:
        d = self.dir
        for p in ("containerd/root", "containerd/state", "runc"):
            (d / p).mkdir(parents=True, exist_ok=True)
        pause = f"necrocode.local/pause:{self.version}"
        cri = '[plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
# the v1 runtime is unused but the CRI plugin needs it loaded; its runc root is ours too
[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "{d}/runc-v1"
{cri}]
  sandbox_image = "{pause}"
  # this VM lacks CAP_SYS_RESOURCE: without it every sandbox fails in runc create
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{cri}.containerd.runtimes.runc.options]
  BinaryName = "{shutil.which('runc')}"
  Root = "{d}/runc"
  SystemdCgroup = false
{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{d}/cni/net.d"
  max_conf_num = 1
{cri}.registry]
  config_path = ""
"""
        (d / "containerd.toml").write_text(config)
        self._spawn("containerd", [shutil.which("containerd") or "containerd", "--config", str(d / "containerd.toml")])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not alive(self.state["pids"]["containerd"]):
                break
            if self.sock.exists() and self._ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("containerd did not start:\n" + tail(self.logs / "containerd.log"))

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ctr", "--address", str(self.sock), "-n", "k8s.io", *args, check=check)

    def import_image(self, tar: Path) -> str:
        res = self._ctr("images", "import", str(tar))
        return res.stdout.strip()

    def _import_images(self) -> None:
        from hack import ociimage

        images = self.dir / "images"
        for img in (ociimage.pause_image(self.bins / f"pause-{self.version}"), ociimage.runner_image()):
            tar = images / (img.name.split("/")[-1].replace(":", "-") + ".tar")
            img.write(tar)
            self.import_image(tar)
            log(f"imported {img.name}")

    def _start_kubelet(self) -> None:
        d = self.dir
        assert self.cluster_dir is not None
        port = 10250 if port_free(NODE_IP, 10250) else free_port()
        healthz = free_port()
        self.state["ports"] = {"kubelet": port, "healthz": healthz}
        pki = d / "pki"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            # the kubelet serves on the node IP of our own bridge only, never on 0.0.0.0
            "address": NODE_IP, "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz,
            "tlsCertFile": str(pki / "kubelet-serving.crt"), "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True, "cacheTTL": "30s"},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "Webhook",
                              "webhook": {"cacheAuthorizedTTL": "30s", "cacheUnauthorizedTTL": "5s"}},
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            "imageServiceEndpoint": f"unix://{self.sock}",
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}", "cgroupsPerQOS": True,
            "failCgroupV1": False, "failSwapOn": False,
            "podLogsDir": str(d / "pod-logs"), "volumePluginDir": str(d / "volume-plugins"),
            "resolvConf": "",  # pods get no name servers: they talk only to the node's own addresses
            "registerNode": True,
            "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
            "makeIPTablesUtilChains": False,
            "rotateCertificates": False, "serverTLSBootstrap": False,
            "protectKernelDefaults": False,  # true refuses to start; the changes are put back after start
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "maxPods": 30, "serializeImagePulls": False,
            "shutdownGracePeriod": "0s", "shutdownGracePeriodCriticalPods": "0s",
            "enableDebuggingHandlers": True,
            "nodeStatusReportFrequency": "10s",
        }
        (d / "kubelet.json").write_text(json.dumps(config, indent=1))
        self.state["kubelet_args"] = [
            str(self.bins / f"kubelet-{self.version}"), f"--config={d / 'kubelet.json'}",
            f"--kubeconfig={self.kubeconfig}", f"--root-dir={d / 'kubelet'}", f"--cert-dir={d / 'kubelet-pki'}",
            f"--hostname-override={self.name}", f"--node-ip={NODE_IP}", f"--node-labels={LABEL}=real", "--v=2"]
        self._spawn("kubelet", self.state["kubelet_args"])

    # ------------------------------------------------------------ kubelet outage (tests: a lost node)
    def stop_kubelet(self) -> None:
        """Stop only the kubelet: containers keep running, nothing on the node acts on the API
        (what a node whose kubelet died looks like)."""
        stop_process(self.state["pids"]["kubelet"], 5)

    def start_kubelet(self, timeout: float = 60) -> float:
        """Start the kubelet again with the same configuration; returns the seconds until the node
        is Ready. The kubelet sets its kernel settings again at start: they are put back."""
        t0 = time.monotonic()
        self._spawn("kubelet", self.state["kubelet_args"])
        self._wait_ready(timeout, since_restart=True)
        self.restore_sysctls()
        return time.monotonic() - t0

    def _wait_ready(self, timeout: float, since_restart: bool = False) -> None:
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        wall0 = time.time()
        while time.monotonic() < deadline:
            for name in ("kubelet", "containerd"):
                if not alive(self.state["pids"][name]):
                    raise RuntimeError(f"{name} exited:\n" + tail(self.logs / f"{name}.log"))
            if self.node_ready(heartbeat_after=wall0 - 1 if since_restart else None):
                log(f"node Ready {time.monotonic() - t0:.1f}s after kubelet start")
                return
            time.sleep(0.25)
        raise RuntimeError("node did not become Ready:\n" + tail(self.logs / "kubelet.log"))

    def restore_sysctls(self, every: bool = False) -> dict[str, tuple[str, str]]:
        """Put back the kernel settings the kubelet changed (kernel.panic, kernel.panic_on_oops,
        vm.overcommit_memory, ...): every one that differs from the snapshot when `every` (right
        after start), else KNOWN_SYSCTLS and those found changed before. Returns key -> (was, found)."""
        before = self.state.get("sysctls_before") or {}
        now = read_sysctls()
        keys = set(before) if every else set(KNOWN_SYSCTLS) | set(self.state.get("sysctls_restored") or {})
        changed: dict[str, tuple[str, str]] = {}
        for k, v in before.items():
            if k in keys and k in now and now[k] != v:
                parts = k.split(".")
                if len(parts) > 3 and parts[0] == "net" and parts[2] in ("conf", "neigh") and parts[3] not in (
                        "all", "default"):
                    continue  # per-interface: goes with the interface
                try:
                    write_sysctl(k, v)
                    changed[k] = (v, now[k])
                except OSError as exc:
                    log(f"cannot restore {k}={v} (now {now[k]}): {exc}")
        if changed:
            log("restored " + ", ".join(f"{k}={was} (kubelet set {found})" for k, (was, found) in changed.items()))
            self.state.setdefault("sysctls_restored", {}).update({k: list(v) for k, v in changed.items()})
            self._save()
        return changed

    # ------------------------------------------------------------ status
    def running(self) -> bool:
        pids = self.state.get("pids") or {}
        return bool(pids) and all(alive(p) for p in pids.values()) and self.node_ready()

    def abandoned(self) -> bool:
        """Nobody can be using this node: the process that ran `up` is gone, and so are the
        kubelet and containerd. (A node of `up` from the command line outlives that command,
        its kubelet and containerd keep it; a test's node while its kubelet is stopped has its
        owner.) Processes are compared by pid and start time, so a reused pid does not count."""
        st = self.state
        recorded = [(int(p), (st.get("starts") or {}).get(n)) for n, p in (st.get("pids") or {}).items()]
        owner = st.get("owner") or {}
        if "pid" in owner:
            recorded.append((int(owner["pid"]), owner.get("start")))
        elif not recorded:
            return False  # a state file without any process recorded: not ours to judge
        return not any(alive_as_recorded(pid, start) for pid, start in recorded)

    def _point_here(self) -> None:
        tmp = POINTER.with_suffix(".tmp")
        tmp.write_text(json.dumps({"state_dir": str(self.dir)}))
        tmp.replace(POINTER)

    # ------------------------------------------------------------ down
    def down(self, verify: bool = True, quiet: bool = False) -> list[str]:
        """Stop everything and put the host back; idempotent. Returns the differences left
        between the host and its snapshot from `up` (empty: restored)."""
        st = self.state or self._load()
        if not st:
            if not quiet:
                log(f"nothing to stop ({self.state_file} absent)")
            return []
        if not quiet:
            log(f"stopping node {st.get('name')} ({self.dir})")
        pids: dict[str, int] = st.get("pids", {})
        # 1. the kubelet first (it would restart containers), then every container process
        if "kubelet" in pids:
            stop_process(pids["kubelet"], 5)
        self._kill_containers()
        # 2. shims (found by our containerd's address), then containerd
        for _ in range(3):
            shims = [p for p in all_pids() if str(self.sock) in cmdline(p) and p != pids.get("containerd")]
            for p in shims:
                kill(p, signal.SIGKILL)
            if not shims:
                break
            time.sleep(0.3)
        if "containerd" in pids:
            stop_process(pids["containerd"], 5)
        self._kill_containers()
        # 3. mounts under the state dir (container rootfs, netns, shm, volumes), deepest first
        self._unmount_all()
        # 4. network: pod veths left on the bridge, then the bridge
        if st.get("bridge"):
            for name, info in links().items():
                if f"master={BRIDGE}" in info:
                    run("ip", "link", "del", name, check=False)
            if Path(f"/sys/class/net/{BRIDGE}").exists():
                run("ip", "link", "del", BRIDGE, check=False)
        # 5. iptables: chains and rules added since `up` (KUBE-*, CNI-*), if iptables exists at all
        self._restore_iptables(st.get("iptables_before") or {})
        # 6. cgroups, deepest first
        for root in st.get("cgroups", []):
            self._rmdir_cgroup(Path(root))
        # 7. kernel settings
        self.state = st
        self.restore_sysctls()
        # 8. host paths the kubelet/containerd created, shim sockets, the API objects
        before_paths = st.get("paths_before") or {}
        sockets_before = set(st.get("shim_sockets_before") or [])
        if SHIM_SOCKETS.is_dir():
            for s in os.listdir(SHIM_SOCKETS):
                if s not in sockets_before:
                    try:
                        (SHIM_SOCKETS / s).unlink()
                    except OSError:
                        pass
        for p in HOST_PATHS:
            if before_paths.get(p) is False and os.path.lexists(p):
                self._safe_rmtree(Path(p))
        self._delete_api_objects(st)
        # 9. our state, except logs and the snapshots (kept for reading after a failure)
        for sub in ("containerd", "kubelet", "runc", "runc-v1", "cni", "images", "pod-logs", "volume-plugins",
                    "kubelet-pki", "containerd.sock", "containerd.sock.ttrpc"):
            self._safe_rmtree(self.dir / sub)
        diffs: list[str] = []
        if verify and (self.dir / "host-before.json").exists():
            before = json.loads((self.dir / "host-before.json").read_text())
            after = snapshot(self.dir)
            (self.dir / "host-after.json").write_text(json.dumps(after, indent=1))
            diffs = compare(before, after)
            if diffs:
                log("the host differs from its snapshot before `up`:\n  " + "\n  ".join(diffs))
            else:
                log("host restored: sysctls, iptables, links, addresses, routes, mounts, cgroups, "
                    "host paths and processes as before `up`")
        self.state_file.unlink(missing_ok=True)
        if read_pointer() == self.dir:
            POINTER.unlink(missing_ok=True)
        self.state = {}
        return diffs

    def pod_processes(self) -> set[int]:
        """Every process in the node's cgroups (pods' processes and their pause processes)."""
        return self._cgroup_procs()

    def _cgroup_procs(self) -> set[int]:
        found: set[int] = set()
        for h in cgroup_hierarchies():
            for dirpath, _d, files in os.walk(h / CGROUP_ROOT):
                if "cgroup.procs" in files:
                    try:
                        found.update(int(x) for x in (Path(dirpath) / "cgroup.procs").read_text().split())
                    except OSError:
                        pass
        return found

    def _kill_containers(self) -> None:
        """SIGKILL every process in the node's cgroups (pods, pause), until none is left. The
        freezer would be gentler; a cgroup v1 VM may not have it, SIGKILL in a loop always works."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            procs = self._cgroup_procs() - {os.getpid()}
            if not procs:
                return
            for p in procs:
                kill(p, signal.SIGKILL)
            time.sleep(0.2)
        log(f"processes still in the node's cgroups: {sorted(self._cgroup_procs())}")

    def _unmount_all(self) -> None:
        prefix = str(self.dir) + "/"
        for _ in range(5):
            ours = [mp for mp, _fs, _src in mounts() if mp.startswith(prefix)]
            if not ours:
                return
            for mp in sorted(ours, key=lambda m: -m.count("/")):
                if run("umount", mp, check=False).returncode != 0:
                    run("umount", "-l", mp, check=False)
        left = [mp for mp, _fs, _src in mounts() if mp.startswith(prefix)]
        if left:
            log(f"mounts left under {self.dir}: {left}")

    def _rmdir_cgroup(self, root: Path) -> None:
        if not root.exists():
            return
        for _ in range(20):
            dirs = sorted((Path(p) for p, _d, _f in os.walk(root)), key=lambda p: -len(p.parts))
            failed = False
            for d in dirs:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    failed = True
            if not failed:
                return
            self._kill_containers()
            time.sleep(0.2)
        log(f"cgroup {root} could not be removed")

    def _restore_iptables(self, before: dict[str, list[str]]) -> None:
        now = iptables_save()
        for table, lines in now.items():
            tool, tname = table.split(":", 1)
            cmd = tool.replace("-save", "")
            old = set(before.get(table, []))
            added_rules = [ln for ln in lines if ln.startswith("-A") and ln not in old]
            for rule in reversed(added_rules):
                run(cmd, "-t", tname, *_split_rule(rule.replace("-A", "-D", 1)), check=False)
            added_chains = [ln[1:] for ln in lines if ln.startswith(":") and ln not in old]
            for chain in added_chains:
                if chain.startswith(("KUBE-", "CNI-")):
                    run(cmd, "-t", tname, "-F", chain, check=False)
            for chain in added_chains:
                if chain.startswith(("KUBE-", "CNI-")):
                    run(cmd, "-t", tname, "-X", chain, check=False)

    def _safe_rmtree(self, path: Path) -> None:
        """rm -rf that refuses to cross into a mount (a hostPath bind mount would take host
        files with it)."""
        if not os.path.lexists(path):
            return
        prefix = str(path).rstrip("/") + "/"
        inside = [mp for mp, _fs, _src in mounts() if mp == str(path) or mp.startswith(prefix)]
        if inside:
            log(f"not removing {path}: mounts inside: {inside}")
            return
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)

    def _delete_api_objects(self, st: dict[str, Any]) -> None:
        if not self.cluster_dir or not (self.cluster_dir / "ports.json").exists():
            return
        for path in (f"/api/v1/nodes/{st.get('name', self.name)}",
                     f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/necrocode-realnode:{st.get('name', self.name)}"):
            try:
                self._api("DELETE", path)
            except Exception:  # the control plane may be gone already; nothing of ours is on the host
                pass


def _split_rule(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


# ----------------------------------------------------------------------------- CLI
def _interruptible() -> None:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so the teardown runs. (SIGINT too:
    a process started in the background by a non-interactive shell inherits SIGINT ignored.)"""
    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _uninterruptible() -> None:
    """A teardown (`down`, a reclaim, `run` after its signal) ignores SIGINT and SIGTERM: a second
    Ctrl-C must not leave the host half restored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status", "run", "check", "import", "verify", "reclaim"])
    ap.add_argument("image", nargs="?", type=Path, help="(import) an OCI image tarball")
    ap.add_argument("--cluster-dir", type=Path, default=None,
                    help=f"state dir of the running local control plane (default {DEFAULT_CLUSTER})")
    ap.add_argument("--state-dir", type=Path, default=DEFAULT_STATE, help=f"the node's own state (default {DEFAULT_STATE})")
    ap.add_argument("--name", default=NODE_NAME)
    a = ap.parse_args(argv)
    if a.command == "check":
        gaps = missing(a.cluster_dir)
        for g in gaps:
            print(f"missing: {g}")
        for c in conflicts():
            print(f"conflict: {c}")
        return 1 if gaps else 0
    if a.command == "reclaim":
        _uninterruptible()
        return 1 if reclaim_abandoned() else 0
    cluster_dir = a.cluster_dir or (DEFAULT_CLUSTER if a.command in ("up", "run") else None)
    node = RealNode(state_dir=a.state_dir, cluster_dir=cluster_dir, name=a.name)
    if a.command in ("up", "run"):
        _interruptible()
        try:
            print(node.up(), flush=True)
            if a.command == "up":
                return 0
            log("running; Ctrl-C or SIGTERM stops it and restores the host")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            log("interrupted")
        # `run` after Ctrl-C/SIGTERM, or `up` interrupted (it already tore down what it started;
        # this finds nothing, or what a second signal interrupted)
        _uninterruptible()
        diffs = node.down()
        return 1 if diffs else (0 if a.command == "run" else 130)
    if a.command == "down":
        _uninterruptible()
        return 1 if node.down() else 0
    if a.command == "import":
        if not a.image:
            ap.error("import needs an image tarball")
        print(node.import_image(a.image))
        return 0
    if a.command == "verify":
        before = node.dir / "host-before.json"
        if not before.exists():
            print(f"no snapshot at {before}")
            return 1
        diffs = compare(json.loads(before.read_text()), snapshot(node.dir))
        print("\n".join(diffs) if diffs else "no differences from the snapshot before `up`")
        return 1 if diffs else 0
    up = node.running()
    pids = node.state.get("pids", {})
    print(f"{'running' if up else 'stopped'}: node {node.state.get('name', a.name)}, "
          + ", ".join(f"{k} {v} {'alive' if alive(v) else 'dead'}" for k, v in pids.items()))
    return 0 if up else 1


if __name__ == "__main__":
    sys.exit(main())
