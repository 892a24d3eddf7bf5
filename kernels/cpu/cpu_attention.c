/*
 * cpu_attention.c: causal grouped-query attention over packed segments, on the CPU.
 *
 * Tiled over query blocks of ATT_BQ rows: a block's scores against the keys it may see
 * ([ATT_BQ, n_keys], never the whole T x T matrix) come from one sgemm, the softmax keeps each
 * row's logsumexp, and P.V is a second sgemm. The backward recomputes P from the logsumexp.
 *
 * Threads: work items run in an OpenMP loop with OpenBLAS set to one thread meanwhile. Forward
 * items are (segment, head, query block), each writing its own rows; backward items are
 * (segment, kv head), each owning the dK/dV rows of its kv head and the dQ rows of the heads
 * that share it, so sums run in a fixed order and the result does not depend on scheduling.
 */
#include "cpu_blas.h"
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
#endif
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"
#include "cpu_simd.h"
#include "util.h"

#define ATT_BQ 64
#define ATT_MAX_THREADS 256

/* Per-thread score buffers, kept between calls (no page faults per layer). */
static float *thread_buf(int slot, size_t n)
{
    static float *buf[2][ATT_MAX_THREADS];
    static size_t cap[2][ATT_MAX_THREADS];
    int t = omp_get_thread_num();
    if (t >= ATT_MAX_THREADS)
        rb_die(RB_EXIT_RUNTIME, "attention: more than %d OpenMP threads", ATT_MAX_THREADS);
    if (n > cap[slot][t]) {
        free(buf[slot][t]);
        buf[slot][t] = xmalloc(sizeof(float) * n);
        cap[slot][t] = n;
    }
    return buf[slot][t];
}

/* One query block of one head: where its rows and keys are. */
typedef struct {
    int q0;    /* first query row (flat stream) */
    int bq;    /* queries in the block */
    int k0;    /* first key row of the segment (flat stream) */
    int kend;  /* keys visible to the block's last query (count from k0) */
    int diag;  /* query i of the block sees keys < diag + i + 1 */
} att_block;

static att_block att_block_at(const int32_t *cu_q, const int32_t *cu_k, int s, int i0, int bq)
{
    int nq = cu_q[s + 1] - cu_q[s], nk = cu_k[s + 1] - cu_k[s];
    att_block b = {cu_q[s] + i0, bq, cu_k[s], 0, nk - nq + i0};
    b.kend = b.diag + bq;
    return b;
}

static int blocks_of(int n) { return (n + ATT_BQ - 1) / ATT_BQ; }

/* Softmax of row i of S (scaled scores), keys past the causal limit set to 0. Returns lse. */
static float softmax_row_generic(float *row, int visible, int kend)
{
    float mx = -INFINITY;
    for (int j = 0; j < visible; j++)
        mx = row[j] > mx ? row[j] : mx;
    float sum = 0.0f;
    for (int j = 0; j < visible; j++) {
        row[j] = expf(row[j] - mx);
        sum += row[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < visible; j++)
        row[j] *= inv;
    for (int j = visible; j < kend; j++)
        row[j] = 0.0f;
    return mx + logf(sum);
}

/* row[j] = exp(row[j] - l) for j < visible, 0 up to kend (the backward's P from the lse). */
static void exp_row_generic(float *row, float l, int visible, int kend)
{
    for (int j = 0; j < visible; j++)
        row[j] = expf(row[j] - l);
    for (int j = visible; j < kend; j++)
        row[j] = 0.0f;
}

#if CPU_X86
/* softmax_row_generic in 16 lanes: the sum in lanes, added in a fixed order, so the result
 * depends only on the row. A NaN score makes the row's sum, and so the lse, NaN. */
__attribute__((target("avx512f,fma"))) static float softmax_row_avx512(float *row, int visible,
                                                                       int kend)
{
    __m512 vmx = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < visible; j += 16)
        vmx = _mm512_mask_max_ps(vmx, cpu_mask16(visible - j), vmx,
                                 _mm512_maskz_loadu_ps(cpu_mask16(visible - j), row + j));
    float mx = _mm512_reduce_max_ps(vmx);
    __m512 vm = _mm512_set1_ps(mx), vsum = _mm512_setzero_ps();
    for (int j = 0; j < visible; j += 16) {
        __mmask16 k = cpu_mask16(visible - j);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, row + j), vm));
        vsum = _mm512_mask_add_ps(vsum, k, vsum, e);
        _mm512_mask_storeu_ps(row + j, k, e);
    }
    float sum = _mm512_reduce_add_ps(vsum);
    __m512 vinv = _mm512_set1_ps(1.0f / sum);
    for (int j = 0; j < visible; j += 16) {
        __mmask16 k = cpu_mask16(visible - j);
        _mm512_mask_storeu_ps(row + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, row + j), vinv));
    }
    for (int j = visible; j < kend; j++)
        row[j] = 0.0f;
    return mx + logf(sum);
}

