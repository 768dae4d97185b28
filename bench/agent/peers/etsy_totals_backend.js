/*
 * A backend for Etsy's statsd (0.9.0), used by bench/agent/ingest.py to count exactly
 * what the server aggregated: after every flush it appends one JSON line to
 * config.totals.path with the interval's counter values and timer sample counts
 * (timer_counters: samples weighted by 1/sample rate) of every metric whose name starts
 * with config.totals.prefix, plus statsd's own metrics_received and bad_lines_seen, and
 * the time of the flush.
 *
 * The flush event hands the backends the live objects, which statsd resets after every
 * backend has run: the values are read here, synchronously, before that happens.
 */
'use strict';

const fs = require('fs');

exports.init = function (startupTime, config, events, logger) {
  const options = config.totals || {};
  if (!options.path) {
    logger.log('etsy_totals_backend: config.totals.path is not set', 'ERROR');
    return false;
  }
  const prefix = options.prefix || '';
  events.on('flush', function (timestamp, metrics) {
    const counters = {};
    const timers = {};
    for (const key in metrics.counters) {
      if (key.startsWith(prefix)) {
        counters[key] = metrics.counters[key];
      }
    }
    for (const key in metrics.timer_counters) {
      if (key.startsWith(prefix)) {
        timers[key] = metrics.timer_counters[key];
      }
    }
    const record = {
      timestamp: timestamp,
      counters: counters,
      timers: timers,
      metrics_received: metrics.counters['statsd.metrics_received'] || 0,
      bad_lines_seen: metrics.counters['statsd.bad_lines_seen'] || 0,
      at: Date.now() / 1000,  // when the flush ran: everything read before is in
    };
    fs.appendFileSync(options.path, JSON.stringify(record) + '\n');
  });
  return true;
};
