/*
 * cuda_attention_kernels.cuh: the attention kernels (see cuda_attention.cu for the algorithm),
 * apart from their launches so that tests/gpu/emu_attention.cpp can run them on the host
 * under a thread-per-CUDA-thread emulator.
 */
#ifndef RUBRIC_CUDA_ATTENTION_KERNELS_CUH
#define RUBRIC_CUDA_ATTENTION_KERNELS_CUH

#include <math.h>

#include "cuda_reduce.h"

/* the kernels' dynamic shared memory (the host emulator supplies its own) */
#ifndef ATT_SMEM_DECL
#define ATT_SMEM_DECL extern __shared__ float smem[]
#endif

#define ATT_WARPS 4
#define ATT_THREADS (ATT_WARPS * 32)
#define ATT_BQ 16                     /* query rows per block (forward, dQ) */
#define ATT_RPW (ATT_BQ / ATT_WARPS)  /* rows per warp */
#define ATT_BK 32                     /* keys (or queries) per tile: one per lane */
#define ATT_MAXD 256
#define ATT_EPL (ATT_MAXD / 32)       /* output columns per lane */
#define FULL_MASK 0xffffffffu

/* Each kernel's dynamic shared memory in floats (the launches ask for these; the emulator
 * test checks that nothing is written past them). */
static inline size_t att_fwd_smem_floats(int d)
{
    return (size_t)ATT_BQ * d + (size_t)ATT_BK * (d + 1) + (size_t)ATT_BK * d;
}
static inline size_t att_dq_smem_floats(int d)
{
    return 2 * (size_t)ATT_BQ * d + 2 * (size_t)ATT_BK * (d + 1);
}
static inline size_t att_dkv_smem_floats(int d)
{
    return att_dq_smem_floats(d) + 2 * (size_t)ATT_BK;
}

/* Where a block's segment lies. */
struct att_seg {
    int q_start, nq, k_start, nk;
    int offset; /* query j sees keys 0 .. offset + j (bottom-right alignment) */
};

/* Where a forward's keys are: packed (k, v, cu_k) or one cache per segment (k_rows, v_rows,
 * k_len: the table's attention_fwd_rows); passed to the kernels by value. */
struct att_keys {
    const float *k, *v;
    const int32_t *cu_k;
    const float *const *k_rows, *const *v_rows;
    const int32_t *k_len;
};

/* Segment s, and the key and value matrices whose rows k_start.. are its keys (the packed
 * ones, or the segment's own cache with k_start 0) */
__device__ __forceinline__ att_seg att_seg_keys(const int32_t *cu_q, const att_keys &ak, int s,
                                                const float **k, const float **v)
{
    att_seg g;
    g.q_start = cu_q[s];
    g.nq = cu_q[s + 1] - g.q_start;
    if (ak.k_rows) {
        *k = ak.k_rows[s];
        *v = ak.v_rows[s];
        g.k_start = 0;
        g.nk = ak.k_len[s];
    } else {
        *k = ak.k;
        *v = ak.v;
        g.k_start = ak.cu_k[s];
        g.nk = ak.cu_k[s + 1] - g.k_start;
    }
    g.offset = g.nk - g.nq;
    return g;
}

/* the segment of packed keys (the backward kernels) */
__device__ __forceinline__ att_seg att_seg_at(const int32_t *cu_q, const int32_t *cu_k, int s)
{
    att_keys ak = {NULL, NULL, cu_k, NULL, NULL, NULL};
    const float *k, *v;
    return att_seg_keys(cu_q, ak, s, &k, &v);
}

/* rows [row0, row0 + n) of a [T, ld] matrix, columns col0 .. col0 + d, into a shared [rows][ls]
 * tile (rows past n filled with zeros) */
__device__ __forceinline__ void att_load_tile(float *dst, int ls, int rows, const float *src,
                                              int64_t ld, int64_t row0, int n, int64_t col0,
                                              int d)
{
    for (int e = threadIdx.x; e < rows * d; e += blockDim.x) {
        int r = e / d, c = e % d;
        dst[r * ls + c] = r < n ? src[(row0 + r) * ld + col0 + c] : 0.0f;
    }
}

__device__ __forceinline__ float att_dot(const float *a, const float *b, int d)
{
    float s = 0.0f;
    for (int c = 0; c < d; c++)
        s += a[c] * b[c];
    return s;
}

/* ---- forward ---- */

