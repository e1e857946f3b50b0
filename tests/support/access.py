"""What RBAC lets someone do, in the API server's own words: one SubjectAccessReview."""

from __future__ import annotations

from typing import Any

from tests.support.kube import Kubectl


def allowed(kube: Kubectl, user: str, verb: str, resource: str, namespace: str | None = None, group: str = "",
            subresource: str = "", name: str = "") -> bool:
    """Whether `user` may `verb` the `resource` (of API `group`, "" the core one) in `namespace`
    (None or "": cluster-wide). A ServiceAccount user (system:serviceaccount:NS:NAME) is asked
    about with the groups its tokens carry, any other user with none."""
    attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
    for key, value in (("namespace", namespace), ("subresource", subresource), ("name", name)):
        if value:
            attrs[key] = value
    spec: dict[str, Any] = {"user": user, "resourceAttributes": attrs}
    if user.startswith("system:serviceaccount:"):
        spec["groups"] = ["system:serviceaccounts", f"system:serviceaccounts:{user.split(':')[2]}",
                          "system:authenticated"]
    return bool(kube.auth.create_subject_access_review({"spec": spec}).status.allowed)
