"""Helpers the tests share: the API client and waits (kube), SubjectAccessReviews (access), a
fault-injecting TCP proxy (faultproxy) and the real-node fixtures (realnode)."""
