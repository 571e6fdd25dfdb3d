async function api(path, options) {
  const r = await fetch(path, options);
  const body = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
async function follow(id, onUpdate) {
  for (;;) {
    const job = await api('/api/jobs/' + id);
    onUpdate(job);
    if (['done', 'failed', 'cancelled'].includes(job.status)) return job;
    await new Promise(r => setTimeout(r, 300));
  }
}
