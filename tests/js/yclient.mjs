#!/usr/bin/env node
// One stock Yjs client (yjs + y-websocket's WebsocketProvider), remote-controlled
// through line-delimited JSON on stdin/stdout. Used by the Python test suite
// (see tests/yjs_node.py).
//
// Usage: node yclient.mjs <serverUrl> <room> [token]
//
// The provider connects to `${serverUrl}/${room}` (plus `?token=...` when a token
// is given). Every stdin line is one JSON command {"id": ..., "op": "...", ...};
// every command gets exactly one JSON reply line on stdout carrying the same "id"
// and either "ok": true (plus op-specific fields) or "ok": false, "error": "...".
// Diagnostics go to stderr only; stdout carries nothing but replies.

import process from 'node:process'
import readline from 'node:readline'

import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

import { buildXml } from './pmbuild.mjs'

// stdout is the reply channel: keep any stray library logging off it.
console.log = console.error
console.info = console.error
console.debug = console.error

const [serverUrl, room, token] = process.argv.slice(2)
if (!serverUrl || !room) {
  process.stderr.write('usage: node yclient.mjs <serverUrl> <room> [token]\n')
  process.exit(2)
}

const doc = new Y.Doc()
const tag = `[yclient ${room} #${doc.clientID}]`
const log = (...parts) => {
  process.stderr.write(`${tag} ${parts.join(' ')}\n`)
}

const provider = new WebsocketProvider(serverUrl, room, doc, {
  WebSocketPolyfill: WebSocket,
  params: token ? { token } : {},
  disableBc: true
})

// Provider events, recorded so tests can inspect them with the "events" op.
const events = []
const record = (event) => {
  events.push({ ...event, t: Date.now() })
  if (events.length > 1000) events.shift()
}
provider.on('status', ({ status }) => {
  log('status', status)
  record({ type: 'status', status })
})
provider.on('sync', (state) => {
  log('sync', state)
  record({ type: 'sync', synced: state })
})
provider.on('connection-close', (event) => {
  const code = event ? event.code : null
  const reason = event ? String(event.reason ?? '') : null
  log('connection-close', code === null ? '(local)' : `code=${code} reason=${reason}`)
  record({ type: 'connection-close', code, reason, local: event === null })
})
provider.on('connection-error', (event) => {
  const message = event && event.message ? String(event.message) : 'error'
  log('connection-error', message)
  record({ type: 'connection-error', message })
})
provider.on('closed', ({ code, reason }) => {
  log('closed (no reconnect)', `code=${code} reason=${reason}`)
  record({ type: 'closed', code, reason: String(reason ?? '') })
})

// ---------------------------------------------------------------------------
// argument helpers

class CommandError extends Error {}

const str = (cmd, key, fallback) => {
  const value = cmd[key] ?? fallback
  if (typeof value !== 'string') throw new CommandError(`"${key}" must be a string`)
  return value
}

const int = (cmd, key, fallback) => {
  const value = cmd[key] ?? fallback
  if (!Number.isInteger(value) || value < 0) {
    throw new CommandError(`"${key}" must be a non-negative integer`)
  }
  return value
}

const names = (cmd, key, fallback) => {
  const value = cmd[key] ?? fallback
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
    throw new CommandError(`"${key}" must be an array of strings`)
  }
  return value
}

const seconds = (cmd, fallback) => {
  const value = cmd.timeout ?? fallback
  if (typeof value !== 'number' || !(value >= 0)) {
    throw new CommandError('"timeout" must be a non-negative number of seconds')
  }
  return value
}

// Plain JSON to shared types: objects become Y.Map, arrays Y.Array, scalars stay.
const toShared = (value) => {
  if (Array.isArray(value)) {
    const array = new Y.Array()
    array.push(value.map(toShared))
    return array
  }
  if (value !== null && typeof value === 'object') {
    const map = new Y.Map()
    for (const [key, item] of Object.entries(value)) map.set(key, toShared(item))
    return map
  }
  return value
}

const toBase64 = (bytes) => Buffer.from(bytes).toString('base64')
const fromBase64 = (text) => new Uint8Array(Buffer.from(text, 'base64'))

const awarenessStates = () => {
  const out = {}
  for (const [clientID, state] of provider.awareness.getStates()) out[String(clientID)] = state
  return out
}

const waitSynced = (timeoutSeconds) => new Promise((resolve, reject) => {
  if (provider.synced) {
    resolve()
    return
  }
  const onSync = (state) => {
    if (!state) return
    clearTimeout(timer)
    provider.off('sync', onSync)
    resolve()
  }
  const timer = setTimeout(() => {
    provider.off('sync', onSync)
    reject(new CommandError(
      `not synced after ${timeoutSeconds}s (connected=${provider.wsconnected})`
    ))
  }, timeoutSeconds * 1000)
  provider.on('sync', onSync)
})

