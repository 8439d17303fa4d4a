#!/usr/bin/env node
// Load generator for Yjs sync servers: real Yjs clients (a Y.Doc each, y-protocols messages over
// `ws`), speaking either the y-websocket dialect (Tandem, @y/websocket-server) or the Hocuspocus
// dialect (every message prefixed with the document name, an auth message first).
//
//   node loadgen.mjs --scenario fanout --url ws://127.0.0.1:PORT/ws --dialect y-websocket \
//        --pid SERVER_PID --readers 50 --rate 20 --duration 10
//
// Scenarios
//   traffic  fanout/stress/rooms: --rooms N rooms; in each, --writers clients that write at --rate
//            updates/s and --readers clients that only read (fanout: 1 room, 1 writer, R readers;
//            rooms: N rooms, 2 writers, 0 readers). Every update sets one key of a Y.Map,
//            "<writer>.<seq>" -> send time; a receiver applies it to its Y.Doc and reads the new
//            key in the map's observer, so latency = send -> integrated in the receiver's doc.
//   cold     one client builds a document from --updates small text edits; then --fresh new
//            clients connect one after another: time to sync step 2 and to the complete document.
//            With --readyz (Tandem), also --unloaded-rounds rounds in which the room is first
//            unloaded (all clients gone, grace period over), so the server loads it from storage.
//   idle     --clients clients over --docs documents connect (ramped, as below) and sync, then send
//            nothing for --window seconds; they answer the server's WebSocket pings (`ws` does
//            that by itself). Server RSS before connecting and with everyone connected, server
//            CPU seconds in the window, pings received in it, connections refused or failed.
//   storm    --long-docs of the --docs documents first get a history of --updates small text
//            edits each, from builder clients that stay connected (so that the in-memory
//            servers keep the documents); then --clients clients (dealt round robin over the
//            documents) all open their sockets at once, with no ramp, as after a deploy: time
//            from the start until all are synced, socket open -> sync step 2 per client, server
//            CPU seconds until the last one is settled, and clients refused or timed out.
//
// Connections are opened --ramp-batch at a time, each batch waiting until its clients are synced;
// the ramp-up is outside the measurement window. Writers then run for --duration seconds; the
// first --warmup seconds of it warm up both sides (JIT, first garbage collections) and are checked
// for loss only. The measurement window runs from the end of the warm-up until every receiver
// holds every update (or --drain-timeout passes): latency samples are the updates sent in it,
// server CPU seconds (utime + stime of --pid from /proc) and the generator's own CPU seconds are
// for that window, and the server's RSS is polled during it.
// --procs N spreads the traffic scenarios' clients over N processes (this one forks the others),
// for when one Node thread cannot keep up; by default everything runs in this one process.
// --tokens FILE (a JSON list of strings) gives each client a token: the k-th client of the run
// takes token k modulo the list's length, whichever process it runs in (a client's k is its
// place in the traffic plan, which every process computes alike). The y-websocket dialect sends
// it as `?token=` in the URL; the Hocuspocus dialect in its auth message.
// Prints one JSON object on stdout; progress goes to stderr.

import { fork } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'

// ---------------------------------------------------------------------------------------------
// options

const { values: opt } = parseArgs({
  options: {
    scenario: { type: 'string', default: 'fanout' },
    url: { type: 'string', default: 'ws://127.0.0.1:8000/ws' },
    dialect: { type: 'string', default: 'y-websocket' },
    pid: { type: 'string' },
    'clk-tck': { type: 'string', default: '100' },
    // Names the rooms; child generator processes inherit it (LOADGEN_TAG).
    tag: { type: 'string', default: process.env.LOADGEN_TAG || Date.now().toString(36) },
    rooms: { type: 'string', default: '1' },
    writers: { type: 'string', default: '1' },
    readers: { type: 'string', default: '50' },
    procs: { type: 'string', default: '1' },
    rate: { type: 'string', default: '20' },
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    'ramp-batch': { type: 'string', default: '50' },
    'connect-timeout': { type: 'string', default: '30' },
    'drain-timeout': { type: 'string', default: '15' },
    updates: { type: 'string', default: '20000' },
    fresh: { type: 'string', default: '5' },
    'unloaded-rounds': { type: 'string', default: '0' },
    readyz: { type: 'string' },
    tokens: { type: 'string' },
    // idle and storm
    clients: { type: 'string', default: '8000' },
    docs: { type: 'string', default: '1000' },
    window: { type: 'string', default: '20' },
    'long-docs': { type: 'string', default: '10' },
    seed: { type: 'string', default: '1' }
  }
})

const num = (name) => {
  const v = Number(opt[name])
  if (!Number.isFinite(v)) fail(`--${name} must be a number`)
  return v
}

const DIALECTS = new Set(['y-websocket', 'hocuspocus'])
if (!DIALECTS.has(opt.dialect)) fail(`--dialect must be one of ${[...DIALECTS].join(', ')}`)

function fail (message) {
  console.error(`loadgen: ${message}`)
  process.exit(2)
}

const TOKENS = opt.tokens ? readTokens(opt.tokens) : null

function readTokens (path) {
  let tokens
  try {
    tokens = JSON.parse(readFileSync(path, 'utf8'))
  } catch (err) {
    fail(`--tokens: cannot read ${path}: ${err.message}`)
  }
  if (!Array.isArray(tokens) || !tokens.length || !tokens.every(t => typeof t === 'string' && t)) {
    fail('--tokens: the file must hold a JSON list of non-empty strings')
  }
  return tokens
}

/** The token of the run's k-th client, or null without --tokens. */
const tokenFor = (k) => TOKENS ? TOKENS[k % TOKENS.length] : null

const log = (...args) => console.error(`[loadgen ${new Date().toISOString().slice(11, 23)}]`, ...args)
// Milliseconds on the monotonic clock, which every process on the machine shares.
const now = () => Number(process.hrtime.bigint()) / 1e6
const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))
const round = (x, digits = 3) => (x === null || x === undefined || !Number.isFinite(x)) ? null : Number(x.toFixed(digits))

// ---------------------------------------------------------------------------------------------
// process accounting (/proc)

const CLK_TCK = num('clk-tck')
const serverPid = opt.pid ? Number(opt.pid) : null

