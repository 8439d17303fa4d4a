// Runs the stock `@y/websocket-server` (its own bin, unchanged) in memory on 127.0.0.1.
//
//   node servers/y-websocket-server.mjs PORT
//
// The stock server takes HOST and PORT from the environment and uses the rest of the URL path
// as the document name, so ws://127.0.0.1:PORT/ws/<doc> works as is (the room is "ws/<doc>").
// No YPERSISTENCE: documents live in memory only.
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { pathToFileURL } from 'node:url'

const port = process.argv[2] || process.env.PORT
if (!port) {
  console.error('usage: node servers/y-websocket-server.mjs PORT')
  process.exit(2)
}
process.env.HOST = '127.0.0.1'
process.env.PORT = String(port)
delete process.env.YPERSISTENCE

// The package exports only ./utils and ./callback; load its bin by file path.
const require = createRequire(import.meta.url)
const pkgDir = dirname(require.resolve('@y/websocket-server/package.json'))
await import(pathToFileURL(join(pkgDir, 'src', 'server.js')).href)

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0))
}
