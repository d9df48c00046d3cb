#!/usr/bin/env python3
"""Prints N distinct free TCP ports on 127.0.0.1, space-separated (for deploy/check.sh)."""
import socket
import sys

sockets = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    sockets.append(s)
print(" ".join(str(s.getsockname()[1]) for s in sockets))
