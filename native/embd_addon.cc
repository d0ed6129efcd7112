// Companion addon for node-llama-cpp: decodes float embedding rows (e.g. projected image features)
// into a llama.cpp context that node-llama-cpp created and owns.
//
// It is deliberately NOT linked to libllama: node-llama-cpp may have loaded a CPU, CUDA or Vulkan
// build of libllama, and only the already-loaded copy owns the context. So at run time we look the
// loaded library up (dl_iterate_phdr + dlopen(RTLD_NOLOAD) + dlsym) and call through pointers.
//
// The llama_context* lives inside node-llama-cpp's AddonContext C++ object. We reach it by
// napi_unwrap and read it through the class declared in node-llama-cpp's own AddonContext.h, then
// verify the layout against values we can obtain independently before touching the pointer.

#include <dlfcn.h>
#include <link.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "napi.h"
#include "llama.h"
#include "AddonContext.h"
#include "AddonModel.h"

namespace {

struct LlamaApi {
  bool loaded = false;
  std::string libraryPath;
  decltype(&llama_n_ctx) n_ctx = nullptr;
  decltype(&llama_n_batch) n_batch = nullptr;
  decltype(&llama_n_seq_max) n_seq_max = nullptr;
  decltype(&llama_get_model) get_model = nullptr;
  decltype(&llama_model_get_vocab) model_get_vocab = nullptr;
  decltype(&llama_model_n_embd_inp) model_n_embd_inp = nullptr;
  decltype(&llama_vocab_n_tokens) vocab_n_tokens = nullptr;
  decltype(&llama_decode) decode = nullptr;
  decltype(&llama_get_logits_ith) get_logits_ith = nullptr;
  decltype(&llama_get_memory) get_memory = nullptr;
  decltype(&llama_memory_seq_pos_max) memory_seq_pos_max = nullptr;
};

LlamaApi api;

struct Candidate {
  std::vector<std::string> paths;
};

int collectLoadedObject(struct dl_phdr_info* info, size_t, void* data) {
  auto* candidate = static_cast<Candidate*>(data);
  if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0') {
    candidate->paths.emplace_back(info->dlpi_name);
  }
  return 0;
}

template <typename Fn>
bool resolveSymbol(void* handle, const char* name, Fn& out) {
  out = reinterpret_cast<Fn>(dlsym(handle, name));
  return out != nullptr;
}

// Finds the libllama that node-llama-cpp loaded. Returns an error message, empty on success.
// Scans on every call, not just the first: a second llama.cpp build loaded later (node-llama-cpp can
// load its CPU, CUDA and Vulkan builds side by side) must be refused, not silently ignored.
std::string loadLlamaApi() {
  Candidate candidate;
  dl_iterate_phdr(collectLoadedObject, &candidate);

  // Prefer objects named like libllama (not libllama-common); fall back to any object exporting
  // llama_decode (a statically linked addon).
  std::vector<std::string> ordered;
  for (const auto& path : candidate.paths) {
    const auto slash = path.find_last_of('/');
    const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    if (base.rfind("libllama", 0) == 0 && base.rfind("libllama-common", 0) != 0) ordered.push_back(path);
  }
  for (const auto& path : candidate.paths) ordered.push_back(path);

  void* decodeAddress = nullptr;
  for (const auto& path : ordered) {
    void* handle = dlopen(path.c_str(), RTLD_NOLOAD | RTLD_LAZY);
    if (handle == nullptr) continue;
    void* symbol = dlsym(handle, "llama_decode");
    if (symbol == nullptr) {
      dlclose(handle);
      continue;
    }
    if (decodeAddress == nullptr && api.loaded) {
      // Found before: keep it, and go on looking for a different build.
      decodeAddress = reinterpret_cast<void*>(api.decode);
    }
    if (decodeAddress == nullptr) {
      decodeAddress = symbol;
      LlamaApi found;
      found.libraryPath = path;
      bool ok = resolveSymbol(handle, "llama_n_ctx", found.n_ctx) &&
                resolveSymbol(handle, "llama_n_batch", found.n_batch) &&
                resolveSymbol(handle, "llama_n_seq_max", found.n_seq_max) &&
                resolveSymbol(handle, "llama_get_model", found.get_model) &&
                resolveSymbol(handle, "llama_model_get_vocab", found.model_get_vocab) &&
                resolveSymbol(handle, "llama_model_n_embd_inp", found.model_n_embd_inp) &&
                resolveSymbol(handle, "llama_vocab_n_tokens", found.vocab_n_tokens) &&
                resolveSymbol(handle, "llama_decode", found.decode) &&
                resolveSymbol(handle, "llama_get_logits_ith", found.get_logits_ith) &&
                resolveSymbol(handle, "llama_get_memory", found.get_memory) &&
                resolveSymbol(handle, "llama_memory_seq_pos_max", found.memory_seq_pos_max);
      if (!ok) {
        return "the loaded llama.cpp library (" + path +
               ") lacks functions this addon needs; its version differs from the headers it was built with";
      }
      found.loaded = true;
      api = found;
    } else if (symbol != decodeAddress) {
      // Two different llama.cpp builds are loaded; we could pick the wrong one.
      return "several different llama.cpp libraries are loaded in this process (" + api.libraryPath + ", " +
             path + "); cannot tell which one owns the context";
    }
  }
  if (!api.loaded) {
    return "no loaded llama.cpp library found: load a model with node-llama-cpp before using the embeddings addon";
  }
  return "";
}