__attribute__((target("avx512f,fma"))) static void exp_row_avx512(float *row, float l,
                                                                  int visible, int kend)
{
    __m512 vl = _mm512_set1_ps(l);
    for (int j = 0; j < visible; j += 16) {
        __mmask16 k = cpu_mask16(visible - j);
        _mm512_mask_storeu_ps(row + j, k,
                              exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, row + j), vl)));
    }
    for (int j = visible; j < kend; j++)
        row[j] = 0.0f;
}
#endif

static float softmax_row(float *row, int visible, int kend)
{
#if CPU_X86
    if (cpu_avx512())
        return softmax_row_avx512(row, visible, kend);
#endif
    return softmax_row_generic(row, visible, kend);
}

static void exp_row(float *row, float l, int visible, int kend)
{
#if CPU_X86
    if (cpu_avx512()) {
        exp_row_avx512(row, l, visible, kend);
        return;
    }
#endif
    exp_row_generic(row, l, visible, kend);
}

static void fwd_block(float *out, float *lse, const float *q, const float *k, const float *v,
                      att_block b, int h, int heads, int kv_heads, int d, float scale,
                      float *s_buf)
{
    int ldq = heads * d, ldk = kv_heads * d, g = h / (heads / kv_heads);
    const float *qp = q + (int64_t)b.q0 * ldq + h * d;
    const float *kp = k + (int64_t)b.k0 * ldk + g * d;
    const float *vp = v + (int64_t)b.k0 * ldk + g * d;

    /* scores of the block against every key it may see */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b.bq, b.kend, d, scale, qp, ldq, kp,
                ldk, 0.0f, s_buf, b.kend);

    /* masked softmax per row, keeping the logsumexp */
    for (int i = 0; i < b.bq; i++) {
        float l = softmax_row(s_buf + (int64_t)i * b.kend, b.diag + i + 1, b.kend);
        if (lse)
            lse[(int64_t)(b.q0 + i) * heads + h] = l;
    }

    /* out = P . V */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b.bq, d, b.kend, 1.0f, s_buf,
                b.kend, vp, ldk, 0.0f, out + (int64_t)b.q0 * ldq + h * d, ldq);
}

#if CPU_X86
/* One query row of one head (a decoding step): the scores as dot products, the softmax, and
 * P.V as a sum of scaled value rows, in registers; no sgemm call for a 1-row product. */
__attribute__((target("avx512f,fma"))) static void fwd_row_avx512(float *o, float *lse,
                                                                  const float *qv,
                                                                  const float *kp,
                                                                  const float *vp, int ldk,
                                                                  int n_keys, int d,
                                                                  float scale, float *s)
{
    for (int j = 0; j < n_keys; j++) {
        const float *kj = kp + (int64_t)j * ldk;
        __m512 acc = _mm512_setzero_ps();
        for (int c = 0; c < d; c += 16) {
            __mmask16 m = cpu_mask16(d - c);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qv + c), _mm512_maskz_loadu_ps(m, kj + c),
                                  acc);
        }
        s[j] = scale * _mm512_reduce_add_ps(acc);
    }
    float l = softmax_row(s, n_keys, n_keys);
    if (lse)
        *lse = l;
    for (int c = 0; c < d; c += 64) {
        __m512 acc[4];
        for (int u = 0; u < 4; u++)
            acc[u] = _mm512_setzero_ps();
        for (int j = 0; j < n_keys; j++) {
            const float *vj = vp + (int64_t)j * ldk + c;
            __m512 pj = _mm512_set1_ps(s[j]);
            for (int u = 0; u < 4; u++)
                acc[u] = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(cpu_mask16(d - c - 16 * u),
                                                                   vj + 16 * u), acc[u]);
        }
        for (int u = 0; u < 4; u++)
            _mm512_mask_storeu_ps(o + c + 16 * u, cpu_mask16(d - c - 16 * u), acc[u]);
    }
}
#endif