// ---------------------------------------------------------------------------
// commands: each returns the extra reply fields (or a promise of them)

const commands = {
  wait_synced: async (cmd) => {
    await waitSynced(seconds(cmd, 10))
    return {}
  },

  insert_text: (cmd) => {
    const text = doc.getText(str(cmd, 'name', 'text'))
    const index = int(cmd, 'index', 0)
    if (index > text.length) {
      throw new CommandError(`index ${index} beyond text length ${text.length}`)
    }
    text.insert(index, str(cmd, 'value'))
    return { length: text.length }
  },

  delete_text: (cmd) => {
    const text = doc.getText(str(cmd, 'name', 'text'))
    const index = int(cmd, 'index', 0)
    const length = int(cmd, 'length')
    if (index + length > text.length) {
      throw new CommandError(`range ${index}+${length} beyond text length ${text.length}`)
    }
    text.delete(index, length)
    return { length: text.length }
  },

  map_set: (cmd) => {
    if (!('value' in cmd)) throw new CommandError('"value" is required')
    doc.getMap(str(cmd, 'name', 'map')).set(str(cmd, 'key'), cmd.value)
    return {}
  },

  map_delete: (cmd) => {
    doc.getMap(str(cmd, 'name', 'map')).delete(str(cmd, 'key'))
    return {}
  },

  // Like map_set, below nested Y.Maps: follows `path` (keys) from root map `name`, then sets
  // `key`. Objects and arrays in `value` become Y.Map and Y.Array (as an app would write
  // structured data); scalars are stored as they are.
  map_set_deep: (cmd) => {
    if (!('value' in cmd)) throw new CommandError('"value" is required')
    let target = doc.getMap(str(cmd, 'name', 'map'))
    for (const key of names(cmd, 'path', [])) {
      const next = target.get(key)
      if (!(next instanceof Y.Map)) throw new CommandError(`${key} is not a Y.Map`)
      target = next
    }
    const value = toShared(cmd.value)
    target.set(str(cmd, 'key'), value)
    return {}
  },

  // Appends `values` to root array `name` in one transaction, objects and arrays as Y types.
  array_push_deep: (cmd) => {
    if (!Array.isArray(cmd.values)) throw new CommandError('"values" must be an array')
    doc.getArray(str(cmd, 'name', 'array')).push(cmd.values.map(toShared))
    return {}
  },

  // Appends `values` (JSON) to root array `name` in one transaction, stored as they are.
  array_push: (cmd) => {
    if (!Array.isArray(cmd.values)) throw new CommandError('"values" must be an array')
    const array = doc.getArray(str(cmd, 'name', 'array'))
    array.push(cmd.values)
    return { length: array.length }
  },

  // Appends ProseMirror-JSON-like `nodes` ({type, attrs?, content?}, text nodes {type: "text",
  // text, marks?: [{type, attrs?}]}) to root fragment `name` in one transaction, stored as
  // y-prosemirror stores them (see pmbuild.mjs).
  xml_build: (cmd) => {
    let fragment
    try {
      fragment = buildXml(doc, str(cmd, 'name', 'default'), cmd.nodes)
    } catch (err) {
      if (err instanceof TypeError) throw new CommandError(err.message)
      throw err
    }
    return { length: fragment.length }
  },

  // The JSON of root map `name` (nested shared types included).
  map_json: (cmd) => ({ json: doc.getMap(str(cmd, 'name', 'map')).toJSON() }),

  xml_insert_paragraph: (cmd) => {
    const fragment = doc.getXmlFragment(str(cmd, 'name', 'xml'))
    const index = int(cmd, 'index', 0)
    const content = str(cmd, 'text', '')
    if (index > fragment.length) {
      throw new CommandError(`index ${index} beyond fragment length ${fragment.length}`)
    }
    // One transaction, so peers receive a single update for the whole paragraph.
    doc.transact(() => {
      const paragraph = new Y.XmlElement('paragraph')
      fragment.insert(index, [paragraph])
      const xmlText = new Y.XmlText()
      paragraph.insert(0, [xmlText])
      if (content.length > 0) xmlText.insert(0, content)
    })
    return { length: fragment.length }
  },

  state: (cmd) => {
    const text = {}
    for (const name of names(cmd, 'texts', ['text'])) text[name] = doc.getText(name).toString()
    const map = {}
    for (const name of names(cmd, 'maps', ['map'])) map[name] = doc.getMap(name).toJSON()
    const xml = {}
    for (const name of names(cmd, 'xmls', ['xml'])) xml[name] = doc.getXmlFragment(name).toString()
    return { text, map, xml }
  },

  encode_state: () => ({
    update: toBase64(Y.encodeStateAsUpdate(doc)),
    state_vector: toBase64(Y.encodeStateVector(doc))
  }),

  apply_update: (cmd) => {
    Y.applyUpdate(doc, fromBase64(str(cmd, 'update')), 'test-harness')
    return {}
  },

  disconnect: () => {
    provider.disconnect()
    return {}
  },

  connect: () => {
    provider.connect()
    return {}
  },

  status: () => ({
    connected: provider.wsconnected,
    synced: provider.synced,
    connecting: provider.wsconnecting,
    should_connect: provider.shouldConnect,
    client_id: doc.clientID
  }),

  events: (cmd) => {
    const snapshot = events.slice()
    if (cmd.clear === true) events.length = 0
    return { events: snapshot }
  },

  awareness_set: (cmd) => {
    if (!('value' in cmd)) throw new CommandError('"value" is required')
    if (cmd.field === undefined || cmd.field === null) {
      // No field: replace the whole local state (null marks this client offline).
      provider.awareness.setLocalState(cmd.value)
    } else {
      provider.awareness.setLocalStateField(str(cmd, 'field'), cmd.value)
    }
    return {}
  },

  awareness_states: () => ({
    client_id: doc.clientID,
    states: awarenessStates()
  })
}