Napi::Error makeError(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  return error;
}

struct CheckedContext {
  AddonContext* addonContext = nullptr;
  llama_context* ctx = nullptr;
  uint32_t nCtx = 0;
  uint32_t nBatch = 0;
  uint32_t nSeqMax = 0;
  int32_t nEmbd = 0;
  int32_t nVocab = 0;
};

uint32_t getUint(const Napi::Object& obj, const char* key) {
  Napi::Value value = obj.Get(key);
  if (!value.IsNumber()) throw std::string("expected number '") + key + "'";
  return value.As<Napi::Number>().Uint32Value();
}

// Reads the llama_context* out of node-llama-cpp's AddonContext, refusing unless every field we can
// verify matches. Order matters: nothing read from the object is dereferenced until the plain
// values and the model pointer identity have confirmed the layout.
//   expected = { contextSize, batchSize, sequences } as reported by node-llama-cpp's JS side.
std::string checkContext(Napi::Env env, Napi::Value contextValue, Napi::Value modelValue, Napi::Object expected,
                         CheckedContext& out) {
  std::string loadError = loadLlamaApi();
  if (!loadError.empty()) return loadError;
  if (!contextValue.IsObject() || !modelValue.IsObject()) return "context and model must be node-llama-cpp objects";

  void* contextRaw = nullptr;
  void* modelRaw = nullptr;
  if (napi_unwrap(env, contextValue, &contextRaw) != napi_ok || contextRaw == nullptr) {
    return "the context object is not a node-llama-cpp AddonContext (napi_unwrap failed)";
  }
  if (napi_unwrap(env, modelValue, &modelRaw) != napi_ok || modelRaw == nullptr) {
    return "the model object is not a node-llama-cpp AddonModel (napi_unwrap failed)";
  }
  if (contextRaw == modelRaw) return "context and model are the same object";

  uint32_t expectedContextSize, expectedBatchSize, expectedSequences;
  try {
    expectedContextSize = getUint(expected, "contextSize");
    expectedBatchSize = getUint(expected, "batchSize");
    expectedSequences = getUint(expected, "sequences");
  } catch (const std::string& message) {
    return message;
  }

  auto* addonContext = static_cast<AddonContext*>(contextRaw);
  auto* addonModel = static_cast<AddonModel*>(modelRaw);

  // 1. identity of the first field: AddonContext::model must be exactly the unwrapped AddonModel.
  if (addonContext->model != addonModel) return "AddonContext layout differs (model pointer does not match)";
  // 2. plain values inside the embedded llama_context_params.
  const llama_context_params& params = addonContext->context_params;
  if (params.n_seq_max != expectedSequences) return "AddonContext layout differs (n_seq_max)";
  if (params.n_batch != expectedBatchSize && params.n_batch != expectedBatchSize + 1) {
    return "AddonContext layout differs (n_batch)";
  }
  if (params.n_ubatch != params.n_batch) return "AddonContext layout differs (n_ubatch)";
  if (params.n_threads <= 0 || params.n_threads > 4096) return "AddonContext layout differs (n_threads)";
  if (params.n_ctx < expectedSequences) return "AddonContext layout differs (n_ctx)";
  // 3. state flags next to the pointer.
  if (addonContext->disposed || !addonContext->contextLoaded) return "the context is disposed or not loaded";
  if (addonContext->ctx == nullptr || (reinterpret_cast<uintptr_t>(addonContext->ctx) % alignof(void*)) != 0) {
    return "AddonContext layout differs (ctx pointer)";
  }
  // 4. now the pointer is trusted: cross-check it with llama.cpp itself.
  llama_context* ctx = addonContext->ctx;
  if (api.n_ctx(ctx) != expectedContextSize) return "llama_n_ctx does not match the context size node-llama-cpp reports";
  if (api.n_batch(ctx) != params.n_batch) return "llama_n_batch does not match AddonContext's n_batch";
  if (api.n_seq_max(ctx) != params.n_seq_max) return "llama_n_seq_max does not match AddonContext's n_seq_max";
  const llama_model* model = api.get_model(ctx);
  if (model == nullptr || model != addonModel->model) return "AddonModel layout differs (model pointer)";
  if (addonModel->vocab != api.model_get_vocab(model)) return "AddonModel layout differs (vocab pointer)";

  out.addonContext = addonContext;
  out.ctx = ctx;
  out.nCtx = api.n_ctx(ctx);
  out.nBatch = params.n_batch;
  out.nSeqMax = params.n_seq_max;
  out.nEmbd = api.model_n_embd_inp(model);
  out.nVocab = api.vocab_n_tokens(addonModel->vocab);
  return "";
}

