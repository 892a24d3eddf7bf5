/*
 * cuda_attention_tc_kernels.cuh: the attention forward on tensor cores, bf16 inputs with fp32
 * accumulation (the WMMA API, sm_80 and later), for head_dim 32, 64 and 128. Apart from its
 * launch (cuda_attention.cu) so that tests/gpu/emu_attention.cpp runs it on the host under the
 * thread emulator, whose WMMA keeps whole tiles per lane.
 *
 * The same contract as att_fwd_kernel (packed segments, bottom-right causal alignment, GQA,
 * out and lse), with Q, K, V, and the probabilities P rounded to bf16 before each product:
 *
 *   a block owns 64 query rows of one head in one segment, 16 per warp, and walks the keys
 *   they may see in tiles of 64. For each tile, each warp:
 *     1. S = Q K^T for its 16 rows: four 16 x 16 accumulators over head_dim / 16 steps, its
 *        Q fragments loaded once per block; stored (fp32) to the warp's score tile.
 *     2. online softmax: lane l owns row l / 2 and the tile's columns of parity l % 2; masks,
 *        the row max and sum through one shuffle with the partner lane, P (bf16) to the
 *        warp's P tile, and the output rescaled by exp(m_old - m_new).
 *     3. O += P V: D / 16 accumulators stored to the (now free) score tile, which is D + 4
 *        floats wide where D > 64, then each lane adds its row's columns of its parity to its
 *        registers.
 *
 * The score matrix of a segment never exists beyond one 16 x 64 tile per warp.
 *
 * The backward, the same two kernels as the fp32 one (no atomics, every output element
 * written once, so the same bits on every run), with every product on tensor cores (bf16
 * operands: Q, K, V, dO, P and dS; fp32 accumulation in fragments) and P recomputed from the
 * forward's lse:
 *   dQ:     a block owns 64 query rows of one head (16 per warp); per key tile, each warp
 *           makes S = Q K^T, keeps P = exp(S scale - lse) in registers, makes dP = dO V^T,
 *           dS = P (dP - rowsum(dO * O)) scale as bf16, and accumulates dQ += dS K.
 *   dK, dV: a block owns 64 keys of one kv head (16 per warp); for each head of the group and
 *           each query tile that sees the keys, each warp makes S^T = K Q^T and P^T, then
 *           dV += P^T dO, dP^T = V dO^T, dS^T, dK += dS^T Q.
 * The fp32 accumulators go out through the warp's score tile, 64 columns at a time.
 */
#ifndef RUBRIC_CUDA_ATTENTION_TC_KERNELS_CUH
#define RUBRIC_CUDA_ATTENTION_TC_KERNELS_CUH

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <mma.h>
#endif

#include "cuda_attention_kernels.cuh"

/* the kernel's dynamic shared memory (the host emulator supplies its own) */
#ifndef ATT_TC_SMEM_DECL
#define ATT_TC_SMEM_DECL extern __shared__ __align__(128) unsigned char att_tc_smem[]
#endif

#define ATT_TC_WARPS 4
#define ATT_TC_THREADS (ATT_TC_WARPS * 32)
#define ATT_TC_BQ (16 * ATT_TC_WARPS) /* query rows per block: 16 per warp */
#define ATT_TC_BK 64                  /* keys per tile */
#define ATT_TC_SLD (ATT_TC_BK + 4)    /* row stride (floats) of a warp's score tile */
#define ATT_TC_PLD (ATT_TC_BK + 8)    /* row stride (bf16) of a warp's P tile */

typedef __nv_bfloat16 att_bf16;

/* Shared memory, in bytes from the start; every tile begins on a 32-byte boundary and every
 * row stride is a multiple of 16 bytes, as WMMA's loads and stores require:
 *   Q, K, V tiles [64][D + 8] bf16, then per warp a score tile [16][sld] fp32 (scores, then
 *   P V), then per warp a P tile [16][ATT_TC_PLD] bf16. 95,232 bytes for D = 128. */
