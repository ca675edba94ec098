"""The README's options table is written by hand for people; config.SETTINGS is what the
program does. This test holds them together: every setting has a row with its flags and its
default, and every row is a setting. A failure says which row to add, fix or remove."""
from __future__ import annotations

import re

import pytest

from conftest import ROOT
from gsmtpd.config import BY_NAME, SETTINGS, Setting

# How the README words a default that is computed at start or means "nothing". Any other
# default is written as its value (60.0 as 60, False as off, "" and [] as "(none)").
WORDED_DEFAULTS = {
    "hostname": "the FQDN",
    "allowed_hosts": "the hostname",
    "logfile": "stderr",
    "workers": "CPUs",
    "metrics": "(off)",
    "listener": "one on `--listen`/`--port`",
}


def readme_rows() -> list[tuple[str, str]]:
    """(option cell, default cell) of each row of the table under "## Options"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] not in ("option", "") and not set(cells[0]) <= set("-"):
            rows.append((cells[0], cells[1]))
    assert rows, "README.md has no options table under '## Options'"
    return rows


def key(setting: Setting) -> str:
    """How a setting is named in the option cell: its flags, or its TOML table when file-only."""
    if not setting.cli:
        return f"`[[{setting.name}]]` (file only)"
    return ", ".join(f"`{flag}`" for flag in (*setting.flags, "--" + setting.name.replace("_", "-")))


def default_text(setting: Setting) -> str:
    if setting.name in WORDED_DEFAULTS:
        return WORDED_DEFAULTS[setting.name]
    value = setting.default
    if value is False:
        return "off"
    if value in ("", None, []):
        return "(none)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and "/" in value:
        return f"`{value}`"
    return str(value)


def suggested_row(setting: Setting) -> str:
    return f"| {key(setting)} | {default_text(setting)} | {setting.help} |"


def documented() -> dict[str, str]:
    """Setting name -> the default the README gives it. A row may name several settings
    (`--tls-cert`, `--tls-key`); its default cell then has one value for all, or one per
    setting separated by ", "."""
    by_flag = {setting.name.replace("_", "-"): setting.name for setting in SETTINGS}
    found: dict[str, str] = {}
    problems = []
    for option, default in readme_rows():
        if "(file only)" in option:
            names = re.findall(r"\[\[(\w+)\]\]", option)
        else:
            names = [by_flag.get(flag, "?" + flag) for flag in re.findall(r"`--([\w-]+)`", option)]
        unknown = [name[1:] for name in names if name.startswith("?")]
        if unknown or not names:
            problems.append(f"README.md row {option!r} names no setting of gsmtpd/config.py "
                            f"({', '.join(unknown) or 'no --flag'}): remove the row or declare the setting")
            continue
        defaults = default.split(", ") if len(names) > 1 and default.count(", ") == len(names) - 1 \
            else [default] * len(names)
        for name, text in zip(names, defaults):
            found[name] = text
        short = re.findall(r"`(-\w)`", option)
        for name in names:
            wanted = list(BY_NAME[name].flags)
            if wanted and short != wanted or short and not wanted:
                problems.append(f"README.md row {option!r}: the short flags of {name} are {wanted}, "
                                f"the row says {short}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
    return found



def test_every_setting_has_a_readme_row():
    rows = documented()
    missing = [setting for setting in SETTINGS if setting.name not in rows]
    if missing:
        pytest.fail("README.md, section Options: add these rows to the table:\n"
                    + "\n".join(suggested_row(setting) for setting in missing), pytrace=False)


def test_every_readme_row_gives_the_declared_default():
    rows = documented()
    wrong = [f"{key(setting)}: the README says {rows[setting.name]!r}, config.py declares "
             f"{default_text(setting)!r}; the row should read:\n    {suggested_row(setting)}"
             for setting in SETTINGS if setting.name in rows and rows[setting.name] != default_text(setting)]
    if wrong:
        pytest.fail("README.md, section Options:\n" + "\n".join(wrong), pytrace=False)