Napi::Object describe(Napi::Env env, const CheckedContext& checked) {
  Napi::Object info = Napi::Object::New(env);
  info.Set("contextSize", Napi::Number::New(env, checked.nCtx));
  info.Set("batchSize", Napi::Number::New(env, checked.nBatch));
  info.Set("sequences", Napi::Number::New(env, checked.nSeqMax));
  info.Set("embeddingSize", Napi::Number::New(env, checked.nEmbd));
  info.Set("vocabularySize", Napi::Number::New(env, checked.nVocab));
  info.Set("libraryPath", Napi::String::New(env, api.libraryPath));
  return info;
}

// checkContext(addonContext, addonModel, expected) -> { contextSize, batchSize, ... }
Napi::Value CheckContext(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[2].IsObject()) {
    throw makeError(env, "invalid_request", "checkContext(context, model, expected) needs three arguments");
  }
  CheckedContext checked;
  std::string error = checkContext(env, info[0], info[1], info[2].As<Napi::Object>(), checked);
  if (!error.empty()) throw makeError(env, "native_incompatible", error);
  return describe(env, checked);
}

class DecodeEmbeddingsWorker : public Napi::AsyncWorker {
 public:
  DecodeEmbeddingsWorker(Napi::Env env, const CheckedContext& checked, std::vector<float>&& rows, int32_t count,
                         int32_t sequenceId, int32_t firstPosition, bool wantLogits)
      : Napi::AsyncWorker(env, "regionVqaDecodeEmbeddings"),
        deferred_(Napi::Promise::Deferred::New(env)),
        checked_(checked),
        rows_(std::move(rows)),
        count_(count),
        sequenceId_(sequenceId),
        firstPosition_(firstPosition),
        wantLogits_(wantLogits) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    const int32_t chunk = static_cast<int32_t>(checked_.nBatch);
    std::vector<llama_pos> positions(chunk);
    std::vector<int32_t> seqCounts(chunk, 1);
    llama_seq_id seq = sequenceId_;
    std::vector<llama_seq_id*> seqIds(chunk, &seq);
    std::vector<int8_t> outputs(chunk, 0);

    for (int32_t start = 0; start < count_; start += chunk) {
      const int32_t n = std::min(chunk, count_ - start);
      const bool lastChunk = start + n == count_;
      for (int32_t i = 0; i < n; i++) {
        positions[i] = firstPosition_ + start + i;
        outputs[i] = (wantLogits_ && lastChunk && i == n - 1) ? 1 : 0;
      }
      llama_batch batch{};
      batch.n_tokens = n;
      batch.token = nullptr;
      batch.embd = rows_.data() + static_cast<size_t>(start) * checked_.nEmbd;
      batch.pos = positions.data();
      batch.n_seq_id = seqCounts.data();
      batch.seq_id = seqIds.data();
      batch.logits = outputs.data();
      const int32_t status = api.decode(checked_.ctx, batch);
      if (status != 0) {
        errorCode_ = status == 1 ? "context_full" : "internal";
        SetError(status == 1 ? "no room in the KV cache for the embeddings (context full)"
                             : "llama_decode failed with status " + std::to_string(status));
        return;
      }
      decoded_ += n;
    }
    if (wantLogits_) {
      const float* logits = api.get_logits_ith(checked_.ctx, -1);
      if (logits == nullptr) {
        errorCode_ = "internal";
        SetError("llama.cpp returned no logits for the last embedding");
        return;
      }
      logits_.assign(logits, logits + checked_.nVocab);
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object result = Napi::Object::New(env);
    result.Set("decoded", Napi::Number::New(env, decoded_));
    if (wantLogits_) {
      Napi::Float32Array logits = Napi::Float32Array::New(env, logits_.size());
      std::memcpy(logits.Data(), logits_.data(), logits_.size() * sizeof(float));
      result.Set("logits", logits);
    }
    deferred_.Resolve(result);
  }

