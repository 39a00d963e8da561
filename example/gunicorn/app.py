# A WSGI hello app for gunicorn under flock, which hands gunicorn its
# sockets by systemd's socket activation (gunicorn uses LISTEN_FDS when
# LISTEN_PID is its own pid) and hears its READY=1 (sd_notify):
#
#   go run ./cmd/flock -addr :8000 -workers 2 -ready notify -- gunicorn --chdir example/gunicorn app:app
import os
import time


def app(environ, start_response):
    """"/" says hello; "/?sleep=MS" sends its headers and "Hello" at once and
    the rest MS milliseconds later: a request known to be in flight."""
    q = environ.get("QUERY_STRING", "")
    ms = int(q[6:]) if q.startswith("sleep=") else 0
    rest = ("from gunicorn worker %d\n" % os.getpid()).encode()
    # X-Worker-Pid: the flock worker's pid, which is gunicorn's arbiter,
    # this process's parent.
    headers = [("Content-Type", "text/plain"), ("X-Worker-Pid", str(os.getppid()))]
    if not ms:
        body = b"Hello " + rest
        start_response("200 OK", headers + [("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", headers)
    return slowly(ms, rest)


def slowly(ms, rest):
    yield b"Hello "
    time.sleep(ms / 1000)
    yield rest
