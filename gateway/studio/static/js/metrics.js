// Prometheus text format → samples, and per-backend request rates between two scrapes.

export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    if (match[2]) {
      const pair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let found;
      while ((found = pair.exec(match[2])) !== null) {
        labels[found[1]] = found[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      }
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

// {backend: {model, total, errors, clientErrors, inFlight, ejected}} from one scrape.
export function perBackend(samples) {
  const rows = {};
  const row = (backend, model) => {
    rows[backend] ??= { backend, model, total: 0, errors: 0, clientErrors: 0, inFlight: 0, ejected: false };
    return rows[backend];
  };
  for (const s of samples) {
    const { backend, model, status } = s.labels;
    if (!backend || backend === "none") continue;
    if (s.name === "sage_gateway_requests_total") {
      const r = row(backend, model);
      r.total += s.value;
      if (status === "5xx") r.errors += s.value;
      if (status === "4xx") r.clientErrors += s.value;
    } else if (s.name === "sage_gateway_backend_in_flight") {
      row(backend, model).inFlight = s.value;
    } else if (s.name === "sage_gateway_backend_ejected") {
      row(backend, model).ejected = s.value > 0;
    }
  }
  return rows;
}

// Rates per second between two perBackend() snapshots taken `seconds` apart.
export function rates(previous, current, seconds) {
  return Object.values(current).map((now) => {
    const before = previous ? previous[now.backend] : undefined;
    const per = (key) => (before && seconds > 0 ? Math.max(0, now[key] - before[key]) / seconds : null);
    return { ...now, rps: per("total"), eps: per("errors"), ceps: per("clientErrors") };
  });
}

export function perModel(samples, name) {
  const out = {};
  for (const s of samples) if (s.name === name && s.labels.model) out[s.labels.model] = (out[s.labels.model] || 0) + s.value;
  return out;
}
