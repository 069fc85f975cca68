// bindings.cpp: the pybind11 module fastlstm._C, one thin layer: check arrays, release the GIL, forward.
//
// What this is: array -> pointer conversion with dtype/shape/contiguity/writability checks, and the
// build/runtime switches (ISA, threads). What it is not: the layer API. Users call fastlstm.LSTM
// (python/fastlstm/layer.py), which validates inputs with user-facing messages and allocates every
// output array it passes here, so kernels only ever write memory fastlstm owns.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <type_traits>
#include <vector>

#include "check.h"
#include "cuda/lstm_cuda.h"
#include "lstm.h"
#include "threading.h"

namespace py = pybind11;
using namespace fastlstm;

#ifndef FASTLSTM_VERSION
#define FASTLSTM_VERSION "0+unknown"
#endif

namespace {

// A shape as Python prints a tuple: (3,) or (2, 3).
std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

std::string shape_str(const py::array& a) { return shape_str(std::vector<int64_t>(a.shape(), a.shape() + a.ndim())); }

// Whether a's dtype is T's: by NumPy's equivalence (kind, size, byte order), not by identity. An array
// that went through pickle or copy.deepcopy carries a float32 dtype equal to NumPy's but not the same
// object, and a layer deep-copied with its dtype makes such arrays itself.
template <typename T>
bool has_dtype(const py::array& a) {
  return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), py::dtype::of<T>().ptr());
}

// Pointer to a C-contiguous array of dtype T with exactly `shape`.
template <typename T>
T* arr(const py::object& obj, const char* name, const std::vector<int64_t>& shape, bool writable) {
  FASTLSTM_CHECK(py::isinstance<py::array>(obj), name << ": expected a numpy array");
  py::array a = py::reinterpret_borrow<py::array>(obj);
  FASTLSTM_CHECK(has_dtype<T>(a), name << ": expected dtype " << py::str(py::dtype::of<T>()).cast<std::string>()
                                                        << ", got " << py::str(a.dtype()).cast<std::string>());
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
  FASTLSTM_CHECK(ok, name << ": expected shape " << shape_str(shape) << ", got " << shape_str(a));
  FASTLSTM_CHECK(a.flags() & py::array::c_style, name << ": expected a C-contiguous array");
  if (writable) {
    FASTLSTM_CHECK(a.writeable(), name << ": expected a writable array");
    return static_cast<T*>(a.mutable_data());
  }
  return const_cast<T*>(static_cast<const T*>(a.data()));
}

// ---- arrays as the kernels see them ---------------------------------------------------------------------
// HostArrays: NumPy arrays, for the CPU kernels. DeviceArrays: any object with __cuda_array_interface__
// (CuPy arrays), for the CUDA kernels. Both hand out a typed pointer to a C-contiguous array of exactly
// the expected shape, or raise ValueError naming the argument.
struct HostArrays {
  static constexpr bool device = false;
  static std::vector<int64_t> shape(const py::object& obj, const char* name) {
    FASTLSTM_CHECK(py::isinstance<py::array>(obj), name << ": expected a numpy array");
    auto a = py::reinterpret_borrow<py::array>(obj);
    return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
  }
  template <typename T>
  static T* get(const py::object& obj, const char* name, const std::vector<int64_t>& shape, bool writable) {
    return arr<T>(obj, name, shape, writable);
  }
  static bool is_f64(const py::object& obj) {
    return py::isinstance<py::array>(obj) && has_dtype<double>(py::reinterpret_borrow<py::array>(obj));
  }
};

struct DeviceArrays {
  static constexpr bool device = true;
  struct View {
    std::uintptr_t ptr = 0;
    bool readonly = false;
    std::string typestr;
    std::vector<int64_t> shape, strides;  // strides in bytes; empty: C-contiguous
  };
  static View view(const py::object& obj, const char* name) {
    FASTLSTM_CHECK(py::hasattr(obj, "__cuda_array_interface__"),
                   name << ": expected a CUDA array (a cupy.ndarray), got " << py::str(py::type::of(obj)).cast<std::string>());
    py::dict d = obj.attr("__cuda_array_interface__");
    View v;
    for (auto n : d["shape"].cast<py::tuple>()) v.shape.push_back(n.cast<int64_t>());
    v.typestr = d["typestr"].cast<std::string>();
    auto data = d["data"].cast<py::tuple>();
    v.ptr = data[0].cast<std::uintptr_t>();
    v.readonly = data[1].cast<bool>();
    if (d.contains("strides") && !d["strides"].is_none())
      for (auto n : d["strides"].cast<py::tuple>()) v.strides.push_back(n.cast<int64_t>());
    FASTLSTM_CHECK(v.strides.empty() || v.strides.size() == v.shape.size(),
                   name << ": __cuda_array_interface__ has " << v.strides.size() << " strides for " << v.shape.size()
                        << " dimensions");
    return v;
  }
  static std::vector<int64_t> shape(const py::object& obj, const char* name) { return view(obj, name).shape; }
  template <typename T>
  static T* get(const py::object& obj, const char* name, const std::vector<int64_t>& shape, bool writable) {
    const View v = view(obj, name);
    const char* want = std::is_same_v<T, int64_t> ? "<i8" : sizeof(T) == 8 ? "<f8" : "<f4";
    FASTLSTM_CHECK(v.typestr == want, name << ": expected typestr " << want << ", got " << v.typestr);
    FASTLSTM_CHECK(v.shape == shape, name << ": expected shape " << shape_str(shape) << ", got " << shape_str(v.shape));
    int64_t expect = sizeof(T);
    for (size_t i = v.strides.size(); i-- > 0;) {  // C order, ignoring the strides of length-1 axes
      FASTLSTM_CHECK(v.shape[i] <= 1 || v.strides[i] == expect, name << ": expected a C-contiguous array");
      expect *= v.shape[i];
    }
    FASTLSTM_CHECK(!writable || !v.readonly, name << ": expected a writable array");
    return reinterpret_cast<T*>(v.ptr);
  }
  static bool is_f64(const py::object& obj) {
    return py::hasattr(obj, "__cuda_array_interface__") && view(obj, "array").typestr == "<f8";
  }
};

