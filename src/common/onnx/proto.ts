/**
 * The `onnx-proto` package is CommonJS whose module object holds the `onnx` namespace; this file is
 * the one place that bridges it into ESM so other files import `onnx` (values and types) from here.
 */
import onnxProtoPackage from "onnx-proto";
import type { onnx as OnnxNamespace } from "onnx-proto";

export const onnx: typeof OnnxNamespace = (onnxProtoPackage as unknown as { onnx: typeof OnnxNamespace })
  .onnx;
// Re-export the namespace's types under the same name.
// eslint-disable-next-line @typescript-eslint/no-namespace
export declare namespace onnx {
  type IModelProto = OnnxNamespace.IModelProto;
  type IGraphProto = OnnxNamespace.IGraphProto;
  type INodeProto = OnnxNamespace.INodeProto;
  type ITensorProto = OnnxNamespace.ITensorProto;
  type IValueInfoProto = OnnxNamespace.IValueInfoProto;
  type IAttributeProto = OnnxNamespace.IAttributeProto;
}
