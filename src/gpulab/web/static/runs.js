const esc = s => String(s ?? '').replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`);
const fixed = (x, d = 2) => (x === null || x === undefined) ? '' : x.toFixed(d);

// the latest share report (its chart, NP per job, STP/ANTT/fairness) and links to the older ones
async function showShareReports(box) {
  try {
    const reports = await api('/api/reports/share');
    if (!reports.length) { box.textContent = 'no share report yet; run `gpulab share`'; return; }
    const r = reports[0], modes = r.modes, npCell = j => j.failed ? 'failed: ' + esc(j.error) :
      fixed(j.np_mean) + (j.np_interval ? ` [${fixed(j.np_interval[0])}-${fixed(j.np_interval[1])}]` : '');
    const figures = modes.map(m => `<p>${modes.length > 1 ? esc(m.mode) + ': ' : ''}STP ${fixed(m.set.stp)} ·
      ANTT ${fixed(m.set.antt)} · fairness ${fixed(m.set.fairness)}</p>`).join('');
    const head = modes.map(m => `<th>NP ${modes.length > 1 ? esc(m.mode) + ' ' : ''}[95% interval]</th>`).join('');
    const rows = (modes[0]?.jobs ?? []).map((j, i) => `<tr><td>${esc(j.id)}</td><td>${esc(j.spec)}</td>
      ${modes.map(m => `<td>${npCell(m.jobs[i] ?? {})}</td>`).join('')}</tr>`).join('');
    const older = reports.slice(1).map(o =>
      `<li><a href="${o.html}">${esc(o.created_utc)} · ${esc(o.mode)} on ${esc(o.device)}</a></li>`).join('');
    box.className = '';
    box.innerHTML = `<p>${esc(r.created_utc)} · ${esc(r.mode)} on ${esc(r.device)} ·
      <a href="${r.html}">full report</a></p><p id="share-conclusion"><strong>${esc(r.conclusion)}</strong></p>
      ${figures}<p>(NP = isolated time / shared time; STP = sum of NP; ANTT = mean 1/NP)</p>
      <img id="share-chart" alt="NP per job" src="${r.chart}" style="max-width:100%">
      <table><thead><tr><th>job</th><th>spec</th>${head}</tr></thead><tbody>${rows}</tbody></table>` +
      (older ? `<h3>Earlier share reports</h3><ul>${older}</ul>` : '');
  } catch (e) { box.textContent = e.message; }
}

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
  await showShareReports(document.getElementById('share'));
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
