// Comparing what a component received ({ channel, id, data: {ch, n} }) with
// what the publisher had accepted ({ ch, n, id, t }).

/** "1-5, 9, 12-13" for a sorted list of integers (at most `max` runs). */
export function runs(ns, max = 12) {
  const out = [];
  let i = 0;
  while (i < ns.length) {
    let j = i;
    while (j + 1 < ns.length && ns[j + 1] === ns[j] + 1) j++;
    out.push(i === j ? `${ns[i]}` : `${ns[i]}-${ns[j]}`);
    i = j + 1;
  }
  return out.length > max ? `${out.slice(0, max).join(', ')}, … (${ns.length} in all)` : out.join(', ');
}

const nOf = (r) => (r && r.data && typeof r.data === 'object' ? r.data.n : undefined);

/**
 * What `recs` (one component's records) hold of `channel` compared with the
 * accepted events of that channel whose n is in [from, to] (to: the last
 * accepted by default). Events in `unknown` (sent, reply lost) may be there
 * at most once. Returns { expected, received, missing, duplicates,
 * outOfOrder, idsNotIncreasing, wrongIds, unexpected, foreign, ok }.
 */
export function exactlyOnce(recs, pub, channel, { from = 1, to = Infinity } = {}) {
  const acc = pub.accepted.filter((a) => a.ch === channel && a.n >= from && a.n <= to);
  const unknown = new Set(pub.unknown.filter((u) => u.ch === channel).map((u) => u.n));
  const idOf = new Map(acc.map((a) => [a.n, a.id]));
  const mine = recs.filter((r) => r.channel === channel);
  const foreign = recs.filter((r) => r.channel !== channel || (r.data && r.data.ch !== r.channel));
  const counts = new Map();
  let outOfOrder = 0;
  let prevN = -Infinity;
  let prevId = -Infinity;
  let idsNotIncreasing = 0;
  const wrongIds = [];
  for (const r of mine) {
    const n = nOf(r);
    counts.set(n, (counts.get(n) || 0) + 1);
    if (n <= prevN) outOfOrder++;
    prevN = Math.max(prevN, n);
    const id = r.id === undefined ? NaN : Number(r.id);
    if (!(id > prevId)) idsNotIncreasing++;
    if (id > prevId) prevId = id;
    if (idOf.has(n) && idOf.get(n) !== r.id) wrongIds.push({ n, got: r.id, expected: idOf.get(n) });
  }
  const missing = acc.filter((a) => !counts.has(a.n)).map((a) => a.n);
  const duplicates = [...counts].filter(([, c]) => c > 1).map(([n]) => n).sort((a, b) => a - b);
  const known = new Set(acc.map((a) => a.n));
  const inRange = (n) => n >= from && n <= (to === Infinity ? Math.max(0, ...acc.map((a) => a.n), ...unknown) : to);
  const unexpected = [...counts.keys()].filter((n) => inRange(n) && !known.has(n) && !unknown.has(n));
  const ok = missing.length === 0 && duplicates.length === 0 && outOfOrder === 0 && wrongIds.length === 0
    && unexpected.length === 0 && idsNotIncreasing === 0;
  return {
    channel, expected: acc.length, received: mine.length, missing, duplicates, outOfOrder, idsNotIncreasing,
    wrongIds, unexpected, foreign: foreign.length, ok,
  };
}

/** One line describing an exactlyOnce() result. */
export function describe(id, r) {
  const parts = [`${id} ${r.channel}: ${r.received}/${r.expected}`];
  if (r.missing.length) parts.push(`missing n ${runs(r.missing)}`);
  if (r.duplicates.length) parts.push(`duplicated n ${runs(r.duplicates)}`);
  if (r.outOfOrder) parts.push(`${r.outOfOrder} out of order`);
  if (r.idsNotIncreasing) parts.push(`${r.idsNotIncreasing} ids not increasing`);
  if (r.wrongIds.length) parts.push(`wrong ids ${JSON.stringify(r.wrongIds.slice(0, 3))}`);
  if (r.unexpected.length) parts.push(`never accepted n ${runs(r.unexpected)}`);
  if (r.foreign) parts.push(`${r.foreign} events of other channels`);
  return parts.join('; ');
}

/**
 * For a component mounted for a while (not from the start): its events of
 * `channel` must be in order, without duplicates, and contiguous (no gap
 * between the first and the last it received). Returns { first, last,
 * received, gaps: [n...], duplicates, outOfOrder, ok }.
 */
export function contiguous(recs, pub, channel) {
  const mine = recs.filter((r) => r.channel === channel).map(nOf);
  const unknown = new Set(pub.unknown.filter((u) => u.ch === channel).map((u) => u.n));
  const counts = new Map();
  let outOfOrder = 0;
  for (let i = 0; i < mine.length; i++) {
    counts.set(mine[i], (counts.get(mine[i]) || 0) + 1);
    if (i > 0 && mine[i] <= mine[i - 1]) outOfOrder++;
  }
  const duplicates = [...counts].filter(([, c]) => c > 1).map(([n]) => n);
  const gaps = [];
  if (mine.length) {
    const first = Math.min(...mine);
    const last = Math.max(...mine);
    for (let n = first; n <= last; n++) if (!counts.has(n) && !unknown.has(n)) gaps.push(n);
  }
  return {
    channel, received: mine.length, first: mine[0], last: mine[mine.length - 1], gaps, duplicates, outOfOrder,
    ok: gaps.length === 0 && duplicates.length === 0 && outOfOrder === 0,
  };
}

/** When the publisher had accepted event n of channel (ms), or undefined. */
export function acceptedAt(pub, channel, n) {
  const a = pub.accepted.find((x) => x.ch === channel && x.n === n);
  return a ? a.t : undefined;
}
