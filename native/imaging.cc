// region-vqa's CPU image kernels: the integer and float arithmetic of the TypeScript specifications
// (src/common/imaging/pillow-resize.ts, src/vision/preprocess.ts, src/segmenter/postprocess.ts,
// src/vision/region.ts and friends), run on libuv's thread pool so that the event loop never waits
// for them, and split by rows across threads for large images.
//
// Why hand-written: no library computes Pillow's resize bit for bit (libvips/sharp, OpenCV and
// stb differ by several levels), and exactness is the requirement. To keep exactness easy to check,
// everything that decides *which* numbers are combined (filter coefficients, bilinear taps, lookup
// tables of the normalisations) is computed by the TypeScript specification and passed in; this file
// only does the loops, in the same order of operations (built with -ffp-contract=off, so no fused
// multiply-adds change a rounding).
//
// Every function takes its inputs and preallocated outputs as typed arrays, validates their sizes on
// the calling thread (a TypeError/RangeError there), and returns a Promise that settles once the work
// has run on a libuv worker thread. Every output value is written, so outputs may be allocated without
// zeroing (Buffer.allocUnsafeSlow): a 36 MB zero-fill would otherwise run on the event loop. The caller must neither change nor transfer those arrays until
// then (src/common/imaging/native.ts owns that contract).

#include <dlfcn.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <memory>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "napi.h"