/** [user, system] CPU seconds of a process (utime and stime, fields 14 and 15), or null. */
function procTimes (pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name may contain spaces; fields after it are space separated.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return [Number(fields[11]) / CLK_TCK, Number(fields[12]) / CLK_TCK]
  } catch {
    return null
  }
}

function procCpuSeconds (pid) {
  const times = procTimes(pid)
  return times === null ? null : times[0] + times[1]
}

function procMemoryMB (pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const kb = (key) => {
      const m = status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm'))
      return m ? Number(m[1]) / 1024 : null
    }
    return { rss: kb('VmRSS'), hwm: kb('VmHWM') }
  } catch {
    return { rss: null, hwm: null }
  }
}

/** Busy CPU seconds of the whole machine (all cores), from /proc/stat. */
function machineCpuSeconds () {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]
    const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number)
    return (user + nice + system + irq + softirq + steal) / CLK_TCK
  } catch {
    return null
  }
}

function ownCpuSeconds () {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1e6
}

const LOOP_RESOLUTION_MS = 5

/**
 * Server and generator CPU, server RSS (polled) and event-loop delay for a window. The generator's
 * CPU is this process's plus that of `childPids` (the other generator processes).
 */
class Meter {
  constructor (childPids = []) {
    this.childPids = childPids
  }

  genCpu () {
    return [ownCpuSeconds(), ...this.childPids.map(pid => procCpuSeconds(pid) ?? 0)]
  }