template <int D> struct att_tc_layout {
    static constexpr int ld = D + 8;
    static constexpr int sld = (D > ATT_TC_BK ? D : ATT_TC_BK) + 4;
    static constexpr size_t tile = (size_t)ATT_TC_BQ * ld * 2;
    static constexpr size_t q_off = 0, k_off = tile, v_off = 2 * tile;
    static constexpr size_t s_off = 3 * tile, s_warp = (size_t)16 * sld * 4;
    static constexpr size_t p_off = s_off + ATT_TC_WARPS * s_warp;
    static constexpr size_t p_warp = (size_t)16 * ATT_TC_PLD * 2;
    static constexpr size_t bytes = p_off + ATT_TC_WARPS * p_warp;
};

/* rows [row0, row0 + n) of a [T, ld] fp32 matrix, columns col0 .. col0 + D, into a shared
 * [64][D + 8] bf16 tile; rows past n are zeros (a zero V row times a zero P stays zero) */
template <int D>
__device__ __forceinline__ void att_tc_load_tile(att_bf16 *dst, const float *src, int64_t ld,
                                                 int64_t row0, int n, int64_t col0)
{
    for (int e = threadIdx.x; e < ATT_TC_BQ * D; e += blockDim.x) {
        int r = e / D, c = e % D;
        dst[r * (D + 8) + c] = __float2bfloat16(r < n ? src[(row0 + r) * ld + col0 + c] : 0.0f);
    }
}

template <int D>
__global__ void __launch_bounds__(ATT_TC_THREADS)
att_fwd_tc_kernel(float *out, float *lse, const float *q, att_keys ak, const int32_t *cu_q,
                  int tiles_per_seg, int heads, int kv_heads, float scale)
{
    namespace wm = nvcuda::wmma;
    typedef att_tc_layout<D> L;
    ATT_TC_SMEM_DECL;
    int s = blockIdx.x / tiles_per_seg, tile = blockIdx.x % tiles_per_seg, h = blockIdx.y;
    const float *k, *v;
    att_seg sg = att_seg_keys(cu_q, ak, s, &k, &v);
    int i0 = tile * ATT_TC_BQ;
    if (i0 >= sg.nq)
        return; /* the whole block leaves: no barrier is skipped */
    int bq = min(ATT_TC_BQ, sg.nq - i0);
    int g = h / (heads / kv_heads), warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t ldq = (int64_t)heads * D, ldk = (int64_t)kv_heads * D;
    att_bf16 *q_s = (att_bf16 *)(att_tc_smem + L::q_off);
    att_bf16 *k_s = (att_bf16 *)(att_tc_smem + L::k_off);
    att_bf16 *v_s = (att_bf16 *)(att_tc_smem + L::v_off);
    float *s_w = (float *)(att_tc_smem + L::s_off + warp * L::s_warp);
    att_bf16 *p_w = (att_bf16 *)(att_tc_smem + L::p_off + warp * L::p_warp);
    int r = lane >> 1, par = lane & 1; /* this lane's row of the warp's 16, column parity */
    int row = warp * 16 + r;           /* its row in the block's tile */

    att_tc_load_tile<D>(q_s, q, ldq, sg.q_start + i0, bq, (int64_t)h * D);
    __syncthreads();

    /* the warp's Q fragments, loaded once */
    wm::fragment<wm::matrix_a, 16, 16, 16, att_bf16, wm::row_major> qa[D / 16];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        wm::load_matrix_sync(qa[kk], q_s + warp * 16 * L::ld + kk * 16, L::ld);

    float m_run = -INFINITY, l_run = 0.0f, o[D / 2];
#pragma unroll
    for (int e = 0; e < D / 2; e++)
        o[e] = 0.0f;

    /* keys visible to the block's last row, and to the warp's last row */
    int kend = min(sg.nk, sg.offset + i0 + bq);
    int w_rows = min(16, bq - warp * 16);
    int w_kend = w_rows > 0 ? min(sg.nk, sg.offset + i0 + warp * 16 + w_rows) : 0;
    int visible = sg.offset + i0 + row + 1; /* this lane's row sees keys 0 .. visible - 1 */
    for (int k0 = 0; k0 < kend; k0 += ATT_TC_BK) {
        int bk = min(ATT_TC_BK, kend - k0);
        __syncthreads(); /* every warp is done with the previous K and V tiles */
        att_tc_load_tile<D>(k_s, k, ldk, sg.k_start + k0, bk, (int64_t)g * D);
        att_tc_load_tile<D>(v_s, v, ldk, sg.k_start + k0, bk, (int64_t)g * D);
        __syncthreads();
        if (k0 >= w_kend)
            continue; /* no row of this warp sees these keys: warp-uniform */

        /* 1. S = Q K^T, 16 keys at a time (K's rows are B's columns: col_major) */
        wm::fragment<wm::matrix_b, 16, 16, 16, att_bf16, wm::col_major> kb;
        wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
#pragma unroll
        for (int j = 0; j < ATT_TC_BK / 16; j++) {
            wm::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                wm::load_matrix_sync(kb, k_s + j * 16 * L::ld + kk * 16, L::ld);
                wm::mma_sync(acc, qa[kk], kb, acc);
            }
            wm::store_matrix_sync(s_w + j * 16, acc, L::sld, wm::mem_row_major);
        }
        __syncwarp();

        /* 2. online softmax over this lane's 32 columns (2c + par) of its row */
        float sc[ATT_TC_BK / 2], mx = -INFINITY;
#pragma unroll
        for (int c = 0; c < ATT_TC_BK / 2; c++) {
            int col = 2 * c + par;
            sc[c] = row < bq && col < bk && k0 + col < visible ? s_w[r * L::sld + col] * scale
                                                               : -INFINITY;
            mx = fmaxf(mx, sc[c]);
        }
        float m_new = fmaxf(m_run, fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1)));
        float corr = m_run == -INFINITY ? 0.0f : expf(m_run - m_new);
        float psum = 0.0f;
