/**
 * A least-recently-used cache bounded by the total byte size of its values. Used for encoder and
 * projector outputs and the segmenter's image embeddings, keyed by a content hash, so a repeated
 * image (+ region) never re-runs an encoder.
 */
export interface ByteLruStats {
  entries: number;
  bytes: number;
  maxBytes: number;
  hits: number;
  misses: number;
  evictions: number;
}

export class ByteLruCache<V> {
  private readonly map = new Map<string, { value: V; bytes: number }>();
  private totalBytes = 0;
  private hits = 0;
  private misses = 0;
  private evictions = 0;

  constructor(
    readonly maxBytes: number,
    private readonly sizeOf: (value: V) => number,
    /** Called when a value leaves the cache (evicted, replaced or cleared), e.g. to free what it holds. */
    private readonly onRemove?: (key: string, value: V) => void,
  ) {}

  get(key: string): V | undefined {
    const entry = this.map.get(key);
    if (!entry) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    // Re-insert to mark as most recently used (Map keeps insertion order).
    this.map.delete(key);
    this.map.set(key, entry);
    return entry.value;
  }

  /** Whether `key` is cached, without counting a lookup or refreshing its recency. */
  has(key: string): boolean {
    return this.map.has(key);
  }

  set(key: string, value: V): void {
    const bytes = this.sizeOf(value);
    const old = this.map.get(key);
    if (old) {
      this.totalBytes -= old.bytes;
      this.map.delete(key);
      if (old.value !== value) this.onRemove?.(key, old.value);
    }
    if (bytes > this.maxBytes) {
      // never cache what alone exceeds the bound
      this.onRemove?.(key, value);
      return;
    }
    this.map.set(key, { value, bytes });
    this.totalBytes += bytes;
    for (const [k, e] of this.map) {
      if (this.totalBytes <= this.maxBytes) break;
      this.map.delete(k);
      this.totalBytes -= e.bytes;
      this.evictions++;
      this.onRemove?.(k, e.value);
    }
  }

  clear(): void {
    const removed = [...this.map];
    this.map.clear();
    this.totalBytes = 0;
    if (this.onRemove) for (const [k, e] of removed) this.onRemove(k, e.value);
  }

  stats(): ByteLruStats {
    return {
      entries: this.map.size,
      bytes: this.totalBytes,
      maxBytes: this.maxBytes,
      hits: this.hits,
      misses: this.misses,
      evictions: this.evictions,
    };
  }
}