  start () {
    this.t0 = now()
    this.serverTimes0 = serverPid ? procTimes(serverPid) : null
    this.genCpu0 = this.genCpu()
    this.machineCpu0 = machineCpuSeconds()
    this.rssPeak = 0
    this.poll()
    this.timer = setInterval(() => this.poll(), 250)
    this.loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS })
    this.loop.enable()
  }

  poll () {
    if (!serverPid) return
    const { rss } = procMemoryMB(serverPid)
    if (rss !== null && rss > this.rssPeak) this.rssPeak = rss
  }

  stop () {
    this.poll()
    clearInterval(this.timer)
    this.loop.disable()
    const seconds = (now() - this.t0) / 1000
    const serverTimes1 = serverPid ? procTimes(serverPid) : null
    const serverTimes = (serverTimes1 !== null && this.serverTimes0 !== null)
      ? serverTimes1.map((t, i) => t - this.serverTimes0[i])
      : null
    const perProc = this.genCpu().map((cpu, i) => cpu - this.genCpu0[i])
    const genCpu = perProc.reduce((a, b) => a + b, 0)
    const serverCpu = serverTimes === null ? null : serverTimes[0] + serverTimes[1]
    const mem = serverPid ? procMemoryMB(serverPid) : { hwm: null }
    const machine1 = machineCpuSeconds()
    const machineCpu = (machine1 !== null && this.machineCpu0 !== null) ? machine1 - this.machineCpu0 : null
    // What neither the server nor the generator used: other processes on a shared machine.
    const otherCpu = (machineCpu !== null && serverCpu !== null) ? Math.max(0, machineCpu - serverCpu - genCpu) : null
    return {
      window_s: round(seconds),
      server_cpu_s: round(serverCpu),
      server_cpu_util: serverCpu === null ? null : round(serverCpu / seconds),
      // The kernel's part of it: on loopback, sending a frame also runs the receiver's side.
      server_sys_s: serverTimes === null ? null : round(serverTimes[1]),
      server_rss_peak_mb: serverPid ? round(this.rssPeak, 1) : null,
      server_hwm_mb: round(mem.hwm, 1),
      gen_cpu_s: round(genCpu),
      gen_cpu_util: round(genCpu / seconds),
      // The busiest generator process: one Node thread can use at most one core.
      gen_cpu_util_max_proc: round(Math.max(...perProc) / seconds),
      machine_cpu_s: round(machineCpu),
      other_cpu_s: round(otherCpu),
      // The histogram holds whole sampling intervals; the delay is what exceeds the interval.
      gen_loop_delay_p99_ms: round(Math.max(0, this.loop.percentile(99) / 1e6 - LOOP_RESOLUTION_MS), 2),
      gen_loop_delay_max_ms: round(Math.max(0, this.loop.max / 1e6 - LOOP_RESOLUTION_MS), 2)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// latency samples

class Samples {
  constructor () {
    this.values = new Float64Array(1 << 16)
    this.n = 0
  }

  push (v) {
    if (this.n === this.values.length) {
      const grown = new Float64Array(this.values.length * 2)
      grown.set(this.values)
      this.values = grown
    }
    this.values[this.n++] = v
  }

  stats () {
    const n = this.n
    if (n === 0) return { count: 0, p50_ms: null, p90_ms: null, p95_ms: null, p99_ms: null, max_ms: null, mean_ms: null }
    const sorted = this.values.slice(0, n).sort()
    const at = (p) => sorted[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))]
    let sum = 0
    for (let i = 0; i < n; i++) sum += sorted[i]
    return {
      count: n,
      p50_ms: round(at(0.5)),
      p90_ms: round(at(0.9)),
      p95_ms: round(at(0.95)),
      p99_ms: round(at(0.99)),
      max_ms: round(sorted[n - 1]),
      mean_ms: round(sum / n)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// the protocol client

const MSG_SYNC = 0
const MSG_AWARENESS = 1
const MSG_AUTH = 2
const MSG_QUERY_AWARENESS = 3
const MSG_CLOSE = 7 // Hocuspocus: the server closed this document's connection
const SYNC_STEP1 = 0
const SYNC_STEP2 = 1
const SYNC_UPDATE = 2
const AUTH_TOKEN = 0
const AUTH_DENIED = 1

const REMOTE = Symbol('remote')
const stats = { unexpectedCloses: 0, closeCodes: {}, protocolErrors: 0, pings: 0 }

/** An error for a client that did not sync: `kind` refused, timeout or failed, and `reason`,
 * the key it is counted under (an errno, an HTTP status, a close code). */
function failure (message, kind, reason) {
  const err = new Error(message)
  err.kind = kind
  err.reason = reason
  return err
}

/** The kind of a socket error before sync: the server refused the client (connection refused
 * or reset, an HTTP answer other than 101), or something else failed (e.g. EMFILE here). */
function classify (err) {
  const status = /Unexpected server response: (\d+)/.exec(err?.message || '')
  if (status) return failure(err.message, 'refused', `HTTP ${status[1]}`)
  const code = err?.code || 'error'
  const refused = ['ECONNREFUSED', 'ECONNRESET', 'EPIPE'].includes(code)
  return failure(err?.message || String(err), refused ? 'refused' : 'failed', code)
}

/**
 * One Yjs client over one WebSocket. The y-websocket dialect is the one `WebsocketProvider`
 * speaks (sync step 1 on open, answer the server's step 1 with step 2, updates as sync
 * messages). The Hocuspocus dialect is what `@hocuspocus/provider` sends: each message starts
 * with the document name as a varstring, and the first one is an auth message (token "").
 * With a `token` the y-websocket dialect adds `?token=` to the URL (Tandem's sign-in), the
 * Hocuspocus dialect sends it in its auth message.
 */
class Client {
  constructor (base, room, { hocuspocus, token = null, apply = true }) {
    const query = token && !hocuspocus ? `?token=${encodeURIComponent(token)}` : ''
    this.url = `${base}/${room}${query}`
    this.room = room
    this.hocuspocus = hocuspocus
    this.token = token
    // apply = false (storm): the first step 2 is kept as bytes, not applied, so that the
    // generator's own Yjs work does not delay the clients whose step 2 comes next.
    this.apply = apply
    this.doc = new Y.Doc()
    this.ws = null
    this.synced = false
    this.closing = false
    this.onStep2 = null // (receivedAt, bytes) before the step 2 is applied
    this.openedAt = null // monotonic ms of the socket's open event
    this.step2At = null // ... and of the first sync step 2
    this.step2 = null // that step 2's update, when not applied
    this.pings = 0 // WebSocket pings received (and answered)
  }

  connect (timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(failure(`no sync within ${timeoutMs} ms: ${this.where()}`, 'timeout', 'timeout'))
        this.close()
      }, timeoutMs)
      this.resolveSynced = () => {
        clearTimeout(timer)
        resolve()
      }
      this.rejectSynced = (err) => {
        clearTimeout(timer)
        reject(err)
      }
      const ws = new WebSocket(this.url, { perMessageDeflate: false })
      this.ws = ws
      ws.binaryType = 'nodebuffer'
      ws.on('open', () => this.opened())
      ws.on('message', (data, isBinary) => {
        if (isBinary) this.receive(data)
      })
      ws.on('error', (err) => {
        if (!this.synced) this.rejectSynced(classify(err))
      })
      ws.on('close', (code) => {
        if (!this.closing) {
          stats.unexpectedCloses++
          stats.closeCodes[code] = (stats.closeCodes[code] || 0) + 1
          if (!this.synced) {
            // The server took the socket and then closed it: it refused the client.
            this.rejectSynced(failure(`closed with ${code} before sync: ${this.where()}`, 'refused', `close ${code}`))
          }
        }
      })
      ws.on('ping', () => { // `ws` answers it with a pong by itself
        stats.pings++
        this.pings++
      })
    })
  }

  /** The URL for messages: without the token, which is a credential. */
  where () {
    return this.url.split('?', 1)[0]
  }

  encoder (type) {
    const enc = encoding.createEncoder()
    if (this.hocuspocus) encoding.writeVarString(enc, this.room)
    encoding.writeVarUint(enc, type)
    return enc
  }

  send (enc) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(encoding.toUint8Array(enc))
  }

  opened () {
    this.openedAt = now()
    if (this.hocuspocus) {
      const auth = this.encoder(MSG_AUTH)
      encoding.writeVarUint(auth, AUTH_TOKEN)
      encoding.writeVarString(auth, this.token ?? '')
      this.send(auth)
    }
    const step1 = this.encoder(MSG_SYNC)
    encoding.writeVarUint(step1, SYNC_STEP1)
    encoding.writeVarUint8Array(step1, Y.encodeStateVector(this.doc))
    this.send(step1)
  }

  sendUpdate (update) {
    const enc = this.encoder(MSG_SYNC)
    encoding.writeVarUint(enc, SYNC_UPDATE)
    encoding.writeVarUint8Array(enc, update)
    this.send(enc)
  }

  /** Hocuspocus closes connections that sent nothing for 60 s; its provider keeps talking. */
  keepalive () {
    if (this.hocuspocus) this.send(this.encoder(MSG_QUERY_AWARENESS))
  }

  receive (data) {
    const receivedAt = now()
    try {
      const dec = decoding.createDecoder(data)
      if (this.hocuspocus) decoding.readVarString(dec)
      const type = decoding.readVarUint(dec)
      if (type === MSG_SYNC) {
        const sub = decoding.readVarUint(dec)
        if (sub === SYNC_STEP1) {
          const sv = decoding.readVarUint8Array(dec)
          const reply = this.encoder(MSG_SYNC)
          encoding.writeVarUint(reply, SYNC_STEP2)
          encoding.writeVarUint8Array(reply, Y.encodeStateAsUpdate(this.doc, sv))
          this.send(reply)
        } else if (sub === SYNC_STEP2 || sub === SYNC_UPDATE) {
          const update = decoding.readVarUint8Array(dec)
          if (sub === SYNC_STEP2 && this.onStep2) this.onStep2(receivedAt, data.length)
          if (sub === SYNC_STEP2 && this.step2At === null) this.step2At = receivedAt
          if (!this.apply && !this.synced && sub === SYNC_STEP2) {
            this.step2 = update
          } else if (this.apply) {
            Y.applyUpdate(this.doc, update, REMOTE)
          }
          if (sub === SYNC_STEP2 && !this.synced) {
            this.synced = true
            this.resolveSynced()
          }
        }
      } else if (type === MSG_AUTH && this.hocuspocus) {
        if (decoding.readVarUint(dec) === AUTH_DENIED) {
          this.rejectSynced(new Error(`permission denied: ${decoding.readVarString(dec)}`))
        }
      } else if (type === MSG_CLOSE && this.hocuspocus && !this.closing) {
        stats.protocolErrors++ // the server dropped this document's connection
        if (stats.protocolErrors < 5) log(`server closed ${this.room}: ${decoding.readVarString(dec)}`)
      }
      // MSG_AWARENESS, Hocuspocus' sync status (8) and anything else: nothing to do.
    } catch (err) {
      stats.protocolErrors++
      if (stats.protocolErrors < 5) log('cannot read a message:', err.message)
    }
  }

  close () {
    this.closing = true
    if (this.ws) {
      try { this.ws.close() } catch {}
    }
  }

  terminate () {
    this.closing = true
    if (this.ws) {
      try { this.ws.terminate() } catch {}
    }
  }
}