__global__ void __launch_bounds__(ATT_THREADS)
att_fwd_kernel(float *out, float *lse, const float *q, att_keys ak, const int32_t *cu_q,
               int tiles_per_seg, int heads, int kv_heads, int d, float scale)
{
    ATT_SMEM_DECL;
    float *q_s = smem;                         /* [ATT_BQ][d] */
    float *k_s = q_s + ATT_BQ * d;             /* [ATT_BK][d + 1] (padded: lane j reads row j) */
    float *v_s = k_s + ATT_BK * (d + 1);       /* [ATT_BK][d] */
    int s = blockIdx.x / tiles_per_seg, tile = blockIdx.x % tiles_per_seg, h = blockIdx.y;
    const float *k, *v;
    att_seg sg = att_seg_keys(cu_q, ak, s, &k, &v);
    int i0 = tile * ATT_BQ;
    if (i0 >= sg.nq)
        return; /* the whole block leaves: no barrier is skipped */
    int bq = min(ATT_BQ, sg.nq - i0);
    int g = h / (heads / kv_heads), warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t ldq = (int64_t)heads * d, ldk = (int64_t)kv_heads * d;

    att_load_tile(q_s, d, ATT_BQ, q, ldq, sg.q_start + i0, bq, (int64_t)h * d, d);

    float m_run[ATT_RPW], l_run[ATT_RPW], acc[ATT_RPW][ATT_EPL];
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        m_run[rr] = -INFINITY;
        l_run[rr] = 0.0f;
#pragma unroll
        for (int e = 0; e < ATT_EPL; e++)
            acc[rr][e] = 0.0f;
    }

    /* keys visible to the block's last row: 0 .. kend - 1 */
    int kend = min(sg.nk, sg.offset + i0 + bq);
    for (int k0 = 0; k0 < kend; k0 += ATT_BK) {
        int bk = min(ATT_BK, kend - k0);
        __syncthreads(); /* the previous tile is consumed (and q_s is loaded) */
        att_load_tile(k_s, d + 1, ATT_BK, k, ldk, sg.k_start + k0, bk, (int64_t)g * d, d);
        att_load_tile(v_s, d, ATT_BK, v, ldk, sg.k_start + k0, bk, (int64_t)g * d, d);
        __syncthreads();

#pragma unroll
        for (int rr = 0; rr < ATT_RPW; rr++) {
            int r = warp * ATT_RPW + rr;
            if (r >= bq)
                continue; /* warp-uniform */
            int visible = sg.offset + i0 + r + 1;
            int key = k0 + lane;

            /* lane j scores key j of the tile */
            float sc = -INFINITY;
            if (lane < bk && key < visible)
                sc = att_dot(q_s + r * d, k_s + lane * (d + 1), d) * scale;

            /* online softmax: rescale what was summed so far to the new max */
            float m_new = fmaxf(m_run[rr], warp_max(sc));
            if (m_new == -INFINITY)
                continue; /* nothing visible yet: warp-uniform */
            float p = sc == -INFINITY ? 0.0f : expf(sc - m_new);
            float corr = expf(m_run[rr] - m_new);
            l_run[rr] = l_run[rr] * corr + warp_sum(p);
            m_run[rr] = m_new;
#pragma unroll
            for (int e = 0; e < ATT_EPL; e++)
                acc[rr][e] *= corr;

            /* out += p_j * V[j] */
            for (int j = 0; j < bk; j++) {
                float pj = __shfl_sync(FULL_MASK, p, j);
#pragma unroll
                for (int e = 0; e < ATT_EPL; e++) {
                    int c = lane + 32 * e;
                    if (c < d)
                        acc[rr][e] += pj * v_s[j * d + c];
                }
            }
        }
    }

    /* normalise and store; a row that saw no key gets zeros and lse -inf */
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        int r = warp * ATT_RPW + rr;
        if (r >= bq)
            continue;
        int64_t row = sg.q_start + i0 + r;
        float inv = l_run[rr] > 0.0f ? 1.0f / l_run[rr] : 0.0f;
#pragma unroll
        for (int e = 0; e < ATT_EPL; e++) {
            int c = lane + 32 * e;
            if (c < d)
                out[row * ldq + (int64_t)h * d + c] = acc[rr][e] * inv;
        }
        if (lse && lane == 0)
            lse[row * heads + h] = l_run[rr] > 0.0f ? m_run[rr] + logf(l_run[rr]) : -INFINITY;
    }
}

/* ---- backward: dQ ---- */

