#!/usr/bin/env python3
"""The floor: the least a gevent SMTP server can do, for bench/run.py --floor.

It has gsmtpd's shape (one process per CPU on a shared listening socket, a greenlet per
connection, blocking-style reads and writes) and none of its work: canned replies, no
parsing beyond the verb, no limits, no logging, and the message is thrown away, as by
smtp-sink. Its rate is the most the fixed design (CPython and gevent, on this machine,
beside smtp-source) can reach; gsmtpd's rate over it is what gsmtpd's own work costs.

    python bench/floor.py [--workers N]      # prints "listening on 127.0.0.1 port P"
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

from gevent import socket  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

GREETING = b"220 floor.test ESMTP\r\n"
EHLO = b"250-floor.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
OK = b"250 2.0.0 Ok\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 Ok: queued\r\n"
BYE = b"221 2.0.0 Bye\r\n"
END_OF_DATA = b"\r\n.\r\n"


def serve(sock, address) -> None:
    sock.sendall(GREETING)
    buf = b""
    in_data = False
    while True:
        if in_data:
            end = buf.find(END_OF_DATA)
            if end >= 0:
                buf = buf[end + len(END_OF_DATA):]
                in_data = False
                sock.sendall(QUEUED)
                continue
            buf = buf[-4:]
        else:
            line, found, rest = buf.partition(b"\r\n")
            if found:
                buf = rest
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    sock.sendall(EHLO)
                elif verb == b"DATA":
                    sock.sendall(GO_AHEAD)
                    # The CRLF that ended the DATA line is the terminator's first one.
                    buf = b"\r\n" + buf
                    in_data = True
                elif verb == b"QUIT":
                    sock.sendall(BYE)
                    break
                else:
                    sock.sendall(OK)
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--listen", default="127.0.0.1")
    args = parser.parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.listen, 0))
    listener.listen(1024)
    children = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            children = None
            break
        children.append(pid)
    if children is not None:
        def stop(*_):
            for pid in children:
                os.kill(pid, signal.SIGTERM)
            os._exit(0)
        signal.signal(signal.SIGTERM, stop)
        print(f"listening on {args.listen} port {listener.getsockname()[1]}", flush=True)
    StreamServer(listener, serve).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
