/**
 * A small typed builder for ONNX graphs. It keeps weights as typed arrays outside the protobuf
 * objects, so multi-gigabyte models never pass through one protobuf buffer: `writeOnnxModel` places
 * large weights in an external-data file and only the graph structure is protobuf-encoded.
 */
import { float32ArrayToFloat16 } from "./half.js";
import { onnx } from "./proto.js";

/** Opset 17 is the first with LayerNormalization; IR version 8 is the one that goes with it. */
export const DEFAULT_OPSET = 17;
export const DEFAULT_IR_VERSION = 8;

export type ElementType = "float32" | "float16" | "int64" | "int32" | "bool";
export type WeightPrecision = "fp32" | "fp16";
/** A dimension: a fixed size, or a symbolic name such as "batch" for dynamic sizes. */
export type Dim = number | string;

const DATA_TYPE: Record<ElementType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  float16: onnx.TensorProto.DataType.FLOAT16,
  int64: onnx.TensorProto.DataType.INT64,
  int32: onnx.TensorProto.DataType.INT32,
  bool: onnx.TensorProto.DataType.BOOL,
};

export function onnxDataType(type: ElementType): number {
  return DATA_TYPE[type];
}

/** A graph constant whose bytes live outside the protobuf objects until the model is written. */
export interface InitializerData {
  name: string;
  type: ElementType;
  dims: number[];
  /** Little-endian raw bytes in ONNX `raw_data` layout. */
  bytes: Uint8Array;
}

/** Force an attribute to be encoded as FLOAT even when its value is a whole number. */
export class FloatAttr {
  constructor(readonly value: number) {}
}
export const floatAttr = (value: number): FloatAttr => new FloatAttr(value);

/**
 * Attribute values: integers -> INT, other numbers -> FLOAT (use `floatAttr` for whole-number
 * floats), integer arrays -> INTS, `FloatAttr[]` -> FLOATS, strings -> STRING.
 */
export type AttrValue = number | FloatAttr | number[] | FloatAttr[] | string;

export interface NodeOptions {
  /** Node name; defaults to a unique name derived from the op type. */
  name?: string;
  /** Output names; defaults to one fresh name. */
  outputs?: string[];
  domain?: string;
}

export interface OnnxModel {
  /** Model proto whose graph initializers carry no data yet (see `initializers`). */
  proto: onnx.IModelProto;
  initializers: InitializerData[];
}

function toBytes(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

function tensorType(type: ElementType, shape: readonly Dim[]): onnx.IValueInfoProto["type"] {
  return {
    tensorType: {
      elemType: DATA_TYPE[type],
      shape: {
        dim: shape.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })),
      },
    },
  };
}

function attribute(name: string, value: AttrValue): onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (value instanceof FloatAttr) return { name, type: T.FLOAT, f: value.value };
  if (typeof value === "string") return { name, type: T.STRING, s: new TextEncoder().encode(value) };
  if (typeof value === "number") {
    return Number.isInteger(value) ? { name, type: T.INT, i: value } : { name, type: T.FLOAT, f: value };
  }
  if (value.length > 0 && value[0] instanceof FloatAttr) {
    return { name, type: T.FLOATS, floats: (value as FloatAttr[]).map((v) => v.value) };
  }
  return { name, type: T.INTS, ints: value as number[] };
}

export class OnnxGraphBuilder {
  private readonly nodes: onnx.INodeProto[] = [];
  private readonly inputs: onnx.IValueInfoProto[] = [];
  private readonly outputs: onnx.IValueInfoProto[] = [];
  private readonly valueInfos: onnx.IValueInfoProto[] = [];
  private readonly initializers: InitializerData[] = [];
  private readonly usedNames = new Set<string>();
  private readonly int64Constants = new Map<string, string>();
  private counter = 0;

  constructor(
    readonly options: { graphName?: string; opset?: number; producerName?: string; docString?: string } = {},
  ) {}

  /** A name not used yet in this graph, starting with `prefix`. */
  uniqueName(prefix: string): string {
    let name = prefix;
    while (this.usedNames.has(name)) name = `${prefix}_${++this.counter}`;
    this.usedNames.add(name);
    return name;
  }

  private claim(name: string): string {
    if (this.usedNames.has(name)) throw new Error(`ONNX graph: name "${name}" is already used`);
    this.usedNames.add(name);
    return name;
  }

  /** Declare a graph input; returns its name. */
  input(name: string, type: ElementType, shape: readonly Dim[]): string {
    this.inputs.push({ name: this.claim(name), type: tensorType(type, shape) });
    return name;
  }

  /**
   * Declare a graph output. `value` is an existing value; when its name differs from `name` an
   * Identity node gives it the output name.
   */
  output(name: string, type: ElementType, shape: readonly Dim[], value: string = name): string {
    if (value !== name) this.node("Identity", [value], {}, { outputs: [name], name: `${name}_identity` });
    this.outputs.push({ name, type: tensorType(type, shape) });
    return name;
  }