namespace {

// ---------------------------------------------------------------------------------------------
// Threads

// Splits [0, n) into at most `threads` contiguous chunks of at least `minChunk` items, runs
// fn(begin, end) -> int64 on each (the first chunk on the calling thread) and returns the sum.
template <class Fn>
int64_t parallelSum(int n, int threads, int minChunk, Fn&& fn) {
  const int t = std::max(1, std::min(threads, n / std::max(1, minChunk)));
  if (t <= 1) return fn(0, n);
  auto bound = [n, t](int i) { return static_cast<int>(static_cast<int64_t>(n) * i / t); };
  std::vector<int64_t> partial(t, 0);
  std::vector<std::thread> others;
  others.reserve(t - 1);
  for (int i = 1; i < t; i++)
    others.emplace_back([&fn, &partial, &bound, i] { partial[i] = fn(bound(i), bound(i + 1)); });
  partial[0] = fn(0, bound(1));
  for (auto& th : others) th.join();
  int64_t sum = 0;
  for (int64_t p : partial) sum += p;
  return sum;
}

// Rows below this many output values per thread are not worth a thread (about 1 MP of work).
constexpr int kMinValuesPerThread = 1 << 20;

int chunkRows(int64_t valuesPerRow) {
  return static_cast<int>(std::max<int64_t>(1, kMinValuesPerThread / std::max<int64_t>(1, valuesPerRow)));
}

// ---------------------------------------------------------------------------------------------
// Pillow's 8-bit resampling (fixed point, 22 fractional bits)

constexpr int kPrecisionBits = 22;
constexpr int32_t kRounding = 1 << (kPrecisionBits - 1);

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;  // arithmetic shift: floor, as Pillow's clip8
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

struct Coefficients {
  int outSize = 0;
  int ksize = 0;
  const int32_t* start = nullptr;
  const int32_t* count = nullptr;
  const int32_t* weights = nullptr;
};

typedef int32_t v4i __attribute__((vector_size(16)));

// Pixel kinds of a source: 1 = grey (one channel), 3 = RGB, 4 = 0/1 mask read as a white-on-black
// RGB image (nonzero = 255 on all three channels), as the LLaVA reference pushes masks through the
// image geometry.
enum SourceKind { kGrey = 1, kRgb = 3, kMask = 4 };

// The image placed on a virtual canvas of the pad colour (LLaVA's expand2square) without building it.
struct Source {
  const uint8_t* data = nullptr;
  int width = 0, height = 0, kind = kRgb;
  int canvasWidth = 0, canvasHeight = 0, left = 0, top = 0;
  uint8_t pad[3] = {0, 0, 0};
  int outChannels() const { return kind == kGrey ? 1 : 3; }
};

// One canvas row as 4 int32 lanes per pixel (RGB0), the form the horizontal kernel multiplies.
void canvasRowLanes(const Source& s, int y, v4i* row) {
  const v4i padPixel = {s.pad[0], s.pad[1], s.pad[2], 0};
  const int iy = y - s.top;
  if (iy < 0 || iy >= s.height) {
    for (int x = 0; x < s.canvasWidth; x++) row[x] = padPixel;
    return;
  }
  for (int x = 0; x < s.left; x++) row[x] = padPixel;
  for (int x = s.left + s.width; x < s.canvasWidth; x++) row[x] = padPixel;
  v4i* dst = row + s.left;
  if (s.kind == kMask) {
    const uint8_t* m = s.data + static_cast<size_t>(iy) * s.width;
    const v4i on = {255, 255, 255, 0};
    const v4i off = {0, 0, 0, 0};
    for (int x = 0; x < s.width; x++) dst[x] = m[x] ? on : off;
  } else {
    const uint8_t* p = s.data + static_cast<size_t>(iy) * s.width * 3;
    for (int x = 0; x < s.width; x++) dst[x] = v4i{p[3 * x], p[3 * x + 1], p[3 * x + 2], 0};
  }
}

void canvasRowGrey(const Source& s, int y, int32_t* row) {
  const int iy = y - s.top;
  if (iy < 0 || iy >= s.height) {
    for (int x = 0; x < s.canvasWidth; x++) row[x] = s.pad[0];
    return;
  }
  for (int x = 0; x < s.left; x++) row[x] = s.pad[0];
  for (int x = s.left + s.width; x < s.canvasWidth; x++) row[x] = s.pad[0];
  const uint8_t* p = s.data + static_cast<size_t>(iy) * s.width;
  for (int x = 0; x < s.width; x++) row[s.left + x] = p[x];
}

// The hot loops exist twice: compiled for the baseline x86-64 and for AVX2, picked once at run time.
// They are always_inline bodies instantiated inside each target's function.
__attribute__((always_inline)) inline void horizontalRgbBody(const v4i* row, const Coefficients& c,
                                                             uint8_t* out) {
  for (int xx = 0; xx < c.outSize; xx++) {
    const v4i* px = row + c.start[xx];
    const int32_t* k = c.weights + static_cast<size_t>(xx) * c.ksize;
    const int n = c.count[xx];
    v4i acc = {kRounding, kRounding, kRounding, kRounding};
    for (int t = 0; t < n; t++) acc += px[t] * k[t];
    out[3 * xx] = clip8(acc[0]);
    out[3 * xx + 1] = clip8(acc[1]);
    out[3 * xx + 2] = clip8(acc[2]);
  }
}

__attribute__((always_inline)) inline void horizontalGreyBody(const int32_t* row, const Coefficients& c,
                                                              uint8_t* out) {
  for (int xx = 0; xx < c.outSize; xx++) {
    const int32_t* px = row + c.start[xx];
    const int32_t* k = c.weights + static_cast<size_t>(xx) * c.ksize;
    const int n = c.count[xx];
    int32_t acc = kRounding;
    for (int t = 0; t < n; t++) acc += px[t] * k[t];
    out[xx] = clip8(acc);
  }
}

// One output row of the vertical pass: rows[t] are the taps' input rows, all `len` bytes long.
__attribute__((always_inline)) inline void verticalBody(const uint8_t* const* rows, const int32_t* k, int n,
                                                        int len, int32_t* acc, uint8_t* out) {
  for (int i = 0; i < len; i++) acc[i] = kRounding;
  for (int t = 0; t < n; t++) {
    const uint8_t* r = rows[t];
    const int32_t w = k[t];
    for (int i = 0; i < len; i++) acc[i] += static_cast<int32_t>(r[i]) * w;
  }
  for (int i = 0; i < len; i++) out[i] = clip8(acc[i]);
}

__attribute__((target("avx2"))) void horizontalRgbAvx2(const v4i* row, const Coefficients& c, uint8_t* out) {
  horizontalRgbBody(row, c, out);
}
void horizontalRgbBase(const v4i* row, const Coefficients& c, uint8_t* out) { horizontalRgbBody(row, c, out); }
__attribute__((target("avx2"))) void horizontalGreyAvx2(const int32_t* row, const Coefficients& c,
                                                        uint8_t* out) {
  horizontalGreyBody(row, c, out);
}
void horizontalGreyBase(const int32_t* row, const Coefficients& c, uint8_t* out) {
  horizontalGreyBody(row, c, out);
}
__attribute__((target("avx2"))) void verticalAvx2(const uint8_t* const* rows, const int32_t* k, int n, int len,
                                                  int32_t* acc, uint8_t* out) {
  verticalBody(rows, k, n, len, acc, out);
}
void verticalBase(const uint8_t* const* rows, const int32_t* k, int n, int len, int32_t* acc, uint8_t* out) {
  verticalBody(rows, k, n, len, acc, out);
}

const bool kAvx2 = __builtin_cpu_supports("avx2");

// Pillow's ImagingResample for one 8-bit image: the horizontal pass (only over the rows the vertical
// pass reads), then the vertical pass; a pass is skipped when its size does not change. `h` / `v` are
// null for a skipped pass. `out` is outWidth x outHeight x outChannels.
void resample(const Source& s, const Coefficients* h, const Coefficients* v, int threads, uint8_t* out) {
  const int channels = s.outChannels();
  const int outWidth = h ? h->outSize : s.canvasWidth;
  const int rowLen = outWidth * channels;
  int rowFirst = 0, rowLast = s.canvasHeight;
  if (v) {
    rowFirst = v->start[0];
    rowLast = v->start[v->outSize - 1] + v->count[v->outSize - 1];
  }
  const int rows = rowLast - rowFirst;
  // The horizontal pass writes straight into `out` when there is no vertical pass.
  std::vector<uint8_t> between;
  uint8_t* mid = out;
  if (v) {
    between.resize(static_cast<size_t>(rows) * rowLen);
    mid = between.data();
  }
  // Rows of pad colour all resample to the same row: computed once.
  std::vector<uint8_t> padRow(rowLen);
  auto horizontalRow = [&](int y, void* lanes, uint8_t* dst) {
    if (channels == 3) {
      v4i* row = static_cast<v4i*>(lanes);
      canvasRowLanes(s, y, row);
      if (!h) {
        for (int x = 0; x < outWidth; x++)
          for (int ch = 0; ch < 3; ch++) dst[3 * x + ch] = static_cast<uint8_t>(row[x][ch]);
      } else if (kAvx2) {
        horizontalRgbAvx2(row, *h, dst);
      } else {
        horizontalRgbBase(row, *h, dst);
      }
    } else {
      int32_t* row = static_cast<int32_t*>(lanes);
      canvasRowGrey(s, y, row);
      if (!h) {
        for (int x = 0; x < outWidth; x++) dst[x] = static_cast<uint8_t>(row[x]);
      } else if (kAvx2) {
        horizontalGreyAvx2(row, *h, dst);
      } else {
        horizontalGreyBase(row, *h, dst);
      }
    }
  };
  const size_t laneBytes = static_cast<size_t>(s.canvasWidth) * (channels == 3 ? sizeof(v4i) : sizeof(int32_t));
  const bool hasPadRows = s.top > 0 || s.top + s.height < s.canvasHeight;
  if (hasPadRows) {
    std::vector<v4i> lanes(laneBytes / sizeof(v4i) + 1);
    horizontalRow(s.top > 0 ? 0 : s.canvasHeight - 1, lanes.data(), padRow.data());
  }
  parallelSum(rows, threads, chunkRows(static_cast<int64_t>(s.canvasWidth) * channels), [&](int b, int e) {
    std::vector<v4i> lanes(laneBytes / sizeof(v4i) + 1);
    for (int r = b; r < e; r++) {
      const int y = rowFirst + r;
      uint8_t* dst = mid + static_cast<size_t>(r) * rowLen;
      if (y < s.top || y >= s.top + s.height) {
        std::memcpy(dst, padRow.data(), rowLen);
      } else {
        horizontalRow(y, lanes.data(), dst);
      }
    }
    return int64_t{0};
  });
  if (!v) return;
  parallelSum(v->outSize, threads, chunkRows(static_cast<int64_t>(rowLen) * v->ksize), [&](int b, int e) {
    std::vector<int32_t> acc(rowLen);
    std::vector<const uint8_t*> taps(v->ksize);
    for (int yy = b; yy < e; yy++) {
      const int n = v->count[yy];
      for (int t = 0; t < n; t++) taps[t] = mid + static_cast<size_t>(v->start[yy] + t - rowFirst) * rowLen;
      const int32_t* k = v->weights + static_cast<size_t>(yy) * v->ksize;
      uint8_t* dst = out + static_cast<size_t>(yy) * rowLen;
      if (kAvx2) {
        verticalAvx2(taps.data(), k, n, rowLen, acc.data(), dst);
      } else {
        verticalBase(taps.data(), k, n, rowLen, acc.data(), dst);
      }
    }
    return int64_t{0};
  });
}

// ---------------------------------------------------------------------------------------------
// PyTorch's bilinear interpolation (align_corners=False) of float logits, in double precision as
// the specification computes it, then a threshold at 0.

struct Taps {
  int outSize = 0;
  const int32_t* i0 = nullptr;
  const int32_t* i1 = nullptr;
  const float* w1 = nullptr;
};

struct Window {
  int left = 0, top = 0, width = 0, height = 0;
};

__attribute__((always_inline)) inline float bilinearAt(const float* src, size_t r0, size_t r1, double wy,
                                                       int a, int b, double wx) {
  const double top = static_cast<double>(src[r0 + a]) * (1 - wx) + static_cast<double>(src[r0 + b]) * wx;
  const double bottom = static_cast<double>(src[r1 + a]) * (1 - wx) + static_cast<double>(src[r1 + b]) * wx;
  return static_cast<float>(top * (1 - wy) + bottom * wy);
}

// out = resize(src window); when `mask` is given, writes mask[i] = out > 0 instead and counts them.
__attribute__((always_inline)) inline int64_t bilinearRowsBody(const float* src, int stride, const Window& w,
                                                               const Taps& xs, const Taps& ys, int yBegin,
                                                               int yEnd, float* out, uint8_t* mask) {
  const size_t base = static_cast<size_t>(w.top) * stride + w.left;
  int64_t area = 0;
  for (int oy = yBegin; oy < yEnd; oy++) {
    const size_t r0 = base + static_cast<size_t>(ys.i0[oy]) * stride;
    const size_t r1 = base + static_cast<size_t>(ys.i1[oy]) * stride;
    const double wy = ys.w1[oy];
    const size_t row = static_cast<size_t>(oy) * xs.outSize;
    for (int ox = 0; ox < xs.outSize; ox++) {
      const float value = bilinearAt(src, r0, r1, wy, xs.i0[ox], xs.i1[ox], xs.w1[ox]);
      if (mask) {
        const uint8_t inside = value > 0 ? 1 : 0;
        mask[row + ox] = inside;
        area += inside;
      } else {
        out[row + ox] = value;
      }
    }
  }
  return area;
}

__attribute__((target("avx2"))) int64_t bilinearRowsAvx2(const float* src, int stride, const Window& w,
                                                         const Taps& xs, const Taps& ys, int b, int e, float* out,
                                                         uint8_t* mask) {
  return bilinearRowsBody(src, stride, w, xs, ys, b, e, out, mask);
}
int64_t bilinearRowsBase(const float* src, int stride, const Window& w, const Taps& xs, const Taps& ys, int b,
                         int e, float* out, uint8_t* mask) {
  return bilinearRowsBody(src, stride, w, xs, ys, b, e, out, mask);
}

int64_t bilinear(const float* src, int stride, const Window& w, const Taps& xs, const Taps& ys, int threads,
                 float* out, uint8_t* mask) {
  return parallelSum(ys.outSize, threads, chunkRows(xs.outSize), [&](int b, int e) {
    return kAvx2 ? bilinearRowsAvx2(src, stride, w, xs, ys, b, e, out, mask)
                 : bilinearRowsBase(src, stride, w, xs, ys, b, e, out, mask);
  });
}

// ---------------------------------------------------------------------------------------------
// Masks

// Flat byte arrays are split into blocks of this many items.
constexpr int kBlock = 4096;

// out[i] = src[i] >= threshold ? one : 0; returns how many are set.
int64_t thresholdBytes(const uint8_t* src, size_t n, int threshold, uint8_t one, int threads, uint8_t* out) {
  const int blocks = static_cast<int>((n + kBlock - 1) / kBlock);
  return parallelSum(blocks, threads, chunkRows(kBlock), [&](int b, int e) {
    const size_t to = std::min(n, static_cast<size_t>(e) * kBlock);
    int64_t count = 0;
    for (size_t i = static_cast<size_t>(b) * kBlock; i < to; i++) {
      const uint8_t inside = src[i] >= threshold ? 1 : 0;
      out[i] = inside ? one : 0;
      count += inside;
    }
    return count;
  });
}

// COCO polygons, even-odd per ring, rings united; a pixel is inside when its centre is (the
// specification's scanline rule, src/vision/polygon.ts).
int64_t rasterizePolygons(const double* coords, const int32_t* ringStarts, int rings, int width, int height,
                          int threads, uint8_t* out) {
  return parallelSum(height, threads, chunkRows(width), [&](int b, int e) {
    std::vector<double> crossings;
    int64_t area = 0;
    for (int y = b; y < e; y++) {
      const double cy = y + 0.5;
      uint8_t* row = out + static_cast<size_t>(y) * width;
      std::memset(row, 0, width);
      for (int r = 0; r < rings; r++) {
        const double* p = coords + ringStarts[r];
        const int n = (ringStarts[r + 1] - ringStarts[r]) / 2;
        crossings.clear();
        for (int i = 0, j = n - 1; i < n; j = i++) {
          const double xi = p[2 * i], yi = p[2 * i + 1], xj = p[2 * j], yj = p[2 * j + 1];
          if ((yi > cy) != (yj > cy)) crossings.push_back(xi + ((cy - yi) * (xj - xi)) / (yj - yi));
        }
        if (crossings.size() < 2) continue;
        std::sort(crossings.begin(), crossings.end());
        for (size_t k = 0; k + 1 < crossings.size(); k += 2) {
          // Pixel centres x + 0.5 in [a, b): x from ceil(a - 0.5) to ceil(b - 0.5) - 1.
          const double from = std::max(0.0, std::ceil(crossings[k] - 0.5));
          const double to = std::min(static_cast<double>(width), std::ceil(crossings[k + 1] - 0.5));
          for (int x = static_cast<int>(from); x < static_cast<int>(to); x++) row[x] = 1;
        }
      }
      for (int x = 0; x < width; x++) area += row[x];
    }
    return area;
  });
}

// COCO RLE runs (column-major, background first) -> a row-major 0/1 mask. Columns are split across
// threads; each finds its first run by binary search over the runs' start offsets.
int64_t rleToMask(const double* counts, int runs, int width, int height, int threads, uint8_t* out) {
  std::vector<int64_t> starts(runs + 1, 0);
  for (int i = 0; i < runs; i++) starts[i + 1] = starts[i] + static_cast<int64_t>(counts[i]);
  int64_t area = 0;
  for (int i = 1; i < runs; i += 2) area += static_cast<int64_t>(counts[i]);
  const size_t pixels = static_cast<size_t>(width) * height;
  parallelSum(static_cast<int>((pixels + kBlock - 1) / kBlock), threads, chunkRows(kBlock), [&](int b, int e) {
    const size_t from = static_cast<size_t>(b) * kBlock;
    std::memset(out + from, 0, std::min(pixels, static_cast<size_t>(e) * kBlock) - from);
    return int64_t{0};
  });
  parallelSum(width, threads, chunkRows(height), [&](int xb, int xe) {
    const int64_t from = static_cast<int64_t>(xb) * height;
    const int64_t to = static_cast<int64_t>(xe) * height;
    int r = static_cast<int>(std::upper_bound(starts.begin(), starts.end(), from) - starts.begin()) - 1;
    for (; r < runs && starts[r] < to; r++) {
      if (r % 2 == 0) continue;
      const int64_t b = std::max(from, starts[r]);
      const int64_t e = std::min(to, starts[r + 1]);
      for (int64_t j = b; j < e; j++) {
        const int64_t x = j / height;
        const int64_t y = j - x * height;
        out[y * width + x] = 1;
      }
    }
    return int64_t{0};
  });
  return area;
}

// Run lengths (column-major, background first) of a 0/1 mask.
std::vector<uint32_t> maskToRuns(const uint8_t* mask, int width, int height) {
  std::vector<uint32_t> runs;
  uint8_t current = 0;
  uint32_t run = 0;
  for (int x = 0; x < width; x++) {
    for (int y = 0; y < height; y++) {
      const uint8_t v = mask[static_cast<size_t>(y) * width + x] ? 1 : 0;
      if (v != current) {
        runs.push_back(run);
        run = 0;
        current = v;
      }
      run++;
    }
  }
  runs.push_back(run);
  return runs;
}

// Decoded pixels (1-4 channels, as sharp returns them) -> RGB (grey replicated, as Pillow's
// convert("RGB")) and, for 2 and 4 channels, the alpha plane.
void splitPixels(const uint8_t* src, size_t n, int channels, int threads, uint8_t* rgb, uint8_t* alpha) {
  const int blocks = static_cast<int>((n + kBlock - 1) / kBlock);
  parallelSum(blocks, threads, chunkRows(kBlock), [&](int b, int e) {
    const size_t to = std::min(n, static_cast<size_t>(e) * kBlock);
    for (size_t i = static_cast<size_t>(b) * kBlock; i < to; i++) {
      const uint8_t* p = src + i * channels;
      if (channels >= 3) {
        rgb[3 * i] = p[0];
        rgb[3 * i + 1] = p[1];
        rgb[3 * i + 2] = p[2];
      } else {
        rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = p[0];
      }
      if (alpha) alpha[i] = p[channels - 1];
    }
    return int64_t{0};
  });
}

// Decoded mask-image pixels -> 0/1: inside when any colour channel is nonzero (alpha ignored).
int64_t pixelsToMask(const uint8_t* src, size_t n, int channels, int threads, uint8_t* out) {
  const int blocks = static_cast<int>((n + kBlock - 1) / kBlock);
  return parallelSum(blocks, threads, chunkRows(kBlock), [&](int b, int e) {
    const size_t to = std::min(n, static_cast<size_t>(e) * kBlock);
    int64_t count = 0;
    for (size_t i = static_cast<size_t>(b) * kBlock; i < to; i++) {
      const uint8_t* p = src + i * channels;
      const uint8_t any = channels >= 3 ? static_cast<uint8_t>(p[0] | p[1] | p[2]) : p[0];
      out[i] = any ? 1 : 0;
      count += any ? 1 : 0;
    }
    return count;
  });
}

// ---------------------------------------------------------------------------------------------
// N-API glue: argument checks on the calling thread, work on a libuv thread, a Promise back.

// Kernels run at a lower CPU priority than the event loop (nice +10 for the libuv thread running
// the job, and the row threads it starts, which inherit it): on a machine whose cores are all busy
// with models and kernels, the thread that answers /healthz and streams tokens is scheduled first.
// Work is not delayed while a core is free; only contention is decided in the event loop's favour.
constexpr int kKernelNice = 10;

class NiceScope {
 public:
  NiceScope() : tid_(static_cast<pid_t>(syscall(SYS_gettid))) {
    errno = 0;
    before_ = getpriority(PRIO_PROCESS, tid_);
    ok_ = errno == 0 && setpriority(PRIO_PROCESS, tid_, std::max(before_, kKernelNice)) == 0;
  }
  ~NiceScope() {
    // Raising priority back needs no privilege when it only returns to the thread's earlier value
    // (RLIMIT_NICE permitting); if it fails the libuv thread stays nice, which only slows kernels.
    if (ok_) setpriority(PRIO_PROCESS, tid_, before_);
  }

