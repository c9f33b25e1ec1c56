"""The WebRTC edge: browsers connect here (aiortc + FastAPI); each call becomes one gRPC stream of
200 ms chunks to the interaction service, and its output comes back as paced audio and events."""
