// The CUDA execution emulator's runtime (interface: emu.h; what it proves: README.md).
//
// A launch runs its CTAs one after another on the calling OS thread. Each CUDA thread of a
// CTA is a fiber that switches only at a barrier, a warp collective or its exit, so the
// kernel's own code runs unchanged and at native speed in between; the schedule (the order
// in which ready fibers run) is chosen by FUSED_RESNET_CUDA_EMULATOR_SCHEDULE:
//   lockstep     threads 0..n-1 in turn, each to its next barrier or collective
//   warp-greedy  each warp runs to its next barrier before the next warp starts
//   reversed     threads (and CTAs) in reverse order
// Everything is deterministic: the same launch gives the same bits under one schedule.
#include "cuda/emu/emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define FR_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FR_EMU_ASAN 1
#endif
#endif
#if defined(FR_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__) || defined(FR_EMU_UCONTEXT)
#define FR_EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

namespace fr::emu {
namespace {

// ================================================================ fibers
#if defined(FR_EMU_USE_UCONTEXT)
using Context = ucontext_t;
#else
// Saved callee-saved registers live on the fiber's own stack; the context is its stack pointer.
using Context = void*;
extern "C" void fr_emu_switch(void** save, void* to);
asm(R"(
  .text
  .p2align 4
  .globl fr_emu_switch
  .hidden fr_emu_switch
  .type fr_emu_switch, @function
fr_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fr_emu_switch, .-fr_emu_switch
)");
#endif

#if defined(FR_EMU_ASAN)
constexpr size_t kStackBytes = 512 << 10;  // ASan's redzones make frames several times larger
#else
constexpr size_t kStackBytes = 128 << 10;
#endif

struct Stack {
  char* lo = nullptr;  // above a PROT_NONE guard page: an overflow faults instead of corrupting
  size_t size = 0;
};

Stack new_stack() {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  char* base = static_cast<char*>(mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (base == MAP_FAILED) {
    std::fprintf(stderr, "fused_resnet CUDA emulator: out of memory for fiber stacks\n");
    std::abort();
  }
  mprotect(base, page, PROT_NONE);
  return {base + page, kStackBytes};
}

// ================================================================ CTA state
enum class State { kReady, kBarrier, kCollective, kDone };

struct Copy {  // one queued cp.async
  unsigned char* dst;
  unsigned char data[16];
  long group;
};

}  // namespace

struct Thread {
  uint3 idx;
  int linear, warp, lane;
  State state = State::kReady;
  Site site;  // where it waits
  Context ctx{};
  Stack stack;
  std::vector<Copy> copies;
  long committed = 0;
#if defined(FR_EMU_ASAN)
  void* fake_stack = nullptr;
#endif
};

namespace {

struct Warp {
  Collective op = nullptr;
  const char* name = "";
  Site site;
  void* slots[32] = {};
  int arrived = 0, lanes = 0;
};

struct SharedArray {
  const void* key;
  size_t offset, bytes;
  const char* name;
  Site site;
};

constexpr size_t kStaticSharedLimit = 48 << 10;  // what a kernel may declare statically
constexpr size_t kGuardBytes = 64;
constexpr size_t kArenaBytes = 128 << 10;
constexpr unsigned char kPoison = 0xFF;  // NaN in fp32, fp16, bf16 and fp64

enum class Schedule { kLockstep, kWarpGreedy, kReversed };

Schedule schedule_from_env() {
  const char* s = std::getenv("FUSED_RESNET_CUDA_EMULATOR_SCHEDULE");
  if (s == nullptr || *s == 0 || std::strcmp(s, "lockstep") == 0) return Schedule::kLockstep;
  if (std::strcmp(s, "warp-greedy") == 0) return Schedule::kWarpGreedy;
  if (std::strcmp(s, "reversed") == 0) return Schedule::kReversed;
  std::fprintf(stderr,
               "fused_resnet CUDA emulator: FUSED_RESNET_CUDA_EMULATOR_SCHEDULE=%s is not one of "
               "lockstep, warp-greedy, reversed\n", s);
  std::abort();
}

// FUSED_RESNET_CUDA_EMULATOR_LAUNCH_LOG=path: every launch, valid or not, appends a line
// "kernel<TAB>grid x y z<TAB>block x y z<TAB>dynamic smem bytes" to the file (the launches an
// op really makes, which tests/test_cuda_plans.py compares with its launch plan).
void log_launch(const Launch& c) {
  const char* path = std::getenv("FUSED_RESNET_CUDA_EMULATOR_LAUNCH_LOG");
  if (path == nullptr || *path == 0) return;
  if (FILE* f = std::fopen(path, "a")) {
    std::fprintf(f, "%s\t%u %u %u\t%u %u %u\t%zu\n", c.kernel, c.grid.x, c.grid.y, c.grid.z,
                 c.block.x, c.block.y, c.block.z, c.smem);
    std::fclose(f);
  }
}

// One launch in progress, and the CTA it is running. One per OS thread.
struct Runtime {
  const Launch* cfg = nullptr;
  void (*run)(const void*) = nullptr;
  const void* thunk = nullptr;
  uint3 block{};
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  std::vector<Stack> stacks;  // reused by every CTA and launch
  Thread* current = nullptr;
  Context scheduler{};
  unsigned char* arena = nullptr;
  std::vector<SharedArray> shared;
  size_t shared_end = 0, shared_bytes = 0;
  bool faulted = false;
  cudaError_t error = cudaSuccess;
  std::string fault;
};

thread_local Runtime rt;

std::string where(const Site& s) {
  const char* f = s.file_name();
  const char* csrc = std::strstr(f, "csrc/");
  return std::string(csrc ? csrc : f) + ":" + std::to_string(s.line());
}

std::string vformat(const char* fmt, va_list ap) {
  char buf[1024];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  return buf;
}

std::string launch_name() {
  char buf[512];
  const Launch& c = *rt.cfg;
  std::snprintf(buf, sizeof buf, "kernel %s (launched at %s, grid (%u,%u,%u), block (%u,%u,%u)), "
                "CTA (%u,%u,%u)", c.kernel, where(c.site).c_str(), c.grid.x, c.grid.y, c.grid.z,
                c.block.x, c.block.y, c.block.z, rt.block.x, rt.block.y, rt.block.z);
  return buf;
}

void record_fault(const std::string& msg, cudaError_t e) {
  rt.fault = "fused_resnet CUDA emulator: " + msg;
  std::fprintf(stderr, "%s\n", rt.fault.c_str());
  std::fflush(stderr);
  rt.faulted = true;
  rt.error = e;
}

// ---------------------------------------------------------------- switching
void switch_context(Context* save, Context* to, const Stack* to_stack, void** fake_save) {
#if defined(FR_EMU_ASAN)
  __sanitizer_start_switch_fiber(fake_save, to_stack ? to_stack->lo : nullptr,
                                 to_stack ? to_stack->size : 0);
#else
  (void)to_stack, (void)fake_save;
#endif
#if defined(FR_EMU_USE_UCONTEXT)
  swapcontext(save, to);
#else
  fr_emu_switch(save, *to);
#endif
}

void after_switch([[maybe_unused]] void* fake) {
#if defined(FR_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

// Fiber -> scheduler. A finished fiber passes no fake-stack slot: its frames are dead.
void yield(bool finished = false) {
  Thread* t = rt.current;
#if defined(FR_EMU_ASAN)
  void** fake = finished ? nullptr : &t->fake_stack;
#else
  void** fake = nullptr;
  (void)finished;
#endif
  Stack none;  // the scheduler runs on the OS thread's stack (its bounds are ASan's default)
  switch_context(&t->ctx, &rt.scheduler, &none, fake);
#if defined(FR_EMU_ASAN)
  after_switch(t->fake_stack);
#endif
}

void land(Thread* t, long below_group);

[[noreturn]] void fiber_main() {
  after_switch(nullptr);
  rt.run(rt.thunk);
  Thread* t = rt.current;
  land(t, 1L << 62);  // copies still in flight land when the thread exits
  t->state = State::kDone;
  yield(true);
  __builtin_unreachable();
}

#if defined(FR_EMU_USE_UCONTEXT)
void start_fiber(Thread* t) {
  getcontext(&t->ctx);
  t->ctx.uc_stack.ss_sp = t->stack.lo;
  t->ctx.uc_stack.ss_size = t->stack.size;
  t->ctx.uc_link = nullptr;
  makecontext(&t->ctx, reinterpret_cast<void (*)()>(&fiber_main), 0);
}
#else
void start_fiber(Thread* t) {
  // fr_emu_switch pops six registers and returns: the fresh stack holds six zeros, then
  // fiber_main's address, then a null return address for fiber_main (it never returns).
  auto* top = reinterpret_cast<void**>(
      (reinterpret_cast<uintptr_t>(t->stack.lo + t->stack.size) & ~uintptr_t(15)));
  void** sp = top - 8;  // 16-byte aligned: fiber_main starts with rsp % 16 == 8, as after a call
  for (int i = 0; i < 6; ++i) sp[i] = nullptr;
  sp[6] = reinterpret_cast<void*>(&fiber_main);
  sp[7] = nullptr;
  t->ctx = sp;
}
#endif

void resume(Thread* t) {
  rt.current = t;
#if defined(FR_EMU_ASAN)
  void* fake = nullptr;
  switch_context(&rt.scheduler, &t->ctx, &t->stack, &fake);
  after_switch(fake);
#else
  switch_context(&rt.scheduler, &t->ctx, &t->stack, nullptr);
#endif
  rt.current = nullptr;
}

// ---------------------------------------------------------------- shared memory arena
void poison_arena() {
#if defined(FR_EMU_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(rt.arena, kArenaBytes);
#endif
  std::memset(rt.arena, kPoison, kArenaBytes);
#if defined(FR_EMU_ASAN)
  ASAN_POISON_MEMORY_REGION(rt.arena, kArenaBytes);  // each array is unpoisoned when declared
#endif
  rt.shared.clear();
  rt.shared_end = kGuardBytes;
  rt.shared_bytes = 0;
}

// Without ASan, an out-of-bounds store shows as a changed guard byte when the CTA ends.
void check_guards() {
  size_t from = 0;
  for (size_t i = 0; i <= rt.shared.size(); ++i) {
    const size_t to = i < rt.shared.size() ? rt.shared[i].offset : rt.shared_end + kGuardBytes;
    for (size_t b = from; b < to; ++b) {
      if (rt.arena[b] == kPoison) continue;
      const SharedArray* near = &rt.shared[i > 0 ? i - 1 : 0];
      record_fault(launch_name() + ": shared-memory store out of bounds, " +
                       std::to_string(b >= near->offset ? b - near->offset - near->bytes
                                                        : near->offset - b) +
                       (b >= near->offset ? " bytes past the end of " : " bytes before ") +
                       near->name + " (declared at " + where(near->site) + ")",
                   cudaErrorLaunchFailure);
      return;
    }
    if (i < rt.shared.size()) from = rt.shared[i].offset + rt.shared[i].bytes;
  }
}

// ---------------------------------------------------------------- scheduling
bool any_ready() {
  for (const Thread& t : rt.threads)
    if (t.state == State::kReady) return true;
  return false;
}

// Every thread that is not done waits: release a barrier, or report why nothing can move.
void unblock() {
  const Thread* at_barrier = nullptr;
  const Thread* at_collective = nullptr;
  int waiting = 0, done = 0;
  for (const Thread& t : rt.threads) {
    if (t.state == State::kBarrier) {
      ++waiting;
      if (at_barrier == nullptr) at_barrier = &t;
      if (t.site.line() != at_barrier->site.line() ||
          std::strcmp(t.site.file_name(), at_barrier->site.file_name()) != 0) {
        record_fault(launch_name() + ": threads wait at different barriers: thread " +
                         std::to_string(at_barrier->linear) + " at " +
                         where(at_barrier->site) + ", thread " + std::to_string(t.linear) +
                         " at " + where(t.site),
                     cudaErrorLaunchFailure);
        return;
      }
    } else if (t.state == State::kCollective) {
      if (at_collective == nullptr) at_collective = &t;
    } else if (t.state == State::kDone) {
      ++done;
    }
  }
  if (at_collective != nullptr) {
    const Warp& w = rt.warps[size_t(at_collective->warp)];
    int exited = 0;
    std::string others;
    for (const Thread& t : rt.threads) {
      if (t.warp != at_collective->warp || t.state == State::kCollective) continue;
      if (t.state == State::kDone)
        ++exited;
      else if (others.empty())
        others = "; lane " + std::to_string(t.lane) + " waits at the barrier at " + where(t.site);
    }
    record_fault(launch_name() + ", warp " + std::to_string(at_collective->warp) +
                     ": deadlock: " + w.name + " at " + where(w.site) + " reached by " +
                     std::to_string(w.arrived) + " of " + std::to_string(w.lanes) +
                     " lanes (" + std::to_string(exited) + " exited)" + others,
                 cudaErrorLaunchFailure);
    return;
  }
  if (done > 0) {
    record_fault(launch_name() + ": __syncthreads at " + where(at_barrier->site) +
                     " reached by " + std::to_string(waiting) + " of " +
                     std::to_string(rt.threads.size()) + " threads; the others exited",
                 cudaErrorLaunchFailure);
    return;
  }
  for (Thread& t : rt.threads) t.state = State::kReady;
}

void run_cta(Schedule sched) {
  const int n = int(rt.threads.size());
  poison_arena();
  for (Thread& t : rt.threads) {
    t.state = State::kReady;
    t.copies.clear();
    t.committed = 0;
    start_fiber(&t);
  }
  for (Warp& w : rt.warps) w.arrived = 0;
  const int nwarps = int(rt.warps.size());
  for (;;) {
    if (sched == Schedule::kWarpGreedy) {
      for (int w = 0; w < nwarps; ++w) {
        for (bool moved = true; moved;) {
          moved = false;
          for (int i = w * 32; i < std::min(n, w * 32 + 32); ++i) {
            if (rt.threads[size_t(i)].state != State::kReady) continue;
            resume(&rt.threads[size_t(i)]);
            if (rt.faulted) return;
            moved = true;
          }
        }
      }
    } else {
      for (int k = 0; k < n; ++k) {
        Thread& t = rt.threads[size_t(sched == Schedule::kReversed ? n - 1 - k : k)];
        if (t.state != State::kReady) continue;
        resume(&t);
        if (rt.faulted) return;
      }
    }
    if (any_ready()) continue;
    if (std::all_of(rt.threads.begin(), rt.threads.end(),
                    [](const Thread& t) { return t.state == State::kDone; }))
      break;
    unblock();
    if (rt.faulted) return;
  }
#if !defined(FR_EMU_ASAN)  // under ASan the guards are poisoned: any access is reported at once
  check_guards();
#endif
}

bool check_config(const Launch& c) {
  std::string why;
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || threads == 0)
    why = "an empty grid or block";
  else if (c.grid.x > 0x7fffffffu || c.grid.y > 65535 || c.grid.z > 65535)
    why = "grid dimensions exceed (2^31-1, 65535, 65535)";
  else if (threads > 1024 || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64)
    why = "more than 1024 threads per block, or block dimensions over (1024, 1024, 64)";
  else if (c.smem > 0)
    why = "dynamic shared memory is not emulated";
  if (why.empty()) return true;
  rt.cfg = &c;
  char buf[256];
  std::snprintf(buf, sizeof buf, "invalid launch of %s at %s: grid (%u,%u,%u), block (%u,%u,%u): ",
                c.kernel, where(c.site).c_str(), c.grid.x, c.grid.y, c.grid.z, c.block.x,
                c.block.y, c.block.z);
  record_fault(buf + why, cudaErrorInvalidConfiguration);
  return false;
}

Thread& self(const Site& site, const char* what) {
  if (rt.current == nullptr) {
    std::fprintf(stderr, "fused_resnet CUDA emulator: %s called outside a kernel at %s\n", what,
                 where(site).c_str());
    std::abort();
  }
  return *rt.current;
}

// ---------------------------------------------------------------- cp.async
void land(Thread* t, long below_group) {
  size_t keep = 0;
  for (Copy& c : t->copies) {
    if (c.group < below_group)
      std::memcpy(c.dst, c.data, 16);
    else
      t->copies[keep++] = c;
  }
  t->copies.resize(keep);
}

// ---------------------------------------------------------------- ldmatrix / mma
struct LdMatrix {
  const uint16_t* row;
  unsigned* r;
};
template <bool kTrans>
void ldmatrix_run(void* const* slots, int) {
  // Matrix j's row i comes from lane 8j + i; lane l receives two elements of each matrix.
  unsigned out[32][4];
  for (int l = 0; l < 32; ++l)
    for (int j = 0; j < 4; ++j) {
      const int a = l / 4, b = 2 * (l % 4);
      auto at = [&](int row, int col) {
        return unsigned(static_cast<LdMatrix*>(slots[8 * j + row])->row[col]);
      };
      out[l][j] = kTrans ? at(b, a) | at(b + 1, a) << 16 : at(a, b) | at(a, b + 1) << 16;
    }
  for (int l = 0; l < 32; ++l)
    for (int j = 0; j < 4; ++j) static_cast<LdMatrix*>(slots[l])->r[j] = out[l][j];
}

float b16_to_float(unsigned bits, MmaType t) {
  if (t == MmaType::kBF16) {
    const uint32_t u = bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  __half_raw raw;
  raw.x = static_cast<unsigned short>(bits);
  return __half2float(__half(raw));
}

struct Mma {
  float* d;
  const unsigned* a;
  unsigned b0, b1;
};
template <MmaType kType>
void mma_run(void* const* slots, int) {
  // PTX ISA fragments of m16n8k16 (.row.col): lane l = 4g + q holds A rows g, g+8 at columns
  // 2q, 2q+1 (a0, a1) and 2q+8, 2q+9 (a2, a3); B column g at rows 2q.. (b0) and 2q+8.. (b1);
  // C/D rows g (c0, c1) and g+8 (c2, c3) at columns 2q, 2q+1.
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const Mma& m = *static_cast<Mma*>(slots[l]);
    const int g = l / 4, q = l % 4;
    for (int h = 0; h < 2; ++h) {
      const int shift = 16 * h;
      A[g][2 * q + h] = b16_to_float(m.a[0] >> shift & 0xffff, kType);
      A[g + 8][2 * q + h] = b16_to_float(m.a[1] >> shift & 0xffff, kType);
      A[g][2 * q + 8 + h] = b16_to_float(m.a[2] >> shift & 0xffff, kType);
      A[g + 8][2 * q + 8 + h] = b16_to_float(m.a[3] >> shift & 0xffff, kType);
      B[2 * q + h][g] = b16_to_float(m.b0 >> shift & 0xffff, kType);
      B[2 * q + 8 + h][g] = b16_to_float(m.b1 >> shift & 0xffff, kType);
      C[g][2 * q + h] = m.d[h];
      C[g + 8][2 * q + h] = m.d[2 + h];
    }
  }
  for (int l = 0; l < 32; ++l) {
    Mma& m = *static_cast<Mma*>(slots[l]);
    const int g = l / 4, q = l % 4;
    for (int e = 0; e < 4; ++e) {
      const int row = g + (e / 2) * 8, col = 2 * q + e % 2;
      float acc = C[row][col];
      for (int k = 0; k < 16; ++k) acc = std::fma(A[row][k], B[k][col], acc);
      m.d[e] = acc;
    }
  }
}

}  // namespace

// ================================================================ interface (emu.h)
Thread* current() { return rt.current; }
const uint3& thread_idx() { return rt.current->idx; }
const uint3& block_idx() { return rt.block; }
const dim3& block_dim() { return rt.cfg->block; }
const dim3& grid_dim() { return rt.cfg->grid; }

void fail(Site site, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const std::string msg = vformat(fmt, ap);
  va_end(ap);
  Thread& t = self(site, "a device function");
  char who[96];
  std::snprintf(who, sizeof who, ", thread (%u,%u,%u): ", t.idx.x, t.idx.y, t.idx.z);
  record_fault(launch_name() + who + msg + " at " + where(site), cudaErrorLaunchFailure);
  t.state = State::kDone;
  yield(true);
  __builtin_unreachable();
}

void launch(const Launch& cfg, void (*run)(const void*), const void* thunk) {
  if (rt.cfg != nullptr && rt.current != nullptr) {
    std::fprintf(stderr, "fused_resnet CUDA emulator: a kernel launched %s from device code\n",
                 cfg.kernel);
    std::abort();
  }
  log_launch(cfg);
  if (!check_config(cfg)) return;
  const Schedule sched = schedule_from_env();
  rt.cfg = &cfg;
  rt.run = run;
  rt.thunk = thunk;
  if (rt.arena == nullptr)
    rt.arena = static_cast<unsigned char*>(std::aligned_alloc(128, kArenaBytes));
  const int n = int(cfg.block.x * cfg.block.y * cfg.block.z);
  while (rt.stacks.size() < size_t(n)) rt.stacks.push_back(new_stack());
  rt.threads.assign(size_t(n), Thread{});
  for (int i = 0; i < n; ++i) {
    Thread& t = rt.threads[size_t(i)];
    t.linear = i;
    t.idx = uint3{unsigned(i) % cfg.block.x, unsigned(i) / cfg.block.x % cfg.block.y,
                  unsigned(i) / (cfg.block.x * cfg.block.y)};
    t.warp = i / 32;
    t.lane = i % 32;
    t.stack = rt.stacks[size_t(i)];
  }
  rt.warps.assign(size_t((n + 31) / 32), Warp{});
  for (size_t w = 0; w < rt.warps.size(); ++w) rt.warps[w].lanes = std::min(32, n - int(w) * 32);
  const uint64_t ctas = uint64_t(cfg.grid.x) * cfg.grid.y * cfg.grid.z;
  for (uint64_t k = 0; k < ctas && !rt.faulted; ++k) {
    const uint64_t b = sched == Schedule::kReversed ? ctas - 1 - k : k;
    rt.block = uint3{unsigned(b % cfg.grid.x), unsigned(b / cfg.grid.x % cfg.grid.y),
                     unsigned(b / (uint64_t(cfg.grid.x) * cfg.grid.y))};
    run_cta(sched);
  }
  rt.threads.clear();
  rt.faulted = false;  // the error stays in rt.error until cudaGetLastError reads it
  rt.cfg = nullptr;
}

void* shared_array(const void* key, size_t bytes, size_t align, const char* name, Site site) {
  Thread& t = self(site, "FR_SHARED");
  for (const SharedArray& a : rt.shared)
    if (a.key == key) return rt.arena + a.offset;
  (void)t;
  const size_t offset = (rt.shared_end + align - 1) / align * align;
  rt.shared_bytes += bytes;
  if (rt.shared_bytes > kStaticSharedLimit)
    fail(site, "%zu bytes of static shared memory (%s is the last array) exceed the 48 KB limit",
         rt.shared_bytes, name);
  if (offset + bytes + kGuardBytes > kArenaBytes)
    fail(site, "the emulator's shared-memory arena is full");
  rt.shared.push_back({key, offset, bytes, name, site});
  rt.shared_end = offset + bytes + kGuardBytes;
#if defined(FR_EMU_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(rt.arena + offset, bytes);
#endif
  return rt.arena + offset;
}

bool in_shared(const void* p, size_t bytes) {
  const auto* c = static_cast<const unsigned char*>(p);
  for (const SharedArray& a : rt.shared)
    if (c >= rt.arena + a.offset && c + bytes <= rt.arena + a.offset + a.bytes) return true;
  return false;
}

void barrier(Site site) {
  Thread& t = self(site, "__syncthreads");
  t.state = State::kBarrier;
  t.site = site;
  yield();
}

void warp_collective(Collective op, const char* name, void* slot, Site site) {
  Thread& t = self(site, name);
  Warp& w = rt.warps[size_t(t.warp)];
  if (w.arrived == 0) {
    w.op = op;
    w.name = name;
    w.site = site;
  } else if (w.op != op) {
    fail(site, "lanes of warp %d reached different collectives: %s here, %s at %s", t.warp, name,
         w.name, where(w.site).c_str());
  }
  w.slots[t.lane] = slot;
  if (++w.arrived < w.lanes) {
    t.state = State::kCollective;
    t.site = site;
    yield();
    return;
  }
  op(w.slots, w.lanes);
  w.arrived = 0;
  for (Thread& o : rt.threads)
    if (o.warp == t.warp && o.state == State::kCollective) o.state = State::kReady;
}

void cp_async(void* dst, const void* src, int src_bytes, Site site) {
  Thread& t = self(site, "cp.async");
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0)
    fail(site, "cp.async of 16 bytes from %p to %p: both addresses must be 16-byte aligned", src,
         dst);
  if (!in_shared(dst, 16))
    fail(site, "cp.async destination %p is not inside a shared-memory array", dst);
  if (in_shared(src, 1) || (src >= rt.arena && src < rt.arena + kArenaBytes))
    fail(site, "cp.async source %p is shared memory, not global", src);
  if (src_bytes < 0 || src_bytes > 16)
    fail(site, "cp.async src-size %d is not in [0, 16]", src_bytes);
  Copy c{static_cast<unsigned char*>(dst), {}, t.committed};
  std::memcpy(c.data, src, size_t(src_bytes));  // the rest zero-fills
  t.copies.push_back(c);
  std::memset(dst, kPoison, 16);  // until the matching wait_group, the destination is garbage
}

void cp_async_commit() { ++self(Site::current(), "cp.async.commit_group").committed; }

void cp_async_wait(int pending_groups, Site site) {
  Thread& t = self(site, "cp.async.wait_group");
  land(&t, t.committed - pending_groups);
}

void ldmatrix_x4(unsigned (&r)[4], const void* row_addr, bool trans, Site site) {
  if (reinterpret_cast<uintptr_t>(row_addr) % 16 != 0)
    fail(site, "ldmatrix row address %p is not 16-byte aligned", row_addr);
  if (!in_shared(row_addr, 16))
    fail(site, "ldmatrix row address %p is not inside a shared-memory array", row_addr);
  LdMatrix slot{static_cast<const uint16_t*>(row_addr), r};
  if (trans)
    warp_collective(&ldmatrix_run<true>, "ldmatrix.x4.trans", &slot, site);
  else
    warp_collective(&ldmatrix_run<false>, "ldmatrix.x4", &slot, site);
}

void mma_m16n8k16(MmaType t, float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                  Site site) {
  Mma slot{d, a, b0, b1};
  if (t == MmaType::kF16)
    warp_collective(&mma_run<MmaType::kF16>, "mma.sync.m16n8k16.f16", &slot, site);
  else
    warp_collective(&mma_run<MmaType::kBF16>, "mma.sync.m16n8k16.bf16", &slot, site);
}

// ---------------------------------------------------------------- the CUDA runtime API
cudaError_t get_last_error() {
  const cudaError_t e = rt.error;
  rt.error = cudaSuccess;
  return e;
}

const char* error_string(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulator)";
    case cudaErrorLaunchFailure: return "kernel fault (emulator)";
    case cudaErrorMemoryAllocation: return "out of memory (emulator)";
    default: return "error (emulator)";
  }
}

const char* last_fault() { return rt.fault.c_str(); }

cudaError_t malloc_device(void** p, size_t bytes) {
  // Exact size (ASan sees any over-read), 256-byte aligned like cudaMalloc.
  return posix_memalign(p, 256, bytes ? bytes : 1) == 0 ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t free_device(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t memcpy_any(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t memset_device(void* p, int value, size_t bytes) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t synchronize() { return cudaSuccess; }

}  // namespace fr::emu
