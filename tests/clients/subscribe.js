#!/usr/bin/env node
// Follows channels of the real-time gateway with clients nobody here wrote (socket.io-client, the
// eventsource package) and prints one JSON line per event, {"at", "event", "channel", "data"}, for the
// integration tests (tests/integration/test_gateway.py) to read. `at` is this machine's clock in ms.
//
//   node subscribe.js --url http://127.0.0.1:6070 --token JWT --transport socketio|sse \
//     --channel booking.b-1.tracking [--channel ...] [--duration-s 60]
//
// Events: connect, subscribed (the ack), message, connect_error, revoked, expired, disconnect, error.
// Ends after --duration-s or when its stdin closes, whichever comes first.
'use strict';

const { parseArgs } = require('node:util');
const { io } = require('socket.io-client');
const { EventSource } = require('eventsource');

const { values: options } = parseArgs({
  options: {
    url: { type: 'string' },
    token: { type: 'string', default: '' },
    transport: { type: 'string', default: 'socketio' },
    channel: { type: 'string', multiple: true, default: [] },
    'duration-s': { type: 'string', default: '60' },
  },
});

function print(event, channel, data) {
  process.stdout.write(JSON.stringify({ at: Date.now(), event, channel: channel ?? null, data: data ?? null }) + '\n');
}

// Seed 002 §4 and seed 004's mobile client: reconnect with back-off, resubscribe on every connect (a
// reconnection is a new session on the server, which remembers nothing of the old one).
function followBySocketIO(url, token, channels) {
  const socket = io(url, {
    auth: token ? { token } : {},
    transports: ['websocket', 'polling'],
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
  });
  socket.on('connect', () => {
    print('connect', null, { id: socket.id });
    for (const channel of channels) {
      socket.emit('subscribe', { channel }, (ack) => print('subscribed', channel, ack));
    }
  });
  socket.on('connect_error', (err) => print('connect_error', null, { message: err.message, data: err.data ?? null }));
  socket.on('disconnect', (reason) => print('disconnect', null, { reason }));
  socket.on('revoked', (data) => print('revoked', data?.channel, data));
  socket.on('expired', (data) => print('expired', null, data));
  socket.onAny((name, data) => {
    if (channels.includes(name)) print('message', name, data);
  });
  return () => socket.close();
}

// One EventSource per channel, reconnecting by itself (the `retry` the server sends). A refusal is an
// HTTP status, which EventSource reports without the body: a fetch of our own keeps the body to print.
function followBySse(url, token, channels) {
  const sources = channels.map((channel) => {
    const address = new URL(`/realtime/${encodeURIComponent(channel)}`, url);
    if (token) address.searchParams.set('token', token);
    let refusal = null;
    const fetchKeepingRefusals = async (input, init) => {
      const response = await fetch(input, init);
      refusal = response.status === 200 ? null : await bodyOf(response.clone());
      return response;
    };
    const source = new EventSource(address, { fetch: fetchKeepingRefusals });
    source.onopen = () => {
      print('connect', channel, null);
      print('subscribed', channel, { ok: true, channel });
    };
    source.onmessage = (message) => print('message', channel, JSON.parse(message.data));
    for (const kind of ['revoked', 'expired']) {
      source.addEventListener(kind, (message) => print(kind, channel, JSON.parse(message.data)));
    }
    source.onerror = (err) => {
      if (source.readyState === EventSource.CLOSED) {
        print('error', channel, { status: err.code ?? null, message: err.message ?? null, body: refusal });
      } else {
        print('disconnect', channel, { reason: err.message ?? 'stream ended', reconnecting: true });
      }
    };
    return source;
  });
  return () => sources.forEach((source) => source.close());
}

async function bodyOf(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function main() {
  if (!options.url || options.channel.length === 0) {
    process.stderr.write('usage: subscribe.js --url URL [--token JWT] [--transport socketio|sse] --channel NAME ...\n');
    process.exit(2);
  }
  const follow = { socketio: followBySocketIO, sse: followBySse }[options.transport];
  if (!follow) {
    process.stderr.write(`unknown transport ${options.transport}: socketio or sse\n`);
    process.exit(2);
  }
  const stop = follow(options.url, options.token, options.channel);
  const end = () => {
    stop();
    process.exit(0);
  };
  setTimeout(end, Number(options['duration-s']) * 1000);
  process.stdin.on('end', end);
  process.stdin.on('close', end);
  process.stdin.resume();
}

main();