 private:
  pid_t tid_;
  int before_ = 0;
  bool ok_ = false;
};

class Job : public Napi::AsyncWorker {
 public:
  using Work = std::function<double()>;
  using Finish = std::function<Napi::Value(Napi::Env, double)>;

  Job(Napi::Env env, const Napi::CallbackInfo& info, Work work, Finish finish = nullptr)
      : Napi::AsyncWorker(env, "region-vqa-imaging"),
        deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)),
        finish_(std::move(finish)) {
    // The arguments (and the arrays they hold) stay alive until the job is over.
    for (size_t i = 0; i < info.Length(); i++) {
      if (info[i].IsObject()) keep_.push_back(Napi::Persistent(info[i].As<Napi::Object>()));
    }
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    NiceScope nice;
    try {
      result_ = work_();
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    deferred_.Resolve(finish_ ? finish_(env, result_) : Napi::Number::New(env, result_));
  }
  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::ObjectReference> keep_;
  Work work_;
  Finish finish_;
  double result_ = 0;
};

Napi::Value queue(const Napi::CallbackInfo& info, Job::Work work, Job::Finish finish = nullptr) {
  auto* job = new Job(info.Env(), info, std::move(work), std::move(finish));
  Napi::Promise promise = job->Promise();
  job->Queue();
  return promise;
}

