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
#include <type_traits>
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
alignas(128) inline float emu_dynamic_smem[64 * 1024];

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
#define __constant__
#define ATT_SMEM_DECL float *smem = emu_dynamic_smem
#define ATT_TC_SMEM_DECL unsigned char *att_tc_smem = (unsigned char *)emu_dynamic_smem

inline void __syncthreads() { emu_block_bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu)
{
    emu_warp_bar[threadIdx.x / 32]->arrive_and_wait();
}

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

/* bf16 as cuda_bf16.h has it: the top 16 bits of a float; conversion rounds to nearest even */
struct __nv_bfloat16 {
    uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    __nv_bfloat16 b;
    if (std::isnan(f))
        b.bits = 0x7fc0;
    else
        b.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return b;
}
inline float __bfloat162float(__nv_bfloat16 b)
{
    uint32_t u = (uint32_t)b.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

/* The WMMA API (mma.h) for 16 x 16 x 16 tiles. On a GPU a fragment is spread over the warp's
 * lanes in a layout the API keeps opaque; here every lane holds the whole tile (element (i, j)
 * at x[i * cols + j]), which is what a kernel may rely on: load, store, fill, mma, and
 * elementwise loops over num_elements. Loads and stores are warp-collective (warp barriers
 * around them); mma accumulates each k in order in fp32 (a tensor core's order is its own). */
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
    static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
    static constexpr int num_elements = rows * cols;
    T x[rows * cols];
};

inline float emu_float(float x) { return x; }
inline float emu_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename U, int M, int N, int K, typename T, typename L, typename V>
void fill_fragment(fragment<U, M, N, K, T, L> &f, V v)
{
    for (auto &e : f.x)
        e = (T)v;
}

template <typename U, int M, int N, int K, typename T, typename L>
void load_matrix_sync(fragment<U, M, N, K, T, L> &f, const T *p, unsigned ldm)
{
    using F = fragment<U, M, N, K, T, L>;
    static_assert(!std::is_same_v<U, accumulator>, "accumulator loads take a layout");
    if ((uintptr_t)p % 32 != 0 || ldm % (16 / sizeof(T)) != 0)
        std::abort(); /* WMMA wants 256-bit aligned pointers and ldm a multiple of 16 bytes */
    __syncwarp();
    for (int i = 0; i < F::rows; i++)
        for (int j = 0; j < F::cols; j++)
            f.x[i * F::cols + j] =
                std::is_same_v<L, row_major> ? p[(size_t)i * ldm + j] : p[(size_t)j * ldm + i];
    __syncwarp();
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float> &d,
              const fragment<matrix_a, M, N, K, TA, LA> &a,
              const fragment<matrix_b, M, N, K, TB, LB> &b,
              const fragment<accumulator, M, N, K, float> &c)
{
    float t[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = c.x[i * N + j];
            for (int k = 0; k < K; k++)
                s += emu_float(a.x[i * K + k]) * emu_float(b.x[k * N + j]);
            t[i * N + j] = s;
        }
    std::memcpy(d.x, t, sizeof t);
}

template <int M, int N, int K>
void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f, unsigned ldm,
                       layout_t layout)
{
    if ((uintptr_t)p % 32 != 0 || ldm % 4 != 0)
        std::abort();
    __syncwarp();
    if (threadIdx.x % 32 == 0)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                p[layout == mem_row_major ? (size_t)i * ldm + j : (size_t)j * ldm + i] =
                    f.x[i * N + j];
    __syncwarp();
}
} /* namespace wmma */
} /* namespace nvcuda */

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
