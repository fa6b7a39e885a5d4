// Emulated accelerator time for benchmarks.pipeline (the simulated device of issue 12).
//
// An XLA FFI handler, "ppjax_sim_hold": x [B] f32 -> zeros [B] f32, after holding its XLA
// worker thread for seconds_per_image * B seconds. It runs inside the compiled program like any
// other op, so the program stays asynchronous: jit dispatch returns at once and the host thread
// is free while the "device" is busy, as with a real accelerator. (A Python io_callback cannot
// do this: a program holding one is executed synchronously by jaxlib, blocking the caller.)
//
// The hold time and an image counter live in process-wide atomics set/read through ctypes, so
// the emulated rate can be calibrated without recompiling.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

static std::atomic<double> g_seconds_per_image{0.0};
static std::atomic<int64_t> g_images{0};

extern "C" void ppjax_sim_set_seconds_per_image(double seconds) {
  g_seconds_per_image.store(seconds);
}
extern "C" double ppjax_sim_seconds_per_image() { return g_seconds_per_image.load(); }
extern "C" int64_t ppjax_sim_images() { return g_images.load(); }
extern "C" void ppjax_sim_reset_images() { g_images.store(0); }

static ffi::Error Hold(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y) {
  const int64_t n = static_cast<int64_t>(x.element_count());
  g_images.fetch_add(n);
  const double seconds = g_seconds_per_image.load() * static_cast<double>(n);
  if (seconds > 0) {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  }
  float* out = y->typed_data();
  for (int64_t i = 0; i < n; ++i) out[i] = 0.0f;
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ppjax_sim_hold, Hold,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
