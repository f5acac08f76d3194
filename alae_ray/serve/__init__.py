"""Serving ALAE checkpoints on Ray Serve: HTTP API, batching, Gradio UI (see docs/serve.md)."""