/** Open clients `batch` at a time; each batch waits until all of its clients are synced. */
async function rampUp (clients, batch, timeoutMs) {
  const started = now()
  for (let i = 0; i < clients.length; i += batch) {
    await Promise.all(clients.slice(i, i + batch).map(c => c.connect(timeoutMs)))
  }
  return (now() - started) / 1000
}

// ---------------------------------------------------------------------------------------------
// traffic scenarios: fanout, stress, rooms
//
// With --procs N the clients are spread over N processes (this one and N - 1 children of it), so
// the generator can use more than one core. A room's writers stay together in one process; the
// readers of a room that is not alone in its process are dealt out round robin. Send times come
// from the monotonic clock, which all the processes share.

function trafficPlan () {
  const roomsN = num('rooms')
  const writersN = num('writers')
  const readersN = num('readers')
  const procs = num('procs')
  const rooms = []
  const writers = [] // writer id -> its room
  let clients = 0 // every member's place in the plan: which token it takes
  for (let r = 0; r < roomsN; r++) {
    const room = { name: `${opt.scenario}-${opt.tag}-${r}`, members: [], writerIds: [] }
    for (let k = 0; k < writersN + readersN; k++) {
      const writerId = k < writersN ? writers.length : null
      const owner = roomsN >= procs ? r % procs : (writerId !== null ? 0 : (k - writersN) % procs)
      if (writerId !== null) {
        writers.push(room)
        room.writerIds.push(writerId)
      }
      room.members.push({ room, owner, writerId, index: clients++ })
    }
    rooms.push(room)
  }
  return { rooms, writers }
}

/** The clients of one generator process, and what they sent and received. */
class Partition {
  constructor (plan, shard) {
    this.plan = plan
    this.rate = num('rate')
    this.duration = num('duration')
    this.warmup = Math.min(num('warmup'), this.duration / 2)
    this.clients = []
    this.writers = [] // { id, client, sent, skipped, lagMax }
    this.latency = new Samples()
    this.received = 0 // distinct updates received from others
    this.receivedMeasured = 0 // of those, sent after the warm-up
    this.duplicates = 0
    this.stale = 0
    this.windowStart = Infinity
    this.measureFrom = Infinity
    this.series = process.env.LOADGEN_SERIES ? [] : null
    const hocuspocus = opt.dialect === 'hocuspocus'
    for (const room of plan.rooms) {
      for (const member of room.members) {
        if (member.owner !== shard) continue
        const client = new Client(opt.url, room.name, { hocuspocus, token: tokenFor(member.index) })
        client.member = member
        client.seen = new Map() // writer id -> { bits: Uint8Array, count }
        this.clients.push(client)
        this.observe(client)
        if (member.writerId !== null) {
          this.writers.push({ id: member.writerId, client, sent: 0, skipped: 0, lagMax: 0 })
          client.doc.on('update', (update, origin) => {
            if (origin !== REMOTE) client.sendUpdate(update)
          })
        }
      }
    }
  }

  // Each update sets one new key "<writer>.<seq>" to its send time; a map event names the keys
  // it changed, so reading the new entries costs nothing per existing entry.
  observe (client) {
    const entries = client.doc.getMap('u')
    entries.observe((event) => {
      const t = now()
      for (const key of event.keysChanged) {
        const dot = key.indexOf('.')
        const w = Number(key.slice(0, dot))
        const seq = Number(key.slice(dot + 1))
        if (w === client.member.writerId) continue
        const sentAt = entries.get(key)
        let seen = client.seen.get(w)
        if (!seen) {
          seen = { bits: new Uint8Array(1024), count: 0 }
          client.seen.set(w, seen)
        }
        if (seq >= seen.bits.length) {
          const grown = new Uint8Array(Math.max(seen.bits.length * 2, seq + 1))
          grown.set(seen.bits)
          seen.bits = grown
        }
        if (seen.bits[seq]) {
          this.duplicates++
          continue
        }
        seen.bits[seq] = 1
        seen.count++
        if (sentAt < this.windowStart) {
          this.stale++ // written before the window (not expected to happen)
          continue
        }
        this.received++
        if (sentAt >= this.measureFrom) {
          this.latency.push(t - sentAt)
          this.receivedMeasured++
        }
        if (this.series) this.series.push([sentAt - this.windowStart, t - sentAt])
      }
    })
  }

  async ramp () {
    const seconds = await rampUp(this.clients, num('ramp-batch'), num('connect-timeout') * 1000)
    if (opt.dialect === 'hocuspocus') {
      this.keepalive = setInterval(() => this.clients.forEach(c => c.keepalive()), 20000)
    }
    return seconds
  }

