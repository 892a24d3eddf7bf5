/*
 * cuda_emu.h: just enough of CUDA to run simple kernels on the host, one std::thread per CUDA
 * thread, for checking kernel logic where no GPU exists (tests/gpu/emu_attention.cpp).
 * Blocks run one after another; __syncthreads is a block barrier; warp shuffles exchange
 * through a per-warp slot array between two warp barriers, so every lane of a warp must call
 * them together (as on the GPU with a full mask). `__shared__` variables become statics (one
 * block runs at a time); the attention kernels' dynamic shared memory is emu_dynamic_smem.
 * Not a simulator of timing, memory models or divergence; a check of indices and arithmetic.
 */
#ifndef RUBRIC_CUDA_EMU_H
#define RUBRIC_CUDA_EMU_H

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<> *emu_block_bar;
inline std::barrier<> *emu_warp_bar[32];
inline uint64_t emu_xch[32][32];
alignas(16) inline float emu_dynamic_smem[64 * 1024];

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
#define __constant__
#define ATT_SMEM_DECL float *smem = emu_dynamic_smem

inline void __syncthreads() { emu_block_bar->arrive_and_wait(); }

template <typename T> T emu_shfl(T v, int src_lane)
{
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emu_xch[w][lane] = bits;
    emu_warp_bar[w]->arrive_and_wait();
    bits = emu_xch[w][src_lane & 31];
    emu_warp_bar[w]->arrive_and_wait();
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

template <typename T> T __shfl_sync(unsigned, T v, int src) { return emu_shfl(v, src); }
template <typename T> T __shfl_xor_sync(unsigned, T v, int m)
{
    return emu_shfl(v, (int)(threadIdx.x % 32) ^ m);
}

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
using std::max;
using std::min;

/* Run body() as the kernel over grid x block (block.x a multiple of 32, at most 1024). */
inline void emu_launch(dim3 grid, dim3 block, const std::function<void()> &body)
{
    gridDim = grid;
    blockDim = block;
    int n = (int)block.x;
    for (unsigned by = 0; by < grid.y; by++)
        for (unsigned bx = 0; bx < grid.x; bx++) {
            std::barrier<> bb(n);
            emu_block_bar = &bb;
            std::vector<std::unique_ptr<std::barrier<>>> wb;
            for (int w = 0; w < n / 32; w++) {
                wb.emplace_back(new std::barrier<>(32));
                emu_warp_bar[w] = wb.back().get();
            }
            std::vector<std::thread> th;
            for (int t = 0; t < n; t++)
                th.emplace_back([&, t, bx, by] {
                    threadIdx = dim3((unsigned)t);
                    blockIdx = dim3(bx, by);
                    body();
                });
            for (auto &x : th)
                x.join();
        }
}

#endif
