"""May the requester do it? The operator never does for a requester what that requester could
not do: an optional destructive action (deleting a job's artifacts) is asked of the API server
for the recorded requester (a LocalSubjectAccessReview with their username and groups) before
the operator does it with its own rights.

A LocalSubjectAccessReview is namespaced, so an operator installed for a few namespaces needs
no cluster-wide grant for it (charts/necrocode-cancel RBAC: create localsubjectaccessreviews).
"""

from __future__ import annotations

from dataclasses import dataclass

from necrocode.kube import ApiError, Kube, TransientError
from necrocode.model import Requester

REVIEW_PATH = "/apis/authorization.k8s.io/v1/namespaces/{namespace}/localsubjectaccessreviews"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    why: str = ""
    """Why not, in words for a status message."""


async def may(kube: Kube, namespace: str, requester: Requester, verb: str, resource: str,
              group: str = "") -> Decision:
    """Whether `requester` may `verb` `resource` in `namespace`, as RBAC (and any other
    authorizer) says. An unverified requester may do nothing on another's behalf; a review
    the operator may not send is a refusal that says so. API faults propagate (the step retries)."""
    if not requester.verified:
        return Decision(False, "the requester is not verified by the API server (the necrocode-requester "
                               "admission policy is not installed, or NECROCODE_REQUESTER_POLICY is off)")
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
            "metadata": {"namespace": namespace},
            "spec": {"user": requester.username, "groups": list(requester.groups),
                     "resourceAttributes": {"namespace": namespace, "verb": verb, "group": group,
                                            "resource": resource}}}
    try:
        review = await kube.request("POST", REVIEW_PATH.format(namespace=namespace), body=body)
    except TransientError:
        raise
    except ApiError as exc:
        return Decision(False, f"cannot ask whether {requester.username} may {verb} {resource}: "
                               f"the API answered {exc.status}: {exc.message}")
    if (review.get("status") or {}).get("allowed"):
        return Decision(True)
    return Decision(False, f"{requester.username} may not {verb} {resource} in namespace {namespace}")
