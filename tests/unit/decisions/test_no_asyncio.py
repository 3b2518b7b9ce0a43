"""The decision modules are pure: importing them never imports asyncio."""

from __future__ import annotations


def test_decision_modules_never_import_asyncio() -> None:
    import subprocess
    import sys
    code = ("import sys, guardproxy.decisions.policy, guardproxy.decisions.routes, guardproxy.engine.tokens, guardproxy.decisions.limits, "
            "guardproxy.decisions.cors, guardproxy.decisions.auth; print('asyncio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr
