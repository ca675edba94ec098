"""sd_notify(3) without libsystemd: tell systemd (Type=notify) READY=1, RELOADING=1,
STOPPING=1, STATUS=...

systemd passes the address of a unix datagram socket in NOTIFY_SOCKET; a leading '@' means
the abstract namespace. Only the main process notifies: workers drop the variable
(``forget``), since systemd's NotifyAccess=main ignores them anyway.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("gsmtpd.notify")


def notify(*states: str) -> bool:
    """Send the states ("READY=1", "STATUS=...") as one datagram; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "@/":
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        return True
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", address.replace("\0", "@"), exc)
        return False


def forget() -> None:
    """In a worker: leave notifying to the master."""
    os.environ.pop("NOTIFY_SOCKET", None)
