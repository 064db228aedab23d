// The CUDA execution emulator's kernel-side interface: force-included (g++ -include) before
// any other header when the CUDA kernels are compiled as host C++ with -DFR_CUDA_EMULATOR.
// It defines the CUDA keywords, the built-in index variables, the launch and shared-memory
// hooks (cuda/hooks.h) and the device intrinsics the kernels use; runtime.cpp executes them.
// See README.md next to this file for what a run proves and what it cannot.
#pragma once

#if !defined(FR_CUDA_EMULATOR) || defined(__CUDACC__)
#error "cuda/emu/emu.h is for host builds with -DFR_CUDA_EMULATOR only"
#endif

// `#pragma unroll` is nvcc's; FR_SHARED drops alignment attributes (every array is 16-byte
// aligned in the arena).
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#pragma GCC diagnostic ignored "-Wignored-attributes"

// Before the toolkit headers: crt/host_defines.h keeps keywords that are already defined.
#define __global__
#define __device__
#define __host__
#define __shared__ __shared__is_not_emulated__use_FR_SHARED
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <source_location>
#include <type_traits>
#include <utility>

namespace fr::emu {

// ---------------------------------------------------------------- execution context
struct Thread;
// The CUDA thread running now (null outside a kernel) and its CTA's built-ins.
Thread* current();
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// Where a hook was called: its file and line name a barrier and every diagnostic.
using Site = std::source_location;

// ---------------------------------------------------------------- launches
// FR_LAUNCH(grid, block, smem, stream, kernel)(args...): each CUDA thread runs thunk().
struct Launch {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  const char* kernel;
  Site site;
};
void launch(const Launch& cfg, void (*run)(const void* thunk), const void* thunk);
template <class Thunk>
void operator|(const Launch& cfg, const Thunk& thunk) {
  launch(cfg, [](const void* t) { (*static_cast<const Thunk*>(t))(); }, &thunk);
}

// ---------------------------------------------------------------- shared memory
// Every FR_SHARED array of a CTA lives in one arena: poisoned (all bits set: NaN in every
// float type) when the CTA starts, with a guard zone before and after each array.
void* shared_array(const void* key, size_t bytes, size_t align, const char* name, Site site);
// Whether [p, p + bytes) lies inside one shared array of the running CTA.
bool in_shared(const void* p, size_t bytes);

// ---------------------------------------------------------------- synchronisation
void barrier(Site site);
// A warp collective: every lane deposits `slot`; the last lane to arrive runs
// compute(slots, lanes) for all of them. `op` names the collective (equal ops rendezvous).
using Collective = void (*)(void* const* slots, int lanes);
void warp_collective(Collective op, const char* name, void* slot, Site site);

// ---------------------------------------------------------------- cp.async (16-byte cg)
void cp_async(void* dst, const void* src, int src_bytes, Site site);
void cp_async_commit();
void cp_async_wait(int pending_groups, Site site);

// ---------------------------------------------------------------- tensor-core fragments
void ldmatrix_x4(unsigned (&r)[4], const void* row_addr, bool trans, Site site);
enum class MmaType { kF16, kBF16 };
void mma_m16n8k16(MmaType t, float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                  Site site);

// Reports a kernel fault (naming kernel, block and thread) and stops the launch.
[[noreturn]] void fail(Site site, const char* fmt, ...);

template <class T>
struct Shuffle {
  T value;
  int delta;
  T result;
  static void run(void* const* slots, int lanes) {
    T in[32];
    for (int l = 0; l < lanes; ++l) in[l] = static_cast<Shuffle*>(slots[l])->value;
    for (int l = 0; l < lanes; ++l) {
      auto* s = static_cast<Shuffle*>(slots[l]);
      s->result = l + s->delta < lanes ? in[l + s->delta] : in[l];
    }
  }
};

// ---------------------------------------------------------------- the CUDA runtime API
cudaError_t get_last_error();
const char* error_string(cudaError_t e);
cudaError_t malloc_device(void** p, size_t bytes);
cudaError_t free_device(void* p);
cudaError_t memcpy_any(void* dst, const void* src, size_t bytes, cudaMemcpyKind);
cudaError_t memset_device(void* p, int value, size_t bytes);
cudaError_t synchronize();
// The text of the last kernel fault ("" when none).
const char* last_fault();

}  // namespace fr::emu

// ---------------------------------------------------------------- what kernels see
#define threadIdx (::fr::emu::thread_idx())
#define blockIdx (::fr::emu::block_idx())
#define blockDim (::fr::emu::block_dim())
#define gridDim (::fr::emu::grid_dim())

inline void __syncthreads(::fr::emu::Site site = ::fr::emu::Site::current()) {
  ::fr::emu::barrier(site);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                          ::fr::emu::Site site = ::fr::emu::Site::current()) {
  if (mask != 0xffffffffu || width != 32)
    ::fr::emu::fail(site, "__shfl_down_sync: only full-warp shuffles are emulated");
  ::fr::emu::Shuffle<T> s{v, int(delta), T()};
  ::fr::emu::warp_collective(&::fr::emu::Shuffle<T>::run, "__shfl_down_sync", &s, site);
  return s.result;
}
// The device overloads of min/max that CUDA provides for every integer and float type.
template <class T>
inline T min(T a, std::type_identity_t<T> b) { return b < a ? b : a; }
template <class T>
inline T max(T a, std::type_identity_t<T> b) { return a < b ? b : a; }

#define cudaGetLastError ::fr::emu::get_last_error
#define cudaPeekAtLastError ::fr::emu::get_last_error
#define cudaGetErrorString ::fr::emu::error_string
#define cudaMalloc ::fr::emu::malloc_device
#define cudaFree ::fr::emu::free_device
#define cudaMemcpy ::fr::emu::memcpy_any
#define cudaMemset ::fr::emu::memset_device
#define cudaDeviceSynchronize ::fr::emu::synchronize

#define FR_LAUNCH(grid, block, smem, stream, ...)                                     \
  ::fr::emu::Launch{dim3(grid), dim3(block), size_t(smem), stream, #__VA_ARGS__,         \
                    ::fr::emu::Site::current()} |                                       \
      [=](auto... fr_emu_args) { return [=] { __VA_ARGS__(fr_emu_args...); }; }

// `type name dims` in the CTA's arena: one array per declaration and CTA, shared by its threads.
#define FR_SHARED(type, name, dims)                                                      \
  using fr_emu_##name##_t = std::remove_cvref_t<type> dims;                              \
  static const char fr_emu_##name##_key = 0;                                             \
  fr_emu_##name##_t& name = *static_cast<fr_emu_##name##_t*>(::fr::emu::shared_array(  \
      &fr_emu_##name##_key, sizeof(fr_emu_##name##_t), 16, #name, ::fr::emu::Site::current()))