  void OnError(const Napi::Error& error) override {
    Napi::Env env = Env();
    Napi::Error coded = makeError(env, errorCode_, error.Message());
    coded.Set("decoded", Napi::Number::New(env, decoded_));
    deferred_.Reject(coded.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  CheckedContext checked_;
  std::vector<float> rows_;
  int32_t count_;
  int32_t sequenceId_;
  int32_t firstPosition_;
  bool wantLogits_;
  int32_t decoded_ = 0;
  std::string errorCode_ = "internal";
  std::vector<float> logits_;
};

// decodeEmbeddings(addonContext, addonModel, expected, sequenceId, firstPosition, rows: Float32Array,
//                  count, wantLogits) -> Promise<{ decoded, logits? }>
// The caller must hold node-llama-cpp's context lock until the promise settles.
Napi::Value DecodeEmbeddings(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 8 || !info[2].IsObject() || !info[3].IsNumber() || !info[4].IsNumber() ||
      !info[5].IsTypedArray() || !info[6].IsNumber() || !info[7].IsBoolean()) {
    throw makeError(env, "invalid_request",
                    "decodeEmbeddings(context, model, expected, sequenceId, firstPosition, rows, count, wantLogits)");
  }
  CheckedContext checked;
  std::string error = checkContext(env, info[0], info[1], info[2].As<Napi::Object>(), checked);
  if (!error.empty()) throw makeError(env, "native_incompatible", error);

  const int64_t sequenceId = info[3].As<Napi::Number>().Int64Value();
  const int64_t firstPosition = info[4].As<Napi::Number>().Int64Value();
  const int64_t count = info[6].As<Napi::Number>().Int64Value();
  if (sequenceId < 0 || sequenceId >= checked.nSeqMax) throw makeError(env, "invalid_request", "sequence id out of range");
  if (count <= 0) throw makeError(env, "invalid_request", "count must be positive");
  if (firstPosition < 0 || firstPosition + count > checked.nCtx) {
    throw makeError(env, "context_full", "the embeddings do not fit in the context");
  }
  Napi::TypedArray typed = info[5].As<Napi::TypedArray>();
  if (typed.TypedArrayType() != napi_float32_array) throw makeError(env, "invalid_request", "rows must be a Float32Array");
  Napi::Float32Array rows = info[5].As<Napi::Float32Array>();
  const size_t needed = static_cast<size_t>(count) * static_cast<size_t>(checked.nEmbd);
  if (rows.ElementLength() != needed) {
    throw makeError(env, "invalid_request",
                    "rows has " + std::to_string(rows.ElementLength()) + " floats, expected count x " +
                        std::to_string(checked.nEmbd) + " = " + std::to_string(needed));
  }
  // Copied so the worker never reads a buffer that JS could detach or change meanwhile.
  std::vector<float> copy(rows.Data(), rows.Data() + needed);
  auto* worker = new DecodeEmbeddingsWorker(env, checked, std::move(copy), static_cast<int32_t>(count),
                                            static_cast<int32_t>(sequenceId), static_cast<int32_t>(firstPosition),
                                            info[7].As<Napi::Boolean>().Value());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value LibraryPath(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string error = loadLlamaApi();
  if (!error.empty()) throw makeError(env, "native_incompatible", error);
  return Napi::String::New(env, api.libraryPath);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("checkContext", Napi::Function::New(env, CheckContext, "checkContext"));
  exports.Set("decodeEmbeddings", Napi::Function::New(env, DecodeEmbeddings, "decodeEmbeddings"));
  exports.Set("libraryPath", Napi::Function::New(env, LibraryPath, "libraryPath"));
  exports.Set("llamaContextParamsSize", Napi::Number::New(env, sizeof(llama_context_params)));
  exports.Set("llamaBatchSize", Napi::Number::New(env, sizeof(llama_batch)));
  return exports;
}

}  // namespace

NODE_API_MODULE(region_vqa_embd, Init)
