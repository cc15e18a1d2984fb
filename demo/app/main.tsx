// The nginx-sse demo page: a Datashop-like view on the React client.
// One EventSource-like connection for the whole tab, whatever is mounted;
// who sees what is decided by the demo auth service behind auth_request.
import { StrictMode, useEffect, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { SSEProvider, useSSE, useSSEClient } from '@nginx-sse/react';
import type { ViewState } from '@nginx-sse/client';

interface LogLine { ts: string; level: string; step: string; msg: string }
interface Metrics { rows_per_s: number; lag_s: number; running: number; queued: number; errors_5m: number }
interface Alert { ts: string; severity: string; workflow: string; msg: string }
interface Dashboard { id: number; value: number; trend: string; ts: string }
interface Me { user: string | null; label?: string; grants?: string; workspaces?: string[];
  users: { id: string; label: string }[] }

const WORKFLOWS = ['nightly-sales', 'customer-sync', 'ml-features'];
const DASHBOARDS = Array.from({ length: 40 }, (_, i) => i + 1);

function Status({ view }: { view: ViewState<unknown> }) {
  const text = view.status === 'denied' ? `denied: ${view.error ?? ''}` : view.status;
  return <span className={`status ${view.status}`}>{text}</span>;
}

function Logs({ workspace }: { workspace: string }) {
  const [workflow, setWorkflow] = useState(WORKFLOWS[0]!);
  // Each workflow keeps its own lines (state survives switching back), and
  // switching re-subscribes through the one connection without losing lines.
  const view = useSSE<LogLine, LogLine[]>(`logs:${workspace}:${workflow}`, {
    key: 'lines',
    reducer: (lines = [], e) => [...lines.slice(-199), e.data],
    persist: 'session',
  });
  return (
    <section>
      <h2>Logs <Status view={view} /></h2>
      <div className="tabs">
        {WORKFLOWS.map((wf) => (
          <button key={wf} className={wf === workflow ? 'on' : ''} onClick={() => setWorkflow(wf)}>{wf}</button>
        ))}
      </div>
      <ol className="logs">
        {(view.data ?? []).slice().reverse().map((l, i) => (
          <li key={`${l.ts}-${i}`} className={l.level}><time>{l.ts.slice(11, 23)}</time> <b>{l.level}</b> [{l.step}] {l.msg}</li>
        ))}
      </ol>
    </section>
  );
}

function MetricsPanel({ workspace }: { workspace: string }) {
  const view = useSSE<Metrics>(`metrics:${workspace}`);
  const m = view.data;
  return (
    <section>
      <h2>Metrics {workspace} <Status view={view} /></h2>
      {m ? (
        <dl className="metrics">
          <dt>rows/s</dt><dd>{m.rows_per_s.toLocaleString()}</dd>
          <dt>lag</dt><dd>{m.lag_s}s</dd>
          <dt>running</dt><dd>{m.running}</dd>
          <dt>queued</dt><dd>{m.queued}</dd>
          <dt>errors (5 min)</dt><dd>{m.errors_5m}</dd>
        </dl>
      ) : <p>waiting…</p>}
    </section>
  );
}

function Alerts({ user }: { user: string }) {
  const view = useSSE<Alert, Alert[]>(`alerts:${user}`, {
    key: 'list',
    reducer: (list = [], e) => [e.data, ...list].slice(0, 10),
  });
  return (
    <section>
      <h2>Alerts for {user} <Status view={view} /></h2>
      <ul className="alerts">
        {(view.data ?? []).map((a, i) => <li key={`${a.ts}-${i}`} className={a.severity}>{a.ts.slice(11, 19)} {a.msg}</li>)}
      </ul>
    </section>
  );
}

function Dashboards() {
  // One pattern subscription: nginx checks each event against the user's
  // grants, so Alice's page only ever receives dashboard 7.
  const view = useSSE<Dashboard, Record<string, Dashboard>>('dashboards:*', {
    key: 'tiles',
    reducer: (tiles = {}, e) => ({ ...tiles, [e.channel]: e.data }),
  });
  const tiles = view.data ?? {};
  const live = Object.keys(tiles).length;
  return (
    <section>
      <h2>Dashboards ({live} of 40 receiving) <Status view={view} /></h2>
      <div className="grid">
        {DASHBOARDS.map((i) => {
          const d = tiles[`dashboards:${i}`];
          return (
            <div key={i} className={`tile ${d ? d.trend : 'none'}`}>
              <small>#{i}</small>
              <strong>{d ? d.value : '–'}</strong>
            </div>
          );
        })}
      </div>
    </section>
  );
}

function Probe() {
  // Ask for any channel, to see nginx refuse what the user is not granted.
  const [text, setText] = useState('logs:w2:nightly-sales');
  const [asked, setAsked] = useState<string | null>(null);
  const view = useSSE<unknown>(asked);
  return (
    <section>
      <h2>Ask for a channel</h2>
      <form onSubmit={(e) => { e.preventDefault(); setAsked(text.trim() || null); }}>
        <input value={text} onChange={(e) => setText(e.target.value)} size={30} />
        <button>subscribe</button> {asked && <button type="button" onClick={() => setAsked(null)}>drop</button>}
      </form>
      {asked && <p>{asked}: <Status view={view} /> {view.data !== undefined && <code>{JSON.stringify(view.data)}</code>}</p>}
    </section>
  );
}

function Connection() {
  const client = useSSEClient();
  const [status, setStatus] = useState(client?.status ?? 'idle');
  useEffect(() => client?.onStatus(setStatus), [client]);
  return <span className={`status ${status}`}>connection: {status}</span>;
}

function App({ me }: { me: Me }) {
  const workspaces = me.workspaces ?? [];
  const [workspace, setWorkspace] = useState(workspaces[0] ?? 'w1');
  return (
    <SSEProvider url="/events" options={{ persist: 'session', subscribeUrl: '/events/subscribe' }}>
      <header>
        <h1>Datashop live</h1>
        <span>{me.label}</span> <Connection /> <a href="/auth/logout">sign out</a>
        {workspaces.length > 1 && (
          <select value={workspace} onChange={(e) => setWorkspace(e.target.value)}>
            {workspaces.map((w) => <option key={w}>{w}</option>)}
          </select>
        )}
      </header>
      <main>
        <Logs workspace={workspace} />
        <aside>
          <MetricsPanel workspace={workspace} />
          <Alerts user={me.user ?? ''} />
          <Probe />
        </aside>
        <Dashboards />
      </main>
    </SSEProvider>
  );
}

function SignIn({ me }: { me: Me }) {
  return (
    <main className="signin">
      <h1>Datashop live: sign in as a demo user</h1>
      <p>The demo auth service answers nginx's <code>auth_request</code>: the user and the channels they
        may read come from it, never from the page.</p>
      <ul>{me.users.map((u) => <li key={u.id}><a href={`/auth/login?user=${u.id}`}>{u.label}</a></li>)}</ul>
    </main>
  );
}

async function start() {
  const me: Me = await (await fetch('/auth/whoami', { credentials: 'same-origin' })).json();
  const root = createRoot(document.getElementById('root')!);
  root.render(<StrictMode>{me.user ? <App me={me} /> : <SignIn me={me} />}</StrictMode>);
}

void start();