[[noreturn]] void fail(Napi::Env env, const std::string& message) {
  throw Napi::RangeError::New(env, "region-vqa imaging: " + message);
}

int intArg(const Napi::Object& o, const char* key, int least = 0) {
  Napi::Env env = o.Env();
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) fail(env, std::string(key) + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= least && d <= 2147483647.0) || d != static_cast<double>(static_cast<int>(d))) fail(env, std::string(key) + " must be a whole number >= " + std::to_string(least));
  return static_cast<int>(d);
}

template <class T>
constexpr napi_typedarray_type typedArrayTypeOf();
template <>
constexpr napi_typedarray_type typedArrayTypeOf<uint8_t>() { return napi_uint8_array; }
template <>
constexpr napi_typedarray_type typedArrayTypeOf<int32_t>() { return napi_int32_array; }
template <>
constexpr napi_typedarray_type typedArrayTypeOf<uint32_t>() { return napi_uint32_array; }
template <>
constexpr napi_typedarray_type typedArrayTypeOf<float>() { return napi_float32_array; }
template <>
constexpr napi_typedarray_type typedArrayTypeOf<double>() { return napi_float64_array; }

template <class T>
Napi::TypedArrayOf<T> typedArray(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != typedArrayTypeOf<T>())
    fail(o.Env(), std::string(key) + " must be a typed array of the right element type");
  return v.As<Napi::TypedArrayOf<T>>();
}

