"""The one config-path resolver: explicit choices, the current directory, %ProgramData% on Windows."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardproxy.config import paths

CFG = r"C:\ProgramData\guardproxy\guardproxy.toml"


def test_programdata_dir_follows_the_environment() -> None:
    assert paths.programdata_dir({"ProgramData": r"D:\Data"}) == r"D:\Data\guardproxy"
    assert paths.programdata_dir({"PROGRAMDATA": r"E:\PD"}) == r"E:\PD\guardproxy"
    assert paths.programdata_dir({}) == r"C:\ProgramData\guardproxy"


def test_service_config_is_explicit_then_env_then_programdata_never_cwd() -> None:
    env = {"ProgramData": r"C:\ProgramData"}
    assert paths.service_config_path(r"C:\gp\my.toml", env) == r"C:\gp\my.toml"
    assert paths.service_config_path(None, {**env, "GUARDPROXY_CONFIG": r"C:\x.toml"}) == r"C:\x.toml"
    assert paths.service_config_path(None, env) == CFG


def test_config_candidates_look_in_programdata_on_windows_only() -> None:
    env = {"ProgramData": r"C:\ProgramData"}
    assert paths.config_candidates(None, env, windows=True) == ["guardproxy.toml", CFG]
    assert paths.config_candidates(None, env, windows=False) == ["guardproxy.toml"]
    assert paths.config_candidates("a.toml", env, windows=True) == ["a.toml"]
    assert paths.config_candidates(None, {**env, "GUARDPROXY_CONFIG": "b.toml"}, windows=True) == ["b.toml"]


def test_run_init_and_doctor_find_the_programdata_config_on_windows(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"ProgramData": str(tmp_path)}
    monkeypatch.chdir(tmp_path)
    # Nothing exists yet: ./guardproxy.toml is where a first run or `init` creates one.
    assert paths.find_config(None, env, windows=True) == (Path("guardproxy.toml"), False)
    programdata_config = Path(paths.config_candidates(None, env, windows=True)[1])
    programdata_config.parent.mkdir(parents=True, exist_ok=True)
    programdata_config.write_text("")
    assert paths.find_config(None, env, windows=True) == (programdata_config, False)
    assert paths.find_config(None, env, windows=False) == (Path("guardproxy.toml"), False)
    # A config in the current directory comes first.
    (tmp_path / "guardproxy.toml").write_text("")
    assert paths.find_config(None, env, windows=True) == (Path("guardproxy.toml"), False)


def test_a_named_config_is_the_only_candidate_even_when_missing(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    assert paths.find_config(missing, {}, windows=True) == (Path(missing), True)
    assert paths.find_config(None, {"GUARDPROXY_CONFIG": missing}, windows=False) == (Path(missing), True)
    assert paths.find_config("", {}, windows=False) == (Path("guardproxy.toml"), False)


def test_existing_config_is_none_when_nothing_exists_and_refuses_a_missing_named_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert paths.existing_config(None, {}, windows=False) is None
    missing = str(tmp_path / "nope.toml")
    for explicit, env in ((missing, {}), (None, {"GUARDPROXY_CONFIG": missing})):
        with pytest.raises(paths.ConfigError, match=r"nope.toml: cannot read: no such file \(create it with"):
            paths.existing_config(explicit, env, windows=False)
    with pytest.raises(paths.ConfigError, match="guardproxy.toml: cannot read: no such file"):
        paths.required_config(None, {}, windows=False)
    (tmp_path / "guardproxy.toml").write_text("")
    assert paths.existing_config(None, {}, windows=False) == paths.required_config(None, {}) == Path("guardproxy.toml")