template <typename A, typename T>
T* optional(const py::object& obj, const char* name, const std::vector<int64_t>& shape, bool writable) {
  return obj.is_none() ? nullptr : A::template get<T>(obj, name, shape, writable);
}

// Where a call runs: CPU threads, or a CUDA device, stream and strategy.
struct Launch {
  int num_threads = 0;
  int device = 0;
  std::uintptr_t stream = 0;
  cuda::Strategy strategy = cuda::Strategy::Auto;
};

// A 2-D array whose rows may be strided (unit stride within a row): pointer and row stride.
template <typename T>
T* mat(const py::object& obj, const char* name, int64_t& rows, int64_t& cols, int64_t& ld, bool writable) {
  FASTLSTM_CHECK(py::isinstance<py::array>(obj), name << ": expected a numpy array");
  py::array a = py::reinterpret_borrow<py::array>(obj);
  FASTLSTM_CHECK(has_dtype<T>(a), name << ": expected dtype " << py::str(py::dtype::of<T>()).cast<std::string>()
                                        << ", got " << py::str(a.dtype()).cast<std::string>());
  FASTLSTM_CHECK(a.ndim() == 2, name << ": expected a 2-D array, got shape " << shape_str(a));
  rows = a.shape(0);
  cols = a.shape(1);
  const auto sz = static_cast<py::ssize_t>(sizeof(T));
  if (rows == 0 || cols == 0) {  // nothing is read or written: NumPy's strides of an empty array are arbitrary
    ld = cols;
  } else {
    FASTLSTM_CHECK(cols <= 1 || a.strides(1) == sz, name << ": rows must be contiguous");
    FASTLSTM_CHECK(a.strides(0) % sz == 0 && (rows <= 1 || a.strides(0) >= cols * sz),
                   name << ": unsupported row stride " << a.strides(0));
    ld = rows <= 1 ? cols : a.strides(0) / sz;
  }
  if (writable) {
    FASTLSTM_CHECK(a.writeable(), name << ": expected a writable array");
    return static_cast<T*>(a.mutable_data());
  }
  return const_cast<T*>(static_cast<const T*>(a.data()));
}

// lengths: None, or an int64 [B] array, non-increasing, each in 1..T (the layer sorts and checks first)
const int64_t* lengths_arg(const py::object& obj, int64_t B, int64_t T) {
  if (obj.is_none()) return nullptr;
  const int64_t* p = arr<int64_t>(obj, "lengths", {B}, false);
  for (int64_t b = 0; b < B; ++b) {
    FASTLSTM_CHECK(p[b] >= 1 && p[b] <= T, "lengths: expected values in 1.." << T << ", got " << p[b] << " at " << b);
    FASTLSTM_CHECK(b == 0 || p[b] <= p[b - 1], "lengths: expected a non-increasing order (sorted by the layer)");
  }
  return p;
}

// zoneout masks [D, T, B, H] (training) or weights (eval), recurrent-dropout masks [D, B, H]; see lstm.h
struct Regularisation {
  py::object zoneout_h = py::none(), zoneout_c = py::none(), rec_mask = py::none();
  double zoneout_h_p = 0, zoneout_c_p = 0;
};

// the projection of LSTMP: w_hr [D, P, H]; h_raw [D, T, B, H] (training); dh_proj [D, T, B, P] (backward)
struct Projection {
  py::object w_hr = py::none(), h_raw = py::none(), dh_proj = py::none();
};
// the fused input projection's operands (CPU forward without gx)
struct Input {
  py::object x = py::none(), w_ih = py::none();
};