  /** Write from `t0` (monotonic ms) for --duration seconds; resolve with the counts sent. */
  async write (t0) {
    const { rate, duration, warmup } = this
    const interval = 1000 / rate
    this.windowStart = t0
    this.measureFrom = t0 + warmup * 1000
    this.closesBefore = stats.unexpectedCloses
    const endAt = t0 + duration * 1000
    this.loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS })
    setTimeout(() => this.loop.enable(), Math.max(0, this.measureFrom - now()))
    // Each writer has its own schedule with a random phase, so writers are not in lock step.
    // A writer that falls behind (a busy generator) skips the slots it missed instead of
    // sending a burst to catch up; `sent_per_s` below the target shows it.
    await Promise.all(this.writers.map(w => new Promise(resolve => {
      const phase = Math.random() * interval
      let first = t0 + phase
      const tick = () => {
        const t = now()
        const late = t - (first + w.sent * interval)
        if (late > w.lagMax) w.lagMax = late
        if (late > interval) {
          w.skipped += Math.floor(late / interval)
          first = t - w.sent * interval
        }
        w.client.doc.getMap('u').set(`${w.id}.${w.sent}`, now())
        w.sent++
        const next = first + w.sent * interval
        if (next >= endAt) return resolve()
        setTimeout(tick, Math.max(0, next - now()))
      }
      setTimeout(tick, Math.max(0, first - now()))
    })))
    return Object.fromEntries(this.writers.map(w => [w.id, w.sent]))
  }

  expected (sent) {
    let sum = 0
    for (const client of this.clients) {
      for (const w of client.member.room.writerIds) {
        if (w !== client.member.writerId) sum += sent[w] || 0
      }
    }
    return sum
  }

  /** Wait until every client holds every update of the others (or `deadline`); report. */
  async drain (sent, deadline) {
    const expected = this.expected(sent)
    while (this.received + this.stale < expected && now() < deadline) await sleep(20)
    this.loop.disable()
    let lost = 0
    for (const client of this.clients) {
      for (const w of client.member.room.writerIds) {
        if (w !== client.member.writerId) lost += (sent[w] || 0) - (client.seen.get(w)?.count || 0)
      }
    }
    if (this.series) logSeries(this.series)
    return {
      clients: this.clients.length,
      expected,
      received: this.received + this.stale,
      received_measured: this.receivedMeasured,
      lost,
      duplicates: this.duplicates,
      samples: this.latency.values.subarray(0, this.latency.n),
      loop_p99_ms: Math.max(0, this.loop.percentile(99) / 1e6 - LOOP_RESOLUTION_MS),
      loop_max_ms: Math.max(0, this.loop.max / 1e6 - LOOP_RESOLUTION_MS),
      lag_max_ms: Math.max(0, ...this.writers.map(w => w.lagMax)),
      skipped: this.writers.reduce((sum, w) => sum + w.skipped, 0),
      closes: stats.unexpectedCloses,
      closes_in_window: stats.unexpectedCloses - this.closesBefore,
      close_codes: stats.closeCodes,
      protocol_errors: stats.protocolErrors
    }
  }

  async close () {
    clearInterval(this.keepalive)
    for (const c of this.clients) c.close()
    await sleep(300)
    for (const c of this.clients) c.terminate()
  }
}

function logSeries (series) {
  const buckets = {}
  for (const [at, ms] of series) (buckets[Math.floor(at / 500)] ||= []).push(ms)
  for (const [b, xs] of Object.entries(buckets)) {
    xs.sort((a, c) => a - c)
    log(`t=${b * 0.5}s n=${xs.length} p50=${xs[xs.length >> 1].toFixed(1)} max=${xs[xs.length - 1].toFixed(1)}`)
  }
}

/** A child generator process, driven over IPC by `traffic`. */
function startShard (index) {
  const child = fork(fileURLToPath(import.meta.url), process.argv.slice(2), {
    env: { ...process.env, LOADGEN_SHARD: String(index), LOADGEN_TAG: opt.tag },
    serialization: 'advanced', // typed arrays (the latency samples) go across as they are
    stdio: ['ignore', 'ignore', 'inherit', 'ipc']
  })
  const pending = new Map()
  let ids = 0
  child.on('message', (msg) => {
    const waiting = pending.get(msg.id)
    if (!waiting) return
    pending.delete(msg.id)
    if (msg.error) waiting.reject(new Error(`shard ${index}: ${msg.error}`))
    else waiting.resolve(msg.value)
  })
  child.on('exit', (code) => {
    for (const waiting of pending.values()) waiting.reject(new Error(`shard ${index} exited with ${code}`))
    pending.clear()
  })
  return {
    pid: child.pid,
    kill: () => child.kill(),
    request: (body) => new Promise((resolve, reject) => {
      const id = ++ids
      pending.set(id, { resolve, reject })
      child.send({ id, ...body })
    })
  }
}

/** The child's side: one Partition, doing what the parent asks. */
function shardMain (index) {
  const part = new Partition(trafficPlan(), index)
  process.on('message', async (msg) => {
    try {
      let value = null
      if (msg.type === 'ramp') value = await part.ramp()
      else if (msg.type === 'write') value = await part.write(msg.t0)
      else if (msg.type === 'drain') value = await part.drain(msg.sent, msg.deadline)
      else if (msg.type === 'close') await part.close()
      process.send({ id: msg.id, value })
      if (msg.type === 'close') setTimeout(() => process.exit(0), 50)
    } catch (err) {
      process.send({ id: msg.id, error: String(err?.message || err) })
    }
  })
  process.on('disconnect', () => process.exit(0)) // the parent is gone
}

