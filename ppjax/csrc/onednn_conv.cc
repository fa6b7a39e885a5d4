// oneDNN 2-D convolutions for XLA on CPU, called through the XLA FFI (jax.ffi).
//
// Why: XLA's CPU backend upcasts bfloat16 convolutions to float32 and runs them through
// YNNPACK/Eigen, so it never reaches the AMX tiles of recent Xeons; oneDNN's brgemm kernels do
// (PyTorch's channels-last bf16 path is oneDNN too). An attack needs the forward pass and the
// gradient with respect to the *input* only, so two primitives suffice:
//
//   ppjax_onednn_conv   mode 0: y  = conv(x, w)          x [N,H,W,C]  w [KH,KW,C/G,O]  y [N,OH,OW,O]
//                       mode 1: dx = conv_bwd_data(dy, w) dy [N,OH,OW,O] -> dx [N,H,W,C]
//
// Layouts are JAX's (NHWC activations, HWIO kernels), handed to oneDNN as strided memory
// descriptors: activations are used in place; kernels are reordered per call into the blocked
// layout the chosen kernel wants (as PyTorch's eager path does). Primitive descriptors and
// primitives are cached per shape; execution uses a per-call stream and a per-call
// user-managed scratchpad, so concurrent calls from XLA's thread pool are safe.

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::algorithm;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

dnnl::engine& Engine() {
  static dnnl::engine* eng = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *eng;
}

struct Geometry {
  int64_t n, h, w, c;     // input
  int64_t oh, ow, o;      // output
  int64_t kh, kw, groups;
  int64_t sh, sw, pt, pb, pl, pr;
  memory::data_type dt;    // x and the kernel
  memory::data_type dt_y;  // y (may be f32 when x is bf16: f32 output, no extra pass)
};

struct Entry {
  // mode 0
  std::unique_ptr<dnnl::convolution_forward> fwd;
  // mode 1
  std::unique_ptr<dnnl::convolution_backward_data> bwd;
  memory::desc user_w, prim_w, src, dst, scratch;
  std::unique_ptr<dnnl::reorder> w_reorder;  // null when the kernel takes HWIO as is
  std::string impl;                          // oneDNN's name for the chosen kernel
};

std::mutex cache_mu;
std::unordered_map<std::string, std::shared_ptr<Entry>>& Cache() {
  static auto* c = new std::unordered_map<std::string, std::shared_ptr<Entry>>();
  return *c;
}

std::string Key(const Geometry& g, int64_t mode) {
  std::ostringstream s;
  s << mode << ':' << static_cast<int>(g.dt) << ',' << static_cast<int>(g.dt_y) << ':' << g.n << ',' << g.h << ',' << g.w << ','
    << g.c << ':' << g.oh << ',' << g.ow << ',' << g.o << ':' << g.kh << ',' << g.kw << ','
    << g.groups << ':' << g.sh << ',' << g.sw << ':' << g.pt << ',' << g.pb << ',' << g.pl
    << ',' << g.pr;
  return s.str();
}

// HWIO kernel [KH, KW, C/G, O] as oneDNN's logical (G,) O, I, KH, KW with explicit strides.
memory::desc UserWeights(const Geometry& g) {
  const int64_t ig = g.c / g.groups, og = g.o / g.groups;
  if (g.groups == 1) {
    return memory::desc({g.o, g.c, g.kh, g.kw}, g.dt, {1, g.o, g.kw * g.c * g.o, g.c * g.o});
  }
  return memory::desc({g.groups, og, ig, g.kh, g.kw}, g.dt,
                      {og, 1, g.o, g.kw * ig * g.o, ig * g.o});
}

memory::desc AnyWeights(const Geometry& g) {
  const int64_t ig = g.c / g.groups, og = g.o / g.groups;
  if (g.groups == 1) return memory::desc({g.o, g.c, g.kh, g.kw}, g.dt, tag::any);
  return memory::desc({g.groups, og, ig, g.kh, g.kw}, g.dt, tag::any);
}

std::shared_ptr<Entry> Build(const Geometry& g, int64_t mode) {
  auto& eng = Engine();
  auto e = std::make_shared<Entry>();
  e->src = memory::desc({g.n, g.c, g.h, g.w}, g.dt, tag::nhwc);
  e->dst = memory::desc({g.n, g.o, g.oh, g.ow}, g.dt_y, tag::nhwc);
  e->user_w = UserWeights(g);
  const memory::dims strides = {g.sh, g.sw}, pad_l = {g.pt, g.pl}, pad_r = {g.pb, g.pr};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (mode == 0) {
    dnnl::convolution_forward::primitive_desc pd(
        eng, dnnl::prop_kind::forward_inference, algorithm::convolution_direct, e->src,
        AnyWeights(g), e->dst, strides, pad_l, pad_r, attr);
    e->prim_w = pd.weights_desc();
    e->scratch = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
    e->fwd = std::make_unique<dnnl::convolution_forward>(pd);
  } else {
    dnnl::convolution_forward::primitive_desc hint(
        eng, dnnl::prop_kind::forward_training, algorithm::convolution_direct, e->src,
        AnyWeights(g), e->dst, strides, pad_l, pad_r);
    auto make = [&] {
      return dnnl::convolution_backward_data::primitive_desc(
          eng, algorithm::convolution_direct, e->src, AnyWeights(g), e->dst, strides, pad_l,
          pad_r, hint, attr);
    };
    auto pd = make();
    if (g.groups == g.c && g.groups == g.o) {
      // Depthwise: oneDNN ranks the AMX brgemm kernel first even for strided depthwise
      // backward-data, where it runs ~10x slower than the dedicated depthwise kernel.
      bool found = std::string(pd.impl_info_str()).find("dw") != std::string::npos;
      while (!found && pd.next_impl()) {
        found = std::string(pd.impl_info_str()).find("dw") != std::string::npos;
      }
      if (!found) pd = make();
    }
    e->prim_w = pd.weights_desc();
    e->scratch = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
    e->bwd = std::make_unique<dnnl::convolution_backward_data>(pd);
  }
  if (e->prim_w != e->user_w) {
    e->w_reorder = std::make_unique<dnnl::reorder>(
        dnnl::reorder::primitive_desc(eng, e->user_w, eng, e->prim_w));
  }
  return e;
}