template <class T>
T* arrayArg(const Napi::Object& o, const char* key, size_t length) {
  auto a = typedArray<T>(o, key);
  if (a.ElementLength() != length)
    fail(o.Env(), std::string(key) + " has " + std::to_string(a.ElementLength()) + " elements, needs " +
                      std::to_string(length));
  return a.Data();
}

template <class T>
size_t arrayLength(const Napi::Object& o, const char* key) {
  return typedArray<T>(o, key).ElementLength();
}

Coefficients coefficientsArg(const Napi::Object& o, int inSize) {
  Coefficients c;
  c.ksize = intArg(o, "ksize", 1);
  c.outSize = static_cast<int>(arrayLength<int32_t>(o, "start"));
  if (c.outSize < 1) fail(o.Env(), "coefficients for no output");
  c.start = arrayArg<int32_t>(o, "start", c.outSize);
  c.count = arrayArg<int32_t>(o, "count", c.outSize);
  c.weights = arrayArg<int32_t>(o, "weights", static_cast<size_t>(c.outSize) * c.ksize);
  for (int i = 0; i < c.outSize; i++) {
    if (c.count[i] < 0 || c.count[i] > c.ksize || c.start[i] < 0 || c.start[i] + c.count[i] > inSize)
      fail(o.Env(), "coefficients reach outside the input");
  }
  return c;
}

Taps tapsArg(const Napi::Object& o, int inSize) {
  Taps t;
  t.outSize = static_cast<int>(arrayLength<int32_t>(o, "i0"));
  t.i0 = arrayArg<int32_t>(o, "i0", t.outSize);
  t.i1 = arrayArg<int32_t>(o, "i1", t.outSize);
  t.w1 = arrayArg<float>(o, "w1", t.outSize);
  for (int i = 0; i < t.outSize; i++) {
    if (t.i0[i] < 0 || t.i1[i] < 0 || t.i0[i] >= inSize || t.i1[i] >= inSize)
      fail(o.Env(), "bilinear taps reach outside the input");
  }
  return t;
}

int threadsArg(const Napi::Object& o) { return std::min(64, std::max(1, intArg(o, "threads", 1))); }

