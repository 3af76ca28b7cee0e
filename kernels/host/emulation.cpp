// The host emulation behind kernels/device.cuh: runs a kernel launch on the CPU, each block's threads as
// ucontext fibers that switch only at barriers (__syncthreads, warp shuffles and votes), blocks spread over a
// few worker threads. Compiled with every kernel into one translation unit by kernels/host/all_kernels.cpp, so
// the static registrations of FT_EXPORT are never dropped by the linker.
#include "../device.cuh"

#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ft {
namespace {

constexpr size_t kFiberStack = 64 * 1024;

enum class FiberState { Runnable, WaitBlock, WaitWarp, Done };

struct Fiber {
    ucontext_t context;
    FiberState state = FiberState::Runnable;
    ThreadPosition position;
    std::unique_ptr<char[]> stack;
};

// One worker thread's state while it runs a block.
struct BlockRun {
    ucontext_t scheduler;
    std::vector<Fiber> fibers;
    std::vector<uint64_t> warp_slots;  // 32 words per warp
    Fiber* current = nullptr;
    const std::function<void()>* kernel = nullptr;
};

thread_local BlockRun* tls_run = nullptr;

void fiber_main() {
    BlockRun* run = tls_run;
    (*run->kernel)();
    run->current->state = FiberState::Done;
    // Returning resumes uc_link, the scheduler.
}

std::map<std::string, HostEntry>& registry() {
    static std::map<std::string, HostEntry> table;
    return table;
}

// Runs one block to completion. Returns false on a deadlock (a barrier some live thread never reaches).
bool run_block(BlockRun& run, dim3 grid, dim3 block, dim3 block_index, unsigned char* dynamic_shared) {
    unsigned threads = block.x * block.y * block.z;
    unsigned warps = (threads + kWarpSize - 1) / kWarpSize;
    for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = run.fibers[t];
        f.state = FiberState::Runnable;
        f.position.thread = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        f.position.block = block_index;
        f.position.block_dim = block;
        f.position.grid_dim = grid;
        f.position.linear_thread = t;
        f.position.dynamic_shared = dynamic_shared;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.get();
        f.context.uc_stack.ss_size = kFiberStack;
        f.context.uc_link = &run.scheduler;
        makecontext(&f.context, fiber_main, 0);
    }
    for (;;) {
        for (unsigned t = 0; t < threads; ++t) {
            Fiber& f = run.fibers[t];
            if (f.state != FiberState::Runnable) continue;
            run.current = &f;
            swapcontext(&run.scheduler, &f.context);
        }
        bool all_done = true, released = false;
        for (unsigned w = 0; w < warps; ++w) {
            unsigned begin = w * kWarpSize, end = std::min(threads, begin + kWarpSize);
            bool live = false, all_waiting = true;
            for (unsigned t = begin; t < end; ++t) {
                FiberState s = run.fibers[t].state;
                if (s == FiberState::Done) continue;
                live = true;
                if (s != FiberState::WaitWarp) all_waiting = false;
            }
            if (live && all_waiting) {
                for (unsigned t = begin; t < end; ++t)
                    if (run.fibers[t].state == FiberState::WaitWarp) run.fibers[t].state = FiberState::Runnable;
                released = true;
            }
        }
        bool block_waiting = true;
        for (unsigned t = 0; t < threads; ++t) {
            FiberState s = run.fibers[t].state;
            if (s != FiberState::Done) all_done = false;
            if (s != FiberState::Done && s != FiberState::WaitBlock) block_waiting = false;
        }
        if (all_done) return true;
        if (block_waiting) {
            for (unsigned t = 0; t < threads; ++t)
                if (run.fibers[t].state == FiberState::WaitBlock) run.fibers[t].state = FiberState::Runnable;
            released = true;
        }
        if (!released) {
            std::fprintf(stderr,
                         "ferrotune kernel emulation: deadlock in block (%u,%u,%u): some threads wait at "
                         "__syncthreads while others wait at a warp barrier (divergent barrier)\n",
                         block_index.x, block_index.y, block_index.z);
            return false;
        }
    }
}

}  // namespace

ThreadPosition& position() { return tls_run->current->position; }

void barrier(bool warp) {
    BlockRun* run = tls_run;
    Fiber* self = run->current;
    self->state = warp ? FiberState::WaitWarp : FiberState::WaitBlock;
    swapcontext(&self->context, &run->scheduler);
}

uint64_t* warp_slots() {
    BlockRun* run = tls_run;
    return run->warp_slots.data() + (run->current->position.linear_thread / kWarpSize) * kWarpSize;
}

int launch(dim3 grid, dim3 block, size_t dynamic_shared, const std::function<void()>& kernel) {
    unsigned threads = block.x * block.y * block.z;
    unsigned long blocks = (unsigned long)grid.x * grid.y * grid.z;
    if (threads == 0 || threads > 1024 || block.z > 64) {
        std::fprintf(stderr, "ferrotune kernel emulation: bad block shape (%u,%u,%u)\n", block.x, block.y, block.z);
        return -1;
    }
    if (blocks == 0) return 0;
    unsigned workers = std::max(1u, std::thread::hardware_concurrency());
    if (const char* env = std::getenv("FERROTUNE_EMULATION_THREADS")) workers = std::max(1, std::atoi(env));
    workers = (unsigned)std::min<unsigned long>(workers, blocks);
    std::atomic<unsigned long> next{0};
    std::atomic<bool> failed{false};
    auto worker = [&] {
        BlockRun run;
        run.kernel = &kernel;
        run.fibers.resize(threads);
        for (Fiber& f : run.fibers) f.stack.reset(new char[kFiberStack]);
        run.warp_slots.assign(((threads + kWarpSize - 1) / kWarpSize) * kWarpSize, 0);
        // Fresh dynamic shared memory per block, filled with 0xff (NaN as float) so reads before writes show.
        std::vector<unsigned char> shared(dynamic_shared + 16);
        unsigned char* aligned = shared.data() + (16 - (uintptr_t)shared.data() % 16) % 16;
        BlockRun* saved = tls_run;
        tls_run = &run;
        for (unsigned long b; !failed.load() && (b = next.fetch_add(1)) < blocks;) {
            std::fill(shared.begin(), shared.end(), 0xff);
            dim3 index{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y), (unsigned)(b / ((unsigned long)grid.x * grid.y))};
            if (!run_block(run, grid, block, index, aligned)) failed = true;
        }
        tls_run = saved;
    };
    if (workers == 1) {
        worker();
    } else {
        std::vector<std::thread> pool;
        for (unsigned w = 0; w < workers; ++w) pool.emplace_back(worker);
        for (auto& t : pool) t.join();
    }
    return failed ? -1 : 0;
}

Registrar::Registrar(const char* name, HostEntry entry) { registry()[name] = entry; }

}  // namespace ft

// The harness's C entry point, shaped like cuLaunchKernel: the kernel by name, grid and block shape, dynamic
// shared bytes and one pointer per kernel parameter. Returns 0, -1 on a failed launch, -2 for an unknown name.
extern "C" int ft_host_launch(const char* name, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x,
                              unsigned block_y, unsigned block_z, size_t dynamic_shared, void** args) {
    auto& table = ft::registry();
    auto it = table.find(name);
    if (it == table.end()) return -2;
    return it->second(dim3{grid_x, grid_y, grid_z}, dim3{block_x, block_y, block_z}, dynamic_shared, args);
}
