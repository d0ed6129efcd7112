// Lists this host's Vulkan physical devices (name, vendor and device ids, type, API version) and
// tells whether a shared library can be loaded. On Linux the Vulkan devices
// are the adapters WebGPU (Dawn, inside ONNX Runtime) and ggml's Vulkan backend choose from, and
// the type says whether one is real hardware or a software rasteriser (lavapipe, llvmpipe, SwiftShader
// report themselves as CPU devices).
//
// libvulkan is opened at run time, so a host without it just reports no devices and why. No Vulkan
// headers are needed: the handful of declarations below are the stable Vulkan 1.0 ABI.

#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "napi.h"

namespace {

using VkResult = int32_t;
using VkInstance = struct VkInstanceOpaque*;
using VkPhysicalDevice = struct VkPhysicalDeviceOpaque*;
using PFN_vkVoidFunction = void (*)();
using PFN_vkGetInstanceProcAddr = PFN_vkVoidFunction (*)(VkInstance, const char*);

struct VkInstanceCreateInfo {
  uint32_t sType;  // VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO = 1
  const void* pNext;
  uint32_t flags;
  const void* pApplicationInfo;
  uint32_t enabledLayerCount;
  const char* const* ppEnabledLayerNames;
  uint32_t enabledExtensionCount;
  const char* const* ppEnabledExtensionNames;
};

using PFN_vkCreateInstance = VkResult (*)(const VkInstanceCreateInfo*, const void*, VkInstance*);
using PFN_vkDestroyInstance = void (*)(VkInstance, const void*);
using PFN_vkEnumeratePhysicalDevices = VkResult (*)(VkInstance, uint32_t*, VkPhysicalDevice*);
using PFN_vkGetPhysicalDeviceProperties = void (*)(VkPhysicalDevice, void*);

// VkPhysicalDeviceProperties begins with these fields; the whole struct (limits included) is 824
// bytes on 64-bit hosts, so it is read into a larger, suitably aligned buffer.
struct PropertiesHead {
  uint32_t apiVersion;
  uint32_t driverVersion;
  uint32_t vendorID;
  uint32_t deviceID;
  uint32_t deviceType;
  char deviceName[256];
};

const char* deviceTypeName(uint32_t type) {
  switch (type) {
    case 1:
      return "integrated";
    case 2:
      return "discrete";
    case 3:
      return "virtual";
    case 4:
      return "cpu";
    default:
      return "other";
  }
}

std::string versionText(uint32_t v) {
  return std::to_string(v >> 22) + "." + std::to_string((v >> 12) & 0x3ff) + "." + std::to_string(v & 0xfff);
}

Napi::Object Result(Napi::Env env, Napi::Array devices, const std::string& reason) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("devices", devices);
  if (!reason.empty()) out.Set("reason", reason);
  return out;
}

// vulkanDevices() -> { devices: [{ name, vendorId, deviceId, type, apiVersion }], reason? }
Napi::Value VulkanDevices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array devices = Napi::Array::New(env);
  void* lib = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return Result(env, devices, std::string("libvulkan.so.1 cannot be loaded: ") + dlerror());
  auto getProc = reinterpret_cast<PFN_vkGetInstanceProcAddr>(dlsym(lib, "vkGetInstanceProcAddr"));
  auto createInstance =
      getProc ? reinterpret_cast<PFN_vkCreateInstance>(getProc(nullptr, "vkCreateInstance")) : nullptr;
  if (createInstance == nullptr) {
    dlclose(lib);
    return Result(env, devices, "libvulkan.so.1 has no vkCreateInstance");
  }
  VkInstanceCreateInfo create{};
  create.sType = 1;
  VkInstance instance = nullptr;
  VkResult created = createInstance(&create, nullptr, &instance);
  if (created != 0 || instance == nullptr) {
    dlclose(lib);
    // -9 = VK_ERROR_INCOMPATIBLE_DRIVER: the loader found no driver (ICD) at all.
    return Result(env, devices,
                  created == -9 ? "no Vulkan driver is installed"
                                : "vkCreateInstance failed (VkResult " + std::to_string(created) + ")");
  }
  auto destroy = reinterpret_cast<PFN_vkDestroyInstance>(getProc(instance, "vkDestroyInstance"));
  auto enumerate =
      reinterpret_cast<PFN_vkEnumeratePhysicalDevices>(getProc(instance, "vkEnumeratePhysicalDevices"));
  auto properties =
      reinterpret_cast<PFN_vkGetPhysicalDeviceProperties>(getProc(instance, "vkGetPhysicalDeviceProperties"));
  std::string reason;
  uint32_t count = 0;
  if (enumerate == nullptr || properties == nullptr || enumerate(instance, &count, nullptr) != 0) {
    reason = "vkEnumeratePhysicalDevices failed";
  } else if (count > 0) {
    auto* handles = new VkPhysicalDevice[count];
    if (enumerate(instance, &count, handles) >= 0) {
      for (uint32_t i = 0; i < count; i++) {
        alignas(16) unsigned char buffer[4096];
        std::memset(buffer, 0, sizeof buffer);
        properties(handles[i], buffer);
        PropertiesHead head;
        std::memcpy(&head, buffer, sizeof head);
        head.deviceName[255] = '\0';
        Napi::Object device = Napi::Object::New(env);
        device.Set("name", std::string(head.deviceName));
        device.Set("vendorId", head.vendorID);
        device.Set("deviceId", head.deviceID);
        device.Set("type", deviceTypeName(head.deviceType));
        device.Set("apiVersion", versionText(head.apiVersion));
        devices.Set(i, device);
      }
    }
    delete[] handles;
  }
  if (destroy != nullptr) destroy(instance, nullptr);
  dlclose(lib);
  return Result(env, devices, reason);
}

// loadError(name) -> undefined when the shared library `name` can be loaded, else dlerror()'s text.
// (Used to tell which GPU runtime libraries, e.g. CUDA's, this host has.)
Napi::Value LoadError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "loadError(name: string)");
  const std::string name = info[0].As<Napi::String>();
  void* lib = dlopen(name.c_str(), RTLD_LAZY | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* error = dlerror();
    return Napi::String::New(env, error != nullptr ? error : "cannot be loaded");
  }
  dlclose(lib);
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("vulkanDevices", Napi::Function::New(env, VulkanDevices, "vulkanDevices"));
  exports.Set("loadError", Napi::Function::New(env, LoadError, "loadError"));
  return exports;
}

}  // namespace

NODE_API_MODULE(region_vqa_gpu_probe, Init)