// w_hh's shape [D, 4H, KP] -> KP, the width of h: H, or P with a projection
int64_t h_width(const std::vector<int64_t>& w, const Projection& proj) {
  FASTLSTM_CHECK(w.size() == 3, "w_hh: expected a [D, 4H, H] (or [D, 4H, P] with a projection) array");
  FASTLSTM_CHECK(!proj.w_hr.is_none() || 4 * w[2] == w[1],
                 "w_hh: expected [D, 4H, H] without a projection, got shape " << shape_str(w));
  return w[2];
}

// forward: gx [T, B, D*4H] (time-major) or [B, T, D*4H] (batch_first); w_hh [D, 4H, H]; bias [D, 4H];
// h0, c0, h_n, c_n [D, B, H]; y like gx with D*H columns; gates [D, T, B, 4H]; cell [D, T, B, H].
// Or (CPU) gx = None and the input projection fused into the loop: x [T, B, I] or [B, T, I], w_ih [D, 4H, I].
template <typename T, typename A = HostArrays>
void forward_impl(py::object gx, py::object w_hh, py::object bias, py::object h0, py::object c0, py::object y,
                  py::object h_n, py::object c_n, py::object gates, py::object cell, bool batch_first,
                  py::object lengths, int64_t step_offset, const Regularisation& reg, const Projection& proj,
                  const Launch& launch, const Input& input = Input{}) {
  FASTLSTM_CHECK(step_offset >= 0, "step_offset: expected >= 0, got " << step_offset);
  const auto w = A::shape(w_hh, "w_hh");
  const int64_t KP = h_width(w, proj), P = proj.w_hr.is_none() ? 0 : KP, D = w[0], H = w[1] / 4;
  FASTLSTM_CHECK(D == 1 || D == 2, "w_hh: expected 1 or 2 directions, got " << D);
  const bool fused = gx.is_none();
  FASTLSTM_CHECK(fused ? !input.x.is_none() && !input.w_ih.is_none() : input.x.is_none() && input.w_ih.is_none(),
                 "gx, x and w_ih: pass gx, or x with w_ih");
  const auto g = A::shape(fused ? input.x : gx, fused ? "x" : "gx");
  FASTLSTM_CHECK(g.size() == 3, (fused ? "x" : "gx") << ": expected a 3-D array");
  const int64_t T_ = batch_first ? g[1] : g[0], B = batch_first ? g[0] : g[1], I = fused ? g[2] : 0;
  auto seq = [&](int64_t cols) {
    return batch_first ? std::vector<int64_t>{B, T_, cols} : std::vector<int64_t>{T_, B, cols};
  };
  const T* pgx = fused ? nullptr : A::template get<T>(gx, "gx", seq(D * 4 * H), false);
  const T* px = fused ? A::template get<T>(input.x, "x", seq(I), false) : nullptr;
  const T* pwi = fused ? A::template get<T>(input.w_ih, "w_ih", {D, 4 * H, I}, false) : nullptr;
  const T* pw = A::template get<T>(w_hh, "w_hh", {D, 4 * H, KP}, false);
  const T* pb = optional<A, T>(bias, "bias", {D, 4 * H}, false);
  const T* ph0 = optional<A, T>(h0, "h0", {D, B, KP}, false);
  const T* pc0 = optional<A, T>(c0, "c0", {D, B, H}, false);
  T* py_ = A::template get<T>(y, "y", seq(D * KP), true);
  T* phn = A::template get<T>(h_n, "h_n", {D, B, KP}, true);
  T* pcn = A::template get<T>(c_n, "c_n", {D, B, H}, true);
  T* pg = optional<A, T>(gates, "gates", {D, T_, B, 4 * H}, true);
  T* pc = optional<A, T>(cell, "cell", {D, T_, B, H}, true);
  FASTLSTM_CHECK((pg == nullptr) == (pc == nullptr), "gates and cell: pass both (training) or neither");
  const T* pwr = optional<A, T>(proj.w_hr, "w_hr", {D, P, H}, false);
  T* phr = optional<A, T>(proj.h_raw, "h_raw", {D, T_, B, H}, true);
  FASTLSTM_CHECK(P ? (phr != nullptr) == (pg != nullptr) : !phr, "h_raw: pass it in training with a projection (w_hr) only");
  // (on the GPU the layer has checked and sorted lengths on the host; the kernels read a device copy)
  const int64_t* plen = A::device ? optional<A, int64_t>(lengths, "lengths", {B}, false) : lengths_arg(lengths, B, T_);
  const T* pzh = optional<A, T>(reg.zoneout_h, "zoneout_h", {D, T_, B, KP}, false);
  const T* pzc = optional<A, T>(reg.zoneout_c, "zoneout_c", {D, T_, B, H}, false);
  const T* prm = optional<A, T>(reg.rec_mask, "rec_mask", {D, B, KP}, false);
  FASTLSTM_CHECK(reg.zoneout_h_p >= 0 && reg.zoneout_h_p < 1 && reg.zoneout_c_p >= 0 && reg.zoneout_c_p < 1,
                 "zoneout_h_p, zoneout_c_p: expected values in [0, 1)");
  LstmForwardArgs<T> args[2];
  for (int64_t d = 0; d < D; ++d) {
    LstmForwardArgs<T>& a = args[d];
    a.T = T_; a.B = B; a.H = H; a.P = P;
    if (fused) {
      a.I = I;
      a.x = px;
      a.x_st = batch_first ? I : B * I;
      a.x_sb = batch_first ? T_ * I : I;
      a.w_ih = pwi + d * 4 * H * I;
    } else {
      a.gx = pgx + d * 4 * H;
      a.gx_st = batch_first ? D * 4 * H : B * D * 4 * H;
      a.gx_sb = batch_first ? T_ * D * 4 * H : D * 4 * H;
    }
    a.bias = pb ? pb + d * 4 * H : nullptr;
    a.w_hh = pw + d * 4 * H * KP;
    a.w_hr = pwr ? pwr + d * P * H : nullptr;
    a.h_raw = phr ? phr + d * T_ * B * H : nullptr;
    a.h0 = ph0 ? ph0 + d * B * KP : nullptr;
    a.c0 = pc0 ? pc0 + d * B * H : nullptr;
    a.y = py_ + d * KP;
    a.y_st = batch_first ? D * KP : B * D * KP;
    a.y_sb = batch_first ? T_ * D * KP : D * KP;
    a.h_n = phn + d * B * KP;
    a.c_n = pcn + d * B * H;
    a.gates = pg ? pg + d * T_ * B * 4 * H : nullptr;
    a.cell = pc ? pc + d * T_ * B * H : nullptr;
    a.reverse = d == 1;
    a.lengths = plen;
    a.step_offset = step_offset;
    a.zoneout_h = pzh ? pzh + d * T_ * B * KP : nullptr;
    a.zoneout_c = pzc ? pzc + d * T_ * B * H : nullptr;
    a.zoneout_h_p = static_cast<T>(reg.zoneout_h_p);
    a.zoneout_c_p = static_cast<T>(reg.zoneout_c_p);
    a.rec_mask = prm ? prm + d * B * KP : nullptr;
  }
  py::gil_scoped_release nogil;
  if constexpr (A::device) {
#ifdef FASTLSTM_HAVE_CUDA
    cuda::lstm_forward<T>(args, static_cast<int>(D), launch.device, launch.stream, launch.strategy);
#endif
  } else {
    lstm_forward<T>(args, static_cast<int>(D), launch.num_threads);
  }
}

