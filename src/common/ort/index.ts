/** Running ONNX models: one session type (worker thread or calling thread), one options builder. */
export { OnnxSession, type OnnxSessionLogger, type OnnxSessionOptions } from "./onnx-session.js";
export {
  cudaUnavailableReason,
  planAutoDevice,
  type AutoDevicePlan,
  ORT_DEVICES,
  type OrtDevice,
  type OrtProvider,
  type WireTensor,
} from "./session.js";