// resample({ src, kind: 1|3|4, width, height, canvas?: {width, height, left, top, pad: [r, g, b]},
//            horizontal?: coefficients, vertical?: coefficients, out, threads }) -> Promise<0>
Napi::Value Resample(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) fail(env, "resample takes one options object");
  Napi::Object o = info[0].As<Napi::Object>();
  Source s;
  s.kind = intArg(o, "kind", 1);
  if (s.kind != kGrey && s.kind != kRgb && s.kind != kMask) fail(env, "kind must be 1, 3 or 4");
  s.width = intArg(o, "width", 1);
  s.height = intArg(o, "height", 1);
  const size_t pixels = static_cast<size_t>(s.width) * s.height;
  s.data = arrayArg<uint8_t>(o, "src", s.kind == kRgb ? pixels * 3 : pixels);
  s.canvasWidth = s.width;
  s.canvasHeight = s.height;
  if (o.Has("canvas") && o.Get("canvas").IsObject()) {
    Napi::Object c = o.Get("canvas").As<Napi::Object>();
    s.canvasWidth = intArg(c, "width", 1);
    s.canvasHeight = intArg(c, "height", 1);
    s.left = intArg(c, "left");
    s.top = intArg(c, "top");
    if (s.left + s.width > s.canvasWidth || s.top + s.height > s.canvasHeight) fail(env, "the image does not fit the canvas");
    const uint8_t* pad = arrayArg<uint8_t>(c, "pad", 3);
    std::memcpy(s.pad, pad, 3);
  }
  Coefficients h, v;
  const bool hasH = o.Has("horizontal") && o.Get("horizontal").IsObject();
  const bool hasV = o.Has("vertical") && o.Get("vertical").IsObject();
  if (hasH) h = coefficientsArg(o.Get("horizontal").As<Napi::Object>(), s.canvasWidth);
  if (hasV) v = coefficientsArg(o.Get("vertical").As<Napi::Object>(), s.canvasHeight);
  const int outWidth = hasH ? h.outSize : s.canvasWidth;
  const int outHeight = hasV ? v.outSize : s.canvasHeight;
  uint8_t* out = arrayArg<uint8_t>(o, "out", static_cast<size_t>(outWidth) * outHeight * s.outChannels());
  const int threads = threadsArg(o);
  return queue(info, [=] {
    resample(s, hasH ? &h : nullptr, hasV ? &v : nullptr, threads, out);
    return 0.0;
  });
}

// planes({ src: HWC uint8 [h, w, 3], width, height, lut: float32 [3 * 256], frame, out: float32
//          [3, frame, frame] }) -> Promise<0>: out[c][y][x] = lut[c][src[y][x][c]], zero elsewhere.
Napi::Value Planes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  const int w = intArg(o, "width", 1), h = intArg(o, "height", 1), frame = intArg(o, "frame", 1);
  if (w > frame || h > frame) fail(env, "the image is larger than the frame");
  const uint8_t* src = arrayArg<uint8_t>(o, "src", static_cast<size_t>(w) * h * 3);
  const float* lut = arrayArg<float>(o, "lut", 768);
  float* out = arrayArg<float>(o, "out", static_cast<size_t>(frame) * frame * 3);
  const int threads = threadsArg(o);
  return queue(info, [=] {
    const size_t plane = static_cast<size_t>(frame) * frame;
    // Every value is written (the frame outside the image as 0): `out` may come unzeroed.
    parallelSum(frame, threads, chunkRows(frame * 3), [&](int b, int e) {
      for (int y = b; y < e; y++) {
        for (int c = 0; c < 3; c++) {
          float* dst = out + c * plane + static_cast<size_t>(y) * frame;
          if (y >= h) {
            std::fill(dst, dst + frame, 0.0f);
            continue;
          }
          const uint8_t* p = src + static_cast<size_t>(y) * w * 3;
          const float* l = lut + 256 * c;
          for (int x = 0; x < w; x++) dst[x] = l[p[3 * x + c]];
          std::fill(dst + w, dst + frame, 0.0f);
        }
      }
      return int64_t{0};
    });
    return 0.0;
  });
}

// llavaAlpha({ src: HWC uint8 mask image [n, 3], lut: float32 [3 * 256], threshold, inside, outside,
//              alpha: float32 [n], foreground: uint8 [n] }) -> Promise<foreground count>: the sum of
// the three normalised channels (float32, channel 0 + 1, then + 2) above the threshold is inside.
Napi::Value LlavaAlpha(const Napi::CallbackInfo& info) {
  Napi::Object o = info[0].As<Napi::Object>();
  const size_t n = arrayLength<float>(o, "alpha");
  const uint8_t* src = arrayArg<uint8_t>(o, "src", n * 3);
  const float* lut = arrayArg<float>(o, "lut", 768);
  float* alpha = arrayArg<float>(o, "alpha", n);
  uint8_t* foreground = arrayArg<uint8_t>(o, "foreground", n);
  const float threshold = static_cast<float>(o.Get("threshold").As<Napi::Number>().DoubleValue());
  const float inside = static_cast<float>(o.Get("inside").As<Napi::Number>().DoubleValue());
  const float outside = static_cast<float>(o.Get("outside").As<Napi::Number>().DoubleValue());
  return queue(info, [=] {
    int64_t count = 0;
    for (size_t i = 0; i < n; i++) {
      float sum = lut[src[3 * i]] + lut[256 + src[3 * i + 1]];
      sum = sum + lut[512 + src[3 * i + 2]];
      const uint8_t fg = sum > threshold ? 1 : 0;
      foreground[i] = fg;
      alpha[i] = fg ? inside : outside;
      count += fg;
    }
    return static_cast<double>(count);
  });
}

// bilinear({ src: float32, stride, rows, window: {left, top, width, height}, x: taps, y: taps,
//            out?: float32 [y.outSize, x.outSize], mask?: uint8 (same), threads }) -> Promise<area>
Napi::Value Bilinear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  const int stride = intArg(o, "stride", 1), rows = intArg(o, "rows", 1);
  const float* src = arrayArg<float>(o, "src", static_cast<size_t>(stride) * rows);
  Napi::Object wo = o.Get("window").As<Napi::Object>();
  Window w{intArg(wo, "left"), intArg(wo, "top"), intArg(wo, "width", 1), intArg(wo, "height", 1)};
  if (w.left + w.width > stride || w.top + w.height > rows) fail(env, "the window reaches outside the input");
  Taps xs = tapsArg(o.Get("x").As<Napi::Object>(), w.width);
  Taps ys = tapsArg(o.Get("y").As<Napi::Object>(), w.height);
  const size_t n = static_cast<size_t>(xs.outSize) * ys.outSize;
  float* out = o.Has("out") && o.Get("out").IsTypedArray() ? arrayArg<float>(o, "out", n) : nullptr;
  uint8_t* mask = o.Has("mask") && o.Get("mask").IsTypedArray() ? arrayArg<uint8_t>(o, "mask", n) : nullptr;
  if (!out == !mask) fail(env, "give exactly one of out and mask");
  const int threads = threadsArg(o);
  return queue(info, [=] { return static_cast<double>(bilinear(src, stride, w, xs, ys, threads, out, mask)); });
}

