/**
 * Writes archives in the layout of `torch.jit.save` (what OpenAI's CLIP `.pt` files are), without
 * PyTorch: a stored zip holding `<top>/data.pkl` (the module tree: each module an object of a
 * `__torch__.*` class, built by NEWOBJ from an empty tuple and given a dict of its attributes by
 * BUILD; tensors as `torch._utils._rebuild_tensor_v2` over persistent-id storages), `<top>/data/<key>`
 * (raw storages), `<top>/constants.pkl`, `<top>/code/...` and `<top>/version`. The pickle opcodes
 * follow torch's own pickler (protocol 2).
 */
import fs from "node:fs";
import zlib from "node:zlib";

export interface ArchiveTensor {
  dtype: "F16" | "F32";
  shape: number[];
  /** Little-endian element bytes. */
  bytes: Uint8Array;
}

/** Attribute values a module may hold besides tensors and child modules. */
export type PlainAttribute = boolean | number | null | { float: number };

class PickleWriter {
  private readonly parts: Buffer[] = [];
  op(code: number | string): this {
    this.parts.push(typeof code === "number" ? Buffer.from([code]) : Buffer.from(code, "latin1"));
    return this;
  }
  global(module: string, name: string): this {
    return this.op(`c${module}\n${name}\n`);
  }
  str(s: string): this {
    const b = Buffer.from(s, "utf8");
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    this.parts.push(Buffer.from("X"), len, b);
    return this;
  }
  int(n: number): this {
    const b = Buffer.alloc(4);
    b.writeInt32LE(n);
    this.parts.push(Buffer.from("J"), b);
    return this;
  }
  float(x: number): this {
    const b = Buffer.alloc(8);
    b.writeDoubleBE(x);
    this.parts.push(Buffer.from("G"), b);
    return this;
  }
  bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}

interface ModuleNode {
  className: string;
  /** In insertion order, as torch writes a module's slots. */
  slots: Map<string, ModuleNode | { tensor: string } | PlainAttribute>;
}

export interface TorchScriptSpec {
  /** Flat state-dict keys -> tensors; `.`-separated prefixes become modules. */
  tensors: Map<string, ArchiveTensor>;
  /** Qualified class of a module from its path ("" = root). */
  classOf?: (modulePath: string) => string;
  /** Extra plain attributes per module path (e.g. `training`, `num_heads`). */
  attributes?: (modulePath: string) => Record<string, PlainAttribute>;
  /** Pairs of keys whose tensors share one storage (the second placed after the first). */
  shareStorage?: Array<[string, string]>;
  /** Top folder name inside the zip. */
  top?: string;
}

