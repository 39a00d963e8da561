#!/usr/bin/env python3
"""A version's worker for the proxy tests, as a program flock did not build.

It serves the socket flock hands it (fd 3, socket activation), says
READY=1 on NOTIFY_SOCKET, and answers "VERSION PID". "?sleep=MS" holds the
answer that long (a request known to be in flight); a POST answers the
length of the body it read; "Upgrade: echo" switches protocols and echoes
bytes (as a WebSocket would pass through). On SIGTERM it stops accepting,
finishes what is in flight and exits 0.

Its version's name picks a failure: "broken..." exits 3 at once, "hang..."
never says READY=1.
"""
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

VERSION = os.environ.get("PROXY_VERSION", "?")
PID = str(os.getpid())
stopping = threading.Event()


def notify(msg):
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(msg.encode())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # an idle keep-alive connection is closed after it

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Version", VERSION)
        self.send_header("X-Worker-Pid", PID)
        if stopping.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.headers.get("Upgrade") == "echo":
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:
                b = self.connection.recv(4096)
                if not b:
                    break
                self.connection.sendall(b)
            self.close_connection = True
            return
        q = parse_qs(urlparse(self.path).query)
        ms = int(q.get("sleep", ["0"])[0])
        if ms:
            time.sleep(ms / 1000)
        self.answer(f"{VERSION} {PID}\n".encode())

    def do_POST(self):
        n = 0
        if self.headers.get("Transfer-Encoding") == "chunked":
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                n += len(self.rfile.read(size))
                self.rfile.readline()
        else:
            n = len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self.answer(f"{VERSION} {PID} {n}\n".encode())

    def log_message(self, *args):
        pass


def main():
    if VERSION.startswith("broken"):
        print(f"worker.py {VERSION}: broken on purpose", file=sys.stderr)
        sys.exit(3)
    if os.environ.get("LISTEN_FDS") != "1" or os.environ.get("LISTEN_PID") != PID:
        print("worker.py: no socket passed (LISTEN_FDS)", file=sys.stderr)
        sys.exit(1)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    srv.socket.close()
    srv.socket = socket.socket(fileno=3)
    srv.daemon_threads, srv.block_on_close = False, True
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    if not VERSION.startswith("hang"):
        notify("READY=1")
    stopping.wait()
    srv.shutdown()
    srv.server_close()  # and waits for the requests in flight
    sys.exit(0)


main()
