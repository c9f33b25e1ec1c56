"""What the Kubernetes deployment derives from the code (see chartfiles)."""