async function traffic () {
  const plan = trafficPlan()
  const procs = num('procs')
  const rate = num('rate')
  const duration = num('duration')
  const warmup = Math.min(num('warmup'), duration / 2)
  const local = new Partition(plan, 0)
  const shards = []
  for (let s = 1; s < procs; s++) shards.push(startShard(s))
  try {
    const clients = plan.rooms.reduce((sum, room) => sum + room.members.length, 0)
    log(`${opt.scenario}: ${plan.rooms.length} room(s) x (${num('writers')} writer(s) + ${num('readers')} reader(s)) = ${clients} clients, ${rate}/s per writer, ${duration}s (+${warmup}s of it warm-up) via ${opt.dialect}, ${procs} process(es)`)
    // One process after the other, so that no more than --ramp-batch connections open at once.
    const rampStart = now()
    await local.ramp()
    for (const shard of shards) await shard.request({ type: 'ramp' })
    const rampSeconds = (now() - rampStart) / 1000
    log(`ramp-up done in ${rampSeconds.toFixed(1)}s`)
    await sleep(1000)

    const t0 = now() + 100 // time for the children to hear of it
    const measureFrom = t0 + warmup * 1000
    const meter = new Meter(shards.map(s => s.pid))
    const meterStarted = new Promise(resolve => setTimeout(() => {
      meter.start()
      resolve()
    }, Math.max(0, measureFrom - now())))
    const sentParts = await Promise.all([local.write(t0), ...shards.map(s => s.request({ type: 'write', t0 }))])
    await meterStarted
    const sendEnd = now()
    const sent = Object.assign({}, ...sentParts)
    const deadline = sendEnd + num('drain-timeout') * 1000
    const parts = await Promise.all([local.drain(sent, deadline), ...shards.map(s => s.request({ type: 'drain', sent, deadline }))])
    const drainMs = now() - sendEnd
    const measured = meter.stop()

    const latency = new Samples()
    for (const part of parts) {
      for (let i = 0; i < part.samples.length; i++) latency.push(part.samples[i])
    }
    const total = (key) => parts.reduce((sum, part) => sum + part[key], 0)
    const most = (key) => Math.max(...parts.map(part => part[key]))
    const closeCodes = {}
    for (const part of parts) {
      for (const [code, n] of Object.entries(part.close_codes)) closeCodes[code] = (closeCodes[code] || 0) + n
    }
    const sentTotal = Object.values(sent).reduce((a, b) => a + b, 0)
    const result = {
      ...measured,
      gen_procs: procs,
      gen_loop_delay_p99_ms: round(most('loop_p99_ms'), 2),
      gen_loop_delay_max_ms: round(most('loop_max_ms'), 2),
      ramp_s: round(rampSeconds),
      clients: total('clients'),
      rooms: plan.rooms.length,
      writers: plan.writers.length,
      readers_per_room: num('readers'),
      rate_per_writer: rate,
      sent: sentTotal,
      sent_per_s: round(sentTotal / duration, 1),
      target_per_s: plan.writers.length * rate,
      send_lag_max_ms: round(most('lag_max_ms')),
      send_slots_skipped: total('skipped'),
      expected: total('expected'),
      received: total('received'),
      lost: total('lost'),
      duplicates: total('duplicates'),
      // Every writer sends rate x (duration - warmup) updates in the measured part, or fewer.
      delivered_per_s: round(total('received_measured') / (duration - warmup), 1),
      drain_ms: round(drainMs),
      latency: latency.stats(),
      unexpected_closes: total('closes'),
      unexpected_closes_in_window: total('closes_in_window'),
      close_codes: closeCodes,
      protocol_errors: total('protocol_errors')
    }
    await Promise.all([local.close(), ...shards.map(s => s.request({ type: 'close' }))])
    return result
  } finally {
    for (const shard of shards) shard.kill()
  }
}

// ---------------------------------------------------------------------------------------------
// cold: a document of many small updates, then fresh clients

function prng (seed) { // mulberry32
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz '

/** Insert 1 to 4 random letters at a random place of `text`: one transaction. */
function randomEdit (text, random) {
  const pos = Math.floor(random() * (text.length + 1))
  const len = 1 + Math.floor(random() * 4)
  let s = ''
  for (let k = 0; k < len; k++) s += ALPHABET[Math.floor(random() * ALPHABET.length)]
  text.insert(pos, s)
}

async function readyz (url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) })
    return await res.json()
  } catch {
    return null
  }
}

async function waitUnloaded (url, timeoutMs) {
  const deadline = now() + timeoutMs
  while (now() < deadline) {
    const state = await readyz(url)
    if (state && state.rooms === 0 && state.pending_updates === 0) return true
    await sleep(100)
  }
  return false
}

async function cold () {
  const updates = num('updates')
  const fresh = num('fresh')
  const rounds = num('unloaded-rounds')
  const hocuspocus = opt.dialect === 'hocuspocus'
  const timeoutMs = num('connect-timeout') * 1000
  const room = `cold-${opt.tag}`
  const random = prng(num('seed'))
  let clients = 0 // each new client takes the next token
  const newClient = () => new Client(opt.url, room, { hocuspocus, token: tokenFor(clients++) })

  const builder = newClient()
  // A fixed client id: ids are written into the document, so a random one changes its size.
  builder.doc.clientID = 0x5eed0000 + num('seed')
  const watcher = newClient()
  await builder.connect(timeoutMs)
  await watcher.connect(timeoutMs)
  const text = builder.doc.getText('t')
  builder.doc.on('update', (update, origin) => {
    if (origin !== REMOTE) builder.sendUpdate(update)
  })
  const me = builder.doc.clientID
  const caughtUp = async (deadlineMs) => {
    const target = Y.getState(builder.doc.store, me)
    const deadline = now() + deadlineMs
    while (Y.getState(watcher.doc.store, me) < target) {
      if (now() > deadline) throw new Error('the watcher did not receive every update in time')
      await sleep(5)
    }
  }

  log(`cold: building a document from ${updates} updates via ${opt.dialect}`)
  const buildStart = now()
  for (let i = 0; i < updates; i++) {
    randomEdit(text, random) // one transaction, one update message
    if (i % 500 === 499) await caughtUp(60000)
  }
  await caughtUp(60000)
  const buildSeconds = (now() - buildStart) / 1000
  const expectedLength = text.length
  const expectedSv = Buffer.from(Y.encodeStateVector(builder.doc)).toString('hex')
  const docBytes = Y.encodeStateAsUpdate(builder.doc).length
  log(`built in ${buildSeconds.toFixed(1)}s: ${docBytes} bytes, ${expectedLength} characters`)

  const measureOne = async () => {
    const client = newClient()
    const t0 = now()
    let step2At = null
    let step2Bytes = null
    client.onStep2 = (at, bytes) => {
      if (step2At === null) {
        step2At = at
        step2Bytes = bytes
      }
    }
    await client.connect(timeoutMs)
    const syncedAt = now()
    const complete = client.doc.getText('t').length === expectedLength &&
      Buffer.from(Y.encodeStateVector(client.doc)).toString('hex') === expectedSv
    client.close()
    await sleep(50)
    client.terminate()
    return {
      step2_ms: round(step2At - t0),
      complete_ms: complete ? round(syncedAt - t0) : null,
      step2_bytes: step2Bytes,
      complete
    }
  }

  const summarize = (runs) => {
    const ok = runs.filter(r => r.complete)
    const med = (xs) => {
      if (!xs.length) return null
      const s = [...xs].sort((a, b) => a - b)
      return s[Math.floor((s.length - 1) / 2)]
    }
    return {
      clients: runs.length,
      incomplete: runs.length - ok.length,
      first_step2_ms: runs[0]?.step2_ms ?? null,
      first_complete_ms: runs[0]?.complete_ms ?? null,
      median_step2_ms: med(runs.map(r => r.step2_ms)),
      median_complete_ms: med(ok.map(r => r.complete_ms)),
      max_complete_ms: ok.length ? Math.max(...ok.map(r => r.complete_ms)) : null,
      step2_bytes: runs[0]?.step2_bytes ?? null,
      runs
    }
  }

  await measureOne() // not counted: warms up the generator's own code paths
  const meter = new Meter()
  meter.start()
  const loadedRuns = []
  for (let i = 0; i < fresh; i++) loadedRuns.push(await measureOne())
  const loadedMeter = meter.stop()
  log(`loaded: median complete ${summarize(loadedRuns).median_complete_ms} ms`)

  let unloaded = null
  builder.close()
  watcher.close()
  if (rounds > 0 && opt.readyz) {
    const runs = []
    let unloadFailures = 0
    for (let i = 0; i < rounds; i++) {
      if (!await waitUnloaded(opt.readyz, 60000)) {
        unloadFailures++
        break
      }
      runs.push(await measureOne())
    }
    unloaded = { ...summarize(runs), unload_failures: unloadFailures }
    log(`unloaded: median complete ${unloaded.median_complete_ms} ms`)
  }
  await sleep(100)
  builder.terminate()
  watcher.terminate()
  return {
    updates,
    doc_bytes: docBytes,
    doc_chars: expectedLength,
    build_s: round(buildSeconds),
    loaded: { ...summarize(loadedRuns), ...loadedMeter },
    unloaded,
    unexpected_closes: stats.unexpectedCloses,
    close_codes: stats.closeCodes,
    protocol_errors: stats.protocolErrors
  }
}