#pragma unroll
        for (int c = 0; c < ATT_TC_BK / 2; c++) {
            float p = sc[c] == -INFINITY ? 0.0f : expf(sc[c] - m_new);
            psum += p;
            p_w[r * ATT_TC_PLD + 2 * c + par] = __float2bfloat16(p);
        }
        psum += __shfl_xor_sync(FULL_MASK, psum, 1);
        l_run = l_run * corr + psum;
        m_run = m_new;
#pragma unroll
        for (int e = 0; e < D / 2; e++)
            o[e] *= corr;
        __syncwarp();

        /* 3. O += P V, through the score tile */
        wm::fragment<wm::matrix_a, 16, 16, 16, att_bf16, wm::row_major> pa[ATT_TC_BK / 16];
        wm::fragment<wm::matrix_b, 16, 16, 16, att_bf16, wm::row_major> vb;
#pragma unroll
        for (int kk = 0; kk < ATT_TC_BK / 16; kk++)
            wm::load_matrix_sync(pa[kk], p_w + kk * 16, ATT_TC_PLD);
#pragma unroll
        for (int jb = 0; jb < D / 16; jb++) {
            wm::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < ATT_TC_BK / 16; kk++) {
                wm::load_matrix_sync(vb, v_s + kk * 16 * L::ld + jb * 16, L::ld);
                wm::mma_sync(acc, pa[kk], vb, acc);
            }
            wm::store_matrix_sync(s_w + jb * 16, acc, L::sld, wm::mem_row_major);
        }
        __syncwarp();
