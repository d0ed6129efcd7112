/** Checkpoint readers: PyTorch zip (torch.save) and safetensors, behind one lazy `StateDict` view. */
export { openStateDict } from "./open.js";
export { openPytorchZip } from "./pytorch.js";
export { openSafetensors } from "./safetensors.js";
export {
  DTYPE_BYTES,
  inMemoryStateDict,
  renameKeys,
  type StateDict,
  type StoredDType,
  type TensorInfo,
} from "./state-dict.js";
export { ZipFile, type ZipEntry } from "./zip-file.js";