__global__ void __launch_bounds__(ATT_THREADS)
att_bwd_dq_kernel(float *dq, const float *dout, const float *q, const float *k, const float *v,
                  const float *out, const float *lse, const int32_t *cu_q, const int32_t *cu_k,
                  int tiles_per_seg, int heads, int kv_heads, int d, float scale)
{
    ATT_SMEM_DECL;
    float *q_s = smem;                   /* [ATT_BQ][d] */
    float *do_s = q_s + ATT_BQ * d;      /* [ATT_BQ][d] */
    float *k_s = do_s + ATT_BQ * d;      /* [ATT_BK][d + 1] */
    float *v_s = k_s + ATT_BK * (d + 1); /* [ATT_BK][d + 1] */
    int s = blockIdx.x / tiles_per_seg, tile = blockIdx.x % tiles_per_seg, h = blockIdx.y;
    att_seg sg = att_seg_at(cu_q, cu_k, s);
    int i0 = tile * ATT_BQ;
    if (i0 >= sg.nq)
        return;
    int bq = min(ATT_BQ, sg.nq - i0);
    int g = h / (heads / kv_heads), warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t ldq = (int64_t)heads * d, ldk = (int64_t)kv_heads * d;

    att_load_tile(q_s, d, ATT_BQ, q, ldq, sg.q_start + i0, bq, (int64_t)h * d, d);
    att_load_tile(do_s, d, ATT_BQ, dout, ldq, sg.q_start + i0, bq, (int64_t)h * d, d);

    /* each row's logsumexp and rowsum(dO * O) */
    float row_lse[ATT_RPW], row_dd[ATT_RPW], acc[ATT_RPW][ATT_EPL];
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        int r = warp * ATT_RPW + rr;
        row_lse[rr] = 0.0f;
        row_dd[rr] = 0.0f;
        if (r < bq) {
            int64_t row = sg.q_start + i0 + r;
            const float *o_r = out + row * ldq + (int64_t)h * d;
            const float *do_r = dout + row * ldq + (int64_t)h * d;
            float part = 0.0f;
            for (int c = lane; c < d; c += 32)
                part += o_r[c] * do_r[c];
            row_dd[rr] = warp_sum(part);
            row_lse[rr] = lse[row * heads + h];
        }
#pragma unroll
        for (int e = 0; e < ATT_EPL; e++)
            acc[rr][e] = 0.0f;
    }

    int kend = min(sg.nk, sg.offset + i0 + bq);
    for (int k0 = 0; k0 < kend; k0 += ATT_BK) {
        int bk = min(ATT_BK, kend - k0);
        __syncthreads();
        att_load_tile(k_s, d + 1, ATT_BK, k, ldk, sg.k_start + k0, bk, (int64_t)g * d, d);
        att_load_tile(v_s, d + 1, ATT_BK, v, ldk, sg.k_start + k0, bk, (int64_t)g * d, d);
        __syncthreads();

#pragma unroll
        for (int rr = 0; rr < ATT_RPW; rr++) {
            int r = warp * ATT_RPW + rr;
            if (r >= bq)
                continue;
            int visible = sg.offset + i0 + r + 1;

            /* lane j: P and dS of key j */
            float ds = 0.0f;
            if (lane < bk && k0 + lane < visible) {
                float sc = att_dot(q_s + r * d, k_s + lane * (d + 1), d) * scale;
                float p = expf(sc - row_lse[rr]);
                float dp = att_dot(do_s + r * d, v_s + lane * (d + 1), d);
                ds = p * (dp - row_dd[rr]) * scale;
            }

            /* dQ += dS_j K[j] */
            for (int j = 0; j < bk; j++) {
                float dsj = __shfl_sync(FULL_MASK, ds, j);
#pragma unroll
                for (int e = 0; e < ATT_EPL; e++) {
                    int c = lane + 32 * e;
                    if (c < d)
                        acc[rr][e] += dsj * k_s[j * (d + 1) + c];
                }
            }
        }
    }

#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        int r = warp * ATT_RPW + rr;
        if (r >= bq)
            continue;
        int64_t row = sg.q_start + i0 + r;
#pragma unroll
        for (int e = 0; e < ATT_EPL; e++) {
            int c = lane + 32 * e;
            if (c < d)
                dq[row * ldq + (int64_t)h * d + c] = acc[rr][e];
        }
    }
}

/* ---- backward: dK, dV ---- */

