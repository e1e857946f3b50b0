"""Developer tools: the local control plane (localcluster), the real node, the CRD generator, the demo."""