// ---------------------------------------------------------------------------------------------
// idle and storm: many connections, little traffic

/** Clients that did not sync, counted by kind (refused, timeout, failed) and by reason. */
class Failures {
  constructor () {
    this.kinds = { refused: 0, timeout: 0, failed: 0 }
    this.reasons = {}
  }

  add (err) {
    const kind = err?.kind || 'failed'
    this.kinds[kind] = (this.kinds[kind] || 0) + 1
    const reason = err?.reason || String(err?.message || err).slice(0, 80)
    this.reasons[reason] = (this.reasons[reason] || 0) + 1
    if (this.total() <= 3) log(`a client did not sync (${kind}): ${err?.message || err}`)
  }

  total () {
    return Object.values(this.kinds).reduce((a, b) => a + b, 0)
  }
}

const serverRssMB = () => serverPid ? procMemoryMB(serverPid).rss : null
const yieldToIO = () => new Promise(resolve => setImmediate(resolve))

async function idle () {
  const n = num('clients')
  const docs = num('docs')
  const windowS = num('window')
  const batch = num('ramp-batch')
  const timeoutMs = num('connect-timeout') * 1000
  const hocuspocus = opt.dialect === 'hocuspocus'
  const clients = []
  for (let i = 0; i < n; i++) {
    clients.push(new Client(opt.url, `idle-${opt.tag}-${i % docs}`, { hocuspocus, token: tokenFor(i) }))
  }
  log(`idle: ${n} clients over ${docs} documents via ${opt.dialect}, ${batch} at a time, then ${windowS}s idle`)
  const rssBefore = serverRssMB()
  // Like the traffic scenarios' ramp-up, but a client that fails is counted, not fatal.
  const failures = new Failures()
  const connected = []
  const rampStart = now()
  for (let i = 0; i < n; i += batch) {
    const part = clients.slice(i, i + batch)
    const settled = await Promise.allSettled(part.map(c => c.connect(timeoutMs)))
    settled.forEach((r, k) => r.status === 'fulfilled' ? connected.push(part[k]) : failures.add(r.reason))
  }
  const rampSeconds = (now() - rampStart) / 1000
  log(`ramp-up done in ${rampSeconds.toFixed(1)}s: ${connected.length} synced, ${failures.total()} not`)
  await sleep(2000) // the last batch's work (and what it left to collect) settles
  const rssConnected = serverRssMB()
  const pings0 = stats.pings
  const closes0 = stats.unexpectedCloses
  for (const c of connected) c.pings0 = c.pings
  const meter = new Meter()
  meter.start()
  await sleep(windowS * 1000)
  const measured = meter.stop()
  const rssEnd = serverRssMB()
  const result = {
    ...measured,
    clients: n,
    docs,
    accepted: connected.length,
    refused: failures.kinds.refused,
    timed_out: failures.kinds.timeout,
    failed: failures.kinds.failed,
    not_accepted: failures.total(),
    failure_reasons: failures.reasons,
    ramp_s: round(rampSeconds),
    rss_before_mb: round(rssBefore, 1),
    rss_connected_mb: round(rssConnected, 1),
    rss_end_mb: round(rssEnd, 1),
    // Everything the connections (and their documents) added, per accepted connection.
    rss_per_conn_kb: (rssBefore !== null && rssConnected !== null && connected.length)
      ? round((rssConnected - rssBefore) * 1024 / connected.length, 1)
      : null,
    pings_in_window: stats.pings - pings0,
    clients_pinged_in_window: connected.filter(c => c.pings > c.pings0).length,
    open_at_end: connected.filter(c => c.ws.readyState === WebSocket.OPEN).length,
    unexpected_closes: stats.unexpectedCloses,
    unexpected_closes_in_window: stats.unexpectedCloses - closes0,
    close_codes: stats.closeCodes,
    protocol_errors: stats.protocolErrors
  }
  for (const c of clients) c.terminate()
  await sleep(200)
  return result
}

