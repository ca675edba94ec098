"""Which CPython runs the benchmark (and the gsmtpd it starts, with the same executable), and
whether it is an optimized build.

The interpreter is part of what is measured: at W1 gsmtpd took 0.68 ms of server CPU per
message on Debian's /usr/bin/python3.11 and 0.89 ms on pyenv's 3.11.7, same code (about 25%
less on the distribution's build; issue 18). pyenv builds without PGO and LTO unless asked
and links a shared libpython. So a number is only comparable with others from the same kind
of interpreter, and the bench says which one it ran on.

What a build was made with shows in sysconfig: ``--enable-optimizations`` (PGO) and
``--with-lto`` in CONFIG_ARGS, or -fprofile-use/-flto in the compiler flags. Debian passes its
PGO and LTO flags to make instead, so they do not show there; an interpreter installed under
/usr is taken to be the distribution's (Debian, Ubuntu and Fedora build theirs with both).
"""
from __future__ import annotations

import platform
import sys
import sysconfig

FLAG_VARS = ("CONFIG_ARGS", "PY_CFLAGS", "PY_CFLAGS_NODIST", "PY_LDFLAGS_NODIST", "CFLAGS", "LDFLAGS")


def _flags() -> str:
    return " ".join(str(sysconfig.get_config_var(name) or "") for name in FLAG_VARS)


def shared_libpython() -> bool:
    """True when this process runs its interpreter from libpython*.so (calls between the
    interpreter's own functions then go through the PLT unless built with
    -fno-semantic-interposition)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("/libpython" in line for line in maps)
    except OSError:
        return bool(sysconfig.get_config_var("Py_ENABLE_SHARED"))


def describe() -> dict:
    flags = _flags()
    pgo = "--enable-optimizations" in flags or "-fprofile-use" in flags
    lto = "--with-lto" in flags or "-flto" in flags
    distribution = sys.base_prefix == "/usr"
    return {
        "executable": sys.executable,
        "base_prefix": sys.base_prefix,
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "compiler": platform.python_compiler(),
        "pgo": pgo,
        "lto": lto,
        "distribution_build": distribution,
        "shared_libpython": shared_libpython(),
        "optimized": (pgo and lto) or distribution,
    }


def summary(info: dict) -> str:
    """One line for the top of a bench run."""
    if info["pgo"] or info["lto"]:
        build = "PGO " + ("yes" if info["pgo"] else "no") + ", LTO " + ("yes" if info["lto"] else "no")
    elif info["distribution_build"]:
        build = "distribution build under /usr (PGO/LTO not visible in sysconfig)"
    else:
        build = "no PGO, no LTO"
    return (f"interpreter: {info['executable']} ({info['implementation']} {info['version']}, "
            f"{info['compiler']}; {build}; libpython {'shared' if info['shared_libpython'] else 'static'})")


def warning(info: dict) -> str | None:
    """A warning when the numbers of this run will not be those of an optimized interpreter."""
    if info["optimized"]:
        return None
    return ("WARNING: not an optimized CPython (neither --enable-optimizations nor --with-lto, and not the "
            "distribution's). gsmtpd took about 25% less CPU per message on Debian's /usr/bin/python3.11 "
            "than on such a build (W1: 0.68 vs 0.89 ms). Compare numbers only with runs on the same "
            "interpreter, or run: /usr/bin/python3 bench/run.py (from a venv made with it).")


if __name__ == "__main__":
    details = describe()
    print(summary(details))
    print(warning(details) or "optimized build")
