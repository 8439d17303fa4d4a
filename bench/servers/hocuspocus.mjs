// Runs `@hocuspocus/server` in memory (no extensions, no persistence) on 127.0.0.1.
//
//   node servers/hocuspocus.mjs PORT
//
// Hocuspocus ignores the URL path: the document name travels inside every message, so
// ws://127.0.0.1:PORT/ws/<doc> is accepted and the load generator names <doc> in its messages.
// Everything else is the library's default configuration (flushDelay 0, timeout 60 s).
import { Server } from '@hocuspocus/server'

const port = Number(process.argv[2] || process.env.PORT)
if (!port) {
  console.error('usage: node servers/hocuspocus.mjs PORT')
  process.exit(2)
}

const server = new Server({
  name: 'bench',
  address: '127.0.0.1',
  port,
  quiet: true,
  stopOnSignals: true
})
await server.listen()
console.log(`hocuspocus listening on 127.0.0.1:${port}`)