#pragma unroll
        for (int e = 0; e < D / 2; e++)
            o[e] += s_w[r * L::sld + 2 * e + par];
        __syncwarp(); /* read before the next tile's scores overwrite it */
    }

    /* normalise and store; a row that saw no key gets zeros and lse -inf */
    if (row < bq) {
        int64_t at = (int64_t)(sg.q_start + i0 + row);
        float inv = l_run > 0.0f ? 1.0f / l_run : 0.0f;
#pragma unroll
        for (int e = 0; e < D / 2; e++)
            out[at * ldq + (int64_t)h * D + 2 * e + par] = o[e] * inv;
        if (lse && par == 0)
            lse[at * heads + h] = l_run > 0.0f ? m_run + logf(l_run) : -INFINITY;
    }
}

/* ---- backward ---- */

/* Shared memory of both backward kernels, in bytes: four [64][D + 8] bf16 tiles (dQ: Q, dO,
 * K, V; dK/dV: K, V, Q, dO), two [64] fp32 rows (dK/dV: lse and rowsum(dO * O) of the query
 * tile), then per warp a [16][ATT_TC_SLD] fp32 tile and a [16][ATT_TC_PLD] bf16 tile.
 * 96,768 bytes for D = 128, within sm_86's 99 KiB. */
template <int D> struct att_tc_bwd_layout {
    static constexpr int ld = D + 8;
    static constexpr size_t tile = (size_t)64 * ld * 2;
    static constexpr size_t rows_off = 4 * tile;
    static constexpr size_t s_off = rows_off + 2 * 64 * 4, s_warp = (size_t)16 * ATT_TC_SLD * 4;
    static constexpr size_t p_off = s_off + ATT_TC_WARPS * s_warp;
    static constexpr size_t p_warp = (size_t)16 * ATT_TC_PLD * 2;
    static constexpr size_t bytes = p_off + ATT_TC_WARPS * p_warp;
};

/* acc (the warp's [16][D] in fp32 fragments) to rows row0.. of a [.., ldo] fp32 matrix at
 * column col0, the first `rows` rows only, 64 columns at a time through the score tile */
template <int D>
__device__ __forceinline__ void
att_tc_store_rows(float *dst, int64_t ldo, int64_t row0, int rows, int64_t col0,
                  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> *acc,
                  float *s_w, int lane)
{
    int r = lane >> 1, par = lane & 1;
#pragma unroll
    for (int c0 = 0; c0 < D; c0 += 64) {
        const int cw = D - c0 < 64 ? D - c0 : 64;
        __syncwarp();
#pragma unroll
        for (int jb = 0; jb < cw / 16; jb++)
            nvcuda::wmma::store_matrix_sync(s_w + jb * 16, acc[c0 / 16 + jb], ATT_TC_SLD,
                                            nvcuda::wmma::mem_row_major);
        __syncwarp();
        if (r < rows)
#pragma unroll
            for (int e = 0; e < cw / 2; e++)
                dst[(row0 + r) * ldo + col0 + c0 + 2 * e + par] =
                    s_w[r * ATT_TC_SLD + 2 * e + par];
    }
    __syncwarp();
}

/* the 16 x 64 product A B^T of a warp's 16 rows of a (row-major [.][ld] bf16) with the 64 rows
 * of b (the same layout), over D, stored fp32 to s_w */
template <int D>
__device__ __forceinline__ void att_tc_abt(float *s_w, const att_bf16 *a, const att_bf16 *b)
{
    namespace wm = nvcuda::wmma;
    wm::fragment<wm::matrix_a, 16, 16, 16, att_bf16, wm::row_major> fa;
    wm::fragment<wm::matrix_b, 16, 16, 16, att_bf16, wm::col_major> fb;
    wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        wm::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            wm::load_matrix_sync(fa, a + kk * 16, D + 8);
            wm::load_matrix_sync(fb, b + j * 16 * (D + 8) + kk * 16, D + 8);
            wm::mma_sync(acc, fa, fb, acc);
        }
        wm::store_matrix_sync(s_w + j * 16, acc, ATT_TC_SLD, wm::mem_row_major);
    }
}

