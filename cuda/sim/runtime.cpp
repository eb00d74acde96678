// The CPU harness's execution model (cuda/sim/runtime.hpp): fibers, the scheduler, barriers, warp
// collectives, the mma.sync emulation, the shared-memory shadow (races, poisoning) and the reports.
// Never instrumented itself: in the instrumented build it defines the hooks that GCC's
// -fsanitize=thread instrumentation of the kernel sources calls (no TSan runtime is linked; these
// hooks are the whole runtime).
#include "cuda/sim/runtime.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <boost/context/fiber.hpp>

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda/mma_m16n8k32.hpp"

#if defined(BITQAT_SIM_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// The built-in variables of cuda/sim/device.hpp, set to the running thread's before each resume
// (launches are serialized). In .data, outside the zero-initialised range the shadow watches.
__attribute__((section(".data.bitqat_sim_builtins"))) bitqat::cuda::sim::Dim3 threadIdx, blockIdx, blockDim, gridDim;

// The executable's zero-initialised data: where function-local statics, hence __shared__ arrays, live.
extern "C" char __bss_start[] __attribute__((weak));
extern "C" char _end[] __attribute__((weak));

namespace bitqat::cuda::sim {
namespace {

namespace ctx = boost::context;

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr uint16_t kNoThread = 0xffff;
constexpr size_t kMaxReports = 24;
constexpr int kReaderSlots = 4;  // readers of a byte remembered per barrier interval (plus every reading warp)
// A GPU thread may use up to 512 KB of local memory: the stack holds that and the harness's frames.
#if defined(BITQAT_SIM_ASAN)
constexpr size_t kStackBytes = 2048 * 1024;  // AddressSanitizer's redzones make frames larger
#else
constexpr size_t kStackBytes = 768 * 1024;
#endif
// Spinning on a volatile shared flag yields to the other threads; this many yields with no shared
// write or collective in between is a spin that cannot end.
constexpr uint64_t kMaxIdleSpins = uint64_t{1} << 22;

// ---- reports ----------------------------------------------------------------------------------------

// A source path relative to the repository root (the harness's reports name files as the docs do).
std::string strip_root(const char* file) {
  std::string f = file ? file : "?";
#if defined(BITQAT_SOURCE_DIR)
  const std::string root = std::string(BITQAT_SOURCE_DIR) + "/";
  if (f.rfind(root, 0) == 0) return f.substr(root.size());
#endif
  return f;
}

// "exchange_kernel" from addr2line's "ns::(anonymous namespace)::exchange_kernel(bool, int*)": the
// unqualified name, template arguments kept, parameters and return type dropped.
std::string short_function(std::string f) {
  if (!f.empty() && f.back() == ')') {
    int depth = 0;
    for (size_t i = f.size(); i-- > 0;) {
      depth += f[i] == ')' ? 1 : f[i] == '(' ? -1 : 0;
      if (depth == 0) {
        f.resize(i);
        break;
      }
    }
  }
  int depth = 0;
  for (size_t i = f.size(); i-- > 0;) {
    depth += f[i] == '>' ? 1 : f[i] == '<' ? -1 : 0;
    if (depth == 0 && (f[i] == ' ' || (f[i] == ':' && i > 0 && f[i - 1] == ':'))) return f.substr(i + 1);
  }
  return f;
}

std::string site(const char* file, int line) { return strip_root(file) + ":" + std::to_string(line); }

// The source line of a program counter in an instrumented kernel: addr2line on the module (the
// emulated kernels are built with line tables). Only for reports, so a process per address is fine.
std::string site(const char* file, int line);
std::string site_of_tag(uintptr_t tag);
constexpr uintptr_t kSiteTag = uintptr_t{1} << 63;  // a "pc" that is an index into the sites of atomics

std::string describe_pc(uintptr_t pc) {
  if (pc & kSiteTag) return site_of_tag(pc);
  static std::map<uintptr_t, std::string> cache;
  const auto it = cache.find(pc);
  if (it != cache.end()) return it->second;
  std::string out = "pc 0x" + [&] {
    char b[32];
    std::snprintf(b, sizeof b, "%" PRIxPTR, pc);
    return std::string(b);
  }();
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(pc), &info) != 0 && info.dli_fname) {
    // The main program's dli_fname may be a bare name; /proc/self/exe is the file itself.
    std::string module = info.dli_fname;
    if (module.empty() || module.find('/') == std::string::npos) module = "/proc/self/exe";
    char cmd[1024];
    // -i: the first function / line pair is the innermost inlined function, where the access is.
    std::snprintf(cmd, sizeof cmd, "addr2line -C -f -i -e '%s' 0x%" PRIxPTR " 2>/dev/null", module.c_str(),
                  pc - 1 - reinterpret_cast<uintptr_t>(info.dli_fbase));
    if (FILE* p = popen(cmd, "r")) {
      char fn[1024] = {}, loc[1024] = {};
      if (std::fgets(fn, sizeof fn, p) && std::fgets(loc, sizeof loc, p)) {
        std::string l = loc, f = fn;
        while (!l.empty() && (l.back() == '\n' || l.back() == ' ')) l.pop_back();
        while (!f.empty() && f.back() == '\n') f.pop_back();
        const auto paren = l.find(" (");
        if (paren != std::string::npos) l = l.substr(0, paren);
        if (l.rfind("??", 0) != 0) out = strip_root(l.c_str()) + " (" + short_function(f) + ")";
      }
      while (std::fgets(fn, sizeof fn, p)) {
      }
      pclose(p);
    }
  }
  cache.emplace(pc, out);
  return out;
}

// Reports name program counters as "@@pc<hex>@@", replaced by their source lines when the launch
// ends (symbolizing runs addr2line, which is better done off the kernel threads' small stacks).
std::string pc_marker(uintptr_t pc) {
  char b[48];
  std::snprintf(b, sizeof b, "@@pc%" PRIxPTR "@@", pc);
  return b;
}

std::string symbolize(std::string text) {
  for (size_t p = text.find("@@pc"); p != std::string::npos; p = text.find("@@pc", p)) {
    const size_t e = text.find("@@", p + 4);
    if (e == std::string::npos) break;
    const uintptr_t pc = std::strtoull(text.substr(p + 4, e - p - 4).c_str(), nullptr, 16);
    const std::string where = describe_pc(pc);
    text.replace(p, e + 2 - p, where);
    p += where.size();
  }
  return text;
}

