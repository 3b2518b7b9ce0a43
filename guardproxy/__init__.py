"""guardproxy: a small, fast, security-first gate for self-hosted LLM servers."""

__version__ = "0.1.0"
