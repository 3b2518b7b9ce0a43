"""A fake Ollama HTTP/1.1 server for tests, demos and benchmarks.

It speaks the same wire shapes as a loopback-bound Ollama (NDJSON streams,
OpenAI-compatible SSE, the Host/Origin checks) but generates deterministic
tokens (" tok0", " tok1", ...) instantly or at a configurable pace.

Run standalone with::

    python -m guardproxy.testing.fake_ollama --host 127.0.0.1 --port 11434
"""

from .server import FakeOllama, RecordedRequest, main

__all__ = ["FakeOllama", "RecordedRequest", "main"]