std::string dim_str(const Dim3& d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

// "0-15, 17, 20-21" from sorted ids.
std::string ranges(const std::vector<int>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!s.empty()) s += ", ";
    s += std::to_string(ids[i]);
    if (j > i) s += "-" + std::to_string(ids[j]);
    i = j + 1;
  }
  return s;
}

// ---- fiber stacks -----------------------------------------------------------------------------------

size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

// Stacks with a guard page below them (an overflow faults on the guard, which a signal handler names,
// instead of corrupting the next stack), reused across blocks and launches.
class StackPool {
 public:
  ctx::stack_context take() {
    ctx::stack_context sc;
    if (!free_.empty()) {
      sc = free_.back();
      free_.pop_back();
    } else {
      void* base = mmap(nullptr, kStackBytes + page_size(), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (base == MAP_FAILED) throw std::bad_alloc();
      mprotect(base, page_size(), PROT_NONE);
      sc.size = kStackBytes;
      sc.sp = static_cast<char*>(base) + page_size() + kStackBytes;
      std::lock_guard<std::mutex> lock(guards_mutex_);
      guards_.push_back(reinterpret_cast<uintptr_t>(base));
    }
#if defined(BITQAT_SIM_ASAN)
    // A thread that returned normally left its frames unpoisoned; one unwound by an exception may
    // have left redzones behind.
    const auto d = std::find(dirty_.begin(), dirty_.end(), sc.sp);
    if (d != dirty_.end()) {
      __asan_unpoison_memory_region(static_cast<char*>(sc.sp) - sc.size, sc.size);
      dirty_.erase(d);
    }
#endif
    return sc;
  }
  void give(const ctx::stack_context& sc) { free_.push_back(sc); }
  void mark_unwound(const void* stack_top) { dirty_.push_back(stack_top); }
  // Whether an address lies in a guard page (signal-safe: no allocation, a spin on no lock).
  bool in_guard(uintptr_t a) const {
    for (const uintptr_t g : guards_) {
      if (a >= g && a < g + page_size()) return true;
    }
    return false;
  }

 private:
  std::vector<ctx::stack_context> free_;
  std::vector<const void*> dirty_;
  std::vector<uintptr_t> guards_;
  std::mutex guards_mutex_;
};

// ---- AddressSanitizer's fiber annotations (no-ops elsewhere) ----------------------------------------
#if defined(BITQAT_SIM_ASAN)
void start_switch(void** fake, const void* bottom, size_t size) { __sanitizer_start_switch_fiber(fake, bottom, size); }
void finish_switch(void* fake, const void** bottom, size_t* size) {
  __sanitizer_finish_switch_fiber(fake, bottom, size);
}
#else
void start_switch(void**, const void*, size_t) {}
void finish_switch(void*, const void**, size_t*) {}
#endif

// ---- threads, blocks --------------------------------------------------------------------------------

enum class Wait { kNone, kBarrier, kCollective, kExited };
enum class Collective { kShuffle, kBallot, kSyncwarp, kMma };

const char* collective_name(Collective c, ShuffleMode m) {
  switch (c) {
    case Collective::kShuffle:
      return m == ShuffleMode::kIdx    ? "shfl.sync.idx"
             : m == ShuffleMode::kUp   ? "shfl.sync.up"
             : m == ShuffleMode::kDown ? "shfl.sync.down"
                                       : "shfl.sync.bfly";
    case Collective::kBallot:
      return "vote.sync.ballot";
    case Collective::kSyncwarp:
      return "__syncwarp";
    case Collective::kMma:
      return "mma.sync.m16n8k32";
  }
  return "?";
}

struct Abort {};  // unwinds a kernel thread when its block is abandoned after a fault

struct Thread;
// The lanes taking part in one warp collective (no allocation: collectives are the hot path).
struct Group {
  Thread* lanes[32];
  size_t n = 0;
  void add(Thread* t) { lanes[n++] = t; }
  Thread* const* begin() const { return lanes; }
  Thread* const* end() const { return lanes + n; }
  size_t size() const { return n; }
  Thread* front() const { return lanes[0]; }
};

class Block;

struct Thread {
  ThreadContext ctx;
  int tid = 0, warp = 0, lane = 0;
  Block* block = nullptr;
  Wait wait = Wait::kNone;
  const char* file = nullptr;
  int line = 0;
  // a pending collective
  Collective kind = Collective::kShuffle;
  ShuffleMode mode = ShuffleMode::kIdx;
  unsigned mask = 0, b = 0;
  int width = kWarp;
  uint64_t value = 0, poison = 0, result = 0;
  bool predicate = false;
  uint32_t mma_a[4] = {}, mma_b[2] = {};
  int32_t mma_c[4] = {};
  // Vector clock over the warp's lanes: vc[j] is the count of lane j's __syncwarp arrivals this
  // lane has synchronised with (its own entry: its own count). Orders shared memory within a warp.
  uint32_t vc[32] = {};
  // contexts
  ctx::fiber fiber;   // this thread, while suspended (the scheduler's handle)
  ctx::fiber caller;  // the scheduler, while this thread runs
  const void* stack_bottom = nullptr;
  size_t stack_size = 0;
  void* fake_stack = nullptr;
};

thread_local Thread* tl_thread = nullptr;

// How an access is made. Atomics and volatile accesses are "strong" in the PTX memory model (volatile
// is relaxed at system scope): two strong accesses never form a data race, a strong and a plain one do.
enum class Strength : uint8_t { kPlain, kAtomic, kVolatile };

// One access in the shadow: the thread, its own __syncwarp count then, the program counter (or an
// atomic's site), how it was made.
struct Access {
  uint16_t tid = kNoThread;
  Strength strength = Strength::kPlain;
  uint32_t stamp = 0;
  uintptr_t pc = 0;
};

// Shadow of one shared-memory byte: the last write, and the reads of the current barrier interval:
// every warp that read (bit masks: all reads, plain reads) and the last kReaderSlots readers.
struct Shadow {
  uint32_t wgen = 0, wepoch = 0;  // block generation of the last write (0: never), its barrier interval
  Access w;
  uint32_t rgen = 0, repoch = 0;
  uint32_t rwarps = 0, rwarps_plain = 0;
  uint8_t rnext = 0;
  Access r[kReaderSlots];
  uint32_t pgen = 0;  // the generation in which the byte was poisoned before a read
};

struct State {
  std::mutex mutex;  // one launch at a time: shared memory is process-wide
  Options options;
  uint64_t launches_since_options = 0;  // seeds the orders: reproducible from set_options on
  Stats stats;
  StackPool stacks;
  uint32_t block_gen = 0;
  // the shared-memory shadow over [lo, lo + size), and which of those bytes are __shared__ variables
  uintptr_t lo = 0;
  size_t size = 0;
  Shadow* shadow = nullptr;
  std::vector<uint8_t> is_shared;
  bool precise_extents = false;
  std::vector<std::string> reports;
  std::map<std::pair<uintptr_t, uintptr_t>, int> race_sites;
  uint64_t dropped_reports = 0;
  std::vector<std::pair<const char*, int>> atomic_sites;
  std::map<std::pair<const char*, int>, uintptr_t> atomic_site_index;
};

State& state() {
  static State* s = new State();  // never destroyed: fibers may outlive static destruction order
  return *s;
}

std::string site_of_tag(uintptr_t tag) {
  const auto& sites = state().atomic_sites;
  const size_t i = static_cast<size_t>(tag & ~kSiteTag);
  return i < sites.size() ? site(sites[i].first, sites[i].second) + " (atomic)" : "an atomic";
}

uintptr_t atomic_site(const char* file, int line) {
  auto& s = state();
  const auto key = std::make_pair(file, line);
  const auto it = s.atomic_site_index.find(key);
  if (it != s.atomic_site_index.end()) return it->second;
  const uintptr_t tag = kSiteTag | s.atomic_sites.size();
  s.atomic_sites.push_back(key);
  s.atomic_site_index.emplace(key, tag);
  return tag;
}

void report(std::string text) {
  auto& s = state();
  if (s.reports.size() < kMaxReports) {
    s.reports.push_back(std::move(text));
  } else {
    ++s.dropped_reports;
  }
}

// ---- a stack overflow is named, not a bare crash ------------------------------------------------------
#if !defined(BITQAT_SIM_ASAN)
void on_segv(int sig, siginfo_t* info, void*) {
  if (state().stacks.in_guard(reinterpret_cast<uintptr_t>(info->si_addr))) {
    static const char msg[] =
        "bitqat CUDA harness: a kernel thread overflowed its stack (768 KB for local memory and the harness's "
        "frames; a GPU thread may use at most 512 KB of local memory)\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

void install_stack_guard_handler() {
  static bool done = false;
  if (done) return;
  done = true;
  static std::vector<char> alt(64 * 1024);
  stack_t ss{};
  ss.ss_sp = alt.data();
  ss.ss_size = alt.size();
  sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, nullptr);
}
#else
void install_stack_guard_handler() {}  // AddressSanitizer reports stack overflows itself
#endif

class Block {
 public:
  Block(Dim3 grid, Dim3 block_dim, Dim3 block_idx, void (*body)(void*), void* closure, uint64_t seed)
      : body_(body), closure_(closure), rng_(seed) {
    const int n = static_cast<int>(block_dim.x * block_dim.y * block_dim.z);
    threads_.resize(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      Thread& t = threads_[static_cast<size_t>(i)];
      t.tid = i;
      t.warp = i / kWarp;
      t.lane = i % kWarp;
      t.block = this;
      t.ctx.grid_dim = grid;
      t.ctx.block_dim = block_dim;
      t.ctx.block_idx = block_idx;
      t.ctx.thread_idx =
          Dim3{static_cast<unsigned>(i) % block_dim.x, (static_cast<unsigned>(i) / block_dim.x) % block_dim.y,
               static_cast<unsigned>(i) / (block_dim.x * block_dim.y)};
    }
    gen_ = ++state().block_gen;
    name_ = dim_str(block_idx);
  }

  // Runs every thread to completion (or abandons the block after a fault).
  void run() {
    for (auto& t : threads_) start(t);
    order_.resize(threads_.size());
    new_order();
    for (;;) {
      bool ran = false;
      for (size_t p = 0; p < order_.size() && !aborting_; ++p) {
        Thread& t = threads_[static_cast<size_t>(order_[p])];
        if (t.wait != Wait::kNone) continue;
        resume(t);
        ran = true;
        after_yield(t);
      }
      if (aborting_) break;
      if (ran) continue;
      if (all_exited()) return;
      if (!release_barrier()) deadlock();
      if (aborting_) break;
    }
    // Abandon: every thread unwinds (Abort thrown at its wait) or, if never started, skips the body.
    for (auto& t : threads_) {
      while (t.wait != Wait::kExited) resume(t);
    }
  }

  // ---- called on the kernel thread's own fiber ----
  void wait(Thread& t) {
    start_switch(&t.fake_stack, sched_bottom_, sched_size_);
    t.caller = std::move(t.caller).resume();
    finish_switch(t.fake_stack, &sched_bottom_, &sched_size_);
    if (aborting_) throw Abort{};
  }
  // A volatile read: let the other threads run (a spin-wait on a flag another thread sets).
  void spin(Thread& t) {
    if (++idle_spins_ > kMaxIdleSpins) {
      fault("block " + name_ + ": a spin-wait on volatile shared memory never ends (" + std::to_string(kMaxIdleSpins) +
            " volatile reads with no shared write or collective in between)");
      throw Abort{};
    }
    wait(t);  // stays runnable: t.wait is kNone
  }
  void progressed() { idle_spins_ = 0; }

  void fault(const std::string& text) {
    report(text);
    aborting_ = true;
  }

  uint32_t gen() const { return gen_; }
  uint32_t epoch() const { return epoch_; }
  const std::string& name() const { return name_; }
  const Thread& thread(int tid) const { return threads_[static_cast<size_t>(tid)]; }
  int size() const { return static_cast<int>(threads_.size()); }
  // Lanes of `warp` that exist and have not exited.
  unsigned active_lanes(int warp) const {
    unsigned m = 0;
    for (int l = 0; l < kWarp; ++l) m |= (exists_active(warp, l) ? 1u : 0u) << l;
    return m;
  }

 private:
  void start(Thread& t) {
    struct Stack {
      Thread* t;
      ctx::stack_context allocate() {
        auto sc = state().stacks.take();
        t->stack_bottom = static_cast<char*>(sc.sp) - sc.size;
        t->stack_size = sc.size;
        return sc;
      }
      void deallocate(ctx::stack_context& sc) noexcept { state().stacks.give(sc); }
    };
    t.fiber = ctx::fiber(std::allocator_arg, Stack{&t}, [this, &t](ctx::fiber&& caller) {
      finish_switch(nullptr, &sched_bottom_, &sched_size_);
      t.caller = std::move(caller);
      if (!aborting_) {
        bool unwound = true;
        try {
          body_(closure_);
          unwound = false;
        } catch (const Abort&) {
        } catch (const ctx::detail::forced_unwind&) {
          throw;
        } catch (const std::exception& e) {
          fault("block " + name_ + " thread " + dim_str(t.ctx.thread_idx) + ": exception in the kernel: " + e.what());
        } catch (...) {
          fault("block " + name_ + " thread " + dim_str(t.ctx.thread_idx) + ": exception in the kernel");
        }
        if (unwound) state().stacks.mark_unwound(static_cast<const char*>(t.stack_bottom) + t.stack_size);
      }
      t.wait = Wait::kExited;
      start_switch(nullptr, sched_bottom_, sched_size_);
      return std::move(t.caller);
    });
  }

  void resume(Thread& t) {
    tl_thread = &t;
    threadIdx = t.ctx.thread_idx;
    blockIdx = t.ctx.block_idx;
    blockDim = t.ctx.block_dim;
    gridDim = t.ctx.grid_dim;
    ++state().stats.switches;
    start_switch(&sched_fake_, t.stack_bottom, t.stack_size);
    t.fiber = std::move(t.fiber).resume();
    finish_switch(sched_fake_, nullptr, nullptr);
    tl_thread = nullptr;
  }

  void new_order() {
    for (size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<int>(i);
    switch (state().options.order) {
      case Order::kIndex:
        break;
      case Order::kReverse:
        std::reverse(order_.begin(), order_.end());
        break;
      case Order::kShuffle:
        std::shuffle(order_.begin(), order_.end(), rng_);
        break;
    }
  }

  bool all_exited() const {
    return std::all_of(threads_.begin(), threads_.end(), [](const Thread& t) { return t.wait == Wait::kExited; });
  }

  bool exists_active(int warp, int lane) const {
    const int tid = warp * kWarp + lane;
    return tid < size() && threads_[static_cast<size_t>(tid)].wait != Wait::kExited;
  }

  void after_yield(Thread& t) {
    if (t.wait == Wait::kCollective) {
      try_release(t.warp, t.lane);
    } else if (t.wait == Wait::kExited) {
      progressed();
      // A lane's exit may complete the collectives its warp waits at.
      for (int l = 0; l < kWarp && !aborting_; ++l) {
        const int tid = t.warp * kWarp + l;
        if (tid < size() && threads_[static_cast<size_t>(tid)].wait == Wait::kCollective) try_release(t.warp, l);
      }
    }
  }

  static bool same_collective(const Thread& a, const Thread& b) {
    return a.kind == b.kind && a.mask == b.mask && (a.kind != Collective::kShuffle || a.mode == b.mode) &&
           (a.kind != Collective::kMma || (a.file == b.file && a.line == b.line));
  }

  // Releases the collective lane `lane` of `warp` waits at, once every non-exited lane of its mask
  // waits at the same collective (PTX shfl.sync, vote.sync, bar.warp.sync on sm_70 and later: the
  // same operation and member mask; mma.sync.aligned: the same instruction). Lanes that wait
  // elsewhere may still arrive; if they never do, the block deadlocks and that is the report.
  void try_release(int warp, int lane) {
    Thread& first = threads_[static_cast<size_t>(warp * kWarp + lane)];
    const unsigned mask = first.kind == Collective::kMma ? kFullMask : first.mask;
    Group group;
    for (int l = 0; l < kWarp; ++l) {
      if (!(mask >> l & 1u)) continue;
      const int tid = warp * kWarp + l;
      if (tid >= size()) continue;
      Thread& o = threads_[static_cast<size_t>(tid)];
      if (o.wait == Wait::kExited) continue;
      if (o.wait != Wait::kCollective || !same_collective(o, first)) return;  // not (yet) here
      group.add(&o);
    }
    // A lane waiting at this very call site with another mask that names a member: the lanes
    // disagree about who takes part (undefined in CUDA).
    for (int l = 0; l < kWarp; ++l) {
      const int tid = warp * kWarp + l;
      if (tid >= size() || (mask >> l & 1u)) continue;
      const Thread& o = threads_[static_cast<size_t>(tid)];
      if (o.wait == Wait::kCollective && o.kind == first.kind && o.file == first.file && o.line == first.line &&
          (o.mask & mask) != 0 && o.mask != mask) {
        char m1[16], m2[16];
        std::snprintf(m1, sizeof m1, "0x%08x", mask);
        std::snprintf(m2, sizeof m2, "0x%08x", o.mask);
        fault(std::string(collective_name(first.kind, first.mode)) + " at " + site(first.file, first.line) +
              " in block " + name_ + ", warp " + std::to_string(warp) +
              ": lanes disagree about the member mask: lane " + std::to_string(first.lane) + " uses " + m1 + ", lane " +
              std::to_string(o.lane) + " uses " + m2);
        return;
      }
    }
    // Stricter than PTX unless the options say otherwise: one shuffle or vote, one call site.
    if (state().options.same_site_collectives &&
        (first.kind == Collective::kShuffle || first.kind == Collective::kBallot)) {
      std::map<std::string, unsigned> sites;
      for (const Thread* o : group) sites[site(o->file, o->line)] |= 1u << o->lane;
      if (sites.size() > 1) {
        std::string text = "divergent " + std::string(collective_name(first.kind, first.mode)) + " in block " + name_ +
                           ", warp " + std::to_string(warp) + ": lanes meet from different call sites (";
        bool comma = false;
        for (const auto& [where, lanes] : sites) {
          char m[16];
          std::snprintf(m, sizeof m, "0x%08x", lanes);
          text += std::string(comma ? "; " : "") + "lanes " + m + " at " + where;
          comma = true;
        }
        fault(text + "); PTX allows this on sm_70 and later: Options::same_site_collectives = false accepts it");
        return;
      }
    }
    ++state().stats.collectives;
    progressed();
    switch (first.kind) {
      case Collective::kShuffle:
        release_shuffle(warp, group);
        break;
      case Collective::kBallot: {
        unsigned bits = 0;
        for (Thread* o : group) bits |= (o->predicate ? 1u : 0u) << o->lane;
        for (Thread* o : group) o->result = bits;
        break;
      }
      case Collective::kSyncwarp: {
        // Each member's own count advances, then all learn what any of them knew.
        uint32_t merged[32] = {};
        for (Thread* o : group) ++o->vc[o->lane];
        for (Thread* o : group)
          for (int j = 0; j < kWarp; ++j) merged[j] = std::max(merged[j], o->vc[j]);
        for (Thread* o : group) std::memcpy(o->vc, merged, sizeof merged);
        break;
      }
      case Collective::kMma:
        if (!release_mma(warp, group)) return;
        break;
    }
    for (Thread* o : group) o->wait = Wait::kNone;
  }

  // PTX shfl.sync: c = ((32 - width) << 8) | (up ? 0 : 0x1f); segmask = c[12:8], cval = c[4:0];
  // maxLane = (lane & segmask) | (cval & ~segmask), minLane = lane & segmask; j from the mode; an
  // out-of-range j reads the lane's own value; an inactive or non-member source gives the poison.
  void release_shuffle(int warp, const Group& group) {
    for (Thread* o : group) {
      const int64_t lane = o->lane, b = o->b;  // b is the instruction's .b32 operand: unsigned
      const int64_t segmask = (kWarp - o->width) & 0x1f;
      const int64_t cval = o->mode == ShuffleMode::kUp ? 0 : 0x1f;
      const int64_t max_lane = (lane & segmask) | (cval & ~segmask);
      const int64_t min_lane = lane & segmask;
      int64_t j = lane;
      bool in_range = true;
      switch (o->mode) {
        case ShuffleMode::kUp:
          j = lane - b;
          in_range = j >= max_lane;
          break;
        case ShuffleMode::kDown:
          j = lane + b;
          in_range = j <= max_lane;
          break;
        case ShuffleMode::kBfly:
          j = lane ^ b;
          in_range = j <= max_lane;
          break;
        case ShuffleMode::kIdx:
          j = min_lane | ((b & 0x1f) & ~segmask);
          in_range = j <= max_lane;
          break;
      }
      if (!in_range) j = lane;
      const bool member = (o->mask >> j & 1u) != 0;
      const int src = warp * kWarp + static_cast<int>(j);
      if (!member || !exists_active(warp, static_cast<int>(j)) ||
          threads_[static_cast<size_t>(src)].wait != Wait::kCollective) {
        o->result = o->poison;
      } else {
        o->result = threads_[static_cast<size_t>(src)].value;
      }
    }
  }

  // D = A B + C from the 32 lanes' fragments (cuda/mma_m16n8k32.hpp), s32 sums wrapping mod 2^32.
  bool release_mma(int warp, const Group& group) {
    if (group.size() != kWarp) {
      std::vector<int> missing;
      for (int l = 0; l < kWarp; ++l) {
        if (!exists_active(warp, l)) missing.push_back(l);
      }
      fault("mma.sync at " + site(group.front()->file, group.front()->line) + " in block " + name_ + ", warp " +
            std::to_string(warp) + " needs all 32 lanes; lanes " + ranges(missing) + " have exited or do not exist");
      return false;
    }
    int8_t a[mma::kM][mma::kK] = {}, b[mma::kK][mma::kN] = {};
    int32_t c[mma::kM][mma::kN] = {};
    for (Thread* o : group) {
      for (int i = 0; i < mma::kAElems; ++i) {
        const auto e = mma::a_element(o->lane, i);
        a[e.row][e.col] = static_cast<int8_t>(o->mma_a[i / 4] >> (8 * (i % 4)));
      }
      for (int i = 0; i < mma::kBElems; ++i) {
        const auto e = mma::b_element(o->lane, i);
        b[e.row][e.col] = static_cast<int8_t>(o->mma_b[i / 4] >> (8 * (i % 4)));
      }
      for (int i = 0; i < mma::kCRegs; ++i) {
        const auto e = mma::c_element(o->lane, i);
        c[e.row][e.col] = o->mma_c[i];
      }
    }
    for (int r = 0; r < mma::kM; ++r) {
      for (int col = 0; col < mma::kN; ++col) {
        uint32_t acc = static_cast<uint32_t>(c[r][col]);
        for (int k = 0; k < mma::kK; ++k) acc += static_cast<uint32_t>(int32_t{a[r][k]} * int32_t{b[k][col]});
        c[r][col] = static_cast<int32_t>(acc);
      }
    }
    for (Thread* o : group) {
      for (int i = 0; i < mma::kCRegs; ++i) {
        const auto e = mma::c_element(o->lane, i);
        o->mma_c[i] = c[e.row][e.col];
      }
    }
    ++state().stats.mma;
    return true;
  }

  // Nothing can run: release the barrier when every thread that has not exited waits at one.
  bool release_barrier() {
    std::map<std::string, std::vector<int>> where;
    std::vector<int> exited;
    for (const Thread& t : threads_) {
      if (t.wait == Wait::kExited) {
        exited.push_back(t.tid);
      } else if (t.wait == Wait::kBarrier) {
        where[site(t.file, t.line)].push_back(t.tid);
      } else {
        return false;
      }
    }
    if (where.size() > 1) {
      std::string text = "divergent __syncthreads in block " + name_ + ":";
      for (const auto& [w, ids] : where) text += " threads " + ranges(ids) + " wait at " + w + ";";
      fault(text);
      return true;
    }
    if (!exited.empty()) {
      fault("__syncthreads at " + where.begin()->first + " in block " + name_ + " is reached while threads " +
            ranges(exited) + " have exited (every thread of the block must reach it)");
      return true;
    }
    ++epoch_;
    ++state().stats.barriers;
    progressed();
    for (Thread& t : threads_) t.wait = Wait::kNone;
    if (state().options.order == Order::kShuffle) new_order();
    return true;
  }

  void deadlock() {
    std::map<std::string, std::vector<int>> where;
    for (const Thread& t : threads_) {
      if (t.wait == Wait::kBarrier) where["__syncthreads at " + site(t.file, t.line)].push_back(t.tid);
      if (t.wait == Wait::kCollective) {
        char m[16];
        std::snprintf(m, sizeof m, "0x%08x", t.mask);
        where[std::string(collective_name(t.kind, t.mode)) + " at " + site(t.file, t.line) + " (mask " + m + ")"]
            .push_back(t.tid);
      }
    }
    std::string text = "deadlock in block " + name_ + ": no thread can run;";
    for (const auto& [w, ids] : where) text += " threads " + ranges(ids) + " wait at " + w + ";";
    fault(text);
  }

  void (*body_)(void*);
  void* closure_;
  std::mt19937_64 rng_;
  std::vector<Thread> threads_;
  std::vector<int> order_;
  uint32_t gen_ = 0, epoch_ = 0;
  uint64_t idle_spins_ = 0;
  bool aborting_ = false;
  std::string name_;
  // the scheduler's own stack, for AddressSanitizer's switch annotations
  const void* sched_bottom_ = nullptr;
  size_t sched_size_ = 0;
  void* sched_fake_ = nullptr;
};

Thread& current(const char* what) {
  if (!tl_thread) {
    std::fprintf(stderr, "bitqat CUDA harness: %s outside an emulated kernel\n", what);
    std::abort();
  }
  return *tl_thread;
}

std::string thread_name(const Block& b, int tid) {
  return "thread " + dim_str(b.thread(tid).ctx.thread_idx) + " of block " + b.name();
}

// ---- the shared-memory shadow -------------------------------------------------------------------------

// Marks in `mark` (one byte per byte of [lo, lo + size)) the executable's function-local statics, what
// __shared__ declarations become in the harness (ELF symbols "_ZZ..."), from its own symbol table.
// Namespace-scope globals (a __device__ variable, a host buffer) are not shared memory and are left
// alone. False when the table is absent (a stripped binary).
bool mark_shared_statics(uintptr_t lo, size_t size, std::vector<uint8_t>* mark) {
  const int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  if (fstat(fd, &st) != 0 || st.st_size < static_cast<off_t>(sizeof(Elf64_Ehdr))) {
    close(fd);
    return false;
  }
  void* map = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return false;
  const auto* base = static_cast<const char*>(map);
  const size_t file_size = static_cast<size_t>(st.st_size);
  bool ok = false;
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
  if (std::memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64 &&
      eh->e_shoff + static_cast<size_t>(eh->e_shnum) * sizeof(Elf64_Shdr) <= file_size) {
    const auto* sh = reinterpret_cast<const Elf64_Shdr*>(base + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum && !ok; ++i) {
      if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum) continue;
      const Elf64_Shdr& strs = sh[sh[i].sh_link];
      if (sh[i].sh_offset + sh[i].sh_size > file_size || strs.sh_offset + strs.sh_size > file_size) break;
      const auto* syms = reinterpret_cast<const Elf64_Sym*>(base + sh[i].sh_offset);
      const size_t count = sh[i].sh_size / sizeof(Elf64_Sym);
      const char* names = base + strs.sh_offset;
      auto name_of = [&](const Elf64_Sym& s) { return s.st_name < strs.sh_size ? names + s.st_name : ""; };
      // The load bias: where __bss_start is now, against its value in the file.
      bool have_bias = false;
      uintptr_t bias = 0;
      for (size_t j = 0; j < count && !have_bias; ++j) {
        if (std::strcmp(name_of(syms[j]), "__bss_start") == 0) {
          bias = lo - static_cast<uintptr_t>(syms[j].st_value);
          have_bias = true;
        }
      }
      if (!have_bias) break;
      for (size_t j = 0; j < count; ++j) {
        const Elf64_Sym& s = syms[j];
        if (ELF64_ST_TYPE(s.st_info) != STT_OBJECT || s.st_size == 0 || std::strncmp(name_of(s), "_ZZ", 3) != 0) {
          continue;
        }
        const uintptr_t a = static_cast<uintptr_t>(s.st_value) + bias;
        if (a < lo || a >= lo + size) continue;
        const size_t end = std::min(size, static_cast<size_t>(a - lo + s.st_size));
        for (size_t k = a - lo; k < end; ++k) (*mark)[k] = 1;
      }
      ok = true;
    }
  }
  munmap(map, file_size);
  return ok;
}

void ensure_shadow() {
  auto& s = state();
  if (s.shadow || !__bss_start || !_end) return;
  s.lo = reinterpret_cast<uintptr_t>(__bss_start);
  s.size = static_cast<size_t>(reinterpret_cast<uintptr_t>(_end) - s.lo);
  void* p = mmap(nullptr, s.size * sizeof(Shadow), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  s.shadow = static_cast<Shadow*>(p);  // zero pages: every record "never written"
  s.is_shared.assign(s.size, 0);
  s.precise_extents = mark_shared_statics(s.lo, s.size, &s.is_shared);
  if (!s.precise_extents) std::fill(s.is_shared.begin(), s.is_shared.end(), uint8_t{1});
}

// Whether a barrier lies between an access and now, or, within a warp, a __syncwarp that both
// lanes took part in after the access (the vector clocks).
bool ordered(const Block& b, const Thread& now, const Access& a, uint32_t epoch) {
  if (epoch != b.epoch() || a.tid == now.tid) return true;
  if (a.tid / kWarp != now.warp) return false;
  return now.vc[a.tid % kWarp] > a.stamp;
}

const char* verb(bool write, Strength how, bool past) {
  if (how == Strength::kAtomic) return past ? "atomically updated" : "atomically updates";
  if (how == Strength::kVolatile && write) return past ? "wrote (volatile)" : "writes (volatile)";
  if (how == Strength::kVolatile) return past ? "read (volatile)" : "reads (volatile)";
  if (write) return past ? "wrote" : "writes";
  return past ? "read" : "reads";
}

void race(const Block& b, const Thread& now, bool write, Strength how, size_t bytes, uintptr_t pc, const Access& other,
          bool other_write, uintptr_t address) {
  auto& s = state();
  const auto key = std::make_pair(std::min(pc, other.pc), std::max(pc, other.pc));
  if (s.race_sites[key]++ > 0) return;  // one report per pair of source lines
  char addr[32];
  std::snprintf(addr, sizeof addr, "0x%" PRIxPTR, address);
  const bool same_warp = other.tid / kWarp == now.warp;
  report(std::string("data race on shared memory at ") + addr + ": " + thread_name(b, now.tid) + " " +
         verb(write, how, false) + " " + std::to_string(bytes) + " bytes at " + pc_marker(pc) + ", and " +
         thread_name(b, other.tid) + " " + verb(other_write, other.strength, true) + " them at " + pc_marker(other.pc) +
         ", with no __syncthreads between" + (same_warp ? " and no __syncwarp of both lanes" : "") +
         " (barrier interval " + std::to_string(b.epoch()) + ")");
}

// A write racing with reads known only by their warps (the byte keeps its last kReaderSlots readers).
void race_with_warp(const Block& b, const Thread& now, size_t bytes, uintptr_t pc, int warp, uintptr_t address) {
  auto& s = state();
  const auto key = std::make_pair(pc, static_cast<uintptr_t>(warp) | (uintptr_t{1} << 62));
  if (s.race_sites[key]++ > 0) return;
  char addr[32];
  std::snprintf(addr, sizeof addr, "0x%" PRIxPTR, address);
  report(std::string("data race on shared memory at ") + addr + ": " + thread_name(b, now.tid) + " writes " +
         std::to_string(bytes) + " bytes at " + pc_marker(pc) + ", and threads of warp " + std::to_string(warp) +
         " read them earlier in the same barrier interval (" + std::to_string(b.epoch()) +
         "), with no __syncthreads between");
}

void shared_access(uintptr_t address, size_t n, bool write, Strength how, uintptr_t pc) {
  Thread* t = tl_thread;
  if (!t) return;
  auto& s = state();
  if (!s.shadow || address - s.lo >= s.size) return;
  const size_t off0 = address - s.lo;
  bool any = false;
  for (size_t i = 0; i < n && off0 + i < s.size && !any; ++i) any = s.is_shared[off0 + i] != 0;
  if (!any) return;
  Block& b = *t->block;
  ++s.stats.shared_accesses;
  if (write) b.progressed();
  const uint32_t gen = b.gen(), epoch = b.epoch();
  const bool strong = how != Strength::kPlain;
  const Access me{static_cast<uint16_t>(t->tid), how, t->vc[t->lane], pc};
  const uint32_t my_warp = 1u << t->warp;
  for (size_t i = 0; i < n && off0 + i < s.size; ++i) {
    if (!s.is_shared[off0 + i]) continue;
    Shadow& r = s.shadow[off0 + i];
    if (write) {
      if (r.wgen == gen && !(strong && r.w.strength != Strength::kPlain) && !ordered(b, *t, r.w, r.wepoch)) {
        race(b, *t, true, how, n, pc, r.w, true, address);
      }
      if (r.rgen == gen && r.repoch == epoch) {
        bool named = false;
        for (const Access& rd : r.r) {
          if (rd.tid != kNoThread && !(strong && rd.strength != Strength::kPlain) && !ordered(b, *t, rd, r.repoch)) {
            race(b, *t, true, how, n, pc, rd, false, address);
            named = true;
          }
        }
        const uint32_t others = (strong ? r.rwarps_plain : r.rwarps) & ~my_warp;
        if (others && !named) race_with_warp(b, *t, n, pc, __builtin_ctz(others), address);
      }
      r.wgen = gen;
      r.wepoch = epoch;
      r.w = me;
      r.rgen = 0;
    } else {
      if (r.wgen != gen) {
        // Not written by this block: poison it before the load reads it.
        if (r.pgen != gen) {
          r.pgen = gen;
          ++s.stats.uninitialised_reads;
        }
        *reinterpret_cast<uint8_t*>(address + i) = s.options.poison;
      } else if (!(strong && r.w.strength != Strength::kPlain) && !ordered(b, *t, r.w, r.wepoch)) {
        race(b, *t, false, how, n, pc, r.w, true, address);
      }
      if (r.rgen != gen || r.repoch != epoch) {
        r.rgen = gen;
        r.repoch = epoch;
        r.rwarps = r.rwarps_plain = 0;
        r.rnext = 0;
        for (Access& rd : r.r) rd.tid = kNoThread;
      }
      r.rwarps |= my_warp;
      if (!strong) r.rwarps_plain |= my_warp;
      int k = -1;
      for (int j = 0; j < kReaderSlots; ++j) {
        if (r.r[j].tid == me.tid) k = j;
      }
      if (k < 0) {
        k = r.rnext;
        r.rnext = static_cast<uint8_t>((r.rnext + 1) % kReaderSlots);
      }
      r.r[k] = me;
    }
  }
}

int& error_slot() {
  static thread_local int e = 0;
  return e;
}

}  // namespace

// ---- public API -----------------------------------------------------------------------------------------

Options options() { return state().options; }
void set_options(const Options& o) {
  state().options = o;
  state().launches_since_options = 0;
}
ScopedOptions::ScopedOptions(const Options& o) : saved_(options()) { set_options(o); }
ScopedOptions::~ScopedOptions() { set_options(saved_); }

Stats stats() { return state().stats; }
void reset_stats() { state().stats = Stats{}; }

bool instrumented() {
#if defined(BITQAT_SIM_ASAN)
  return false;
#else
  return true;
#endif
}

int& last_error() { return error_slot(); }

const ThreadContext& context() { return current("a built-in variable (threadIdx, blockIdx, ...) read").ctx; }

int launch(Dim3 grid, Dim3 block, void (*body)(void*), void* closure) {
  constexpr int kInvalidConfiguration = 9, kInvalidValue = 1;
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (grid.x < 1 || grid.y < 1 || grid.z < 1 || block.x < 1 || block.y < 1 || block.z < 1 || grid.x > 0x7fffffffu ||
      grid.y > 65535 || grid.z > 65535 || block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024) {
    return kInvalidConfiguration;
  }
  if (tl_thread) return kInvalidValue;  // no launches from inside a kernel
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  install_stack_guard_handler();
  if (instrumented()) ensure_shadow();
  s.reports.clear();
  s.race_sites.clear();
  s.dropped_reports = 0;
  ++s.stats.launches;
  // The orders depend on the seed and on how many launches ran since the options were set, so a run
  // repeats when the same launches follow the same set_options (a test filtered to itself included).
  const uint64_t launch_id = ++s.launches_since_options;
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  std::vector<uint64_t> order(blocks);
  for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
  std::mt19937_64 rng(s.options.seed * 0x9E3779B97F4A7C15ull + launch_id);
  if (s.options.order == Order::kReverse) std::reverse(order.begin(), order.end());
  if (s.options.order == Order::kShuffle) std::shuffle(order.begin(), order.end(), rng);
  for (const uint64_t id : order) {
    const Dim3 idx{static_cast<unsigned>(id % grid.x), static_cast<unsigned>(id / grid.x % grid.y),
                   static_cast<unsigned>(id / (uint64_t{grid.x} * grid.y))};
    Block b(grid, block, idx, body, closure, rng());
    b.run();
    ++s.stats.blocks;
    s.stats.threads += threads;
    if (!s.reports.empty() && s.reports.size() >= kMaxReports) break;
  }
  if (!s.reports.empty()) {
    std::string text = "CUDA harness: " + std::to_string(s.reports.size() + s.dropped_reports) + " fault(s)";
    for (const auto& r : s.reports) text += "\n  " + symbolize(r);
    if (s.dropped_reports) text += "\n  (" + std::to_string(s.dropped_reports) + " more not shown)";
    s.reports.clear();
    throw KernelFault(text);
  }
  return 0;
}

void syncthreads(const char* file, int line) {
  Thread& t = current("__syncthreads");
  t.wait = Wait::kBarrier;
  t.file = file;
  t.line = line;
  t.block->wait(t);
}

namespace {
void collective(Thread& t, Collective kind, unsigned mask, const char* file, int line) {
  t.kind = kind;
  t.mask = mask;
  t.file = file;
  t.line = line;
  if (!(mask >> t.lane & 1u) && kind != Collective::kMma) {
    char m[16];
    std::snprintf(m, sizeof m, "0x%08x", mask);
    t.block->fault(std::string(collective_name(kind, t.mode)) + " at " + site(file, line) + ": " +
                   thread_name(*t.block, t.tid) + " (lane " + std::to_string(t.lane) + ") is not in its member mask " +
                   m);
    throw Abort{};
  }
  t.wait = Wait::kCollective;
  t.block->wait(t);
}
}  // namespace

void syncwarp(unsigned mask, const char* file, int line) {
  Thread& t = current("__syncwarp");
  collective(t, Collective::kSyncwarp, mask, file, line);
}

uint64_t shuffle(ShuffleMode mode, unsigned mask, uint64_t value, unsigned b, int width, uint64_t poison,
                 const char* file, int line) {
  Thread& t = current("a warp shuffle");
  if (width < 1 || width > kWarp || (width & (width - 1)) != 0) {
    t.block->fault(site(file, line) + ": shuffle width " + std::to_string(width) +
                   " is not a power of two in [1, 32] (" + thread_name(*t.block, t.tid) + ")");
    throw Abort{};
  }
  t.mode = mode;
  t.value = value;
  t.b = b;
  t.width = width;
  t.poison = poison;
  collective(t, Collective::kShuffle, mask, file, line);
  return t.result;
}

unsigned ballot(unsigned mask, bool predicate, const char* file, int line) {
  Thread& t = current("a warp vote");
  t.predicate = predicate;
  collective(t, Collective::kBallot, mask, file, line);
  return static_cast<unsigned>(t.result);
}

unsigned active_mask() {
  const Thread& t = current("__activemask");
  return t.block->active_lanes(t.warp);
}

void mma_m16n8k32_s8(int (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file, int line) {
  Thread& t = current("mma.sync");
  std::memcpy(t.mma_a, a, sizeof t.mma_a);
  std::memcpy(t.mma_b, b, sizeof t.mma_b);
  std::memcpy(t.mma_c, c, sizeof t.mma_c);
  collective(t, Collective::kMma, kFullMask, file, line);
  std::memcpy(c, t.mma_c, sizeof t.mma_c);
}

uint32_t atomic_rmw(void* address, uint32_t (*fn)(uint32_t, uint32_t), uint32_t operand, const char* file, int line) {
  current("an atomic");
  const auto a = reinterpret_cast<uintptr_t>(address);
  const uintptr_t where = instrumented() ? atomic_site(file, line) : 0;
  if (instrumented()) shared_access(a, 4, false, Strength::kAtomic, where);
  uint32_t old;
  std::memcpy(&old, address, 4);
  const uint32_t now = fn(old, operand);
  if (instrumented()) shared_access(a, 4, true, Strength::kAtomic, where);
  std::memcpy(address, &now, 4);
  return old;
}

}  // namespace bitqat::cuda::sim

// ---- the instrumentation hooks of -fsanitize=thread (instrumented build only) ---------------------------
#if !defined(BITQAT_SIM_ASAN)
namespace {
using bitqat::cuda::sim::Strength;
inline void hook(void* p, size_t n, bool write, void* pc, Strength how = Strength::kPlain) {
  if (bitqat::cuda::sim::tl_thread) {
    bitqat::cuda::sim::shared_access(reinterpret_cast<uintptr_t>(p), n, write, how, reinterpret_cast<uintptr_t>(pc));
  }
}
// A volatile read inside a kernel is where a GPU thread may spin on a flag another thread sets: the
// other threads run before it reads again.
inline void volatile_read(void* p, size_t n, void* pc) {
  if (auto* t = bitqat::cuda::sim::tl_thread) {
    bitqat::cuda::sim::shared_access(reinterpret_cast<uintptr_t>(p), n, false, Strength::kVolatile,
                                     reinterpret_cast<uintptr_t>(pc));
    t->block->spin(*t);
  }
}
}  // namespace

extern "C" {
#define BITQAT_SIM_HOOKS(n)                                                                   \
  void __tsan_read##n(void* p) { hook(p, n, false, __builtin_return_address(0)); }            \
  void __tsan_write##n(void* p) { hook(p, n, true, __builtin_return_address(0)); }            \
  void __tsan_unaligned_read##n(void* p) { hook(p, n, false, __builtin_return_address(0)); }  \
  void __tsan_unaligned_write##n(void* p) { hook(p, n, true, __builtin_return_address(0)); }  \
  void __tsan_volatile_read##n(void* p) { volatile_read(p, n, __builtin_return_address(0)); } \
  void __tsan_volatile_write##n(void* p) { hook(p, n, true, __builtin_return_address(0), Strength::kVolatile); }
BITQAT_SIM_HOOKS(1)
BITQAT_SIM_HOOKS(2)
BITQAT_SIM_HOOKS(4)
BITQAT_SIM_HOOKS(8)
BITQAT_SIM_HOOKS(16)
#undef BITQAT_SIM_HOOKS
void __tsan_read_range(void* p, unsigned long n) { hook(p, n, false, __builtin_return_address(0)); }
void __tsan_write_range(void* p, unsigned long n) { hook(p, n, true, __builtin_return_address(0)); }
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
}
#endif
