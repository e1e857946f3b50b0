"""Where the CLI's connection comes from (kubeconfig, else the pod's ServiceAccount), how it
impersonates, how it reads durations, and its shell completion script (bash running it:
tests/tools/test_completion.py). No server: a temporary directory stands in for
/var/run/secrets/kubernetes.io/serviceaccount."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.shell_completion import ShellComplete
from click.testing import CliRunner
from kubernetes import client

from necrocode import cli
from necrocode.cli import errors, kubeconfig, options
from necrocode.cli.submit import Ask


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text("token-1")
    (d / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (d / "namespace").write_text("team-a\n")
    return d


POD_ENV = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_in_cluster_reads_the_service_account_dir(sa_dir: Path) -> None:
    got = kubeconfig.in_cluster(POD_ENV, str(sa_dir))
    assert got == kubeconfig.InCluster(host="https://10.0.0.1:443", token_file=str(sa_dir / "token"),
                                ca_file=str(sa_dir / "ca.crt"), namespace="team-a")
    assert kubeconfig.in_cluster({**POD_ENV, "POD_NAMESPACE": "from-env"}, str(sa_dir)).namespace == "from-env"  # type: ignore[union-attr]
    assert kubeconfig.in_cluster({**POD_ENV, "KUBERNETES_SERVICE_HOST": "fd00::1"}, str(sa_dir)).host == "https://[fd00::1]:443"  # type: ignore[union-attr]
    (sa_dir / "namespace").unlink()
    (sa_dir / "ca.crt").unlink()
    bare = kubeconfig.in_cluster(POD_ENV, str(sa_dir))
    assert bare is not None and (bare.namespace, bare.ca_file) == ("default", None)  # as kubectl: system roots
    assert kubeconfig.in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, str(sa_dir)) is None  # no port
    assert kubeconfig.in_cluster({**POD_ENV, "KUBERNETES_SERVICE_HOST": ""}, str(sa_dir)) is None
    (sa_dir / "token").unlink()
    assert kubeconfig.in_cluster(POD_ENV, str(sa_dir)) is None  # not in a pod (or no token mounted)


def test_a_kubeconfig_file_comes_first_and_in_cluster_only_without_one(sa_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    sa = str(sa_dir)
    explicit = str(tmp_path / "missing.yaml")
    assert kubeconfig.config_source(explicit, POD_ENV, str(home), sa) == explicit  # --kubeconfig: always (must exist)
    assert isinstance(kubeconfig.config_source(None, POD_ENV, str(home), sa), kubeconfig.InCluster)  # no file at all
    assert kubeconfig.config_source(None, {}, str(home), sa) is None  # and not in a pod
    # $KUBECONFIG: used when any file of it exists; a list of missing files counts as none
    listed = tmp_path / "a.yaml"
    env = {**POD_ENV, "KUBECONFIG": f"{tmp_path / 'nope.yaml'}{os.pathsep}{listed}"}
    assert isinstance(kubeconfig.config_source(None, env, str(home), sa), kubeconfig.InCluster)
    listed.write_text("apiVersion: v1\n")
    assert kubeconfig.config_source(None, env, str(home), sa) == env["KUBECONFIG"]
    # ~/.kube/config, when $KUBECONFIG is unset
    (home / ".kube").mkdir()
    (home / ".kube" / "config").write_text("apiVersion: v1\n")
    assert kubeconfig.config_source(None, POD_ENV, str(home), sa) == str(home / ".kube" / "config")


def test_the_token_is_re_read_when_it_rotates(sa_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = kubeconfig.in_cluster(POD_ENV, str(sa_dir))
    assert source is not None
    cfg = client.Configuration()
    kubeconfig.use_in_cluster(cfg, source)
    assert (cfg.host, cfg.ssl_ca_cert) == ("https://10.0.0.1:443", str(sa_dir / "ca.crt"))
    assert cfg.auth_settings()["BearerToken"]["value"] == "Bearer token-1"
    (sa_dir / "token").write_text("token-2\n")  # the kubelet rotated it
    assert cfg.auth_settings()["BearerToken"]["value"] == "Bearer token-1"  # re-read once a minute, like client-go
    monkeypatch.setattr(kubeconfig, "TOKEN_REREAD_SECONDS", 0.0)
    assert cfg.auth_settings()["BearerToken"]["value"] == "Bearer token-2"
    (sa_dir / "token").unlink()  # a failed read keeps the last token
    assert cfg.auth_settings()["BearerToken"]["value"] == "Bearer token-2"


def test_connect_in_a_pod_uses_its_namespace_and_refuses_a_context(sa_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for k, v in POD_ENV.items():
        monkeypatch.setenv(k, v)
    conn = kubeconfig.connect(None, None, None, "necrocode", sa_dir=str(sa_dir))
    assert (conn.server, conn.namespace, conn.kubeconfig) == ("https://10.0.0.1:443", "team-a", None)
    assert kubeconfig.connect(None, None, "other", "necrocode", sa_dir=str(sa_dir)).namespace == "other"
    with pytest.raises(errors.CliError) as err:
        kubeconfig.connect(None, "prod", None, "necrocode", sa_dir=str(sa_dir))
    assert err.value.exit_code == errors.EXIT_UNREACHABLE and 'context "prod" not found' in err.value.message
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(errors.CliError) as err:
        kubeconfig.connect(None, None, None, "necrocode", sa_dir=str(sa_dir))
    assert err.value.exit_code == errors.EXIT_UNREACHABLE and err.value.message.startswith("no usable kubeconfig:")


class Pool:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.num_pools = 4

    def request(self, method: str, url: str, **kw: Any) -> str:
        self.sent = list(kw["headers"].items())
        return "answer"


def test_impersonation_sends_one_header_per_group() -> None:
    pool = Pool()
    imp = kubeconfig.Impersonating(pool, "system:serviceaccount:team-a:ci", ["g1", "g2"])
    assert imp.request("GET", "https://x/api", headers={"Accept": "application/json", "impersonate-user": "mallory"},
                       preload_content=False) == "answer"
    assert sorted(pool.sent) == [("Accept", "application/json"), ("Impersonate-Group", "g1"),
                                 ("Impersonate-Group", "g2"), ("Impersonate-User", "system:serviceaccount:team-a:ci")]
    assert imp.num_pools == 4  # everything else is the pool's


@pytest.mark.parametrize(("text", "seconds"), [("3600", 3600), ("0", 0), ("90s", 90), ("30m", 1800), ("1h", 3600),
                                               ("1h30m", 5400), ("2d", 172800), ("1d2h3m4s", 93784), (" 1H ", 3600)])
def test_durations(text: str, seconds: int) -> None:
    assert options.DURATION.convert(text, None, None) == seconds


@pytest.mark.parametrize("text", ["", "-1", "1.5h", "1w", "30m1h", "1h1h", "h", "99999999999"])
def test_bad_durations_are_usage_errors(text: str) -> None:
    result = CliRunner().invoke(cli.cli, ["job", "cancel", "j", "--ttl", text])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: Invalid value for '--ttl'"), line


@pytest.mark.parametrize(("args", "fragment"), [
    (["job", "cancel"], "name a JOB-ID (or several), or select jobs with -l SELECTOR"),
    (["job", "cancel", "a", "b", "--task", "t"], "--task needs exactly one JOB-ID (and no -l)"),
    (["job", "cancel", "a", "-l", "x=y", "--task", "t"], "--task needs exactly one JOB-ID (and no -l)"),
    (["job", "cancellations", "--as-group", "g"], "--as-group needs --as"),
    (["job", "cancellations", "-o", "jsonpath"], "jsonpath needs a template"),
    (["job", "cancellations", "-o", "jsonpath={.items[}"], "bad jsonpath template: unterminated array"),
    (["job", "cancellations", "-o", "xml"], "'xml' is not one of table, wide, name, json, yaml, jsonpath=TEMPLATE"),
])
def test_usage_errors_before_any_connection(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.cli, [*args, "--kubeconfig", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and fragment in line, line


# ----------------------------------------------------------------------------- completion
@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o nosort -F _necrocode_completion necrocode"),
                                               ("zsh", "#compdef necrocode"),
                                               ("fish", "complete --no-files --command necrocode")])
def test_completion_prints_the_script(shell: str, marker: str) -> None:
    result = CliRunner().invoke(cli.cli, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert marker in result.stdout and "_NECROCODE_COMPLETE" in result.stdout


def test_completion_of_an_unknown_shell_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli.cli, ["completion", "tcsh"])
    assert result.exit_code == 2 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in result.stderr



# ----------------------------------------------------------------------------- issue 18: --drain, --cooperative
@pytest.mark.parametrize(("args", "fragment"), [
    (["--drain", "5m", "--force"], "--drain lets running tasks finish and --force stops them now: choose one"),
    (["--cooperative", "30s", "--force"], "--cooperative waits for runners to stop by themselves and --force "
                                          "deletes them now: choose one"),
    (["--drain", "0"], "Invalid value for '--drain': '0' is out of range: from 1s to 24h"),
    (["--drain", "24h1s"], "Invalid value for '--drain': '24h1s' is out of range: from 1s to 24h"),
    (["--drain", "soon"], "Invalid value for '--drain': 'soon' is not a duration"),
    (["--cooperative", "1h1s"], "Invalid value for '--cooperative': '1h1s' is out of range: from 0s to 1h"),
])
def test_drain_and_cooperative_are_bounded_and_not_with_force(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.cli, ["job", "cancel", "job1", *args, "--kubeconfig", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and fragment in line, line


def test_the_bounds_are_the_crds() -> None:
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "necrocode.io_jobcancellations.yaml")
                          .read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for param, field in ((options.DRAIN_DURATION, "drainDeadlineSeconds"),
                         (options.COOPERATIVE_DURATION, "cooperativeSeconds")):
        assert (param.low, param.high) == (spec["properties"][field]["minimum"], spec["properties"][field]["maximum"])
    assert options.DRAIN_DURATION.convert("24h", None, None) == 86400
    assert options.COOPERATIVE_DURATION.convert("0", None, None) == 0


def test_ask_body_sets_the_mode_only_when_asked() -> None:
    spec = Ask(drain=90, cooperative=10, keep_logs=False).body("JobCancellation", "job1")["spec"]
    assert {k: spec[k] for k in ("mode", "drainDeadlineSeconds", "cooperativeSeconds", "preserveLogs")} == {
        "mode": "Drain", "drainDeadlineSeconds": 90, "cooperativeSeconds": 10, "preserveLogs": False}
    task = Ask(drain=60).body("TaskCancellation", "job1", "t3", cascade=False)["spec"]
    assert (task["mode"], task["drainDeadlineSeconds"], task["taskId"], task["cascade"]) == ("Drain", 60, "t3", False)
    assert Ask().body("JobCancellation", "job1")["spec"] == {"jobName": "job1"}


def test_completion_offers_the_new_flags() -> None:
    """Completion of the cancel flags comes from the command itself: the new ones are there."""
    comp = ShellComplete(cli.cli, {}, "necrocode", "_NECROCODE_COMPLETE")
    got = {c.value for c in comp.get_completions(["job", "cancel", "job1"], "--")}
    assert {"--drain", "--cooperative", "--keep-logs", "--no-keep-logs"} <= got
