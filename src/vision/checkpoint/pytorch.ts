/**
 * Reads state dicts saved by `torch.save` (zip format, torch >= 1.6), and the parameters of TorchScript
 * archives (`torch.jit.save`, same zip layout, module tree in data.pkl). The pickle in `<top>/data.pkl`
 * is parsed with `pickleparser`; torch's classes are replaced by inert descriptions through its
 * name-resolver hook (no code from the file is ever run), and storages come through its
 * persistent-id hook as references to the zip entries `<top>/data/<key>`, read only when a tensor is.
 */
import { NameRegistry, Parser } from "pickleparser";
import { RegionVqaError } from "../../common/errors.js";
import {
  DTYPE_BYTES,
  decodeToFloat32,
  missingKey,
  type StateDict,
  type StoredDType,
  type TensorInfo,
} from "./state-dict.js";
import { ZipFile, type ZipEntry } from "./zip-file.js";

const STORAGE_DTYPES: Record<string, StoredDType> = {
  FloatStorage: "F32",
  HalfStorage: "F16",
  BFloat16Storage: "BF16",
  DoubleStorage: "F64",
  LongStorage: "I64",
  IntStorage: "I32",
  ShortStorage: "I16",
  CharStorage: "I8",
  ByteStorage: "U8",
  BoolStorage: "BOOL",
};

/**
 * Pickled storage types (e.g. `torch.HalfStorage`) unpickle to these placeholder functions
 * (pickleparser needs a callable for a global); the map gives their element type.
 */
const storageTypeDtypes = new Map<unknown, StoredDType>();

/** A storage: one zip entry of `numel` elements of `dtype`. */
class StorageRef {
  constructor(
    readonly key: string,
    readonly dtype: StoredDType,
    readonly numel: number,
  ) {}
}

/** A tensor view onto a storage (what `torch._utils._rebuild_tensor_v2` describes). */
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly storageOffset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}

function isContiguous(shape: number[], stride: number[]): boolean {
  let expected = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expected) return false;
    expected *= shape[i];
  }
  return true;
}

class TorchNames extends NameRegistry {
  constructor() {
    super();
    for (const [name, dtype] of Object.entries(STORAGE_DTYPES)) {
      const storageType = () => {
        throw new Error(`torch.${name} cannot be called`);
      };
      storageTypeDtypes.set(storageType, dtype);
      this.register("torch", name, storageType);
    }
    this.register("collections", "OrderedDict", () => new Map());
    const rebuildTensor = (storage: unknown, offset: number, size: number[], stride: number[]) => {
      if (!(storage instanceof StorageRef)) throw new Error("tensor without a storage");
      return new TensorRef(storage, Number(offset), size.map(Number), stride.map(Number));
    };
    this.register("torch._utils", "_rebuild_tensor_v2", rebuildTensor);
    this.register("torch._utils", "_rebuild_tensor", rebuildTensor);
    // nn.Parameter objects saved directly: keep the tensor.
    this.register("torch._utils", "_rebuild_parameter", (data: unknown) => data);
    this.register("torch._utils", "_rebuild_parameter_with_state", (data: unknown) => data);
  }
}

function invalid(file: string, why: string, details: Record<string, unknown> = {}): RegionVqaError {
  return new RegionVqaError("checkpoint_invalid", `${file}: ${why}`, { path: file, ...details });
}

/**
 * A TorchScript archive (`torch.jit.save`, e.g. OpenAI's CLIP `.pt` files) pickles the module tree
 * instead of a dict: each module is an object of a `__torch__.*` class (pickleparser makes an inert
 * placeholder object for it) whose attributes are its tensors, its child modules and plain values.
 * Joining attribute names with "." gives the state-dict keys.
 */
function isScriptModule(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null) return false;
  const moduleName = (value as { __module__?: unknown }).__module__;
  return typeof moduleName === "string" && moduleName.startsWith("__torch__");
}

function flattenScriptModule(root: Record<string, unknown>): Map<string, unknown> {
  const out = new Map<string, unknown>();
  const seen = new Set<unknown>();
  const walk = (obj: Record<string, unknown>, prefix: string) => {
    if (seen.has(obj)) return;
    seen.add(obj);
    for (const [name, value] of Object.entries(obj)) {
      if (value instanceof TensorRef) {
        if (!out.has(prefix + name)) out.set(prefix + name, value);
      } else if (isScriptModule(value)) walk(value, `${prefix}${name}.`);
    }
  };
  walk(root, "");
  return out;
}

/** Find the tensor dictionary: the top object, or one nested under "state_dict" / "model". */
function findTensorDict(root: unknown): Map<string, unknown> | undefined {
  if (isScriptModule(root)) {
    const flat = flattenScriptModule(root);
    return flat.size > 0 ? flat : undefined;
  }
  if (!(root instanceof Map)) return undefined;
  const hasTensors = (m: Map<unknown, unknown>) => [...m.values()].some((v) => v instanceof TensorRef);
  if (hasTensors(root)) return root as Map<string, unknown>;
  for (const nested of ["state_dict", "model", "module"]) {
    const inner = root.get(nested);
    if (inner instanceof Map && hasTensors(inner)) return inner as Map<string, unknown>;
  }
  return undefined;
}