/* A block of one query row goes to fwd_row_avx512 where it runs; otherwise fwd_block. */
static void fwd_item(float *out, float *lse, const float *q, const float *k, const float *v,
                     att_block b, int h, int heads, int kv_heads, int d, float scale,
                     float *s_buf)
{
#if CPU_X86
    if (b.bq == 1 && cpu_avx512()) {
        int ldq = heads * d, ldk = kv_heads * d, g = h / (heads / kv_heads);
        fwd_row_avx512(out + (int64_t)b.q0 * ldq + h * d,
                       lse ? lse + (int64_t)b.q0 * heads + h : NULL,
                       q + (int64_t)b.q0 * ldq + h * d, k + (int64_t)b.k0 * ldk + g * d,
                       v + (int64_t)b.k0 * ldk + g * d, ldk, b.kend, d, scale, s_buf);
        return;
    }
#endif
    fwd_block(out, lse, q, k, v, b, h, heads, kv_heads, d, scale, s_buf);
}

/* Where the forward's keys are: packed (k, v, cu_k) or one cache per segment (k_rows, v_rows,
 * k_len). */
typedef struct {
    const float *k, *v;
    const int32_t *cu_k;
    const float *const *k_rows, *const *v_rows;
    const int32_t *k_len;
} att_keys;

/* Segment s's keys: its first key and value rows, and how many */
static int keys_of(const att_keys *ak, int s, int64_t ldk, const float **k, const float **v)
{
    if (ak->k_rows) {
        *k = ak->k_rows[s];
        *v = ak->v_rows[s];
        return ak->k_len[s];
    }
    *k = ak->k + (int64_t)ak->cu_k[s] * ldk;
    *v = ak->v + (int64_t)ak->cu_k[s] * ldk;
    return ak->cu_k[s + 1] - ak->cu_k[s];
}

static void fwd_common(float *out, float *lse, const float *q, const att_keys *ak,
                       const int32_t *cu_q, int n_seg, int heads, int kv_heads, int d,
                       float scale)
{
    /* list the work items: (segment, head, query block) */
    int n_items = 0;
    for (int s = 0; s < n_seg; s++)
        n_items += heads * blocks_of(cu_q[s + 1] - cu_q[s]);
    int *item_seg = xmalloc(sizeof(int) * (size_t)(n_items + 1));
    int *item_blk = xmalloc(sizeof(int) * (size_t)(n_items + 1));
    int it = 0, max_k = 1;
    int64_t ldk = (int64_t)kv_heads * d;
    for (int s = 0; s < n_seg; s++) {
        const float *ks, *vs;
        max_k = RB_MAX(max_k, keys_of(ak, s, ldk, &ks, &vs));
        for (int h = 0; h < heads; h++)
            for (int bl = 0; bl < blocks_of(cu_q[s + 1] - cu_q[s]); bl++) {
                item_seg[it] = s;
                item_blk[it++] = h * 65536 + bl;
            }
    }

    int saved = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel
    {
        float *s_buf = thread_buf(0, (size_t)ATT_BQ * max_k);
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < n_items; i++) {
            int s = item_seg[i], h = item_blk[i] / 65536, bl = item_blk[i] % 65536;
            int nq = cu_q[s + 1] - cu_q[s];
            int i0 = bl * ATT_BQ, bq = RB_MIN(ATT_BQ, nq - i0);
            const float *ks, *vs;
            int nk = keys_of(ak, s, ldk, &ks, &vs);
            /* the segment's keys start at row 0 of ks / vs */
            att_block b = {cu_q[s] + i0, bq, 0, 0, nk - nq + i0};
            b.kend = b.diag + bq;
            fwd_item(out, lse, q, ks, vs, b, h, heads, kv_heads, d, scale, s_buf);
        }
    }
    openblas_set_num_threads(saved);
    free(item_seg);
    free(item_blk);
}

void cpu_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                       const int32_t *cu_q, const int32_t *cu_k, int n_seg, int max_q,
                       int heads, int kv_heads, int d, float scale)
{
    att_keys ak = {.k = k, .v = v, .cu_k = cu_k};
    fwd_common(out, lse, q, &ak, cu_q, n_seg, heads, kv_heads, d, scale);
}

