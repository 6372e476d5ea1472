// The bus's events, live: one EventSource, resumed from the last sequence after any break.
//
// Each message's id is its stream sequence.  After a broken connection the browser sends the last
// id (Last-Event-ID) by itself; when it gives up, a new EventSource is opened with ?after=<last>.
// A message at or below the last sequence is a duplicate: it is counted and dropped, never applied.
// Messages are applied in batches, once per animation frame, so a burst costs one layout.
// A stream the server refuses (a malformed subject filter) is said once, through onRefused,
// and not retried.

const statusNode = () => document.getElementById("live");

function showStatus(state, text) {
  const node = statusNode();
  if (!node) return;
  node.dataset.state = state;
  node.textContent = text;
}

export class Live {
  constructor(subject, after, onBatch, onRefused = null) {
    this.subject = subject;
    this.lastSeq = after;
    this.received = 0;
    this.duplicates = 0;
    this.onBatch = onBatch;
    this.onRefused = onRefused;
    this.queue = [];
    this.frame = 0;
    this.closed = false;
    this.source = null;
    this.open();
  }

  open() {
    if (this.closed) return;
    const params = new URLSearchParams({ subject: this.subject, after: String(this.lastSeq) });
    const source = new EventSource("events?" + params.toString());
    this.source = source;
    source.onopen = () => showStatus("live", "live");
    source.onmessage = (message) => this.take(message);
    source.onerror = () => {
      if (this.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        showStatus("broken", "reconnecting");
        this.retry(source);
      } else {
        showStatus("broken", "reconnecting");
      }
    };
  }

  // Refused outright (not a broken connection): ask why; a wrong filter ends it, anything else retries.
  async retry(source) {
    let refusal = null;
    try {
      const response = await fetch("api/filter?" + new URLSearchParams({ subject: this.subject }).toString());
      if (response.status === 400) refusal = (await response.json()).error;
    } catch { /* the dashboard is away: retry below */ }
    if (this.source !== source) return;
    if (refusal) {
      this.close();
      showStatus("refused", "refused");
      if (this.onRefused) this.onRefused(refusal);
      return;
    }
    setTimeout(() => { if (this.source === source) this.open(); }, 1000);
  }

  // Cut the connection and open a new one from the last sequence (also what a test uses to cut it).
  reconnect() {
    if (this.source) this.source.close();
    this.source = null;
    this.open();
  }

  take(message) {
    let payload;
    try { payload = JSON.parse(message.data); } catch { return; }
    const seq = Number(payload.seq);
    if (!(seq > this.lastSeq)) {
      this.duplicates += 1;
      return;
    }
    this.lastSeq = seq;
    this.received += 1;
    this.queue.push(payload);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const batch = this.queue;
    this.queue = [];
    if (batch.length && !this.closed) this.onBatch(batch, this);
  }

  close() {
    this.closed = true;
    if (this.source) this.source.close();
    this.source = null;
    if (this.frame) cancelAnimationFrame(this.frame);
  }
}