__global__ void __launch_bounds__(ATT_THREADS)
att_bwd_dkv_kernel(float *dk, float *dv, const float *dout, const float *q, const float *k,
                   const float *v, const float *out, const float *lse, const int32_t *cu_q,
                   const int32_t *cu_k, int tiles_per_seg, int heads, int kv_heads, int d,
                   float scale)
{
    ATT_SMEM_DECL;
    float *k_s = smem;                      /* [ATT_BQ][d]: this block's keys */
    float *v_s = k_s + ATT_BQ * d;          /* [ATT_BQ][d] */
    float *q_s = v_s + ATT_BQ * d;          /* [ATT_BK][d + 1]: a tile of queries */
    float *do_s = q_s + ATT_BK * (d + 1);   /* [ATT_BK][d + 1] */
    float *lse_s = do_s + ATT_BK * (d + 1); /* [ATT_BK] */
    float *dd_s = lse_s + ATT_BK;           /* [ATT_BK] rowsum(dO * O) */
    int s = blockIdx.x / tiles_per_seg, tile = blockIdx.x % tiles_per_seg, g = blockIdx.y;
    att_seg sg = att_seg_at(cu_q, cu_k, s);
    int j0 = tile * ATT_BQ; /* first key of the block (within the segment) */
    if (j0 >= sg.nk)
        return;
    int bkv = min(ATT_BQ, sg.nk - j0);
    int group = heads / kv_heads, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t ldq = (int64_t)heads * d, ldk = (int64_t)kv_heads * d;

    att_load_tile(k_s, d, ATT_BQ, k, ldk, sg.k_start + j0, bkv, (int64_t)g * d, d);
    att_load_tile(v_s, d, ATT_BQ, v, ldk, sg.k_start + j0, bkv, (int64_t)g * d, d);

    float dk_acc[ATT_RPW][ATT_EPL], dv_acc[ATT_RPW][ATT_EPL];
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++)
#pragma unroll
        for (int e = 0; e < ATT_EPL; e++) {
            dk_acc[rr][e] = 0.0f;
            dv_acc[rr][e] = 0.0f;
        }

    /* the first query that sees key j0: j0 <= offset + i */
    int i_first = max(0, j0 - sg.offset);
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int i0 = i_first; i0 < sg.nq; i0 += ATT_BK) {
            int bq = min(ATT_BK, sg.nq - i0);
            __syncthreads(); /* the previous query tile is consumed (and k_s, v_s loaded) */
            att_load_tile(q_s, d + 1, ATT_BK, q, ldq, sg.q_start + i0, bq, (int64_t)h * d, d);
            att_load_tile(do_s, d + 1, ATT_BK, dout, ldq, sg.q_start + i0, bq, (int64_t)h * d,
                          d);
            /* each warp: the logsumexp and rowsum(dO * O) of 8 of the 32 queries */
            for (int i = warp; i < ATT_BK; i += ATT_WARPS) {
                float part = 0.0f, l = 0.0f;
                if (i < bq) {
                    int64_t row = sg.q_start + i0 + i;
                    const float *o_r = out + row * ldq + (int64_t)h * d;
                    const float *do_r = dout + row * ldq + (int64_t)h * d;
                    for (int c = lane; c < d; c += 32)
                        part += o_r[c] * do_r[c];
                    l = lse[row * heads + h];
                }
                part = warp_sum(part);
                if (lane == 0) {
                    dd_s[i] = part;
                    lse_s[i] = l;
                }
            }
            __syncthreads();

#pragma unroll
            for (int rr = 0; rr < ATT_RPW; rr++) {
                int r = warp * ATT_RPW + rr; /* key row of the block */
                if (r >= bkv)
                    continue;
                int key = j0 + r;

                /* lane i: P and dS of query i0 + i against this key */
                float p = 0.0f, ds = 0.0f;
                if (lane < bq && key <= sg.offset + i0 + lane) {
                    float sc = att_dot(q_s + lane * (d + 1), k_s + r * d, d) * scale;
                    p = expf(sc - lse_s[lane]);
                    float dp = att_dot(do_s + lane * (d + 1), v_s + r * d, d);
                    ds = p * (dp - dd_s[lane]) * scale;
                }

                /* dV += P_i dO[i];  dK += dS_i Q[i] */
                for (int i = 0; i < bq; i++) {
                    float pi = __shfl_sync(FULL_MASK, p, i);
                    float dsi = __shfl_sync(FULL_MASK, ds, i);
#pragma unroll
                    for (int e = 0; e < ATT_EPL; e++) {
                        int c = lane + 32 * e;
                        if (c < d) {
                            dv_acc[rr][e] += pi * do_s[i * (d + 1) + c];
                            dk_acc[rr][e] += dsi * q_s[i * (d + 1) + c];
                        }
                    }
                }
            }
        }
    }

    /* every key row of the block is written, seen by a query or not */
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        int r = warp * ATT_RPW + rr;
        if (r >= bkv)
            continue;
        int64_t row = sg.k_start + j0 + r;
#pragma unroll
        for (int e = 0; e < ATT_EPL; e++) {
            int c = lane + 32 * e;
            if (c < d) {
                dk[row * ldk + (int64_t)g * d + c] = dk_acc[rr][e];
                dv[row * ldk + (int64_t)g * d + c] = dv_acc[rr][e];
            }
        }
    }
}

#endif