  /** Record a known type/shape for an intermediate value (optional; helps tools and debugging). */
  valueInfo(name: string, type: ElementType, shape: readonly Dim[]): void {
    this.valueInfos.push({ name, type: tensorType(type, shape) });
  }

  /**
   * Add a float weight. With precision "fp16" it is stored as a FLOAT16 initializer and a Cast to
   * float32 is inserted, so the graph computes in float32 either way (ONNX Runtime's CPU provider
   * folds the Cast at load time; the file is half the size). Returns the name of the float32 value
   * to consume.
   */
  initializer(
    name: string,
    data: Float32Array,
    dims: readonly number[],
    options: { precision?: WeightPrecision } = {},
  ): string {
    const count = dims.reduce((a, b) => a * b, 1);
    if (count !== data.length) {
      throw new Error(`ONNX initializer ${name}: ${data.length} values for dims [${dims.join(", ")}]`);
    }
    if ((options.precision ?? "fp32") === "fp32") {
      this.initializers.push({
        name: this.claim(name),
        type: "float32",
        dims: [...dims],
        bytes: toBytes(data),
      });
      return name;
    }
    const half = float32ArrayToFloat16(data);
    for (let i = 0; i < half.length; i++) {
      // A finite value that became Inf would silently break the model.
      if ((half[i] & 0x7fff) === 0x7c00 && Number.isFinite(data[i])) {
        throw new RangeError(
          `ONNX initializer ${name}: value ${data[i]} is outside the float16 range (use fp32)`,
        );
      }
    }
    const storedName = this.claim(`${name}_fp16`);
    this.initializers.push({ name: storedName, type: "float16", dims: [...dims], bytes: toBytes(half) });
    this.node("Cast", [storedName], { to: onnx.TensorProto.DataType.FLOAT }, { outputs: [this.claim(name)] });
    return name;
  }

  /** Add an initializer of any element type from raw little-endian bytes. */
  rawInitializer(name: string, type: ElementType, dims: readonly number[], bytes: Uint8Array): string {
    this.initializers.push({ name: this.claim(name), type, dims: [...dims], bytes });
    return name;
  }

  /** A 1-D int64 constant (shapes, axes); identical values share one initializer. */
  int64(values: readonly number[], name?: string): string {
    const key = values.join(",");
    const existing = name === undefined ? this.int64Constants.get(key) : undefined;
    if (existing) return existing;
    const data = BigInt64Array.from(values, (v) => BigInt(v));
    const constName =
      name ?? this.uniqueName(`const_i64_${values.map((v) => (v < 0 ? `m${-v}` : v)).join("_")}`);
    if (name !== undefined) this.claim(name);
    this.initializers.push({ name: constName, type: "int64", dims: [values.length], bytes: toBytes(data) });
    if (name === undefined) this.int64Constants.set(key, constName);
    return constName;
  }

  /** A float32 scalar constant (dims []). */
  scalar(value: number, name?: string): string {
    const constName = name === undefined ? this.uniqueName("const_f32") : this.claim(name);
    this.initializers.push({
      name: constName,
      type: "float32",
      dims: [],
      bytes: toBytes(Float32Array.of(value)),
    });
    return constName;
  }

  /** Add a node; returns the name of its (first) output. */
  node(
    op: string,
    inputs: readonly string[],
    attrs: Record<string, AttrValue> = {},
    options: NodeOptions = {},
  ): string {
    return this.nodeOutputs(op, inputs, attrs, options)[0];
  }

  /** Add a node; returns all output names (use `options.outputs` to name several). */
  nodeOutputs(
    op: string,
    inputs: readonly string[],
    attrs: Record<string, AttrValue> = {},
    options: NodeOptions = {},
  ): string[] {
    const outputs = options.outputs ?? [this.uniqueName(`${op.toLowerCase()}_out`)];
    for (const o of outputs) this.usedNames.add(o);
    this.nodes.push({
      opType: op,
      domain: options.domain ?? "",
      name: options.name ?? this.uniqueName(`${op}_node`),
      input: [...inputs],
      output: outputs,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
    return outputs;
  }

  /** Finish: the model proto (initializers without data) plus the weights. */
  toModel(meta: { docString?: string; metadata?: Record<string, string> } = {}): OnnxModel {
    const initializerProtos: onnx.ITensorProto[] = this.initializers.map((init) => ({
      name: init.name,
      dataType: DATA_TYPE[init.type],
      dims: init.dims,
    }));
    const proto: onnx.IModelProto = {
      irVersion: DEFAULT_IR_VERSION,
      opsetImport: [{ domain: "", version: this.options.opset ?? DEFAULT_OPSET }],
      producerName: this.options.producerName ?? "region-vqa",
      docString: meta.docString ?? this.options.docString ?? "",
      metadataProps: Object.entries(meta.metadata ?? {}).map(([key, value]) => ({ key, value })),
      graph: {
        name: this.options.graphName ?? "graph",
        node: this.nodes,
        input: this.inputs,
        output: this.outputs,
        valueInfo: this.valueInfos,
        initializer: initializerProtos,
      },
    };
    return { proto, initializers: [...this.initializers] };
  }
}
