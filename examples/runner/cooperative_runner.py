#!/usr/bin/env python3
"""A reference NecroCode runner that stops cooperatively (Python standard library only).

It works (one step every STEP_SECONDS) and watches its OWN pod's annotation
`necrocode.io/cancel-requested` through the API: a GET of the pod for its resourceVersion, then a
watch with fieldSelector=metadata.name=<pod> from there (again after each watch ends). When the
annotation appears, or on SIGTERM, it saves its work, reports, and exits 0: well inside the
cancellation's cooperative window (spec.cooperativeSeconds) or grace period.

Saving the work: an artifact ConfigMap `<pod>-work` labelled necrocode.io/artifact=true with the
pod's necrocode.io/job and necrocode.io/task labels (docs/runners.md: artifacts are kept by a
cancellation unless preserveArtifacts is false), holding the steps done and the cancellation's
reason; and a last line on stdout (`saved: ...`), which is what a log keeper reads.

Credentials: in a pod, its ServiceAccount token (the pod needs `get`/`watch` on its pod and
`create`/`update` on configmaps); outside (local runs, tests), a kubeconfig with one cluster and
one user: --kubeconfig or $KUBECONFIG (JSON, or the simple YAML `kubectl config view --minify
--flatten` writes; certificate and key files or their -data fields, or a token).

    POD_NAME=my-runner POD_NAMESPACE=default python3 cooperative_runner.py [--kubeconfig FILE]

Exit codes: 0 stopped cleanly (saved); 2 bad configuration; 3 the work could not be saved.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

ANNOTATION = "necrocode.io/cancel-requested"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
KEYS = ("server", "certificate-authority", "certificate-authority-data", "client-certificate",
        "client-certificate-data", "client-key", "client-key-data", "token", "insecure-skip-tls-verify")


class Api:
    """Just enough of a Kubernetes client: JSON over HTTPS with the pod's or a kubeconfig's credentials."""

    def __init__(self, server: str, ctx: ssl.SSLContext, token: str | None):
        self.server, self.ctx, self.token = server.rstrip("/"), ctx, token

    def call(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
             timeout: float = 30, content_type: str = "application/json") -> Any:
        url = self.server + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
        req.add_header("Accept", "application/json")
        if body is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        return urllib.request.urlopen(req, context=self.ctx, timeout=timeout)


def _kubeconfig(path: str) -> dict[str, str]:
    text = open(path).read()
    if text.lstrip().startswith("{"):
        cfg = json.loads(text)
        ctx_name = cfg.get("current-context")
        ctx = next((c["context"] for c in cfg.get("contexts", []) if c["name"] == ctx_name), {})
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx.get("cluster", c["name"]))
        user = next((u["user"] for u in cfg.get("users", []) if u["name"] == ctx.get("user", u["name"])), {})
        return {k: str(v) for k, v in {**cluster, **user}.items() if k in KEYS}
    out: dict[str, str] = {}
    for line in text.splitlines():  # the first of each key: one cluster, one user
        key, sep, value = line.strip().lstrip("- ").partition(":")
        if sep and key in KEYS and key not in out and value.strip():
            out[key] = value.strip().strip("'\"")
    return out


def _file(value: str) -> str:
    f = tempfile.NamedTemporaryFile(delete=False, suffix=".pem")
    f.write(base64.b64decode(value))
    f.close()
    return f.name


def connect(kubeconfig: str | None) -> Api:
    if kubeconfig is None and os.path.exists(f"{SA_DIR}/token"):
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        ctx = ssl.create_default_context(cafile=f"{SA_DIR}/ca.crt")
        return Api(f"https://{host}:{port}", ctx, open(f"{SA_DIR}/token").read().strip())
    if kubeconfig is None:
        raise SystemExit("no credentials: not in a pod, and no --kubeconfig or $KUBECONFIG")
    c = _kubeconfig(kubeconfig)
    ca = c.get("certificate-authority") or (_file(c["certificate-authority-data"])
                                            if "certificate-authority-data" in c else None)
    ctx = ssl.create_default_context(cafile=ca)
    if c.get("insecure-skip-tls-verify") == "true":
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    cert = c.get("client-certificate") or (_file(c["client-certificate-data"]) if "client-certificate-data" in c else None)
    key = c.get("client-key") or (_file(c["client-key-data"]) if "client-key-data" in c else None)
    if cert:
        ctx.load_cert_chain(cert, key)
    return Api(c["server"], ctx, c.get("token"))


def say(*words: Any) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), *words, flush=True)


class Runner:
    def __init__(self, api: Api, namespace: str, pod: str, step_seconds: float):
        self.api, self.ns, self.pod, self.step_seconds = api, namespace, pod, step_seconds
        self.stop = threading.Event()
        self.why = ""
        self.steps = 0
        self.labels: dict[str, str] = {}

    @property
    def pod_path(self) -> str:
        return f"/api/v1/namespaces/{self.ns}/pods/{self.pod}"

    def request_stop(self, why: str) -> None:
        if not self.stop.is_set():
            self.why = why
            self.stop.set()

    def watch(self) -> None:
        """Follow the pod's annotations until the stop is requested (a thread)."""
        while not self.stop.is_set():
            try:
                pod = json.load(self.api.call("GET", self.pod_path))
                if not self._look(pod):
                    return
                rv = pod["metadata"]["resourceVersion"]
                stream = self.api.call("GET", f"/api/v1/namespaces/{self.ns}/pods", timeout=70, query={
                    "watch": "1", "fieldSelector": f"metadata.name={self.pod}", "resourceVersion": rv,
                    "timeoutSeconds": "60"})
                for line in stream:
                    event = json.loads(line)
                    if event.get("type") in ("ADDED", "MODIFIED") and not self._look(event["object"]):
                        return
                    if event.get("type") == "DELETED":
                        self.request_stop("the pod was deleted")
                        return
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                say("watch of my pod failed, again in 1s:", exc)
                self.stop.wait(1.0)

    def _look(self, pod: dict[str, Any]) -> bool:
        """False once the signal is seen (the watch ends)."""
        meta = pod.get("metadata") or {}
        self.labels = meta.get("labels") or self.labels
        value = (meta.get("annotations") or {}).get(ANNOTATION)
        if value is None:
            return True
        try:
            reason = json.loads(value).get("reason") or "no reason given"
        except (ValueError, AttributeError):
            reason = value
        say("cancel requested:", value)
        self.request_stop(f"cancel requested: {reason}")
        return False

    def work(self) -> None:
        while not self.stop.wait(self.step_seconds):
            self.steps += 1
            if self.steps == 1:
                say("working (step 1)")

    def save(self) -> None:
        """The work as an artifact ConfigMap with the job and task labels; replaced if it exists."""
        name = f"{self.pod}-work"
        labels = {"necrocode.io/artifact": "true"}
        for k in ("necrocode.io/job", "necrocode.io/task"):
            if k in self.labels:
                labels[k] = self.labels[k]
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels},
                "data": {"steps": str(self.steps), "stopped": self.why,
                         "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
        path = f"/api/v1/namespaces/{self.ns}/configmaps"
        try:
            self.api.call("POST", path, body).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
            self.api.call("PUT", f"{path}/{name}", body).close()
        say(f"saved: configmap/{name} steps={self.steps} ({self.why})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    ap.add_argument("--pod", default=os.environ.get("POD_NAME"), help="this runner's own pod ($POD_NAME)")
    ap.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE"))
    ap.add_argument("--step-seconds", type=float, default=float(os.environ.get("STEP_SECONDS", "0.2")))
    args = ap.parse_args(argv)
    namespace = args.namespace
    if namespace is None and os.path.exists(f"{SA_DIR}/namespace"):
        namespace = open(f"{SA_DIR}/namespace").read().strip()
    if not args.pod or not namespace:
        print("need the pod's name and namespace (--pod/$POD_NAME, --namespace/$POD_NAMESPACE)", file=sys.stderr)
        return 2
    runner = Runner(connect(args.kubeconfig), namespace, args.pod, args.step_seconds)
    signal.signal(signal.SIGTERM, lambda *_: runner.request_stop("SIGTERM"))
    threading.Thread(target=runner.watch, daemon=True).start()
    say("started; watching", f"pod/{args.pod}", "for", ANNOTATION)
    runner.work()
    try:
        runner.save()
    except (urllib.error.URLError, OSError) as exc:
        say("could not save the work:", exc)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
