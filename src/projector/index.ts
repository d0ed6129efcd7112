/** LLaVA-1.5 projector: weights from mmproj GGUF / LLaVA checkpoints, ONNX graph, runtime, model folders. */
export {
  checkProjectorWidths,
  erf,
  makeProjectorWeights,
  projectReference,
  type ProjectorWeights,
} from "./weights.js";
export { MMPROJ_TENSORS, readMmprojProjector, writeMmprojGguf } from "./mmproj.js";
export { loadProjectorWeights, readCheckpointProjector } from "./load.js";
export { appendProjectorNodes, buildProjectorModel, PROJECTOR_INPUT, PROJECTOR_OUTPUT } from "./graph.js";
export {
  LlavaProjector,
  readProjectorManifest,
  type ProjectorConfig,
  type ProjectorDevice,
  type ProjectorLoadOptions,
} from "./projector.js";

export { PROJECTOR_ONNX_FILE, writeProjectorFolder } from "./folder.js";
export { convertFusedVisionProjector, fusedProjectorExtension, type FusedProjectorConfig } from "./fused.js";
