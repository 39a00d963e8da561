// A Node.js HTTP server that takes its sockets by systemd's socket
// activation, so that it runs unchanged under flock (or systemd):
//
//   go run ./cmd/flock -addr :8080 -workers 2 -- node example/node/server.js
//
// It serves every socket it is given (LISTEN_FDS of them, from fd 3): after
// a TTOU, flock hands the next workers the removed worker's socket as one
// more. On SIGTERM it stops accepting, finishes what is in flight, and
// exits.
'use strict';
const http = require('http');

const fds = Number(process.env.LISTEN_FDS || 0);
if (!fds || process.env.LISTEN_PID !== String(process.pid)) {
  console.error('server.js: no sockets were passed (LISTEN_FDS); run it under flock or systemd-socket-activate');
  process.exit(1);
}

// "/" says hello; "/?sleep=MS" sends its headers and "Hello" at once and
// the rest MS milliseconds later: a request known to be in flight.
let stopping = false;

function handler(req, res) {
  // While stopping, end keep-alive connections after their request:
  // close() alone leaves a busy one open, and the worker with it.
  if (stopping) res.setHeader('Connection', 'close');
  res.writeHead(200, { 'X-Worker-Pid': process.pid });
  const rest = `from node worker ${process.pid}\n`;
  const ms = Number(new URL(req.url, 'http://x').searchParams.get('sleep') || 0);
  if (!ms) return res.end('Hello ' + rest);
  res.write('Hello ');
  setTimeout(() => res.end(rest), ms);
}

const servers = [];
for (let fd = 3; fd < 3 + fds; fd++) {
  const s = http.createServer(handler);
  s.listen({ fd });
  servers.push(s);
}
console.error(`server.js: serving ${fds} socket(s)`);

process.on('SIGTERM', () => {
  // close() stops accepting, closes idle keep-alive connections (Node 19+)
  // and calls back once the others have finished.
  stopping = true;
  let open = servers.length;
  for (const s of servers) s.close(() => { if (--open === 0) process.exit(0); });
});
