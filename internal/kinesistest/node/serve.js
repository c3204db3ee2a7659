// Starts kinesalite bound to 127.0.0.1 (its CLI listens on all
// interfaces) and prints "PORT <n>" once it listens.
// Usage: node serve.js [port] [path]   (port 0: random; path: on-disk store)
'use strict';
const kinesalite = require('kinesalite');
const port = Number(process.argv[2] || 0);
const opts = { createStreamMs: 50, deleteStreamMs: 50, updateStreamMs: 50, shardLimit: 100 };
if (process.argv[3]) opts.path = process.argv[3];
const server = kinesalite(opts);
// kinesalite rethrows a request's 'error' event, so a client that gives up
// on a request (a cancelled context) would kill the server. Real Kinesis
// shrugs that off; so do we.
process.on('uncaughtException', (err) => {
  if (err && (err.code === 'ECONNRESET' || err.message === 'aborted')) return;
  console.error(err);
  process.exit(1);
});
server.listen(port, '127.0.0.1', (err) => {
  if (err) { console.error(err); process.exit(1); }
  console.log('PORT ' + server.address().port);
});
// The test that started us closes stdin (or dies): stop then.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => server.close(() => process.exit(0)));
