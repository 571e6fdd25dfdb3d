(async () => {
  const box = document.getElementById('report');
  try {
    const r = await api('/api/reports/latest');
    const rows = r.rows.map(x => `<tr><td>${x.workload}</td><td>${x.mode}</td><td>${x.device}</td>
      <td>${x.samples_per_s ? Math.round(x.samples_per_s.olympic_mean).toLocaleString() : 'failed'}</td>
      <td>${x.speedup_vs_cpu ? x.speedup_vs_cpu.speedup.toFixed(1) + 'x' : ''}</td></tr>`).join('');
    box.className = '';
    box.innerHTML = `<p>${r.created_utc} · ${r.mode} · <a href="${r.html}">full report</a></p>
      <table><thead><tr><th>workload</th><th>mode</th><th>device</th><th>samples/s</th><th>speedup vs CPU</th></tr></thead>
      <tbody>${rows}</tbody></table>` +
      (r.probe ? '<h3>Machine</h3><ul>' + r.probe.map(l => '<li>' + l + '</li>').join('') + '</ul>' : '');
  } catch (e) { box.textContent = e.message; }
  const body = document.querySelector('#runs tbody');
  for (const r of await api('/api/runs')) {
    const row = body.insertRow();
    for (const v of [r.id, r.workload, r.device, r.created_utc, r.status,
                     r.samples_per_s ? Math.round(r.samples_per_s).toLocaleString() : '', r.key_metric]) {
      row.insertCell().textContent = v;
    }
    row.insertCell().innerHTML = r.plots.map(p => `<a href="${p}">${p.split('/').pop()}</a>`).join(' ');
  }
})();