void cpu_attention_fwd_rows(float *out, const float *q, const float *const *k_rows,
                            const float *const *v_rows, const int32_t *cu_q,
                            const int32_t *k_len, int n_seg, int max_q, int heads, int kv_heads,
                            int d, float scale)
{
    att_keys ak = {.k_rows = k_rows, .v_rows = v_rows, .k_len = k_len};
    fwd_common(out, NULL, q, &ak, cu_q, n_seg, heads, kv_heads, d, scale);
}

/* Backward of one query block of head h: accumulates dK, dV of its kv head, writes dQ. */
static void bwd_block(float *dq, float *dk, float *dv, const float *dout, const float *q,
                      const float *k, const float *v, const float *out, const float *lse,
                      att_block b, int h, int heads, int kv_heads, int d, float scale,
                      float *p_buf, float *dp_buf)
{
    int ldq = heads * d, ldk = kv_heads * d, g = h / (heads / kv_heads);
    int64_t qoff = (int64_t)b.q0 * ldq + h * d, koff = (int64_t)b.k0 * ldk + g * d;

    /* recompute P from the saved logsumexp */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b.bq, b.kend, d, scale, q + qoff, ldq,
                k + koff, ldk, 0.0f, p_buf, b.kend);
    for (int i = 0; i < b.bq; i++) {
        float *row = p_buf + (int64_t)i * b.kend;
        float l = lse[(int64_t)(b.q0 + i) * heads + h];
        exp_row(row, l, b.diag + i + 1, b.kend);
    }

    /* dV += P^T dO;  dP = dO V^T */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, b.kend, d, b.bq, 1.0f, p_buf, b.kend,
                dout + qoff, ldq, 1.0f, dv + koff, ldk);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b.bq, b.kend, d, 1.0f, dout + qoff, ldq,
                v + koff, ldk, 0.0f, dp_buf, b.kend);

    /* dS = P * (dP - rowsum(dO * O)) * scale */
    for (int i = 0; i < b.bq; i++) {
        const float *o_i = out + qoff + (int64_t)i * ldq, *do_i = dout + qoff + (int64_t)i * ldq;
        float di = 0.0f;
        for (int c = 0; c < d; c++)
            di += o_i[c] * do_i[c];
        float *p = p_buf + (int64_t)i * b.kend, *dp = dp_buf + (int64_t)i * b.kend;
        for (int j = 0; j < b.kend; j++)
            dp[j] = p[j] * (dp[j] - di) * scale;
    }

    /* dQ = dS K;  dK += dS^T Q */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b.bq, d, b.kend, 1.0f, dp_buf,
                b.kend, k + koff, ldk, 0.0f, dq + qoff, ldq);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, b.kend, d, b.bq, 1.0f, dp_buf, b.kend,
                q + qoff, ldq, 1.0f, dk + koff, ldk);
}

void cpu_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                       const float *k, const float *v, const float *out, const float *lse,
                       const int32_t *cu_q, const int32_t *cu_k, int n_seg, int max_q,
                       int heads, int kv_heads, int d, float scale)
{
    int max_k = 1, group = heads / kv_heads, ldk = kv_heads * d;
    for (int s = 0; s < n_seg; s++)
        max_k = RB_MAX(max_k, cu_k[s + 1] - cu_k[s]);

    int saved = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel
    {
        float *p_buf = thread_buf(0, (size_t)ATT_BQ * max_k);
        float *dp_buf = thread_buf(1, (size_t)ATT_BQ * max_k);
#pragma omp for schedule(dynamic, 1)
        for (int item = 0; item < n_seg * kv_heads; item++) {
            int s = item / kv_heads, g = item % kv_heads;
            int nq = cu_q[s + 1] - cu_q[s];

            /* this item owns dK, dV rows of kv head g in segment s: start them at zero */
            for (int t = cu_k[s]; t < cu_k[s + 1]; t++) {
                memset(dk + (int64_t)t * ldk + g * d, 0, sizeof(float) * d);
                memset(dv + (int64_t)t * ldk + g * d, 0, sizeof(float) * d);
            }
            for (int h = g * group; h < (g + 1) * group; h++)
                for (int i0 = 0; i0 < nq; i0 += ATT_BQ) {
                    att_block b = att_block_at(cu_q, cu_k, s, i0, RB_MIN(ATT_BQ, nq - i0));
                    bwd_block(dq, dk, dv, dout, q, k, v, out, lse, b, h, heads, kv_heads, d,
                              scale, p_buf, dp_buf);
                }
        }
    }
    openblas_set_num_threads(saved);
}