/* acc[D / 16] += p (a warp's [16][ATT_TC_PLD] bf16 tile) . b ([64][D + 8] bf16) */
template <int D>
__device__ __forceinline__ void
att_tc_pb(nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> *acc,
          const att_bf16 *p_w, const att_bf16 *b)
{
    namespace wm = nvcuda::wmma;
    wm::fragment<wm::matrix_a, 16, 16, 16, att_bf16, wm::row_major> pa[4];
    wm::fragment<wm::matrix_b, 16, 16, 16, att_bf16, wm::row_major> fb;
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
        wm::load_matrix_sync(pa[kk], p_w + kk * 16, ATT_TC_PLD);
#pragma unroll
    for (int jb = 0; jb < D / 16; jb++)
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            wm::load_matrix_sync(fb, b + kk * 16 * (D + 8) + jb * 16, D + 8);
            wm::mma_sync(acc[jb], pa[kk], fb, acc[jb]);
        }
}

/* rowsum(dO * O) of one row over D, the two lanes of a pair each half (columns of parity
 * par), summed through the partner; every lane of the warp calls it (the shuffle), those
 * without a row (valid 0) get 0 */
template <int D>
__device__ __forceinline__ float att_tc_row_dd(const float *o_r, const float *do_r, int par,
                                               int valid)
{
    float part = 0.0f;
    if (valid)
#pragma unroll
        for (int e = 0; e < D / 2; e++)
            part += o_r[2 * e + par] * do_r[2 * e + par];
    return part + __shfl_xor_sync(FULL_MASK, part, 1);
}

template <int D>
__global__ void __launch_bounds__(ATT_TC_THREADS)
att_bwd_dq_tc_kernel(float *dq, const float *dout, const float *q, const float *k,
                     const float *v, const float *out, const float *lse, const int32_t *cu_q,
                     const int32_t *cu_k, int tiles_per_seg, int heads, int kv_heads,
                     float scale)
{
    namespace wm = nvcuda::wmma;
    typedef att_tc_bwd_layout<D> L;
    ATT_TC_SMEM_DECL;
    int s = blockIdx.x / tiles_per_seg, tile = blockIdx.x % tiles_per_seg, h = blockIdx.y;
    att_seg sg = att_seg_at(cu_q, cu_k, s);
    int i0 = tile * 64;
    if (i0 >= sg.nq)
        return;
    int bq = min(64, sg.nq - i0);
    int g = h / (heads / kv_heads), warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t ldq = (int64_t)heads * D, ldk = (int64_t)kv_heads * D;
    att_bf16 *q_s = (att_bf16 *)(att_tc_smem + 0 * L::tile);
    att_bf16 *do_s = (att_bf16 *)(att_tc_smem + 1 * L::tile);
    att_bf16 *k_s = (att_bf16 *)(att_tc_smem + 2 * L::tile);
    att_bf16 *v_s = (att_bf16 *)(att_tc_smem + 3 * L::tile);
    float *s_w = (float *)(att_tc_smem + L::s_off + warp * L::s_warp);
    att_bf16 *ds_w = (att_bf16 *)(att_tc_smem + L::p_off + warp * L::p_warp);
    int r = lane >> 1, par = lane & 1, row = warp * 16 + r;
    int w_rows = min(16, bq - warp * 16);

    att_tc_load_tile<D>(q_s, q, ldq, sg.q_start + i0, bq, (int64_t)h * D);
    att_tc_load_tile<D>(do_s, dout, ldq, sg.q_start + i0, bq, (int64_t)h * D);

    /* this lane's row: its logsumexp and rowsum(dO * O) */
    int64_t at = sg.q_start + i0 + min(row, bq - 1);
    float row_lse = row < bq ? lse[at * heads + h] : 0.0f;
    float row_dd = att_tc_row_dd<D>(out + at * ldq + (int64_t)h * D,
                                    dout + at * ldq + (int64_t)h * D, par, row < bq);

    wm::fragment<wm::accumulator, 16, 16, 16, float> acc[D / 16];
#pragma unroll
    for (int jb = 0; jb < D / 16; jb++)
        wm::fill_fragment(acc[jb], 0.0f);

    int kend = min(sg.nk, sg.offset + i0 + bq);
    int w_kend = w_rows > 0 ? min(sg.nk, sg.offset + i0 + warp * 16 + w_rows) : 0;
    int visible = sg.offset + i0 + row + 1;
    for (int k0 = 0; k0 < kend; k0 += 64) {
        int bk = min(64, kend - k0);
        __syncthreads(); /* the previous K and V tiles are consumed (Q and dO are loaded) */
        att_tc_load_tile<D>(k_s, k, ldk, sg.k_start + k0, bk, (int64_t)g * D);
        att_tc_load_tile<D>(v_s, v, ldk, sg.k_start + k0, bk, (int64_t)g * D);
        __syncthreads();
        if (k0 >= w_kend)
            continue; /* warp-uniform */

        /* 1. S = Q K^T; P in registers (this lane's 32 columns 2c + par) */
        att_tc_abt<D>(s_w, q_s + warp * 16 * (D + 8), k_s);
        __syncwarp();
        float p[32];
#pragma unroll
        for (int c = 0; c < 32; c++) {
            int col = 2 * c + par;
            p[c] = row < bq && col < bk && k0 + col < visible
                       ? expf(s_w[r * ATT_TC_SLD + col] * scale - row_lse)
                       : 0.0f;
        }
        __syncwarp();

        /* 2. dP = dO V^T; dS = P (dP - rowsum(dO * O)) scale, as bf16 */
        att_tc_abt<D>(s_w, do_s + warp * 16 * (D + 8), v_s);
        __syncwarp();
#pragma unroll
        for (int c = 0; c < 32; c++) {
            int col = 2 * c + par;
            ds_w[r * ATT_TC_PLD + col] =
                __float2bfloat16(p[c] * (s_w[r * ATT_TC_SLD + col] - row_dd) * scale);
        }
        __syncwarp();

        /* 3. dQ += dS K */
        att_tc_pb<D>(acc, ds_w, k_s);
        __syncwarp();
    }

    att_tc_store_rows<D>(dq, ldq, sg.q_start + i0 + warp * 16, max(w_rows, 0), (int64_t)h * D,
                         acc, s_w, lane);
}

