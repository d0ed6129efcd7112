/** Checkpoint readers: PyTorch zip (torch.save) and safetensors, behind one lazy `StateDict` view. */
export { openStateDict } from "./open.js";
export { openPytorchZip } from "./pytorch.js";
export { looksLikeSafetensors, openSafetensors } from "./safetensors.js";
export {
  DTYPE_BYTES,
  inMemoryStateDict,
  renameKeys,
  type StateDict,
  type StoredDType,
  type TensorInfo,
  type TensorLocation,
} from "./state-dict.js";
export {
  LOCAL_HEADER_BYTES,
  localDataOffset,
  parseCentralDirectory,
  parseEndOfCentralDirectory,
  parseZip64EndRecord,
  ZIP64_END_RECORD_BYTES,
  ZIP_TAIL_BYTES,
  ZipFile,
  type CentralDirectoryLocation,
  type ZipEntry,
} from "./zip-file.js";