// ---------------------------------------------------------------------------
// I/O loop

let shuttingDown = false

const writeLine = (obj) => new Promise((resolve) => {
  process.stdout.write(JSON.stringify(obj) + '\n', () => resolve())
})

const shutdown = async (reply) => {
  if (shuttingDown) return
  shuttingDown = true
  const socket = provider.ws
  try {
    provider.destroy()
    doc.destroy()
  } catch (err) {
    log('error during destroy:', err && err.stack ? err.stack : String(err))
  }
  // Let the closing handshake (and the preceding awareness "offline" frame) reach
  // the server before the process goes away.
  if (socket && socket.readyState !== WebSocket.CLOSED) {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 1000)
      socket.once('close', () => {
        clearTimeout(timer)
        resolve()
      })
    })
  }
  if (reply) await writeLine(reply)
  process.exit(0)
}

const handleLine = async (line) => {
  if (line.trim() === '') return
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (err) {
    await writeLine({ id: null, ok: false, error: `invalid JSON: ${err.message}` })
    return
  }
  const id = cmd !== null && typeof cmd === 'object' && 'id' in cmd ? cmd.id : null
  if (cmd === null || typeof cmd !== 'object' || Array.isArray(cmd)) {
    await writeLine({ id, ok: false, error: 'command must be a JSON object' })
    return
  }
  if (shuttingDown) {
    await writeLine({ id, ok: false, error: 'client is shutting down' })
    return
  }
  if (cmd.op === 'close') {
    await shutdown({ id, ok: true })
    return
  }
  const handler = Object.hasOwn(commands, cmd.op) ? commands[cmd.op] : undefined
  if (handler === undefined) {
    await writeLine({ id, ok: false, error: `unknown op: ${JSON.stringify(cmd.op)}` })
    return
  }
  let reply
  try {
    const result = await handler(cmd)
    reply = { id, ok: true, ...result }
  } catch (err) {
    if (!(err instanceof CommandError)) {
      log(`op ${cmd.op} failed:`, err && err.stack ? err.stack : String(err))
    }
    reply = { id, ok: false, error: err && err.message ? err.message : String(err) }
  }
  await writeLine(reply)
}

process.stdout.on('error', (err) => {
  // The controlling process went away: nothing left to report to.
  log('stdout error:', err.message)
  process.exit(1)
})

process.on('uncaughtException', (err) => {
  log('uncaught exception:', err && err.stack ? err.stack : String(err))
})
process.on('unhandledRejection', (err) => {
  log('unhandled rejection:', err && err.stack ? err.stack : String(err))
})
process.on('SIGTERM', () => {
  shutdown(null)
})

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
input.on('line', (line) => {
  // Commands start in arrival order; synchronous ops complete before the next
  // line is read, waits (wait_synced) resolve later and reply out of order.
  handleLine(line).catch((err) => {
    log('failed to handle command:', err && err.stack ? err.stack : String(err))
  })
})
input.on('close', () => {
  shutdown(null)
})

log(`started, connecting to ${provider.url.replace(/token=[^&]*/, 'token=***')}`)
