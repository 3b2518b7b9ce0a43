"""[budgets] reserve and a key's weight: read, defaulted, and refused with the field named."""

from __future__ import annotations

import pytest

from guardproxy.config.model import ConfigError
from support.samples import load

KEY = '[[keys]]\nname = "app"\nkey_sha256 = "' + "a" * 64 + '"\n'


def test_defaults() -> None:
    cfg = load(KEY)
    assert cfg.budgets.reserve == 1024 and cfg.keys[0].weight == 1.0


def test_values() -> None:
    cfg = load(KEY + 'weight = 4\ntokens = "100/day"\n\n[budgets]\nreserve = 256\n')
    assert cfg.budgets.reserve == 256 and cfg.keys[0].weight == 4.0
    assert load(KEY + "weight = 2.5\n").keys[0].weight == 2.5
    assert load(KEY + "[budgets]\nreserve = 0\n").budgets.reserve == 0


@pytest.mark.parametrize("extra, where", [
    ("weight = 0\n", "g.toml:4: keys[0].weight"),
    ("weight = 0.5\n", "g.toml:4: keys[0].weight"),
    ('weight = "4"\n', "g.toml:4: keys[0].weight"),
    ("[budgets]\nreserve = -1\n", "g.toml:5: budgets.reserve"),
    ('[budgets]\nreserve = "1k"\n', "g.toml:5: budgets.reserve"),
    ("[budgets]\nreserved = 10\n", "g.toml:5: budgets.reserved"),
])
def test_mistakes_name_the_field(extra: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(KEY + extra)
    assert str(e.value).startswith(where) and "\n" not in str(e.value)


def test_a_budget_smaller_than_the_reservation_is_warned_about_at_start() -> None:
    from guardproxy.app import warnings
    said = warnings(load(KEY + 'tokens = "100/day"\n'))
    assert said == ['key "app": its token budget (100/day) is smaller than what a generation without an output '
                    'cap reserves (1024): such generations are all refused; set [budgets] reserve lower, or have '
                    'clients send a cap']
    assert warnings(load(KEY + 'tokens = "100/day"\n[budgets]\nreserve = 50\n')) == []
