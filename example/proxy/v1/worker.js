// Version v1 of a Node.js application, for flock's proxy mode (see
// ../proxy.json and the README). flock runs it as `node worker.js` in this
// folder, with its socket on fd 3 (socket activation: LISTEN_FDS) and its
// port in PROXY_PORT. It answers with its version and pid; on SIGTERM it
// finishes what is in flight and exits.
'use strict';
const http = require('http');

const VERSION = process.env.PROXY_VERSION || 'v1';
let stopping = false;
const server = http.createServer((req, res) => {
  // While stopping, end keep-alive connections after their request:
  // close() alone leaves a busy one open.
  if (stopping) res.setHeader('Connection', 'close');
  res.end(`Hello from ${VERSION}, worker ${process.pid}\n`);
});
// The activated socket under flock; PROXY_PORT alone (cluster-service's
// contract) when run by something that passes no socket.
server.listen(process.env.LISTEN_FDS ? { fd: 3 } : { port: Number(process.env.PROXY_PORT || 3000) });

process.on('SIGTERM', () => {
  stopping = true;
  server.close(() => process.exit(0));
});
