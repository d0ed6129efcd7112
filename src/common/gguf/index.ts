export * from "./float16.js";
export * from "./writer.js";
export * from "./reader.js";
