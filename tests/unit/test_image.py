"""The operator image two ways: `Dockerfile` (the source of truth for users with Docker) and
hack/build_image.py (built here without Docker, for the real node). Both must agree on the user,
the entrypoint, the exposed ports and the environment, and both must fit the chart's hardening
(non-root numeric user, read-only root filesystem, writable /tmp only)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack import build_image as bi

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "necrocode-cancel"


def dockerfile_final_stage(text: str) -> dict[str, Any]:
    """USER, ENTRYPOINT, CMD, EXPOSE, ENV and the RUN lines of the Dockerfile's last stage."""
    lines: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    stage: list[tuple[str, str]] = []
    for line in lines:
        op, _, rest = line.partition(" ")
        if op.upper() == "FROM":
            stage = []
        stage.append((op.upper(), rest.strip()))
    out: dict[str, Any] = {"USER": None, "ENTRYPOINT": None, "CMD": None, "EXPOSE": [], "ENV": {}, "RUN": []}
    for op, rest in stage:
        if op in ("ENTRYPOINT", "CMD"):
            out[op] = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
        elif op == "USER":
            out["USER"] = rest
        elif op == "EXPOSE":
            out["EXPOSE"] += [p if "/" in p else f"{p}/tcp" for p in rest.split()]
        elif op == "ENV":
            for pair in shlex.split(rest):
                k, _, v = pair.partition("=")
                out["ENV"][k] = v
        elif op == "RUN":
            out["RUN"].append(rest)
    return out


@pytest.fixture(scope="module")
def docker() -> dict[str, Any]:
    return dockerfile_final_stage((REPO / "Dockerfile").read_text())


def test_the_parser_reads_the_final_stage_only() -> None:
    parsed = dockerfile_final_stage('FROM a AS b\nUSER 1\nEXPOSE 1\nFROM c\nUSER 2:3\nEXPOSE 80 53/udp\n'
                                    'ENV A=1 B="x y"\nENTRYPOINT ["x", "y"]\n')
    assert parsed["USER"] == "2:3" and parsed["EXPOSE"] == ["80/tcp", "53/udp"]
    assert parsed["ENV"] == {"A": "1", "B": "x y"} and parsed["ENTRYPOINT"] == ["x", "y"] and parsed["CMD"] is None


def test_user_entrypoint_ports_and_env_agree(docker: dict[str, Any]) -> None:
    config = bi.image_config()
    assert config["User"] == docker["USER"]
    assert config["Entrypoint"] == docker["ENTRYPOINT"]
    assert config.get("Cmd") == docker["CMD"]
    assert sorted(config["ExposedPorts"]) == sorted(docker["EXPOSE"])
    env = dict(e.split("=", 1) for e in config["Env"])
    for k, v in docker["ENV"].items():
        if k == "PATH":  # the Dockerfile prepends the venv to the base image's PATH
            assert v.replace("$PATH", "") == f"{bi.VENV}/bin:" and env["PATH"].startswith(f"{bi.VENV}/bin:")
        else:
            assert env[k] == v, k


def test_the_user_is_created_alike(docker: dict[str, Any]) -> None:
    uid, gid = bi.USER.split(":")
    run = " ".join(docker["RUN"])
    assert re.search(rf"groupadd --gid {gid} necrocode", run) and re.search(rf"useradd --uid {uid} --gid {gid}", run)
    assert int(uid) != 0 and int(gid) != 0  # numeric and non-root: runAsNonRoot can verify it


def test_entrypoint_and_the_charts_commands_are_project_scripts(docker: dict[str, Any]) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert docker["ENTRYPOINT"][0] in scripts
    api = (CHART / "templates" / "api.yaml").read_text()
    assert "command: [necrocode-api]" in api and "necrocode-api" in scripts


def test_the_chart_fits_the_image(docker: dict[str, Any]) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid, gid = (int(x) for x in bi.USER.split(":"))
    pod, container = values["podSecurityContext"], values["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid and pod["runAsGroup"] == gid
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False and container["capabilities"]["drop"] == ["ALL"]
    exposed = {int(p.split("/")[0]) for p in docker["EXPOSE"]}
    assert {values["service"]["metricsPort"], 8081, values["api"]["port"]} <= exposed
    # a read-only root needs no bytecode written at run time (compiled at build time) ...
    assert docker["ENV"].get("PYTHONDONTWRITEBYTECODE") == "1"
    # ... and gets a writable /tmp from the chart
    for template in ("deployment.yaml", "api.yaml"):
        text = (CHART / "templates" / template).read_text()
        assert "mountPath: /tmp" in text and "emptyDir: {}" in text, template


def test_rendered_chart_runs_the_image_as_built() -> None:
    helm = shutil.which("helm") or str(Path.home() / ".cache" / "necrocode" / "bin" / "helm")
    if not Path(helm).exists():
        pytest.skip("helm not built (make tools)")
    out = subprocess.run([helm, "template", "rel", str(CHART), "--kube-version", "1.36.3"], check=True,
                         capture_output=True, text=True).stdout
    deps = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    uid, gid = (int(x) for x in bi.USER.split(":"))
    exposed = {int(p.split("/")[0]) for p in bi.image_config()["ExposedPorts"]}
    for dep in deps:
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsGroup"] == gid
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert {p["containerPort"] for p in c["ports"]} <= exposed
            # the operator uses the image's entrypoint; the API its own script of the same image
            assert c.get("command") in (None, ["necrocode-api"])


def test_the_built_image_has_that_config() -> None:
    """The config the script wrote into the last image it built (skipped if none was built)."""
    last = bi.IMAGE_CACHE / "last.json"
    if not last.exists():
        pytest.skip(f"no image built yet ({last}; python -m hack.build_image)")
    report = json.loads(last.read_text())
    tar_path = Path(report["tarball"])
    if not tar_path.exists():
        pytest.skip(f"{tar_path} is gone")
    with tarfile.open(tar_path) as tar:
        def blob(digest: str) -> Any:
            f = tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
            assert f is not None
            return json.loads(f.read())

        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = blob(index["manifests"][0]["digest"])
        config = blob(manifest["config"]["digest"])
        assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == report["image"]
        assert len(manifest["layers"]) == 3
        base = tar.extractfile("blobs/sha256/" + manifest["layers"][0]["digest"].split(":", 1)[1])
        assert base is not None
        with tarfile.open(fileobj=base) as layer:
            passwd = layer.extractfile("etc/passwd").read().decode()  # type: ignore[union-attr]
    for key in ("User", "Entrypoint", "ExposedPorts", "Env"):
        assert config["config"][key] == bi.image_config()[key], key
    uid, gid = bi.USER.split(":")
    assert f"necrocode:x:{uid}:{gid}:" in passwd
