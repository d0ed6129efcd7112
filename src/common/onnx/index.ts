/** ONNX graph-building and model-writing helpers shared by the model converters. */
export {
  DEFAULT_IR_VERSION,
  DEFAULT_OPSET,
  FloatAttr,
  OnnxGraphBuilder,
  floatAttr,
  onnxDataType,
  type AttrValue,
  type Dim,
  type ElementType,
  type InitializerData,
  type NodeOptions,
  type OnnxModel,
  type WeightPrecision,
} from "./graph-builder.js";
export {
  encodeOnnxModel,
  writeOnnxModel,
  type WriteOnnxOptions,
  type WrittenOnnxFile,
} from "./write-model.js";
export {
  bfloat16ArrayToFloat32,
  float16ArrayToFloat32,
  float16BitsToFloat32,
  float32ArrayToFloat16,
  float32ToFloat16Bits,
} from "./half.js";
export { onnx } from "./proto.js";