std::shared_ptr<Entry> Lookup(const Geometry& g, int64_t mode) {
  const std::string key = Key(g, mode);
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = Cache().find(key);
    if (it != Cache().end()) return it->second;
  }
  auto e = Build(g, mode);  // outside the lock: building JIT-compiles kernels
  std::lock_guard<std::mutex> lock(cache_mu);
  return Cache().emplace(key, e).first->second;
}

bool ToDnnl(ffi::DataType t, memory::data_type* out) {
  switch (t) {
    case ffi::DataType::F32: *out = memory::data_type::f32; return true;
    case ffi::DataType::BF16: *out = memory::data_type::bf16; return true;
    default: return false;
  }
}

ffi::Error Conv(ffi::AnyBuffer in, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> out,
                int64_t mode, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                int64_t pr, int64_t groups) {
  if (mode != 0 && mode != 1) return ffi::Error::InvalidArgument("ppjax_onednn_conv: bad mode");
  // x is the forward input, y the forward output, whichever direction this call runs.
  memory::data_type dt_in, dt_w, dt_out;
  if (!ToDnnl(in.element_type(), &dt_in) || !ToDnnl(w.element_type(), &dt_w) ||
      !ToDnnl(out->element_type(), &dt_out)) {
    return ffi::Error::InvalidArgument("ppjax_onednn_conv: float32 or bfloat16 only");
  }
  const memory::data_type dt_x = mode == 0 ? dt_in : dt_out, dt_y = mode == 0 ? dt_out : dt_in;
  if (dt_w != dt_x || (dt_y != dt_x && dt_y != memory::data_type::f32)) {
    return ffi::Error::InvalidArgument(
        "ppjax_onednn_conv: x and the kernel must share a dtype; y is that dtype or float32");
  }
  auto di = in.dimensions(), dw = w.dimensions(), dout = out->dimensions();
  if (di.size() != 4 || dw.size() != 4 || dout.size() != 4) {
    return ffi::Error::InvalidArgument("ppjax_onednn_conv: expects rank-4 NHWC / HWIO arrays");
  }
  auto dx = mode == 0 ? di : dout;
  auto dy = mode == 0 ? dout : di;
  Geometry g{dx[0], dx[1], dx[2], dx[3], dy[1], dy[2], dy[3], dw[0], dw[1], groups,
             sh,    sw,    pt,    pb,    pl,    pr,    dt_x,  dt_y};
  if (groups < 1 || g.c % groups || g.o % groups || dw[2] * groups != g.c || dw[3] != g.o) {
    return ffi::Error::InvalidArgument("ppjax_onednn_conv: kernel shape does not match");
  }
  try {
    auto e = Lookup(g, mode);
    auto& eng = Engine();
    dnnl::stream strm(eng);
    memory user_w(e->user_w, eng, w.untyped_data());
    memory prim_w = user_w;
    if (e->w_reorder) {
      prim_w = memory(e->prim_w, eng);
      e->w_reorder->execute(strm, user_w, prim_w);
    }
    // uninitialised (a std::vector would zero megabytes per call)
    std::unique_ptr<uint8_t[]> scratch_buf(new uint8_t[e->scratch.get_size() + 64]);
    void* aligned = reinterpret_cast<void*>(
        (reinterpret_cast<uintptr_t>(scratch_buf.get()) + 63) & ~uintptr_t{63});
    memory scratch(e->scratch, eng, aligned);
    if (mode == 0) {
      memory src(e->src, eng, in.untyped_data());
      memory dst(e->dst, eng, out->untyped_data());
      e->fwd->execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, prim_w},
                             {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      memory diff_dst(e->dst, eng, in.untyped_data());
      memory diff_src(e->src, eng, out->untyped_data());
      e->bwd->execute(strm, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, prim_w},
                             {DNNL_ARG_DIFF_SRC, diff_src}, {DNNL_ARG_SCRATCHPAD, scratch}});
    }
    strm.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("ppjax_onednn_conv: oneDNN: ") + err.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PpjaxOnednnConv, Conv,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("mode")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pb")
                                  .Attr<int64_t>("pl")
                                  .Attr<int64_t>("pr")
                                  .Attr<int64_t>("groups"));

// Which kernel oneDNN picked for a geometry (diagnostics, benchmarks): writes its name.
extern "C" int ppjax_onednn_impl(int64_t mode, int dt_bf16, const int64_t* geo, char* out,
                                 int n) {
  Geometry g{geo[0], geo[1], geo[2],  geo[3],  geo[4],  geo[5],  geo[6],
             geo[7], geo[8], geo[9],  geo[10], geo[11], geo[12], geo[13],
             geo[14], geo[15], dt_bf16 ? memory::data_type::bf16 : memory::data_type::f32,
             dt_bf16 ? memory::data_type::bf16 : memory::data_type::f32};
  try {
    auto e = Lookup(g, mode);
    std::strncpy(out, e->impl.c_str(), n - 1);
    out[n - 1] = 0;
    return 0;
  } catch (const dnnl::error& err) {
    std::strncpy(out, err.what(), n - 1);
    out[n - 1] = 0;
    return 1;
  }
}