// threshold({ src: uint8, threshold, one, out: uint8 (same length), threads }) -> Promise<count>
Napi::Value Threshold(const Napi::CallbackInfo& info) {
  Napi::Object o = info[0].As<Napi::Object>();
  const size_t n = arrayLength<uint8_t>(o, "src");
  const uint8_t* src = arrayArg<uint8_t>(o, "src", n);
  uint8_t* out = arrayArg<uint8_t>(o, "out", n);
  const int threshold = intArg(o, "threshold");
  const int one = intArg(o, "one");
  if (one > 255) fail(o.Env(), "one must be at most 255");
  const int threads = threadsArg(o);
  return queue(info, [=] {
    return static_cast<double>(thresholdBytes(src, n, threshold, static_cast<uint8_t>(one), threads, out));
  });
}

// polygons({ coords: float64 (all rings' x, y pairs), ringStarts: int32 [rings + 1] (offsets into
//            coords), width, height, out: uint8 [height * width], threads }) -> Promise<area>
Napi::Value Polygons(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  const int width = intArg(o, "width", 1), height = intArg(o, "height", 1);
  const size_t coordCount = arrayLength<double>(o, "coords");
  const double* coords = arrayArg<double>(o, "coords", coordCount);
  const int rings = static_cast<int>(arrayLength<int32_t>(o, "ringStarts")) - 1;
  if (rings < 1) fail(env, "no polygon ring");
  const int32_t* ringStarts = arrayArg<int32_t>(o, "ringStarts", rings + 1);
  for (int r = 0; r < rings; r++) {
    if (ringStarts[r] < 0 || ringStarts[r + 1] < ringStarts[r] + 6 || (ringStarts[r + 1] - ringStarts[r]) % 2 ||
        static_cast<size_t>(ringStarts[r + 1]) > coordCount)
      fail(env, "ringStarts must split coords into rings of at least 3 points");
  }
  uint8_t* out = arrayArg<uint8_t>(o, "out", static_cast<size_t>(width) * height);
  const int threads = threadsArg(o);
  return queue(info, [=] {
    return static_cast<double>(rasterizePolygons(coords, ringStarts, rings, width, height, threads, out));
  });
}

// fill({ out: uint8 [height * width], width, height, left, top, right, bottom, threads }) ->
// Promise<area>: 1 inside the pixel rectangle [left, right) x [top, bottom), 0 elsewhere (a box region,
// or the whole image).
Napi::Value Fill(const Napi::CallbackInfo& info) {
  Napi::Object o = info[0].As<Napi::Object>();
  const int width = intArg(o, "width", 1), height = intArg(o, "height", 1);
  const int left = std::min(width, intArg(o, "left")), right = std::min(width, intArg(o, "right"));
  const int top = std::min(height, intArg(o, "top")), bottom = std::min(height, intArg(o, "bottom"));
  uint8_t* out = arrayArg<uint8_t>(o, "out", static_cast<size_t>(width) * height);
  const int threads = threadsArg(o);
  return queue(info, [=] {
    parallelSum(height, threads, chunkRows(width), [&](int b, int e) {
      for (int y = b; y < e; y++) {
        uint8_t* row = out + static_cast<size_t>(y) * width;
        if (y < top || y >= bottom || right <= left) {
          std::memset(row, 0, width);
          continue;
        }
        std::memset(row, 0, left);
        std::memset(row + left, 1, right - left);
        std::memset(row + right, 0, width - right);
      }
      return int64_t{0};
    });
    return right > left && bottom > top ? static_cast<double>(right - left) * (bottom - top) : 0.0;
  });
}

// rle({ counts: float64 run lengths summing to width * height, width, height, out: uint8, threads })
//     -> Promise<area>
Napi::Value Rle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  const int width = intArg(o, "width", 1), height = intArg(o, "height", 1);
  const size_t runs = arrayLength<double>(o, "counts");
  const double* counts = arrayArg<double>(o, "counts", runs);
  double total = 0;
  for (size_t i = 0; i < runs; i++) {
    if (!(counts[i] >= 0) || counts[i] != static_cast<double>(static_cast<int64_t>(counts[i])))
      fail(env, "run lengths must be whole numbers >= 0");
    total += counts[i];
  }
  if (total != static_cast<double>(width) * height) fail(env, "the runs do not cover the image");
  uint8_t* out = arrayArg<uint8_t>(o, "out", static_cast<size_t>(width) * height);
  const int threads = threadsArg(o);
  return queue(info, [=] {
    return static_cast<double>(rleToMask(counts, static_cast<int>(runs), width, height, threads, out));
  });
}

// rleCounts({ mask: uint8 [height * width], width, height }) -> Promise<Uint32Array> (runs)
Napi::Value RleCounts(const Napi::CallbackInfo& info) {
  Napi::Object o = info[0].As<Napi::Object>();
  const int width = intArg(o, "width", 1), height = intArg(o, "height", 1);
  const uint8_t* mask = arrayArg<uint8_t>(o, "mask", static_cast<size_t>(width) * height);
  auto runs = std::make_shared<std::vector<uint32_t>>();
  return queue(
      info,
      [=] {
        *runs = maskToRuns(mask, width, height);
        return 0.0;
      },
      [runs](Napi::Env env, double) -> Napi::Value {
        auto array = Napi::Uint32Array::New(env, runs->size());
        if (!runs->empty()) std::memcpy(array.Data(), runs->data(), runs->size() * sizeof(uint32_t));
        return array;
      });
}