// backward: w_hh [D, 4H, H]; gates [D, T, B, 4H]; cell [D, T, B, H]; c0, dh_n, dc_n, dh0, dc0 [D, B, H];
// dy [T, B, D*H] or [B, T, D*H]; dg [T, B, D*4H] or [B, T, D*4H].
template <typename T, typename A = HostArrays>
void backward_impl(py::object w_hh, py::object gates, py::object cell, py::object c0, py::object dy,
                   py::object dh_n, py::object dc_n, py::object dg, py::object dh0, py::object dc0,
                   py::object dbias, bool batch_first, py::object lengths, const Regularisation& reg,
                   const Projection& proj, const Launch& launch) {
  const auto ga = A::shape(gates, "gates");
  FASTLSTM_CHECK(ga.size() == 4, "gates: expected a [D, T, B, 4H] array");
  const int64_t D = ga[0], T_ = ga[1], B = ga[2], H = ga[3] / 4;
  FASTLSTM_CHECK(D == 1 || D == 2, "gates: expected 1 or 2 directions, got " << D);
  auto seq = [&](int64_t cols) {
    return batch_first ? std::vector<int64_t>{B, T_, cols} : std::vector<int64_t>{T_, B, cols};
  };
  const int64_t KP = h_width(A::shape(w_hh, "w_hh"), proj), P = proj.w_hr.is_none() ? 0 : KP;
  const T* pw = A::template get<T>(w_hh, "w_hh", {D, 4 * H, KP}, false);
  const T* pwr = optional<A, T>(proj.w_hr, "w_hr", {D, P, H}, false);
  const T* phr = optional<A, T>(proj.h_raw, "h_raw", {D, T_, B, H}, false);
  T* pdp = optional<A, T>(proj.dh_proj, "dh_proj", {D, T_, B, P}, true);
  FASTLSTM_CHECK(P ? (phr && pdp) : (!phr && !pdp), "h_raw and dh_proj: pass both with a projection (w_hr), neither without");
  const T* pg = A::template get<T>(gates, "gates", {D, T_, B, 4 * H}, false);
  const T* pc = A::template get<T>(cell, "cell", {D, T_, B, H}, false);
  const T* pc0 = optional<A, T>(c0, "c0", {D, B, H}, false);
  const T* pdy = optional<A, T>(dy, "dy", seq(D * KP), false);
  const T* pdhn = optional<A, T>(dh_n, "dh_n", {D, B, KP}, false);
  const T* pdcn = optional<A, T>(dc_n, "dc_n", {D, B, H}, false);
  T* pdg = A::template get<T>(dg, "dg", seq(D * 4 * H), true);
  T* pdh0 = A::template get<T>(dh0, "dh0", {D, B, KP}, true);
  T* pdc0 = A::template get<T>(dc0, "dc0", {D, B, H}, true);
  T* pdb = optional<A, T>(dbias, "dbias", {D, 4 * H}, true);
  // (on the GPU the layer has checked and sorted lengths on the host; the kernels read a device copy)
  const int64_t* plen = A::device ? optional<A, int64_t>(lengths, "lengths", {B}, false) : lengths_arg(lengths, B, T_);
  const T* pzh = optional<A, T>(reg.zoneout_h, "zoneout_h", {D, T_, B, KP}, false);
  const T* pzc = optional<A, T>(reg.zoneout_c, "zoneout_c", {D, T_, B, H}, false);
  const T* prm = optional<A, T>(reg.rec_mask, "rec_mask", {D, B, KP}, false);
  FASTLSTM_CHECK((pzh == nullptr) == (pzc == nullptr), "zoneout_h and zoneout_c: pass both or neither");
  LstmBackwardArgs<T> args[2];
  for (int64_t d = 0; d < D; ++d) {
    LstmBackwardArgs<T>& a = args[d];
    a.T = T_; a.B = B; a.H = H; a.P = P;
    a.w_hh = pw + d * 4 * H * KP;
    a.w_hr = pwr ? pwr + d * P * H : nullptr;
    a.h_raw = phr ? phr + d * T_ * B * H : nullptr;
    a.dh_proj = pdp ? pdp + d * T_ * B * P : nullptr;
    a.gates = pg + d * T_ * B * 4 * H;
    a.cell = pc + d * T_ * B * H;
    a.c0 = pc0 ? pc0 + d * B * H : nullptr;
    a.dy = pdy ? pdy + d * KP : nullptr;
    a.dy_st = batch_first ? D * KP : B * D * KP;
    a.dy_sb = batch_first ? T_ * D * KP : D * KP;
    a.dh_n = pdhn ? pdhn + d * B * KP : nullptr;
    a.dc_n = pdcn ? pdcn + d * B * H : nullptr;
    a.dg = pdg + d * 4 * H;
    a.dg_st = batch_first ? D * 4 * H : B * D * 4 * H;
    a.dg_sb = batch_first ? T_ * D * 4 * H : D * 4 * H;
    a.dh0 = pdh0 + d * B * KP;
    a.dc0 = pdc0 + d * B * H;
    a.dbias = pdb ? pdb + d * 4 * H : nullptr;
    a.reverse = d == 1;
    a.lengths = plen;
    a.zoneout_h = pzh ? pzh + d * T_ * B * KP : nullptr;
    a.zoneout_c = pzc ? pzc + d * T_ * B * H : nullptr;
    a.rec_mask = prm ? prm + d * B * KP : nullptr;
  }
  py::gil_scoped_release nogil;
  if constexpr (A::device) {
#ifdef FASTLSTM_HAVE_CUDA
    cuda::lstm_backward<T>(args, static_cast<int>(D), launch.device, launch.stream, launch.strategy);
#endif
  } else {
    lstm_backward<T>(args, static_cast<int>(D), launch.num_threads);
  }
}

