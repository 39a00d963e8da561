# Writes, as JSON to the file named by its argument, what a program
# started by socket activation sees: the LISTEN_* variables, and what each
# passed descriptor is. Then it waits to be stopped. The test runs it under
# systemd-socket-activate and under flock, and compares.
import fcntl
import json
import os
import signal
import socket
import sys

n = int(os.environ.get("LISTEN_FDS", "0"))
fds = []
for fd in range(3, 3 + n):
    s = socket.socket(fileno=fd)
    fds.append({
        "family": s.family.name,
        "stream": s.type == socket.SOCK_STREAM,
        "listening": s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
        "nonblocking": bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
        "cloexec": bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
    })
    s.detach()
listing = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
extra = sorted(int(f) for f in os.listdir(listing) if int(f) > 2 + n and int(f) != listing)
os.close(listing)
seen = {
    "LISTEN_FDS": os.environ.get("LISTEN_FDS"),
    "LISTEN_FDNAMES": os.environ.get("LISTEN_FDNAMES"),
    "LISTEN_PID is its pid": os.environ.get("LISTEN_PID") == str(os.getpid()),
    "LISTEN_ variables": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    "fds": fds,
    "other open fds": extra,
}
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    json.dump(seen, f, indent=1, sort_keys=True)
os.rename(tmp, sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
