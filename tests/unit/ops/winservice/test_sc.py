"""The Windows service's names, sc.exe/netsh command lines and the reading of sc.exe's answers."""

from __future__ import annotations

import subprocess

import pytest

from guardproxy.ops.winservice import sc as ws

EXE = r"C:\Program Files\guardproxy\guardproxy.exe"
CFG = r"C:\ProgramData\guardproxy\guardproxy.toml"


def crt_split(cmdline: str) -> list[str]:
    """How the Microsoft C runtime splits a command line into argv (the rules list2cmdline targets)."""
    args: list[str] = []
    cur: list[str] = []
    in_quotes = have_arg = False
    i = 0
    while i < len(cmdline):
        c = cmdline[i]
        if c == "\\":
            j = i
            while j < len(cmdline) and cmdline[j] == "\\":
                j += 1
            n = j - i
            if j < len(cmdline) and cmdline[j] == '"':
                cur.append("\\" * (n // 2))
                if n % 2:
                    cur.append('"')
                    i = j + 1
                else:
                    i = j
                have_arg = True
                continue
            cur.append("\\" * n)
            i = j
            have_arg = True
            continue
        if c == '"':
            in_quotes = not in_quotes
            have_arg = True
        elif c in " \t" and not in_quotes:
            if have_arg:
                args.append("".join(cur))
                cur, have_arg = [], False
        else:
            cur.append(c)
            have_arg = True
        i += 1
    if have_arg:
        args.append("".join(cur))
    return args


# --- names and paths ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["guardproxy", "guardproxy-2", "gp_lab.1", "A" * 64])
def test_service_names_that_need_no_quoting_are_accepted(name: str) -> None:
    assert ws.validate_service_name(name) == name


@pytest.mark.parametrize("name", ["", "two words", 'quote"', "semi;colon", "-leading", "A" * 65, "x/y"])
def test_service_names_that_would_need_quoting_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="--name"):
        ws.validate_service_name(name)


# --- command lines --------------------------------------------------------------------------

def test_the_frozen_exe_is_registered_with_quoted_paths() -> None:
    line = ws.service_command_line(EXE, True, CFG, "guardproxy")
    assert line == (r'"C:\Program Files\guardproxy\guardproxy.exe" service run '
                    r"--config C:\ProgramData\guardproxy\guardproxy.toml --name guardproxy")
    assert crt_split(line) == [EXE, "service", "run", "--config", CFG, "--name", "guardproxy"]


def test_a_pip_install_is_registered_as_python_dash_m() -> None:
    py = r"C:\Users\Ana Lopez\AppData\Local\Programs\Python\Python312\python.exe"
    cfg = r"C:\Users\Ana Lopez\gp\guardproxy.toml"
    line = ws.service_command_line(py, False, cfg, "gp2")
    assert crt_split(line) == [py, "-m", "guardproxy", "service", "run", "--config", cfg, "--name", "gp2"]


def test_sc_create_survives_both_rounds_of_command_line_parsing() -> None:
    # subprocess joins the list into one command line, sc.exe splits it, and
    # the SCM later splits binPath again when it starts the service.
    command = ws.service_command_line(EXE, True, r"C:\My Configs\guardproxy.toml", "guardproxy")
    args = ws.sc_create_args("guardproxy", command)
    assert args[:3] == ["sc.exe", "create", "guardproxy"]
    assert args[3:5] == ["binPath=", command] and args[5:7] == ["start=", "auto"]
    sc_argv = crt_split(subprocess.list2cmdline(args))
    assert sc_argv == args
    assert crt_split(sc_argv[4]) == [EXE, "service", "run", "--config", r"C:\My Configs\guardproxy.toml",
                                     "--name", "guardproxy"]


def test_sc_verbs_description_and_restart_on_failure() -> None:
    assert ws.sc_args("query", "gp") == ["sc.exe", "query", "gp"]
    assert ws.sc_args("delete", "gp") == ["sc.exe", "delete", "gp"]
    with pytest.raises(ValueError):
        ws.sc_args("config", "gp")
    assert ws.sc_description_args("gp")[:3] == ["sc.exe", "description", "gp"]
    assert ws.sc_failure_args("gp") == ["sc.exe", "failure", "gp", "reset=", "86400", "actions=",
                                        "restart/5000/restart/5000/restart/60000"]


def test_firewall_rule_commands() -> None:
    assert ws.firewall_add_args("guardproxy", 11435) == [
        "netsh", "advfirewall", "firewall", "add", "rule", "name=guardproxy", "dir=in", "action=allow",
        "protocol=TCP", "localport=11435", "enable=yes"]
    assert ws.firewall_delete_args("guardproxy") == ["netsh", "advfirewall", "firewall", "delete", "rule",
                                                     "name=guardproxy"]
    assert ws.firewall_show_args("gp2") == ["netsh", "advfirewall", "firewall", "show", "rule", "name=gp2"]


# --- sc.exe's answers -------------------------------------------------------------------------

SC_QUERY_RUNNING = """
SERVICE_NAME: guardproxy
        TYPE               : 10  WIN32_OWN_PROCESS
        STATE              : 4  RUNNING
                                (STOPPABLE, NOT_PAUSABLE, ACCEPTS_SHUTDOWN)
        WIN32_EXIT_CODE    : 0  (0x0)
        SERVICE_EXIT_CODE  : 0  (0x0)
        CHECKPOINT         : 0x0
        WAIT_HINT          : 0x0
"""
SC_QUERY_GERMAN_STOP_PENDING = """
SERVICE_NAME: guardproxy
        TYP                : 10  WIN32_OWN_PROCESS
        STATUS             : 3  STOP_PENDING
        WIN32_EXITCODE     : 0  (0x0)
"""


def test_sc_query_state_is_read_from_the_number_not_the_label() -> None:
    assert ws.parse_sc_state(SC_QUERY_RUNNING) == "RUNNING"
    assert ws.parse_sc_state(SC_QUERY_GERMAN_STOP_PENDING) == "STOP_PENDING"
    assert ws.parse_sc_state("[SC] EnumQueryServicesStatus:OpenService FAILED 1060:") is None


def test_sc_failures_are_explained() -> None:
    assert "Administrator" in ws.explain_sc_failure(5, "[SC] OpenSCManager FAILED 5:\n\nAccess is denied.")
    assert "already exists" in ws.explain_sc_failure(1073, "")
    assert "no such service is installed" in ws.explain_sc_failure(1060, "")
    assert ws.explain_sc_failure(1234, "[SC] StartService FAILED 1234:\n\n  Something.") == \
        "sc.exe failed with error 1234: [SC] StartService FAILED 1234: Something."


def _fake_sc(returncode: int, stdout: str = ""):
    seen: list[list[str]] = []

    def run(args):
        seen.append(list(args))
        return subprocess.CompletedProcess(list(args), returncode, stdout, "")
    return run, seen


def test_service_state_and_firewall_lookup_use_the_right_commands() -> None:
    run, seen = _fake_sc(0, SC_QUERY_RUNNING)
    assert ws.service_state("guardproxy", run) == "RUNNING"
    assert seen == [["sc.exe", "query", "guardproxy"]]
    run, _ = _fake_sc(1060, "[SC] EnumQueryServicesStatus:OpenService FAILED 1060:")
    assert ws.service_state("guardproxy", run) is None
    run, seen = _fake_sc(1, "No rules match the specified criteria.")
    assert ws.firewall_rule_exists("guardproxy", run) is False
    assert seen == [ws.firewall_show_args("guardproxy")]


NETSH_SHOWS_RULE = """
Rule Name:                            guardproxy
----------------------------------------------------------------------
Enabled:                              Yes
Direction:                            In
Profiles:                             Domain,Private,Public
LocalPort:                            11435
Action:                               Allow
Ok.

"""


@pytest.mark.parametrize("returncode,output,state", [
    (0, NETSH_SHOWS_RULE, "present"),
    (0, NETSH_SHOWS_RULE.replace("Rule Name:", "Regelname:"), "present"),  # a translated label
    (1, "No rules match the specified criteria.\n", "absent"),
    (0, NETSH_SHOWS_RULE.replace("guardproxy", "guardproxy-other"), "absent"),  # another rule's name
    (0, "", "unknown"),      # Wine's netsh: a stub that exits 0 and prints nothing
    (0, "  \r\n", "unknown"),
    (1, "", "unknown"),
])
def test_the_firewall_rule_is_read_from_what_netsh_prints(returncode: int, output: str, state: str) -> None:
    assert ws.parse_firewall_show("guardproxy", returncode, output) == state
    run, _ = _fake_sc(returncode, output)
    assert ws.firewall_rule_state("guardproxy", run) == state
    assert ws.firewall_rule_exists("guardproxy", run) is (state == "present")


def test_a_tool_windows_cannot_start_is_an_answer_not_a_traceback() -> None:
    # (Wine's CreateProcess has failed with WinError 1359 now and then; a missing sc.exe is the same case.)
    proc = ws.run_tool(["guardproxy-no-such-program.exe", "query", "x"])
    assert proc.returncode == ws.NOT_RUN and proc.stderr.startswith("cannot run guardproxy-no-such-program.exe: ")
    cannot = lambda args: ws.run_tool(["guardproxy-no-such-program.exe", *args[1:]])  # noqa: E731
    assert ws.service_state("guardproxy", cannot) == "UNKNOWN"
    assert ws.firewall_rule_state("guardproxy", cannot) == ws.FIREWALL_UNKNOWN
    ok, why = ws.run_sc(["guardproxy-no-such-program.exe", "start", "x"])
    assert not ok and "cannot run guardproxy-no-such-program.exe" in why