// c (+)= op(a) op(b) (+ bias); 2-D operands, rows may be strided.
// an optional int64 [n] array of row indices, strictly increasing (no row twice: threads write C rows
// without synchronising), each in [0, limit)
const int64_t* index_arg(const py::object& obj, const char* name, int64_t n, int64_t limit) {
  if (obj.is_none()) return nullptr;
  const int64_t* p = arr<int64_t>(obj, name, {n}, false);
  for (int64_t i = 0; i < n; ++i) {
    FASTLSTM_CHECK(p[i] >= 0 && p[i] < limit, name << ": index " << p[i] << " at " << i << " is outside [0, " << limit << ")");
    FASTLSTM_CHECK(i == 0 || p[i] > p[i - 1], name << ": expected strictly increasing indices, got " << p[i - 1]
                                                   << " then " << p[i]);
  }
  return p;
}

template <typename T>
void gemm_impl(py::object a, py::object b, py::object c, bool trans_a, bool trans_b, py::object bias,
               bool accumulate, py::object m_rows, py::object k_rows, py::object b2, py::object c2,
               int64_t b2_offset, py::object a_sums, int num_threads) {
  GemmArgs<T> g;
  int64_t ar, ac, br, bc, cr, cc;
  g.a = mat<T>(a, "a", ar, ac, g.lda, false);
  g.b = mat<T>(b, "b", br, bc, g.ldb, false);
  g.c = mat<T>(c, "c", cr, cc, g.ldc, true);
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.M = trans_a ? ac : ar;
  g.K = trans_a ? ar : ac;
  g.N = trans_b ? br : bc;
  const int64_t kb = trans_b ? bc : br;
  FASTLSTM_CHECK(kb == g.K, "gemm: inner sizes differ (" << g.K << " vs " << kb << ")");
  FASTLSTM_CHECK(cr == g.M && cc == g.N, "c: expected shape (" << g.M << ", " << g.N << ")");
  FASTLSTM_CHECK(b2.is_none() == c2.is_none(), "gemm: b2 and c2 go together");
  if (!b2.is_none()) {  // c2 (+)= op(a) b2', b2' = b2 moved down by b2_offset rows, zero outside
    int64_t r2, n2, c2r, c2c;
    g.b2 = mat<T>(b2, "b2", r2, n2, g.ldb2, false);
    g.c2 = mat<T>(c2, "c2", c2r, c2c, g.ldc2, true);
    FASTLSTM_CHECK(!trans_b && bias.is_none(), "b2: needs trans_b=False and no bias");
    FASTLSTM_CHECK(c2r == g.M && c2c == n2, "c2: expected shape (" << g.M << ", " << n2 << ")");
    FASTLSTM_CHECK(b2_offset >= 0 && b2_offset + r2 <= g.K,
                   "b2_offset: expected 0.." << g.K - r2 << " (b2's " << r2 << " rows inside a's " << g.K
                                             << "), got " << b2_offset);
    g.N2 = n2;
    g.b2_lo = b2_offset;
    g.b2_hi = b2_offset + r2;
  }
  if (!m_rows.is_none()) {  // compute only these rows of A and C
    FASTLSTM_CHECK(!trans_a, "m_rows: needs trans_a=False");
    const int64_t n = py::len(m_rows);
    g.m_rows = index_arg(m_rows, "m_rows", n, g.M);
    g.M = n;
  }
  if (!k_rows.is_none()) {  // sum over these rows of A and B only
    FASTLSTM_CHECK(trans_a && !trans_b, "k_rows: needs trans_a=True and trans_b=False");
    const int64_t n = py::len(k_rows);
    g.k_rows = index_arg(k_rows, "k_rows", n, g.K);
    g.K = n;
  }
  g.bias = optional<HostArrays, T>(bias, "bias", {g.N}, false);
  g.accumulate = accumulate;
  if (!a_sums.is_none()) {
    FASTLSTM_CHECK(trans_a, "a_sums: needs trans_a=True");
    g.a_sums = arr<double>(a_sums, "a_sums", {g.M}, true);
  }
  py::gil_scoped_release nogil;
  gemm<T>(g, num_threads);
}

