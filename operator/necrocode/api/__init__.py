"""The REST API for cancellations: a separate process (`necrocode-api`) of the operator's image.

It authenticates callers with the API server's TokenReview, authorizes them with
SubjectAccessReview (the cluster's own RBAC), creates and reads the same JobCancellation and
TaskCancellation resources as the CLI and kubectl, and leaves the work to the operator.

    server    the process: flags over settings, uvicorn, TLS reload
    app       the ASGI app: app.state, lifespan, body limit, error answers, routes
    routes    the endpoints, with their authentication and RBAC dependencies
    store     the Kubernetes requests the routes make
    auth      TokenReview and SubjectAccessReview, cached and rate-limited
    errors    the error answers, and what each Kubernetes error becomes
    settings  ApiSettings, from NECROCODE_API_* variables
    limits, tls, schemas  the body limit and failure budget, certificate reload, request/response bodies
"""