export function openPytorchZip(file: string): StateDict {
  const zip = ZipFile.open(file);
  try {
    return readPytorchZip(zip);
  } catch (err) {
    zip.close();
    throw err;
  }
}

function readPytorchZip(zip: ZipFile): StateDict {
  const file = zip.path;
  // torch.save names the top folder after the file (or "archive"); find it through data.pkl.
  const pickles = [...zip.entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (pickles.length !== 1) {
    throw invalid(file, "zip archive is not a torch.save checkpoint (no <folder>/data.pkl)");
  }
  const top = pickles[0].slice(0, -"data.pkl".length);
  const pickle = zip.readEntry(zip.entries.get(pickles[0]) as ZipEntry);

  const storages = new Map<string, StorageRef>();
  const parser = new Parser({
    nameResolver: new TorchNames(),
    unpicklingTypeOfDictionary: "Map",
    persistentResolver: {
      resolve(pid: unknown) {
        // ("storage", storage_type, key, location, numel)
        const dtype = Array.isArray(pid) ? storageTypeDtypes.get(pid[1]) : undefined;
        if (!Array.isArray(pid) || pid[0] !== "storage" || dtype === undefined) {
          const typeName = Array.isArray(pid) ? String((pid[1] as { name?: string })?.name ?? pid[1]) : "?";
          throw new Error(`unsupported storage (${typeName})`);
        }
        const key = String(pid[2]);
        let ref = storages.get(key);
        if (!ref) storages.set(key, (ref = new StorageRef(key, dtype, Number(pid[4]))));
        return ref;
      },
    },
  });
  let root: unknown;
  try {
    root = parser.parse(pickle);
  } catch (err) {
    throw invalid(file, `cannot read the checkpoint's pickle (${(err as Error).message})`);
  }
  const dict = findTensorDict(root);
  if (!dict) throw invalid(file, "checkpoint holds no state dict of tensors");

  const tensors = new Map<string, TensorRef>();
  for (const [rawKey, value] of dict) {
    if (!(value instanceof TensorRef)) continue;
    const key = String(rawKey).startsWith("module.")
      ? String(rawKey).slice("module.".length)
      : String(rawKey);
    tensors.set(key, value);
  }
  for (const ref of storages.values()) {
    const entry = zip.entries.get(`${top}data/${ref.key}`);
    if (!entry) throw invalid(file, `storage data/${ref.key} is missing from the archive`);
    if (entry.size < ref.numel * DTYPE_BYTES[ref.dtype]) {
      throw invalid(file, `storage data/${ref.key} is shorter than its ${ref.numel} elements`);
    }
  }

  const get = (key: string) => {
    const t = tensors.get(key);
    if (!t) throw missingKey(key);
    return t;
  };

  return {
    keys: () => [...tensors.keys()],
    has: (key) => tensors.has(key),
    info: (key): TensorInfo => {
      const t = get(key);
      return { dtype: t.storage.dtype, shape: [...t.shape] };
    },
    read: (key) => readTensor(zip, top, key, get(key)),
    close: () => zip.close(),
    source: { path: file, format: isScriptModule(root) ? "torchscript" : "pytorch-zip" },
    locate: (key) => ({ kind: "zip-entry", entry: `${top}data/${get(key).storage.key}` }),
  };
}

function readTensor(zip: ZipFile, top: string, key: string, t: TensorRef): Float32Array {
  const { dtype, numel } = t.storage;
  const itemBytes = DTYPE_BYTES[dtype];
  const count = t.shape.reduce((a, b) => a * b, 1);
  if (count === 0) return new Float32Array(0);
  // The span of storage elements the view touches.
  let last = t.storageOffset;
  for (let i = 0; i < t.shape.length; i++) {
    if (t.stride[i] < 0) throw invalid(zip.path, `tensor ${key} has a negative stride`);
    last += (t.shape[i] - 1) * t.stride[i];
  }
  if (t.storageOffset < 0 || last >= numel) {
    throw invalid(zip.path, `tensor ${key} reaches outside its storage`, { key });
  }
  const entry = zip.entries.get(`${top}data/${t.storage.key}`) as ZipEntry;
  if (isContiguous(t.shape, t.stride)) {
    return decodeToFloat32(
      dtype,
      zip.readEntry(entry, t.storageOffset * itemBytes, count * itemBytes),
      count,
    );
  }
  // Non-contiguous view (e.g. a transposed tensor): read the span and gather in row-major order.
  const spanCount = last - t.storageOffset + 1;
  const span = decodeToFloat32(
    dtype,
    zip.readEntry(entry, t.storageOffset * itemBytes, spanCount * itemBytes),
    spanCount,
  );
  const out = new Float32Array(count);
  const index = new Array<number>(t.shape.length).fill(0);
  for (let i = 0; i < count; i++) {
    let src = 0;
    for (let d = 0; d < index.length; d++) src += index[d] * t.stride[d];
    out[i] = span[src];
    for (let d = index.length - 1; d >= 0; d--) {
      if (++index[d] < t.shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}