async function storm () {
  const n = num('clients')
  const docs = num('docs')
  const longDocs = Math.min(num('long-docs'), docs)
  const updates = num('updates')
  const timeoutMs = num('connect-timeout') * 1000
  const hocuspocus = opt.dialect === 'hocuspocus'
  let tokens = 0 // each client takes the next token
  const newClient = (d, apply = true) => {
    const client = new Client(opt.url, `storm-${opt.tag}-${d}`, { hocuspocus, token: tokenFor(tokens++), apply })
    client.docIndex = d
    return client
  }

  // The long histories: one builder per document, all at once. The builders stay connected
  // through the storm: the in-memory servers drop a document when its last client leaves.
  log(`storm: building ${longDocs} document(s) of ${updates} updates each via ${opt.dialect}`)
  const buildStart = now()
  const builders = []
  for (let d = 0; d < longDocs; d++) {
    const builder = newClient(d)
    // A fixed client id: ids are written into the document, so a random one changes its size.
    builder.doc.clientID = 0x5eed0000 + d
    builders.push(builder)
  }
  await Promise.all(builders.map(b => b.connect(timeoutMs)))
  await Promise.all(builders.map(async (builder, d) => {
    const random = prng(num('seed') + d)
    const text = builder.doc.getText('t')
    builder.doc.on('update', (update, origin) => {
      if (origin !== REMOTE) builder.sendUpdate(update)
    })
    for (let i = 0; i < updates; i++) {
      randomEdit(text, random) // one transaction, one update message
      if (i % 200 === 199) await yieldToIO()
    }
  }))
  const expected = builders.map(b => Y.getState(b.doc.store, b.doc.clientID))
  const docBytes = builders.length ? Y.encodeStateAsUpdate(builders[0].doc).length : 0
  // The server holds every update once a fresh client of each document has them all.
  const checkers = builders.map((b, d) => newClient(d))
  await Promise.all(checkers.map(c => c.connect(timeoutMs)))
  const checkDeadline = now() + 300000
  for (const [d, checker] of checkers.entries()) {
    while (Y.getState(checker.doc.store, builders[d].doc.clientID) < expected[d]) {
      if (now() > checkDeadline) throw new Error(`document ${d}: the server did not take every update in time`)
      await sleep(20)
    }
  }
  for (const checker of checkers) checker.close()
  // Tandem: until what the builders sent is stored, so that its commits are not in the storm.
  if (opt.readyz) {
    const deadline = now() + 120000
    while (now() < deadline && (await readyz(opt.readyz))?.pending_updates !== 0) await sleep(100)
  }
  const buildSeconds = (now() - buildStart) / 1000
  log(`built in ${buildSeconds.toFixed(1)}s: ${docBytes} bytes each`)
  await sleep(1000)
  for (const checker of checkers) checker.terminate()

  const clients = []
  for (let i = 0; i < n; i++) clients.push(newClient(i % docs, false))
  log(`storm: ${n} clients over ${docs} documents open their sockets at once`)
  const closes0 = stats.unexpectedCloses
  const meter = new Meter()
  meter.start()
  const t0 = now()
  const settled = await Promise.allSettled(clients.map(c => c.connect(timeoutMs)))
  const measured = meter.stop()

  const failures = new Failures()
  const synced = []
  settled.forEach((r, i) => r.status === 'fulfilled' ? synced.push(clients[i]) : failures.add(r.reason))
  const openToStep2 = new Samples()
  const openToStep2Long = new Samples()
  const startToOpen = new Samples()
  let last = t0
  let incomplete = 0
  for (const c of synced) {
    openToStep2.push(c.step2At - c.openedAt)
    startToOpen.push(c.openedAt - t0)
    if (c.step2At > last) last = c.step2At
    if (c.docIndex < longDocs) {
      openToStep2Long.push(c.step2At - c.openedAt)
      // Checked after the storm, so that it does not delay anyone's step 2.
      const sv = Y.decodeStateVector(Y.encodeStateVectorFromUpdate(c.step2))
      if ((sv.get(0x5eed0000 + c.docIndex) || 0) < expected[c.docIndex]) incomplete++
    }
  }
  log(`storm: ${synced.length} synced in ${((last - t0) / 1000).toFixed(2)}s, ${failures.total()} not`)
  const result = {
    ...measured,
    clients: n,
    docs,
    long_docs: longDocs,
    updates_per_long_doc: updates,
    long_doc_bytes: docBytes,
    build_s: round(buildSeconds),
    synced: synced.length,
    refused: failures.kinds.refused,
    timed_out: failures.kinds.timeout,
    failed: failures.kinds.failed,
    not_synced: failures.total(),
    failure_reasons: failures.reasons,
    // From the first socket created to the last step 2, when every client synced.
    all_synced_s: failures.total() === 0 ? round((last - t0) / 1000) : null,
    last_synced_s: synced.length ? round((last - t0) / 1000) : null,
    open_to_step2: openToStep2.stats(),
    open_to_step2_long_docs: openToStep2Long.stats(),
    start_to_open: startToOpen.stats(),
    incomplete,
    unexpected_closes: stats.unexpectedCloses - closes0,
    close_codes: stats.closeCodes,
    protocol_errors: stats.protocolErrors
  }
  for (const c of [...clients, ...builders]) c.terminate()
  await sleep(200)
  return result
}

// ---------------------------------------------------------------------------------------------

if (!/^[\w.-]{1,40}$/.test(opt.scenario)) fail('--scenario: letters, digits, "_", "." or "-"')
if (process.env.LOADGEN_SHARD) {
  shardMain(Number(process.env.LOADGEN_SHARD))
  await new Promise(() => {}) // the parent ends this process
}
// Any other scenario name is traffic under that name (the name goes into the room names).
const run = { cold, idle, storm }[opt.scenario] ?? traffic
const started = Date.now()
try {
  const result = await run()
  const out = { ok: true, scenario: opt.scenario, dialect: opt.dialect, ...result }
  out.ok = (result.lost ?? 0) === 0 && (result.unexpected_closes_in_window ?? 0) === 0 &&
    (result.protocol_errors ?? 0) === 0 && !(result.loaded?.incomplete) && !(result.unloaded?.incomplete) &&
    !result.not_accepted && !result.not_synced && !result.incomplete
  // The generator, not the server, may have been the limit: it could not keep the send rate,
  // or one of its processes was busy nearly all the time (one Node thread: at most one core).
  if (result.target_per_s) {
    out.generator_limited = result.sent_per_s < 0.97 * result.target_per_s ||
      (result.gen_cpu_util_max_proc ?? 0) > 0.9
  } else if (opt.scenario === 'storm') {
    // The clients' times include the generator's: it was busy nearly all of the storm.
    out.generator_limited = (result.gen_cpu_util_max_proc ?? 0) > 0.9
  }
  out.elapsed_s = round((Date.now() - started) / 1000, 1)
  process.stdout.write(JSON.stringify(out) + '\n')
  process.exit(0)
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, scenario: opt.scenario, dialect: opt.dialect, error: String(err?.message || err), ...stats }) + '\n')
  process.exit(1)
}
