"""Load and soak tests of a whole local run: synthetic WebRTC callers against the edge's HTTP API,
faults injected into the running stack, and a report of what the callers saw (`make soak`)."""