// split({ src: uint8 [n * channels], channels: 1-4, rgb: uint8 [n * 3], alpha?: uint8 [n], threads })
Napi::Value Split(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  const int channels = intArg(o, "channels", 1);
  if (channels > 4) fail(env, "channels must be 1 to 4");
  const size_t n = arrayLength<uint8_t>(o, "rgb") / 3;
  const uint8_t* src = arrayArg<uint8_t>(o, "src", n * channels);
  uint8_t* rgb = arrayArg<uint8_t>(o, "rgb", n * 3);
  const bool hasAlpha = channels == 2 || channels == 4;
  uint8_t* alpha = hasAlpha ? arrayArg<uint8_t>(o, "alpha", n) : nullptr;
  const int threads = threadsArg(o);
  return queue(info, [=] {
    splitPixels(src, n, channels, threads, rgb, alpha);
    return 0.0;
  });
}

// pixelMask({ src: uint8 [n * channels], channels: 1-4, out: uint8 [n], threads }) -> Promise<area>
Napi::Value PixelMask(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  const int channels = intArg(o, "channels", 1);
  if (channels > 4) fail(env, "channels must be 1 to 4");
  const size_t n = arrayLength<uint8_t>(o, "out");
  const uint8_t* src = arrayArg<uint8_t>(o, "src", n * channels);
  uint8_t* out = arrayArg<uint8_t>(o, "out", n);
  const int threads = threadsArg(o);
  return queue(info, [=] { return static_cast<double>(pixelsToMask(src, n, channels, threads, out)); });
}

// SHA-256 through the OpenSSL that Node itself links and exports (node:crypto's own), found at run
// time: no second implementation, no copy of the input, and the hashing runs off the event loop.
struct OpenSsl {
  using New = void* (*)();
  using Free = void (*)(void*);
  using Md = const void* (*)();
  using Init = int (*)(void*, const void*, void*);
  using Update = int (*)(void*, const void*, size_t);
  using Final = int (*)(void*, unsigned char*, unsigned int*);
  New ctxNew = nullptr;
  Free ctxFree = nullptr;
  Md sha256 = nullptr;
  Init init = nullptr;
  Update update = nullptr;
  Final final = nullptr;
  bool ok() const { return ctxNew && ctxFree && sha256 && init && update && final; }
};

const OpenSsl& openSsl() {
  static const OpenSsl ssl = [] {
    OpenSsl s;
    s.ctxNew = reinterpret_cast<OpenSsl::New>(dlsym(RTLD_DEFAULT, "EVP_MD_CTX_new"));
    s.ctxFree = reinterpret_cast<OpenSsl::Free>(dlsym(RTLD_DEFAULT, "EVP_MD_CTX_free"));
    s.sha256 = reinterpret_cast<OpenSsl::Md>(dlsym(RTLD_DEFAULT, "EVP_sha256"));
    s.init = reinterpret_cast<OpenSsl::Init>(dlsym(RTLD_DEFAULT, "EVP_DigestInit_ex"));
    s.update = reinterpret_cast<OpenSsl::Update>(dlsym(RTLD_DEFAULT, "EVP_DigestUpdate"));
    s.final = reinterpret_cast<OpenSsl::Final>(dlsym(RTLD_DEFAULT, "EVP_DigestFinal_ex"));
    return s;
  }();
  return ssl;
}

// sha256({ parts: Uint8Array[] }) -> Promise<string> (hex of the parts' concatenation)
Napi::Value Sha256(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!openSsl().ok()) fail(env, "OpenSSL's EVP functions are not exported by this Node binary");
  Napi::Object o = info[0].As<Napi::Object>();
  Napi::Value partsValue = o.Get("parts");
  if (!partsValue.IsArray()) fail(env, "parts must be a list of Uint8Arrays");
  Napi::Array parts = partsValue.As<Napi::Array>();
  std::vector<std::pair<const uint8_t*, size_t>> spans;
  for (uint32_t i = 0; i < parts.Length(); i++) {
    Napi::Value v = parts.Get(i);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      fail(env, "parts must be a list of Uint8Arrays");
    auto a = v.As<Napi::Uint8Array>();
    spans.emplace_back(a.Data(), a.ElementLength());
  }
  auto digest = std::make_shared<std::string>();
  return queue(
      info,
      [spans, digest] {
        const OpenSsl& ssl = openSsl();
        void* ctx = ssl.ctxNew();
        if (!ctx) throw std::runtime_error("EVP_MD_CTX_new failed");
        unsigned char md[32];
        unsigned int len = 0;
        bool ok = ssl.init(ctx, ssl.sha256(), nullptr) == 1;
        for (const auto& [data, size] : spans) ok = ok && ssl.update(ctx, data, size) == 1;
        ok = ok && ssl.final(ctx, md, &len) == 1 && len == 32;
        ssl.ctxFree(ctx);
        if (!ok) throw std::runtime_error("SHA-256 failed");
        static const char* hex = "0123456789abcdef";
        digest->resize(64);
        for (int i = 0; i < 32; i++) {
          (*digest)[2 * i] = hex[md[i] >> 4];
          (*digest)[2 * i + 1] = hex[md[i] & 15];
        }
        return 0.0;
      },
      [digest](Napi::Env e, double) -> Napi::Value { return Napi::String::New(e, *digest); });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("resample", Napi::Function::New(env, Resample));
  exports.Set("planes", Napi::Function::New(env, Planes));
  exports.Set("llavaAlpha", Napi::Function::New(env, LlavaAlpha));
  exports.Set("bilinear", Napi::Function::New(env, Bilinear));
  exports.Set("threshold", Napi::Function::New(env, Threshold));
  exports.Set("polygons", Napi::Function::New(env, Polygons));
  exports.Set("rle", Napi::Function::New(env, Rle));
  exports.Set("fill", Napi::Function::New(env, Fill));
  exports.Set("rleCounts", Napi::Function::New(env, RleCounts));
  exports.Set("split", Napi::Function::New(env, Split));
  exports.Set("pixelMask", Napi::Function::New(env, PixelMask));
  exports.Set("sha256", Napi::Function::New(env, Sha256));
  exports.Set("hasSha256", Napi::Boolean::New(env, openSsl().ok()));
  exports.Set("avx2", Napi::Boolean::New(env, kAvx2));
  return exports;
}

}  // namespace

NODE_API_MODULE(region_vqa_imaging, Init)
