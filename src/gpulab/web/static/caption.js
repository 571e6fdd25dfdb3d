(async () => {
  const all = await api('/api/runs');
  const select = document.getElementById('run');
  for (const r of all.filter(r => r.workload === 'caption')) select.add(new Option(r.id + ' · ' + r.key_metric, r.id));
  if (!select.options.length) document.getElementById('status').textContent =
    'no caption model yet: train one with `gpulab train caption`';
})();
document.getElementById('caption-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const status = document.getElementById('status'), body = document.querySelector('#captions tbody');
  status.className = 'muted';
  for (const file of document.getElementById('image').files) {
    const data = new FormData();
    data.append('image', file);
    data.append('run', document.getElementById('run').value);
    data.append('beam', document.getElementById('beam').value);
    try {
      const job = await api('/api/caption', {method: 'POST', body: data});
      status.textContent = 'captioning ' + file.name;
      const done = await follow(job.id, () => {});
      const row = body.insertRow();
      row.insertCell().innerHTML = `<img src="${done.result ? done.result.image : ''}" height="64">`;
      row.insertCell().textContent = done.status === 'done' ? done.result.caption : done.error;
      row.insertCell().textContent = done.status === 'done' ? done.result.logprob.toFixed(3) : '';
      status.textContent = '';
    } catch (e) {
      status.className = 'error';
      status.textContent = file.name + ': ' + e.message;
    }
  }
});
