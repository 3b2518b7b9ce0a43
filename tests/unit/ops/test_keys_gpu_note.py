"""`keys list` names a key's limits on what a body asks of the GPU, under the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardproxy.ops import keys

CONFIG = '''listen = "127.0.0.1:0"

[[keys]]
name = "app"
key = "0123456789abcdefghij"
max_num_ctx = 8192
max_output_tokens = 512

[[keys]]
name = "plain"
key = "abcdefghij0123456789"
'''


def test_keys_list_shows_the_gpu_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "guardproxy.toml"
    path.write_text(CONFIG)
    monkeypatch.delenv("GUARDPROXY_API_KEY", raising=False)
    parser = keys.argparse.ArgumentParser()
    parser.add_argument("--config")
    assert keys.cmd_list(parser.parse_args(["--config", str(path)])) == 0
    out = capsys.readouterr().out
    assert '"app": bodies lowered to max_num_ctx 8192, max_output_tokens 512' in out
    assert '"plain": bodies' not in out
