#!/usr/bin/env node
/* Loads the live map in headless Chromium and waits until its counters (#counts) show at least
   --drivers drivers and --assignments assignments seen (or, with --status, until #status says so),
   then takes a screenshot and prints one JSON line: the counts, the status text and what the page
   logged as errors. Exit 0 when the wait succeeded without errors, 1 on timeout, 2 on page errors.

   node map_check.js URL --drivers N --assignments M --screenshot PATH [--timeout-s S]
                         [--status TEXT] [--allow-console TEXT ...]

   --status: wait for #status to contain TEXT instead (a refused token's message).
   --allow-console: console errors containing TEXT are expected (the refused request of that case). */
'use strict';

const {parseArgs} = require('node:util');
const puppeteer = require('puppeteer-core');

const USAGE = 'usage: map_check.js URL --screenshot PATH [--drivers N] [--assignments M] [--timeout-s S] ' +
  '[--status TEXT] [--allow-console TEXT ...]';

function options() {
  const {values, positionals} = parseArgs({
    allowPositionals: true,
    options: {
      'drivers': {type: 'string', default: '1'},
      'assignments': {type: 'string', default: '0'},
      'timeout-s': {type: 'string', default: '60'},
      'screenshot': {type: 'string'},
      'status': {type: 'string'},
      'allow-console': {type: 'string', multiple: true, default: []},
    },
  });
  if (positionals.length !== 1 || !values.screenshot) {
    console.error(USAGE);
    process.exit(64);
  }
  return {
    url: positionals[0],
    drivers: Number(values.drivers),
    assignments: Number(values.assignments),
    timeoutMs: Number(values['timeout-s']) * 1000,
    screenshot: values.screenshot,
    status: values.status,
    allowConsole: values['allow-console'],
  };
}

function reached(drivers, assignments, status) {
  const counts = document.querySelector('#counts');
  const statusText = document.querySelector('#status');
  if (status !== null) {
    return Boolean(statusText && statusText.textContent.includes(status));
  }
  return Boolean(counts) && Number(counts.dataset.drivers) >= drivers &&
    Number(counts.dataset.assignments) >= assignments;
}

async function main() {
  const opts = options();
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--headless=new'],
  });
  const consoleErrors = [];
  const pageErrors = [];
  let timedOut = false;
  const started = Date.now();
  let result;
  try {
    const page = await browser.newPage();
    await page.setViewport({width: 1280, height: 800});
    page.on('console', (message) => {
      if (message.type() === 'error') {
        const where = message.location() && message.location().url ? ' (' + message.location().url + ')' : '';
        consoleErrors.push(message.text() + where);
      }
    });
    page.on('pageerror', (error) => pageErrors.push(String(error && error.stack || error)));
    await page.goto(opts.url, {waitUntil: 'load', timeout: opts.timeoutMs});
    try {
      await page.waitForFunction(reached, {timeout: Math.max(1, opts.timeoutMs - (Date.now() - started)),
        polling: 200}, opts.drivers, opts.assignments, opts.status === undefined ? null : opts.status);
    } catch (error) {
      if (error.name !== 'TimeoutError') {
        throw error;
      }
      timedOut = true;
    }
    // The canvas is drawn on the next animation frames after the counters change.
    await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
    await page.screenshot({path: opts.screenshot});
    const state = await page.evaluate(() => ({
      counts: Object.fromEntries(Object.entries(document.querySelector('#counts').dataset)
        .map(([name, value]) => [name, Number(value)])),
      status: document.querySelector('#status').textContent,
    }));
    const unexpected = consoleErrors.filter((text) => !opts.allowConsole.some((allowed) => text.includes(allowed)));
    result = {
      ok: !timedOut && unexpected.length === 0 && pageErrors.length === 0,
      timed_out: timedOut,
      counts: state.counts,
      status: state.status,
      console_errors: consoleErrors,
      unexpected_console_errors: unexpected,
      page_errors: pageErrors,
      screenshot: opts.screenshot,
      elapsed_s: (Date.now() - started) / 1000,
    };
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
  process.exitCode = result.timed_out ? 1 : result.ok ? 0 : 2;
}

main().catch((error) => {
  console.log(JSON.stringify({ok: false, error: String(error && error.stack || error)}));
  process.exitCode = 1;
});
