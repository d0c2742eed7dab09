"""Build and run a local Kubernetes control plane for the e2e tests (see e2e/README.md)."""
