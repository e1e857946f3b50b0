"""Developer tools: the local control plane, the real node, the image builders, the demo.
Run from the repository root as modules (`python -m hack.localcluster up`), as the Makefile does."""
