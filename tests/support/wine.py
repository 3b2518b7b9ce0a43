"""Why some tests are marked `wine_skip` (tests/conftest.py): what Wine 8 cannot run that Windows can."""

WINE_PYDANTIC = ("the ollama and openai packages need pydantic-core, whose Rust extension does not load "
                 "under Wine 8 (it loads on Windows)")

REDIS_SERVER = "needs redis-server from Debian's packages (the shared-state tests start one per test)"
