"""The REST API for cancellations: a separate process (`necrocode-api`) of the operator's image.

It authenticates callers with the API server's TokenReview, authorizes them with
SubjectAccessReview (the cluster's own RBAC), creates and reads the same JobCancellation and
TaskCancellation resources as the CLI and kubectl, and leaves the work to the operator.
"""
