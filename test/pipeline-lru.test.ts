import { describe, expect, it } from "vitest";
import { ByteLruCache } from "../src/common/lru-cache.js";

describe("ByteLruCache", () => {
  const sized = () => new ByteLruCache<Float32Array>(100, (v) => v.byteLength);

  it("evicts least recently used entries once the byte bound is exceeded", () => {
    const c = sized();
    c.set("a", new Float32Array(10)); // 40 B
    c.set("b", new Float32Array(10)); // 80 B
    expect(c.get("a")).toBeDefined(); // a is now most recent
    c.set("c", new Float32Array(10)); // 120 B -> evict b
    expect(c.get("b")).toBeUndefined();
    expect(c.get("a")).toBeDefined();
    expect(c.get("c")).toBeDefined();
    const s = c.stats();
    expect(s.bytes).toBe(80);
    expect(s.evictions).toBe(1);
    expect(s.hits).toBe(3);
    expect(s.misses).toBe(1);
  });

  it("does not keep a value larger than the whole bound, and replaces keys in place", () => {
    const c = sized();
    c.set("big", new Float32Array(30));
    expect(c.get("big")).toBeUndefined();
    c.set("x", new Float32Array(5));
    c.set("x", new Float32Array(20));
    expect(c.stats()).toMatchObject({ entries: 1, bytes: 80 });
  });
});