/** Build the archive's bytes. */
export function torchScriptArchive(spec: TorchScriptSpec): Buffer {
  const classOf =
    spec.classOf ?? ((p: string) => (p === "" ? "__torch__.model.Model" : "__torch__.torch.nn.Module"));
  const attributes = spec.attributes ?? (() => ({ training: false }));
  const newNode = (p: string): ModuleNode => {
    const node: ModuleNode = { className: classOf(p), slots: new Map() };
    for (const [k, v] of Object.entries(attributes(p))) node.slots.set(k, v);
    return node;
  };
  const root = newNode("");
  for (const key of spec.tensors.keys()) {
    const parts = key.split(".");
    let node = root;
    for (let i = 0; i < parts.length - 1; i++) {
      let child = node.slots.get(parts[i]);
      if (!child || typeof child !== "object" || !("slots" in child)) {
        child = newNode(parts.slice(0, i + 1).join("."));
        node.slots.set(parts[i], child);
      }
      node = child;
    }
    node.slots.set(parts[parts.length - 1], { tensor: key });
  }

  // Storages: one per tensor, except the shared pairs.
  const storageOf = new Map<string, { key: string; offset: number }>();
  const storages = new Map<string, Buffer[]>();
  let next = 0;
  const shared = new Map((spec.shareStorage ?? []).map(([a, b]) => [b, a]));
  for (const [key, t] of spec.tensors) {
    const host = shared.get(key);
    if (host !== undefined && storageOf.has(host)) {
      const s = storageOf.get(host)!;
      const chunks = storages.get(s.key)!;
      const itemBytes = t.dtype === "F16" ? 2 : 4;
      const offset = chunks.reduce((a, c) => a + c.length, 0) / itemBytes;
      chunks.push(Buffer.from(t.bytes));
      storageOf.set(key, { key: s.key, offset });
    } else {
      const k = String(next++);
      storages.set(k, [Buffer.from(t.bytes)]);
      storageOf.set(key, { key: k, offset: 0 });
    }
  }

  const w = new PickleWriter().op(0x80).op(2);
  const writeTensor = (key: string) => {
    const t = spec.tensors.get(key)!;
    const { key: storage, offset } = storageOf.get(key)!;
    const numel = storages.get(storage)!.reduce((a, c) => a + c.length, 0) / (t.dtype === "F16" ? 2 : 4);
    const strides = t.shape.map((_, i) => t.shape.slice(i + 1).reduce((a, b) => a * b, 1));
    w.global("torch._utils", "_rebuild_tensor_v2").op("(");
    w.op("(")
      .str("storage")
      .global("torch", t.dtype === "F16" ? "HalfStorage" : "FloatStorage");
    w.str(storage).str("cpu").int(numel).op("t").op("Q");
    w.int(offset);
    w.op("(");
    for (const d of t.shape) w.int(d);
    w.op("t").op("(");
    for (const s of strides) w.int(s);
    w.op("t").op(0x89); // requires_grad False
    w.global("collections", "OrderedDict").op(")").op("R");
    w.op("t").op("R");
  };
  const writeModule = (node: ModuleNode) => {
    const dot = node.className.lastIndexOf(".");
    w.global(node.className.slice(0, dot), node.className.slice(dot + 1))
      .op(")")
      .op(0x81);
    w.op("}").op("(");
    for (const [name, value] of node.slots) {
      w.str(name);
      if (value === null) w.op("N");
      else if (typeof value === "boolean") w.op(value ? 0x88 : 0x89);
      else if (typeof value === "number") w.int(value);
      else if ("float" in value) w.float(value.float);
      else if ("tensor" in value) writeTensor(value.tensor);
      else writeModule(value);
    }
    w.op("u").op("b");
  };
  writeModule(root);
  w.op(".");

  const top = spec.top ?? "archive";
  const constants = new PickleWriter().op(0x80).op(2).op(")").op(".").bytes();
  const entries: Array<[string, Buffer]> = [
    [`${top}/data.pkl`, w.bytes()],
    [`${top}/code/__torch__/model.py`, Buffer.from("class Model(Module):\n  __parameters__ = []\n")],
    [`${top}/constants.pkl`, constants],
    ...[...storages].map(([k, chunks]): [string, Buffer] => [`${top}/data/${k}`, Buffer.concat(chunks)]),
    [`${top}/version`, Buffer.from("3\n")],
  ];
  return storedZip(entries);
}

/** A zip of stored (uncompressed) entries, as torch writes them. */
function storedZip(entries: Array<[string, Buffer]>): Buffer {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const [nameText, data] of entries) {
    const name = Buffer.from(nameText, "utf8");
    const crc = zlib.crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(name.length, 26);
    parts.push(local, name, data);
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(0x02014b50, 0);
    cd.writeUInt16LE(20, 4);
    cd.writeUInt16LE(20, 6);
    cd.writeUInt32LE(crc, 16);
    cd.writeUInt32LE(data.length, 20);
    cd.writeUInt32LE(data.length, 24);
    cd.writeUInt16LE(name.length, 28);
    cd.writeUInt32LE(offset, 42);
    central.push(cd, name);
    offset += 30 + name.length + data.length;
  }
  const cdBytes = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cdBytes.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, cdBytes, end]);
}

export function writeTorchScriptArchive(file: string, spec: TorchScriptSpec): void {
  fs.writeFileSync(file, torchScriptArchive(spec));
}
