/*
 * A backend for Etsy's statsd (tests/agent/test_agent_peer_parity.py): each flush is
 * appended as one JSON line to config.jsonBackend.path, holding exactly what
 * lib/process_metrics.js computed (counters, counter_rates, gauges, sets, timer_data)
 * plus the flush interval and percentThreshold it used.
 *
 * The write is synchronous on purpose: statsd's final flush runs in
 * process.on('exit') (SIGTERM -> process.exit()), where asynchronous I/O never runs.
 */
'use strict';

const fs = require('fs');

exports.init = function (startupTime, config, events, logger) {
  const settings = config.jsonBackend || {};
  if (!settings.path) {
    logger.log('etsy_json_backend: config.jsonBackend.path is required', 'ERROR');
    return false;
  }
  events.on('flush', function (timestamp, metrics) {
    const sets = {};
    for (const key in metrics.sets) {
      sets[key] = metrics.sets[key].values().sort();
    }
    const record = {
      timestamp: timestamp,
      flushInterval: config.flushInterval,
      pctThreshold: metrics.pctThreshold,
      counters: metrics.counters,
      counter_rates: metrics.counter_rates,
      gauges: metrics.gauges,
      sets: sets,
      timer_data: metrics.timer_data,
    };
    fs.appendFileSync(settings.path, JSON.stringify(record) + '\n');
  });
  events.on('status', function (write) {
    write(null, 'etsy_json_backend', 'path', settings.path);
  });
  return true;
};