template <int D>
__global__ void __launch_bounds__(ATT_TC_THREADS)
att_bwd_dkv_tc_kernel(float *dk, float *dv, const float *dout, const float *q, const float *k,
                      const float *v, const float *out, const float *lse,
                      const int32_t *cu_q, const int32_t *cu_k, int tiles_per_seg, int heads,
                      int kv_heads, float scale)
{
    namespace wm = nvcuda::wmma;
    typedef att_tc_bwd_layout<D> L;
    ATT_TC_SMEM_DECL;
    int s = blockIdx.x / tiles_per_seg, tile = blockIdx.x % tiles_per_seg, g = blockIdx.y;
    att_seg sg = att_seg_at(cu_q, cu_k, s);
    int j0 = tile * 64; /* the block's first key (within the segment) */
    if (j0 >= sg.nk)
        return;
    int bkv = min(64, sg.nk - j0);
    int group = heads / kv_heads, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t ldq = (int64_t)heads * D, ldk = (int64_t)kv_heads * D;
    att_bf16 *k_s = (att_bf16 *)(att_tc_smem + 0 * L::tile);
    att_bf16 *v_s = (att_bf16 *)(att_tc_smem + 1 * L::tile);
    att_bf16 *q_s = (att_bf16 *)(att_tc_smem + 2 * L::tile);
    att_bf16 *do_s = (att_bf16 *)(att_tc_smem + 3 * L::tile);
    float *lse_s = (float *)(att_tc_smem + L::rows_off), *dd_s = lse_s + 64;
    float *s_w = (float *)(att_tc_smem + L::s_off + warp * L::s_warp);
    att_bf16 *p_w = (att_bf16 *)(att_tc_smem + L::p_off + warp * L::p_warp);
    int rk = lane >> 1, par = lane & 1;   /* this lane's key row of the warp's 16 */
    int key = j0 + warp * 16 + rk;        /* within the segment */
    int w_keys = min(16, bkv - warp * 16);

    att_tc_load_tile<D>(k_s, k, ldk, sg.k_start + j0, bkv, (int64_t)g * D);
    att_tc_load_tile<D>(v_s, v, ldk, sg.k_start + j0, bkv, (int64_t)g * D);

    wm::fragment<wm::accumulator, 16, 16, 16, float> dk_acc[D / 16], dv_acc[D / 16];
#pragma unroll
    for (int jb = 0; jb < D / 16; jb++) {
        wm::fill_fragment(dk_acc[jb], 0.0f);
        wm::fill_fragment(dv_acc[jb], 0.0f);
    }

    /* the first query that sees key j0: j0 <= offset + i */
    int i_first = max(0, j0 - sg.offset);
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int i0 = i_first; i0 < sg.nq; i0 += 64) {
            int bq = min(64, sg.nq - i0);
            __syncthreads(); /* the previous query tile is consumed (K and V are loaded) */
            att_tc_load_tile<D>(q_s, q, ldq, sg.q_start + i0, bq, (int64_t)h * D);
            att_tc_load_tile<D>(do_s, dout, ldq, sg.q_start + i0, bq, (int64_t)h * D);
            /* the query rows' logsumexp and rowsum(dO * O): a lane pair per row */
            {
                int i = threadIdx.x >> 1; /* 64 rows, 128 threads */
                int64_t at = sg.q_start + i0 + min(i, bq - 1);
                float dd = att_tc_row_dd<D>(out + at * ldq + (int64_t)h * D,
                                            dout + at * ldq + (int64_t)h * D, par, i < bq);
                if (par == 0) {
                    lse_s[i] = i < bq ? lse[at * heads + h] : 0.0f;
                    dd_s[i] = dd;
                }
            }
            __syncthreads();
            if (w_keys <= 0)
                continue; /* warp-uniform: no key of this warp in the segment */

            /* 1. S^T = K Q^T; P^T in registers and, as bf16, in the warp's tile */
            att_tc_abt<D>(s_w, k_s + warp * 16 * (D + 8), q_s);
            __syncwarp();
            float p[32];
#pragma unroll
            for (int c = 0; c < 32; c++) {
                int i = 2 * c + par;
                p[c] = rk < w_keys && i < bq && key <= sg.offset + i0 + i
                           ? expf(s_w[rk * ATT_TC_SLD + i] * scale - lse_s[i])
                           : 0.0f;
                p_w[rk * ATT_TC_PLD + i] = __float2bfloat16(p[c]);
            }
            __syncwarp();

            /* 2. dV += P^T dO */
            att_tc_pb<D>(dv_acc, p_w, do_s);
            __syncwarp();

            /* 3. dP^T = V dO^T; dS^T = P^T (dP^T - rowsum(dO * O)) scale, as bf16 */
            att_tc_abt<D>(s_w, v_s + warp * 16 * (D + 8), do_s);
            __syncwarp();
#pragma unroll
            for (int c = 0; c < 32; c++) {
                int i = 2 * c + par;
                p_w[rk * ATT_TC_PLD + i] =
                    __float2bfloat16(p[c] * (s_w[rk * ATT_TC_SLD + i] - dd_s[i]) * scale);
            }
            __syncwarp();

            /* 4. dK += dS^T Q */
            att_tc_pb<D>(dk_acc, p_w, q_s);
            __syncwarp();
        }
    }

    /* every key row of the block is written, seen by a query or not */
    int64_t row0 = sg.k_start + j0 + warp * 16;
    att_tc_store_rows<D>(dk, ldk, row0, max(w_keys, 0), (int64_t)g * D, dk_acc, s_w, lane);
    att_tc_store_rows<D>(dv, ldk, row0, max(w_keys, 0), (int64_t)g * D, dv_acc, s_w, lane);
}

#endif