template <typename T>
py::array activation(py::array_t<T, py::array::c_style | py::array::forcecast> x, bool is_sigmoid) {
  py::array_t<T> out(x.request().shape);
  const T* px = x.data();
  T* po = out.mutable_data();
  const int64_t n = x.size();
  {
    py::gil_scoped_release nogil;
    const KernelSet<T>& ks = [&]() -> const KernelSet<T>& {
      if constexpr (sizeof(T) == 4) return kernels().f32;
      else return kernels().f64;
    }();
    (is_sigmoid ? ks.sigmoid : ks.tanh)(px, po, n);
  }
  return out;
}

std::vector<std::string> names(const std::vector<Isa>& v) {
  std::vector<std::string> out;
  for (Isa i : v) out.emplace_back(isa_name(i));
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastlstm compiled kernels (internal; use the fastlstm package)";
  m.attr("__version__") = FASTLSTM_VERSION;

  m.def("build_info", [] {
    py::dict d;
    d["version"] = FASTLSTM_VERSION;
    d["isa_compiled"] = names(isa_compiled());
    d["isa_supported"] = names(isa_supported());
    d["isa_selected"] = std::string(isa_name(isa_selected()));
    d["num_threads"] = max_threads();
#ifdef FASTLSTM_HAVE_CUDA
    d["cuda_compiled"] = true;
    d["cuda_archs"] = cuda::archs_compiled();
    const int n = cuda::device_count();
    d["cuda_devices"] = n;
    std::vector<std::string> gpus;
    for (int i = 0; i < n; ++i) gpus.push_back(cuda::device_name(i));
    d["cuda_device_names"] = gpus;
#else
    d["cuda_compiled"] = false;
    d["cuda_archs"] = std::vector<std::string>{};
    d["cuda_devices"] = 0;
    d["cuda_device_names"] = std::vector<std::string>{};
#endif
    d["compiler"] = std::string(__VERSION__);
    return d;
  });
  m.def("set_isa", [](const std::string& name) { isa_select(isa_from_name(name)); }, py::arg("name"));
  m.def("get_isa", [] { return std::string(isa_name(isa_selected())); });
  m.def("set_num_threads", &set_max_threads, py::arg("n"));
  m.def("get_num_threads", &max_threads);
  m.def("work_taken", &work_taken);  // items one thread took from another's queue, since start (diagnostic)
  // every kernel call uses n threads (within the set_num_threads budget) instead of choosing; 0: choose again.
  // A diagnostic for bench's thread-scaling table, not an API: the choice is what makes small problems fast
  m.def("force_threads", &force_threads, py::arg("n"));
  m.def("forced_threads", &forced_threads);

  m.def("lstm_forward",
        [](py::object gx, py::object w_hh, py::object bias, py::object h0, py::object c0, py::object y,
           py::object h_n, py::object c_n, py::object gates, py::object cell, bool batch_first, int num_threads,
           py::object lengths, int64_t step_offset, py::object zoneout_h, py::object zoneout_c, double zoneout_h_p,
           double zoneout_c_p, py::object rec_mask, py::object w_hr, py::object h_raw, py::object x, py::object w_ih) {
          const Regularisation reg{zoneout_h, zoneout_c, rec_mask, zoneout_h_p, zoneout_c_p};
          const Projection proj{w_hr, h_raw};
          const Input input{x, w_ih};
          if (HostArrays::is_f64(w_hh))
            forward_impl<double>(gx, w_hh, bias, h0, c0, y, h_n, c_n, gates, cell, batch_first, lengths, step_offset,
                                 reg, proj, Launch{num_threads}, input);
          else
            forward_impl<float>(gx, w_hh, bias, h0, c0, y, h_n, c_n, gates, cell, batch_first, lengths, step_offset,
                                reg, proj, Launch{num_threads}, input);
        },
        py::arg("gx"), py::arg("w_hh"), py::arg("bias"), py::arg("h0"), py::arg("c0"), py::arg("y"), py::arg("h_n"),
        py::arg("c_n"), py::arg("gates"), py::arg("cell"), py::arg("batch_first"), py::arg("num_threads") = 0,
        py::arg("lengths") = py::none(), py::arg("step_offset") = 0, py::arg("zoneout_h") = py::none(),
        py::arg("zoneout_c") = py::none(), py::arg("zoneout_h_p") = 0.0, py::arg("zoneout_c_p") = 0.0,
        py::arg("rec_mask") = py::none(), py::arg("w_hr") = py::none(), py::arg("h_raw") = py::none(),
        py::arg("x") = py::none(), py::arg("w_ih") = py::none());
  m.def("fuse_input_projection", &fuse_input_projection, py::arg("I"), py::arg("H"), py::arg("KP"), py::arg("D"),
        py::arg("elem"));
  m.def("lstm_backward",
        [](py::object w_hh, py::object gates, py::object cell, py::object c0, py::object dy, py::object dh_n,
           py::object dc_n, py::object dg, py::object dh0, py::object dc0, bool batch_first, py::object dbias,
           py::object lengths, int num_threads, py::object zoneout_h, py::object zoneout_c, py::object rec_mask,
           py::object w_hr, py::object h_raw, py::object dh_proj) {
          const Regularisation reg{zoneout_h, zoneout_c, rec_mask};
          const Projection proj{w_hr, h_raw, dh_proj};
          if (HostArrays::is_f64(w_hh))
            backward_impl<double>(w_hh, gates, cell, c0, dy, dh_n, dc_n, dg, dh0, dc0, dbias, batch_first, lengths,
                                  reg, proj, Launch{num_threads});
          else
            backward_impl<float>(w_hh, gates, cell, c0, dy, dh_n, dc_n, dg, dh0, dc0, dbias, batch_first, lengths,
                                 reg, proj, Launch{num_threads});
        },
        py::arg("w_hh"), py::arg("gates"), py::arg("cell"), py::arg("c0"), py::arg("dy"), py::arg("dh_n"),
        py::arg("dc_n"), py::arg("dg"), py::arg("dh0"), py::arg("dc0"), py::arg("batch_first"),
        py::arg("dbias") = py::none(), py::arg("lengths") = py::none(), py::arg("num_threads") = 0,
        py::arg("zoneout_h") = py::none(), py::arg("zoneout_c") = py::none(), py::arg("rec_mask") = py::none(),
        py::arg("w_hr") = py::none(), py::arg("h_raw") = py::none(), py::arg("dh_proj") = py::none());
  m.def("gemm",
        [](py::object a, py::object b, py::object c, bool trans_a, bool trans_b, py::object bias, bool accumulate,
           int num_threads, py::object m_rows, py::object k_rows, py::object b2, py::object c2, int64_t b2_offset,
           py::object a_sums) {
          if (HostArrays::is_f64(c))
            gemm_impl<double>(a, b, c, trans_a, trans_b, bias, accumulate, m_rows, k_rows, b2, c2, b2_offset, a_sums,
                              num_threads);
          else gemm_impl<float>(a, b, c, trans_a, trans_b, bias, accumulate, m_rows, k_rows, b2, c2, b2_offset, a_sums,
                                num_threads);
        },
        py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a") = false, py::arg("trans_b") = false,
        py::arg("bias") = py::none(), py::arg("accumulate") = false, py::arg("num_threads") = 0,
        py::arg("m_rows") = py::none(), py::arg("k_rows") = py::none(), py::arg("b2") = py::none(),
        py::arg("c2") = py::none(), py::arg("b2_offset") = 0, py::arg("a_sums") = py::none());
#ifdef FASTLSTM_HAVE_CUDA
  // The CUDA kernels: the arguments of lstm_forward / lstm_backward (without the CPU-only options) on
  // CuPy arrays, enqueued on `stream` (an integer cudaStream_t, CuPy's current stream) of `device`.
  m.def("cuda_lstm_forward",
        [](py::object gx, py::object w_hh, py::object bias, py::object h0, py::object c0, py::object y,
           py::object h_n, py::object c_n, py::object gates, py::object cell, bool batch_first, int device,
           std::uintptr_t stream, const std::string& strategy, py::object lengths, py::object zoneout_h,
           py::object zoneout_c, double zoneout_h_p, double zoneout_c_p, py::object rec_mask) {
          const Launch launch{0, device, stream, cuda::strategy_from_name(strategy)};
          const Regularisation reg{zoneout_h, zoneout_c, rec_mask, zoneout_h_p, zoneout_c_p};
          if (DeviceArrays::is_f64(w_hh))
            forward_impl<double, DeviceArrays>(gx, w_hh, bias, h0, c0, y, h_n, c_n, gates, cell, batch_first, lengths,
                                               0, reg, Projection{}, launch);
          else
            forward_impl<float, DeviceArrays>(gx, w_hh, bias, h0, c0, y, h_n, c_n, gates, cell, batch_first, lengths,
                                              0, reg, Projection{}, launch);
        },
        py::arg("gx"), py::arg("w_hh"), py::arg("bias"), py::arg("h0"), py::arg("c0"), py::arg("y"), py::arg("h_n"),
        py::arg("c_n"), py::arg("gates"), py::arg("cell"), py::arg("batch_first"), py::arg("device"),
        py::arg("stream"), py::arg("strategy") = "auto", py::arg("lengths") = py::none(),
        py::arg("zoneout_h") = py::none(), py::arg("zoneout_c") = py::none(), py::arg("zoneout_h_p") = 0.0,
        py::arg("zoneout_c_p") = 0.0, py::arg("rec_mask") = py::none());
  m.def("cuda_lstm_backward",
        [](py::object w_hh, py::object gates, py::object cell, py::object c0, py::object dy, py::object dh_n,
           py::object dc_n, py::object dg, py::object dh0, py::object dc0, bool batch_first, int device,
           std::uintptr_t stream, const std::string& strategy, py::object lengths, py::object zoneout_h,
           py::object zoneout_c, py::object rec_mask) {
          const Launch launch{0, device, stream, cuda::strategy_from_name(strategy)};
          const Regularisation reg{zoneout_h, zoneout_c, rec_mask};
          if (DeviceArrays::is_f64(w_hh))
            backward_impl<double, DeviceArrays>(w_hh, gates, cell, c0, dy, dh_n, dc_n, dg, dh0, dc0, py::none(),
                                                batch_first, lengths, reg, Projection{}, launch);
          else
            backward_impl<float, DeviceArrays>(w_hh, gates, cell, c0, dy, dh_n, dc_n, dg, dh0, dc0, py::none(),
                                               batch_first, lengths, reg, Projection{}, launch);
        },
        py::arg("w_hh"), py::arg("gates"), py::arg("cell"), py::arg("c0"), py::arg("dy"), py::arg("dh_n"),
        py::arg("dc_n"), py::arg("dg"), py::arg("dh0"), py::arg("dc0"), py::arg("batch_first"), py::arg("device"),
        py::arg("stream"), py::arg("strategy") = "auto", py::arg("lengths") = py::none(),
        py::arg("zoneout_h") = py::none(), py::arg("zoneout_c") = py::none(), py::arg("rec_mask") = py::none());
  m.def("cuda_strategy",
        [](int64_t B, int64_t H, int ndirs, bool backward, bool f64, int device) {
          const cuda::Strategy s = f64 ? cuda::choose_strategy<double>(B, H, ndirs, backward, device)
                                       : cuda::choose_strategy<float>(B, H, ndirs, backward, device);
          return std::string(cuda::strategy_name(s));
        },
        py::arg("B"), py::arg("H"), py::arg("ndirs"), py::arg("backward"), py::arg("f64"), py::arg("device") = 0);
#endif
  m.def("sigmoid", [](py::array x) {
    if (has_dtype<double>(x)) return activation<double>(x, true);
    return activation<float>(x, true);
  }, py::arg("x"));
  m.def("tanh", [](py::array x) {
    if (has_dtype<double>(x)) return activation<double>(x, false);
    return activation<float>(x, false);
  }, py::arg("x"));
}
