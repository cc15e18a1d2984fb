/**
 * `persist: 'session'`: one sessionStorage record per client (storageKey)
 * holding the last event id and the persisted views' states, written together
 * so that they always agree: a reload resumes from that id and the views
 * continue from their states, with nothing lost or applied twice.
 */

export interface StoredRecord {
  /** The client's last event id. */
  i?: string | undefined;
  /** View states by view key: data and last event id. */
  v: Record<string, { d: unknown; i?: string | undefined }>;
}

export interface Storage {
  /** The record (read once, lazily; empty where sessionStorage is missing or unusable). */
  get(): StoredRecord;
  /** Writes the record once the current task's events are applied. */
  save(): void;
  /** Writes the record now if a write is pending. */
  flush(): void;
}

export function createStorage(key: string): Storage {
  let rec: StoredRecord | undefined;
  let pending = false;
  const flush = (): void => {
    if (!pending) return;
    pending = false;
    try {
      sessionStorage.setItem(key, JSON.stringify(rec));
    } catch {
      // No storage (SSR, privacy mode, quota): nothing is kept.
    }
  };
  return {
    get() {
      if (!rec) {
        rec = { v: {} };
        try {
          const s = sessionStorage.getItem(key);
          if (s) rec = { ...rec, ...(JSON.parse(s) as StoredRecord) };
        } catch {
          // As above.
        }
      }
      return rec;
    },
    save() {
      if (!pending) {
        pending = true;
        void Promise.resolve().then(flush);
      }
    },
    flush,
  };
}
