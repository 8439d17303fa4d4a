// Sends one binary message of SIZE bytes on each of COUNT connections with the stock `ws`
// client and prints, as JSON, the close code and reason each connection ended with.
// Usage: node oversize.mjs URL_PREFIX COUNT SIZE
import WebSocket from 'ws'

const [prefix, count, size] = process.argv.slice(2)
const outcomes = []
for (let i = 0; i < Number(count); i++) {
  outcomes.push(
    await new Promise((resolve) => {
      const ws = new WebSocket(`${prefix}-${i}`)
      ws.on('open', () => ws.send(Buffer.alloc(Number(size))))
      ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }))
      ws.on('error', () => {}) // the close event follows with the code
    })
  )
}
console.log(JSON.stringify(outcomes))
