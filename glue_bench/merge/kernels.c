/* Fused CPU kernels for the merge methods: each makes one or two passes where
 * torch and numpy make a dozen, with their temporaries. Built and loaded by kernels.py, which
 * also says which Python code each one stands in for (the torch path, kept for CUDA).
 *
 * Compiled with -fno-trapping-math: without it gcc may not turn the comparisons below into
 * vector selects (a comparison may trap), and these loops run 25x slower. No -ffast-math: it
 * would reorder sums and, in a shared library, switch the whole process to flush-to-zero.
 * The TIES election and the streamed passes are written with 8-lane vector types (GCC and Clang
 * vector extensions, an AVX2 intrinsic or two where gcc 12 makes poor code of the generic form):
 * their loops run over models inside a chunk of entries, which gcc does not vectorize by itself. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define BLOCK 256  /* entries per block of dare_keep's draws and of ties_bracket's counts */
#define TRIM_BLOCK 4096  /* entries per block of keep_top's trim (16 KB, in L1 while counted and trimmed) */
#define SUM_BLOCK 4096  /* entries per block of weighted_sum: its 16 KB of sums stay in L1 */

static inline float bfloat16_value(uint16_t bits) {  /* exact: a bfloat16 is a float32's high half */
    uint32_t wide = (uint32_t)bits << 16;
    float x;
    memcpy(&x, &wide, sizeof x);
    return x;
}

/* A task vector: out = x - base, x read in its stored dtype (bf16: a bfloat16, else float32) and
 * widened exactly, so the same float32 subtraction as torch.sub's on the widened x. Returns
 * whether x holds NaN or inf (the caller then names the input at fault). */
int subtract(const void *input, int bf16, const float *base, int64_t numel, float *out) {
    uint32_t special = 0;  /* any exponent all ones */
    if (bf16) {
        const uint16_t *x = input;
        for (int64_t j = 0; j < numel; j++) {
            special |= (uint32_t)((x[j] & 0x7f80u) == 0x7f80u);
            out[j] = bfloat16_value(x[j]) - base[j];
        }
    } else {
        const float *x = input;
        for (int64_t j = 0; j < numel; j++) {
            uint32_t bits;
            memcpy(&bits, &x[j], sizeof bits);
            special |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
            out[j] = x[j] - base[j];
        }
    }
    return special != 0;
}

/* ---- TIES's election, 32 entries at a time in vector registers -------------------------------
 * Eight float32 lanes as a GCC/Clang vector type: one AVX register where the CPU has AVX, two SSE
 * or NEON ones elsewhere. A chunk of CHUNK entries is four of them, so that each sum over the
 * models runs as four independent chains (a chain waits out each multiply-add's latency) held in
 * registers: an election that went model by model through arrays in L1 was bound by its stores. */
#define LANES 8
#define VECTORS 4
#define CHUNK (LANES * VECTORS)

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef uint32_t u8 __attribute__((vector_size(32)));
typedef uint16_t h8 __attribute__((vector_size(16)));
typedef int16_t s8 __attribute__((vector_size(16)));
typedef uint64_t q2 __attribute__((vector_size(16)));

static inline f8 load8(const float *p) { f8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, f8 v) { memcpy(p, &v, sizeof v); }
static inline f8 splat8(float x) { return (f8){0} + x; }

/* A store of a result that is not read again soon: past the caches where the CPU can (AVX, an
 * aligned address), so that its cache lines are not first read from memory to be overwritten. */
static inline void stream8(float *p, f8 v) {
#ifdef __AVX__
    if (((uintptr_t)p & 31) == 0) {
        _mm256_stream_ps(p, (__m256)v);
        return;
    }
#endif
    store8(p, v);
}

static inline void streamed_fence(void) {  /* streamed stores made visible before the caller reads them */
#ifdef __AVX__
    _mm_sfence();
#endif
}

/* 8 entries of an input as stored, widened exactly (bf16: a bfloat16 is a float32's high half).
 * With AVX2, one zero-extending load: gcc 12 makes __builtin_convertvector's four instructions. */
static inline f8 stored8(const void *input, int bf16, int64_t at) {
    if (bf16) {
#ifdef __AVX2__
        __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)input + at)));
        return (f8)_mm256_slli_epi32(wide, 16);
#else
        h8 half;
        memcpy(&half, (const uint16_t *)input + at, sizeof half);
        return (f8)(__builtin_convertvector(half, u8) << 16);
#endif
    }
    return load8((const float *)input + at);
}

static inline i8 magnitude8(f8 x) { return (i8)x & 0x7fffffff; }  /* |x|'s bits, ordered as |x| */

/* The base as stored: entry j of it (bf16 or float32, widened exactly), and its address from
 * entry `at` on. The streamed merges read it so, where the engine has not widened it. */
static inline float base_value(const void *base, int base_bf16, int64_t j) {
    return base_bf16 ? bfloat16_value(((const uint16_t *)base)[j]) : ((const float *)base)[j];
}

static inline const void *base_from(const void *base, int base_bf16, int64_t at) {
    return (const char *)base + at * (base_bf16 ? 2 : 4);
}

/* Whether a lane's largest magnitude (its bits, max8 of magnitude8) is inf or NaN's. */
static inline int non_finite8(i8 largest) {
    int special = 0;
    for (int lane = 0; lane < LANES; lane++) special |= largest[lane] > 0x7f7fffff;
    return special;
}

static inline i8 max8(i8 a, i8 b) {
#ifdef __AVX2__
    return (i8)_mm256_max_epi32((__m256i)a, (__m256i)b);  /* one instruction where a select takes three */
#else
    i8 a_larger = a > b;
    return (a & a_larger) | (b & ~a_larger);
#endif
}

/* A bf16 tensor widened to float32 (exactly: a bfloat16 is a float32's high half), and whether
 * it holds NaN or inf, in the one pass: the engine's check of what it reads costs no pass of its own. */
int widen(const uint16_t *input, int64_t numel, float *out) {
    uint32_t special = 0;  /* any exponent all ones */
    int64_t j = 0;
    i8 largest = {0};
    for (; j + LANES <= numel; j += LANES) {
        const f8 x = stored8(input, 1, j);
        largest = max8(largest, magnitude8(x));
        stream8(out + j, x);
    }
    special |= (uint32_t)non_finite8(largest);
    for (; j < numel; j++) {
        special |= (uint32_t)((input[j] & 0x7f80u) == 0x7f80u);
        out[j] = bfloat16_value(input[j]);
    }
    streamed_fence();
    return special != 0;
}

/* Linear's weighted sum of n_models inputs [numel], each read once in its stored dtype (bf16: a
 * bfloat16, else float32): out = c_0 x_0, then out = fma(x_i, c_i, out) for i = 1, 2, ..: what
 * torch's mul and add_(x, alpha=c) compute where ATen's vector code has FMA (AVX2, AVX-512),
 * rounded the same way. Block by block, so the sums are written to memory once, not per model.
 * The block's sums are made in L1 and then stored past the caches (stream8), checked on the way
 * out: whether the sum holds NaN or inf is returned. */
int weighted_sum(const void *const *inputs, int bf16, const float *c, int64_t n_models, int64_t numel,
                 float *out) {
    float o[SUM_BLOCK] __attribute__((aligned(32)));
    i8 largest = {0};
    for (int64_t start = 0; start < numel; start += SUM_BLOCK) {
        int64_t n = numel - start < SUM_BLOCK ? numel - start : SUM_BLOCK;
        for (int64_t i = 0; i < n_models; i++) {
            float ci = c[i];
            if (bf16) {
                const uint16_t *x = (const uint16_t *)inputs[i] + start;
                if (i == 0) for (int64_t j = 0; j < n; j++) o[j] = bfloat16_value(x[j]) * ci;
                else for (int64_t j = 0; j < n; j++) o[j] = fmaf(bfloat16_value(x[j]), ci, o[j]);
            } else {
                const float *x = (const float *)inputs[i] + start;
                if (i == 0) for (int64_t j = 0; j < n; j++) o[j] = x[j] * ci;
                else for (int64_t j = 0; j < n; j++) o[j] = fmaf(x[j], ci, o[j]);
            }
        }
        int64_t j = 0;
        for (; j + LANES <= n; j += LANES) {
            const f8 sums = load8(o + j);
            largest = max8(largest, magnitude8(sums));
            stream8(out + start + j, sums);
        }
        for (; j < n; j++) {
            const f8 last = splat8(o[j]);
            largest = max8(largest, magnitude8(last));
            out[start + j] = o[j];
        }
    }
    streamed_fence();
    return non_finite8(largest);
}

/* The scratch of an election: the voters (the models with c_i != 0: a zero term never agrees),
 * their |c_i|, w_i and sign(c_i) as a sign bit, each model's slot among them (-1: none), and the
 * voters' signed task vectors sign(c_i) d_i (a row of up to BLOCK entries each). */
typedef struct {
    int64_t count, *slot;
    float *absolute, *active;
    int32_t *flip;
    float *e;
    i8 largest;  /* the largest magnitude's bits written per lane: is the result finite? */
} election_t;

/* 0, or 1 where the election wrote NaN or inf (a magnitude's bits above the largest finite's). */
static int election_result(const election_t *el) {
    return non_finite8(el->largest);
}

static void election_free(election_t *el) {
    free(el->slot);
    free(el->absolute);
    free(el->active);
    free(el->flip);
    free(el->e);
}

static int election_of(election_t *el, int64_t n_models, const float *signed_c, const float *absolute,
                       const float *active) {
    el->count = 0;
    el->largest = (i8){0};
    el->slot = malloc((size_t)n_models * sizeof *el->slot);
    el->absolute = malloc((size_t)n_models * sizeof *el->absolute);
    el->active = malloc((size_t)n_models * sizeof *el->active);
    el->flip = malloc((size_t)n_models * sizeof *el->flip);
    el->e = aligned_alloc(32, (size_t)(n_models ? n_models : 1) * BLOCK * sizeof *el->e);
    if (!el->slot || !el->absolute || !el->active || !el->flip || !el->e) {
        election_free(el);
        return -1;
    }
    for (int64_t i = 0; i < n_models; i++) {
        el->slot[i] = signed_c[i] == 0 ? -1 : el->count;
        if (signed_c[i] == 0) continue;
        el->absolute[el->count] = absolute[i];
        el->active[el->count] = active[i];
        el->flip[el->count++] = signed_c[i] < 0 ? (int32_t)0x80000000 : 0;
    }
    return 0;
}

/* Model i's task vector d on a chunk, into the election: sign += c_i d (model by model, in index
 * order), and sign(c_i) d kept for the vote in its row of e, CHUNK entries long (a sign flip: exact). */
static inline void add_model(election_t *el, int64_t i, float c, const f8 *d, f8 *sign) {
    for (int q = 0; q < VECTORS; q++) sign[q] += c * d[q];
    const int64_t slot = el->slot[i];
    if (slot >= 0 && el->flip[slot])
        for (int q = 0; q < VECTORS; q++) store8(el->e + slot * CHUNK + q * LANES, (f8)((i8)d[q] ^ el->flip[slot]));
    else if (slot >= 0)
        for (int q = 0; q < VECTORS; q++) store8(el->e + slot * CHUNK + q * LANES, d[q]);
}

/* The election of one chunk, its models added: out = base + lambda * s * (sum_i |c_i| P_i) /
 * (sum_i w_i [P_i > 0]), s = +1 where sum_i c_i d_i >= 0 (else -1), P_i = max(sign(c_i) d_i s, 0);
 * the divisor only when `normalize`, a zero one counting as 1. Each product and sum is the one the
 * formula names, in model order, wherever the task vectors come from (a stack or the files). */
static inline __attribute__((always_inline)) void elect_normalized(election_t *el, const float *e,
                                                                   int64_t stride, const f8 *sign,
                                                                   const void *base, const int base_bf16,
                                                                   float lambda, int normalize, float *out) {
    f8 s[VECTORS], total[VECTORS], divisor[VECTORS];
    const f8 one = splat8(1.0f);
    for (int q = 0; q < VECTORS; q++) {
        s[q] = (f8)((i8)one | ((sign[q] < 0) & (int32_t)0x80000000));  /* +-1 */
        total[q] = (f8){0};
        divisor[q] = (f8){0};
    }
    for (int64_t v = 0; v < el->count; v++) {
        const float a = el->absolute[v];
        const f8 w = splat8(el->active[v]);
        for (int q = 0; q < VECTORS; q++) {
            const f8 x = load8(e + v * stride + q * LANES) * s[q];  /* sign(c_i) d_i s, exactly */
            const i8 agrees = x > 0;
            total[q] += a * (f8)((i8)x & agrees);  /* a max(x, 0) */
            if (normalize) divisor[q] += (f8)(agrees & (i8)w);
        }
    }
    for (int q = 0; q < VECTORS; q++) {
        f8 merged = s[q] * total[q];
        if (normalize) merged /= divisor[q] + (f8)((divisor[q] == 0) & (i8)one);
        const f8 result = stored8(base, base_bf16, q * LANES) + lambda * merged;
        el->largest = max8(el->largest, magnitude8(result));
        stream8(out + q * LANES, result);
    }
}

/* `elect_normalized` on voter rows `stride` entries apart from e (the chunk's entries in each),
 * the base as stored from the chunk's first entry. */
static inline __attribute__((always_inline)) void elect(election_t *el, const float *e, int64_t stride,
                                                        const f8 *sign, const void *base, const int base_bf16,
                                                        float lambda, int normalize, float *out) {
    if (normalize) elect_normalized(el, e, stride, sign, base, base_bf16, lambda, 1, out);  /* no test per entry */
    else elect_normalized(el, e, stride, sign, base, base_bf16, lambda, 0, out);
}

/* TIES's election over a stack: deltas holds n_models rows of numel entries, `stride` apart, row i
 * (part of) model i's trimmed task vector. Reads the stack, never writes it (a search's cache
 * keeps it for the next candidate). A last partial chunk goes through zero-padded copies, so that
 * every entry takes the one vector path. Returns -1 if its scratch cannot be had, 1 if the result
 * holds NaN or inf, else 0. */
int ties_combine(const float *deltas, int64_t n_models, int64_t numel, int64_t stride, const float *signed_c,
                 const float *absolute, const float *active, const float *base, float lambda,
                 int normalize, float *out) {
    election_t el;
    if (election_of(&el, n_models, signed_c, absolute, active) != 0) return -1;
    for (int64_t at = 0; at < numel; at += CHUNK) {
        const int64_t n = numel - at < CHUNK ? numel - at : CHUNK;
        float pad[CHUNK] = {0}, pad_base[CHUNK] = {0}, pad_out[CHUNK];
        f8 sign[VECTORS] = {{0}}, d[VECTORS];
        for (int64_t i = 0; i < n_models; i++) {
            const float *row = deltas + i * stride + at;
            if (n < CHUNK) row = memcpy(pad, row, (size_t)n * sizeof *pad);
            for (int q = 0; q < VECTORS; q++) d[q] = load8(row + q * LANES);
            add_model(&el, i, signed_c[i], d, sign);
        }
        if (n == CHUNK) elect(&el, el.e, CHUNK, sign, base + at, 0, lambda, normalize, out + at);
        else {
            memcpy(pad_base, base + at, (size_t)n * sizeof *pad_base);
            elect(&el, el.e, CHUNK, sign, pad_base, 0, lambda, normalize, pad_out);
            memcpy(out + at, pad_out, (size_t)n * sizeof *pad_out);
        }
    }
    const int special = election_result(&el);
    streamed_fence();
    election_free(&el);
    return special;
}

static inline uint32_t magnitude_bits(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return bits & 0x7fffffffu;  /* |x|, as an integer that orders like the float */
}

/* How many entries of x [n] exceed `t` in magnitude. Counted in int32 per chunk, which gcc
 * vectorizes (int64 counters it does not). */
static int64_t count_above(const float *x, int64_t n, int32_t t) {
    int64_t above = 0;
    for (int64_t start = 0; start < n; start += 1 << 20) {
        int64_t count = n - start < 1 << 20 ? n - start : 1 << 20;
        int32_t chunk_above = 0;
        for (int64_t j = 0; j < count; j++) chunk_above += (int32_t)magnitude_bits(x[start + j]) > t;
        above += chunk_above;
    }
    return above;
}

/* The k-th largest magnitude's bits of each row todo[t] of `rows` [.., n] (k[t] in 1..n), exactly,
 * without a sort or a copy: a histogram of the magnitudes' high 16 bits finds the bucket the k-th
 * falls in, then one of the low 16 bits of the entries in that bucket finds the value. Two passes,
 * however much the values repeat (a bf16 checkpoint's deltas take a few thousand distinct values,
 * on which a selection slows ~10x); ~110 ms on 45M entries here (interleaved copies of each
 * histogram, against runs of equal values, saved 7 %: not kept). 32-bit counts: n < 2^32. */
void kth_magnitudes(const float *rows, int64_t n, const int64_t *todo, int64_t n_todo, const int64_t *k,
                    uint32_t *kth) {
    uint32_t *counts = malloc((1 << 16) * sizeof *counts);
    if (counts == NULL) { for (int64_t t = 0; t < n_todo; t++) kth[t] = UINT32_MAX; return; }  /* see kernels.py */
    for (int64_t t = 0; t < n_todo; t++) {
        const float *x = rows + todo[t] * n;
        memset(counts, 0, (1 << 15) * sizeof *counts);  /* magnitudes are < 2^31: 15 high bits */
        for (int64_t j = 0; j < n; j++) counts[magnitude_bits(x[j]) >> 16]++;
        int64_t above = 0, bucket = (1 << 15) - 1;
        while (above + counts[bucket] < k[t]) above += counts[bucket--];
        memset(counts, 0, (1 << 16) * sizeof *counts);
        for (int64_t j = 0; j < n; j++) {
            uint32_t bits = magnitude_bits(x[j]);
            if ((bits >> 16) == (uint32_t)bucket) counts[bits & 0xffffu]++;
        }
        int64_t low = 0xffff;
        while (above + counts[low] < k[t]) above += counts[low--];
        kth[t] = (uint32_t)bucket << 16 | (uint32_t)low;
    }
    free(counts);
}

/* TIES's trim: in each row r of `rows` [.., n] listed in `todo`, keep the k[r] entries of largest
 * magnitude, given the k-th largest magnitude's bits `kth`; of the entries tied at it, the lowest
 * indices are kept, so exactly k survive. Zeroed entries become +0. A pass that counts the entries
 * above, then one that trims block by block: a block's ties are counted first, so only the block
 * where the kept ties run out goes entry by entry; the others are vector selects. */
void keep_top(float *rows, int64_t n, const int64_t *todo, int64_t n_todo, const uint32_t *kth,
              const int64_t *k) {
    for (int64_t t = 0; t < n_todo; t++) {
        float *x = rows + todo[t] * n;
        const int32_t threshold = (int32_t)kth[t];  /* magnitudes' bits are < 2^31 */
        if (threshold == 0) continue;  /* every nonzero entry is among the k */
        int64_t keep = k[t] - count_above(x, n, threshold);  /* the first `keep` tied entries stay */
        for (int64_t start = 0; start < n; start += TRIM_BLOCK) {
            int64_t count = n - start < TRIM_BLOCK ? n - start : TRIM_BLOCK;
            float *block = x + start;
            int32_t tied = 0;
            if (keep > 0)
                for (int64_t j = 0; j < count; j++) tied += (int32_t)magnitude_bits(block[j]) == threshold;
            if (keep <= 0) {  /* no tie left to keep */
                for (int64_t j = 0; j < count; j++)
                    block[j] = (int32_t)magnitude_bits(block[j]) <= threshold ? 0.0f : block[j];
            } else if (tied <= keep) {  /* every tie here kept */
                for (int64_t j = 0; j < count; j++)
                    block[j] = (int32_t)magnitude_bits(block[j]) < threshold ? 0.0f : block[j];
                keep -= tied;
            } else {
                for (int64_t j = 0; j < count; j++) {
                    int32_t bits = (int32_t)magnitude_bits(block[j]);
                    if (bits < threshold || (bits == threshold && keep-- <= 0)) block[j] = 0.0f;
                }
            }
        }
    }
}

#define PCG64_MULTIPLIER (((unsigned __int128)2549297995355413924ULL << 64) | 4865540595714422341ULL)

static inline uint64_t pcg64_output(unsigned __int128 state) {  /* XSL-RR */
    uint64_t folded = (uint64_t)(state >> 64) ^ (uint64_t)state;
    unsigned rotation = (unsigned)(state >> 122);
    return (folded >> rotation) | (folded << ((-rotation) & 63));
}

/* A PCG64 stream as two chains, the even and the odd draws from here on (each a step of a^2), so
 * that their multiplies run side by side (see pcg64_fill). */
typedef struct {
    unsigned __int128 even, odd, a2, inc2;
} pcg64_pair_t;

static pcg64_pair_t pcg64_pair(unsigned __int128 state, unsigned __int128 inc) {
    const unsigned __int128 a = PCG64_MULTIPLIER;
    pcg64_pair_t pair = {.a2 = a * a, .inc2 = (a + 1) * inc};
    pair.even = a * state + inc;
    pair.odd = a * pair.even + inc;
    return pair;
}

/* numpy's PCG64 (a 128-bit LCG, state = a * state + inc, and the XSL-RR output of each new state):
 * `count` 64-bit draws, as random_raw gives them. Made by two chains that each step two states
 * at once (a^2 * state + (a + 1) * inc), which the CPU runs side by side, where one chain's every
 * multiply waits on the previous one (dare_keep on 49152 entries: 39 -> 33 us). */
static void pcg64_fill(unsigned __int128 *state_io, unsigned __int128 inc, uint64_t *draws, int64_t count) {
    unsigned __int128 state = *state_io;  /* a local: kept in registers */
    int64_t q = 0;
    if (count >= 2) {
        pcg64_pair_t pair = pcg64_pair(state, inc);
        for (; q + 2 <= count; q += 2) {
            draws[q] = pcg64_output(pair.even);
            draws[q + 1] = pcg64_output(pair.odd);
            state = pair.odd;
            pair.even = pair.a2 * pair.even + pair.inc2;
            pair.odd = pair.a2 * pair.odd + pair.inc2;
        }
    }
    for (; q < count; q++) {
        state = PCG64_MULTIPLIER * state + inc;
        draws[q] = pcg64_output(state);
    }
    *state_io = state;
}

/* DARE's drop: entry j of `x` [n] survives where the j-th 16-bit piece of numpy's
 * random_raw((n + 3) / 4) stream, as int16 (little-endian, as numpy's .view(np.int16) reads it),
 * is below `cut`; a dropped entry is multiplied by 0, as numpy's `x * mask` does. The stream starts
 * from the PCG64 state (state_high:state_low, inc_high:inc_low), which is left advanced. The draws
 * go through a small buffer: made serially, then applied by vector instructions. */
void dare_keep(float *x, int64_t n, uint64_t *state_words, const uint64_t *inc_words, int32_t cut) {
    unsigned __int128 state = ((unsigned __int128)state_words[0] << 64) | state_words[1];
    unsigned __int128 inc = ((unsigned __int128)inc_words[0] << 64) | inc_words[1];
    uint64_t draws[BLOCK / 4];
    int16_t pieces[BLOCK];
    for (int64_t start = 0; start < n; start += BLOCK) {
        int64_t count = n - start < BLOCK ? n - start : BLOCK;
        pcg64_fill(&state, inc, draws, (count + 3) / 4);
        memcpy(pieces, draws, sizeof pieces);  /* little-endian: piece 4q + r is bits 16r.. of draw q */
        float *block = x + start;
        for (int64_t j = 0; j < count; j++) block[j] *= (float)(pieces[j] < cut);
    }
    state_words[0] = (uint64_t)(state >> 64);
    state_words[1] = (uint64_t)state;
}

/* dare_keep on rows todo[t] of `rows` [.., n], each from its own PCG64 state (states, incs: the
 * 128-bit values as high, low pairs) and with its own cut; the states are not written back. */
void dare_keep_rows(float *rows, int64_t n, const int64_t *todo, int64_t n_todo, const uint64_t *states,
                    const uint64_t *incs, const int32_t *cuts) {
    for (int64_t t = 0; t < n_todo; t++) {
        uint64_t state[2] = {states[2 * t], states[2 * t + 1]};
        dare_keep(rows + todo[t] * n, n, state, incs + 2 * t, cuts[t]);
    }
}

/* ---- TIES streamed: no stack of task vectors, two passes over the inputs as stored ----------
 * Model i's task vector d_i = x_i - base (x_i read as stored, as in `subtract`) is trimmed to its
 * k_i largest magnitudes, ties at the k-th kept up to index cut_i: entry j survives where
 * |d_i[j]| > kth_i, or |d_i[j]| == kth_i and j < cut_i, the entries keep_top keeps. kth_i and
 * cut_i come from a sample (task_vector_sample), which brackets each kth_i, and one pass
 * (ties_bracket) that counts the entries above the bracket and those at its few heavily tied
 * values, and lists the others inside it; the election (ties_streamed) then computes every d_i
 * again, a chunk at a time, and trims it there. The base is read as stored too (base_bf16: bf16,
 * else float32), so that the engine need not widen it first. */

/* The magnitudes' bits of x - base on entries [start, start + n) of one input read as stored (the
 * base too: base_bf16), and whether x holds NaN or inf (into *special). */
static inline void task_vector_bits(const void *input, int bf16, const void *base, int base_bf16, int64_t start,
                                    int64_t n, uint32_t *bits, uint32_t *special) {
    uint32_t found = 0;
    if (bf16) {
        const uint16_t *x = (const uint16_t *)input + start;
        for (int64_t j = 0; j < n; j++) {
            found |= (uint32_t)((x[j] & 0x7f80u) == 0x7f80u);
            bits[j] = magnitude_bits(bfloat16_value(x[j]) - base_value(base, base_bf16, start + j));
        }
    } else {
        const float *x = (const float *)input + start;
        for (int64_t j = 0; j < n; j++) {
            uint32_t raw;
            memcpy(&raw, &x[j], sizeof raw);
            found |= (uint32_t)((raw & 0x7f800000u) == 0x7f800000u);
            bits[j] = magnitude_bits(x[j] - base_value(base, base_bf16, start + j));
        }
    }
    *special |= found;
}

/* The magnitudes' bits of each model's task vector on runs of `run` entries starting every `every`
 * entries: out holds n_models rows of `per_model` entries (the sampled ones, in order). */
void task_vector_sample(const void *const *inputs, int bf16, const void *base, int base_bf16, int64_t n_models,
                        int64_t numel,
                        int64_t run, int64_t every, uint32_t *out, int64_t per_model) {
    uint32_t special = 0;  /* NaN or inf: ties_bracket reports it */
    for (int64_t i = 0; i < n_models; i++) {
        int64_t written = 0;
        for (int64_t start = 0; start < numel && written < per_model; start += every) {
            int64_t n = numel - start < run ? numel - start : run;
            if (n > per_model - written) n = per_model - written;
            task_vector_bits(inputs[i], bf16, base, base_bf16, start, n, out + i * per_model + written, &special);
            written += n;
        }
    }
}

#define HEAVY 4  /* values per model counted, not listed, in ties_bracket */
#define TIE_BLOCK 4096  /* entries per count of a heavy value */
#define NO_VALUE 0xffffffffu  /* pads a model's heavy values: never a magnitude's bits */

/* One model's counts on entries [start, start + n) of one tie block (n <= BLOCK): the magnitudes'
 * bits into `bits`; how many exceed hi (*above) and how many reach lo (*from_lo); how many equal
 * each of the model's n_heavy heavy values (equal[q]); and whether any magnitude is inf or NaN,
 * which an input's inf or NaN makes so (and, rarely, an overflowing x - base: the caller tells
 * them apart). One pass in registers, a copy of it per number of heavy values. */
static inline __attribute__((always_inline)) int bracket_counts(const void *input, const int bf16, const void *base,
                                                                const int base_bf16, int64_t start, int64_t n,
                                                                int32_t lo, int32_t hi,
                                                                const uint32_t *heavy, const int n_heavy,
                                                                int32_t *above, int32_t *from_lo,
                                                                int32_t *equal) {
    i8 n_above = {0}, n_from_lo = {0}, n_equal[HEAVY] = {{0}}, largest = {0}, value[HEAVY];
    for (int q = 0; q < n_heavy; q++) value[q] = (i8){0} + (int32_t)heavy[q];
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES) {
        i8 b = magnitude8(stored8(input, bf16, start + j) - stored8(base, base_bf16, start + j));
        n_above -= b > hi;  /* a true compare is -1 */
        n_from_lo -= b > lo - 1;
        largest = max8(largest, b);
        for (int q = 0; q < n_heavy; q++) n_equal[q] -= b == value[q];
    }
    int32_t tail_above = 0, tail_from_lo = 0, tail_equal[HEAVY] = {0}, tail_huge = 0;
    for (; j < n; j++) {
        float x = bf16 ? bfloat16_value(((const uint16_t *)input)[start + j]) : ((const float *)input)[start + j];
        int32_t b = (int32_t)magnitude_bits(x - base_value(base, base_bf16, start + j));
        tail_above += b > hi;
        tail_from_lo += b >= lo;
        tail_huge |= b > 0x7f7fffff;
        for (int q = 0; q < n_heavy; q++) tail_equal[q] += b == (int32_t)heavy[q];
    }
    *above = tail_above;
    *from_lo = tail_from_lo;
    for (int q = 0; q < n_heavy; q++) equal[q] = tail_equal[q];
    for (int lane = 0; lane < LANES; lane++) {
        *above += n_above[lane];
        *from_lo += n_from_lo[lane];
        for (int q = 0; q < n_heavy; q++) equal[q] += n_equal[q][lane];
    }
    return tail_huge || non_finite8(largest);
}

/* bracket_counts with n_heavy made a constant: a copy of its loop per number of heavy values. */
static inline __attribute__((always_inline)) int bracket_counts_any(const void *input, const int bf16, const void *base,
                                                                    const int base_bf16, int64_t start, int64_t n,
                                                                    int32_t lo, int32_t hi, const uint32_t *heavy,
                                                                    int n_heavy, int32_t *above, int32_t *from_lo,
                                                                    int32_t *equal) {
#define COUNTS(NH) bracket_counts(input, bf16, base, base_bf16, start, n, lo, hi, heavy, NH, above, from_lo, equal)
    switch (n_heavy) {
        case 0: return COUNTS(0);
        case 1: return COUNTS(1);
        case 2: return COUNTS(2);
        case 3: return COUNTS(3);
        default: return COUNTS(4);
    }
#undef COUNTS
}

/* Whether entries [start, start + n) of an input as stored hold NaN or inf (exponent all ones). */
static int special_in(const void *input, int bf16, int64_t start, int64_t n) {
    uint32_t special = 0;
    for (int64_t j = start; j < start + n; j++) {
        uint32_t raw = 0;
        if (bf16) raw = (uint32_t)((const uint16_t *)input)[j] << 16;
        else memcpy(&raw, (const float *)input + j, sizeof raw);
        special |= (uint32_t)((raw & 0x7f800000u) == 0x7f800000u);
    }
    return special != 0;
}

/* Over entries [first, first + count): per model i, above[i] = how many magnitudes' bits exceed
 * hi[i]; of those in [lo[i], hi[i]], the ones equal to one of the model's HEAVY values
 * heavy[i][h] are counted per TIE_BLOCK of entries into heavy_counts[i][h][index / TIE_BLOCK]
 * (added to; a bf16 checkpoint's deltas tie by the million at a few values), the others listed in
 * index order as (bits, index) in row i of cand_bits and cand_index (`capacity` each; found[i]
 * counts them all, so found[i] > capacity says the list overflowed). Returns whether an input
 * holds NaN or inf. */
int ties_bracket(const void *const *inputs, int bf16, const void *base, int base_bf16, int64_t n_models, int64_t first,
                 int64_t count, const uint32_t *lo, const uint32_t *hi, const uint32_t *heavy,
                 int32_t *heavy_counts, int64_t n_tie_blocks, int64_t *above, uint32_t *cand_bits,
                 uint32_t *cand_index, int64_t capacity, int64_t *found) {
    uint32_t bits[BLOCK];
    int special = 0;
    for (int64_t i = 0; i < n_models; i++) {
        above[i] = 0;
        found[i] = 0;
    }
    for (int64_t start = first, n; start < first + count; start += n) {
        n = first + count - start < BLOCK ? first + count - start : BLOCK;
        if (n > TIE_BLOCK - start % TIE_BLOCK) n = TIE_BLOCK - start % TIE_BLOCK;  /* one tie block */
        for (int64_t i = 0; i < n_models; i++) {
            const int32_t l = (int32_t)lo[i], h = (int32_t)hi[i];  /* bits < 2^31 */
            const uint32_t *v = heavy + i * HEAVY;
            int n_heavy = 0;
            while (n_heavy < HEAVY && v[n_heavy] != NO_VALUE) n_heavy++;
            /* a bracket of one value, a heavy one: its count is those from lo less those above */
            const int only_heavy = n_heavy == 1 && l == h && v[0] == (uint32_t)l;
            int32_t n_above, n_from_lo, equal[HEAVY] = {0}, huge = 0;
            const int counted = only_heavy ? 0 : n_heavy;
#define COUNTS(B, BB) \
        bracket_counts_any(inputs[i], B, base, BB, start, n, l, h, v, counted, &n_above, &n_from_lo, equal)
            if (bf16 && base_bf16) huge = COUNTS(1, 1);  /* a copy per dtype of the inputs and of the base */
            else if (bf16) huge = COUNTS(1, 0);
            else if (base_bf16) huge = COUNTS(0, 1);
            else huge = COUNTS(0, 0);
#undef COUNTS
            if (only_heavy) equal[0] = n_from_lo - n_above;
            if (huge && !special) special = special_in(inputs[i], bf16, start, n);
            above[i] += n_above;
            int32_t n_inside = n_from_lo - n_above;  /* in [lo, hi] */
            for (int q = 0; q < n_heavy && n_inside > 0; q++) {
                heavy_counts[(i * HEAVY + q) * n_tie_blocks + start / TIE_BLOCK] += equal[q];
                n_inside -= equal[q];
            }
            if (n_inside <= 0) continue;  /* all of them heavy: nothing to list */
            task_vector_bits(inputs[i], bf16, base, base_bf16, start, n, bits, &(uint32_t){0});
            int64_t listed = found[i];
            uint32_t *row_bits = cand_bits + i * capacity, *row_index = cand_index + i * capacity;
            for (int64_t j = 0; j < n; j++) {
                const int32_t b = (int32_t)bits[j];
                int is_heavy = 0;
                for (int q = 0; q < n_heavy; q++) is_heavy |= bits[j] == v[q];
                if (b < l || b > h || is_heavy) continue;
                if (listed < capacity) {
                    row_bits[listed] = bits[j];
                    row_index[listed] = (uint32_t)(start + j);
                }
                listed++;
            }
            found[i] = listed;
        }
    }
    return special;
}

/* Model i's task vector on the chunk at entry `at`, trimmed: d = x - base (x read as stored at
 * `offset`: `at`, or 0 in a padded copy), entry j kept where |d| > kth, or |d| == kth and j < cut
 * (a dropped entry becomes +0, as in keep_top). */
static inline __attribute__((always_inline)) void trimmed_chunk(f8 *d, const void *input, const int bf16,
                                                                int64_t offset, const void *base, const int base_bf16,
                                                                int64_t at, uint32_t kth, int64_t cut) {
    const int32_t t = (int32_t)kth;  /* magnitudes' bits are < 2^31 */
    i8 below[VECTORS];  /* kept: bits > below */
    if (cut >= at + CHUNK || cut <= at) {  /* the rule: the cut lies outside the chunk */
        const i8 all = (i8){0} + (cut > at ? t - 1 : t);
        for (int q = 0; q < VECTORS; q++) below[q] = all;
    } else {
        const i8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
        for (int q = 0; q < VECTORS; q++)  /* t - 1 before the cut, t from it on (a true compare is -1) */
            below[q] = (t - 1) - (lane + (int32_t)(at + q * LANES - cut) >= 0);
    }
    for (int q = 0; q < VECTORS; q++) {
        f8 x = stored8(input, bf16, offset + q * LANES) - stored8(base, base_bf16, q * LANES);
        d[q] = (f8)((i8)x & (magnitude8(x) > below[q]));
    }
}

/* The inputs' entries [at, at + n) for a last partial chunk or block (n <= width): each input's
 * copied into its row of `pad` (zero-padded to `width` entries, 4 bytes an entry whatever the
 * dtype), its pointer into `rows`, and the base's, widened, into pad_base. */
static void padded_entries(const void *const *inputs, int bf16, const void *base, int base_bf16, int64_t n_models,
                           int64_t at, int64_t n, int64_t width, float *pad, const void **rows, float *pad_base) {
    const size_t size = bf16 ? 2 : 4;
    memset(pad, 0, (size_t)n_models * width * sizeof *pad);
    for (int64_t i = 0; i < n_models; i++) {
        memcpy(pad + i * width, (const char *)inputs[i] + at * size, (size_t)n * size);
        rows[i] = pad + i * width;
    }
    memset(pad_base, 0, (size_t)width * sizeof *pad_base);
    for (int64_t j = 0; j < n; j++) pad_base[j] = base_value(base, base_bf16, at + j);
}

/* One chunk of ties_streamed: its task vectors made, trimmed and elected into out. */
static inline __attribute__((always_inline)) void ties_chunk(election_t *el, const void *const *x, const int bf16,
                                                             int64_t offset, const void *b, const int base_bf16,
                                                             int64_t at,
                                                             int64_t n_models, const uint32_t *kth, const int64_t *cut,
                                                             const float *signed_c, float lambda, int normalize,
                                                             float *out) {
    f8 sign[VECTORS] = {{0}}, d[VECTORS];
    for (int64_t i = 0; i < n_models; i++) {
        trimmed_chunk(d, x[i], bf16, offset, b, base_bf16, at, kth[i], cut[i]);
        add_model(el, i, signed_c[i], d, sign);
    }
    elect(el, el->e, CHUNK, sign, b, base_bf16, lambda, normalize, out);
}

/* TIES over entries [first, first + count) from the inputs as stored: each chunk's task vectors
 * are computed, trimmed (kth, cut: see above) and elected in registers, as ties_combine elects the
 * stack's; a last partial chunk through zero-padded copies. Returns -1 if its scratch cannot be had,
 * 1 if the result holds NaN or inf, else 0. */
int ties_streamed(const void *const *inputs, int bf16, const void *base, int base_bf16, int64_t n_models,
                  int64_t first,
                  int64_t count, const uint32_t *kth, const int64_t *cut, const float *signed_c,
                  const float *absolute, const float *active, float lambda, int normalize, float *out) {
    election_t el;
    float *pad = malloc((size_t)(n_models ? n_models : 1) * CHUNK * sizeof *pad);
    const void **rows = malloc((size_t)(n_models ? n_models : 1) * sizeof *rows);
    if (pad == NULL || rows == NULL || election_of(&el, n_models, signed_c, absolute, active) != 0) {
        free(pad);
        free(rows);
        return -1;
    }
    const int64_t end = first + count, full_end = end - count % CHUNK;
#define CHUNKS(B, BB) for (int64_t at = first; at < full_end; at += CHUNK) \
        ties_chunk(&el, inputs, B, at, base_from(base, BB, at), BB, at, n_models, kth, cut, signed_c, lambda, \
                   normalize, out + at)
    if (bf16 && base_bf16) CHUNKS(1, 1);  /* a copy of the loop per dtype of the inputs and of the base */
    else if (bf16) CHUNKS(1, 0);
    else if (base_bf16) CHUNKS(0, 1);
    else CHUNKS(0, 0);
#undef CHUNKS
    if (full_end < end) {
        float pad_base[CHUNK], pad_out[CHUNK];
        padded_entries(inputs, bf16, base, base_bf16, n_models, full_end, end - full_end, CHUNK, pad, rows, pad_base);
        ties_chunk(&el, rows, bf16, 0, pad_base, 0, full_end, n_models, kth, cut, signed_c, lambda, normalize,
                   pad_out);
        memcpy(out + full_end, pad_out, (size_t)(end - full_end) * sizeof *pad_out);
    }
    const int special = election_result(&el);
    streamed_fence();
    election_free(&el);
    free(pad);
    free(rows);
    return special;
}

/* One model's task vector over n entries of a block (n a multiple of LANES), dropped as dare_keep
 * drops it (stream NULL: kept), added into the block's sign sums and, for a voter, signed into its
 * row of e (BLOCK entries long). Its draws are made 8 entries (two draws) at a time beside the
 * vector work on those entries, the stream's two chains in registers: the scalar multiplies and
 * the vector instructions then overlap, where drawing a block first adds their times. */
static inline __attribute__((always_inline)) void dare_model(election_t *el, int64_t i, const void *x, const int bf16,
                                                             int64_t offset, const void *b, const int base_bf16,
                                                             int64_t n,
                                                             pcg64_pair_t *stream, int32_t cut, float c,
                                                             float *sign) {
    const int64_t slot = el->slot[i];
    const int32_t flip = slot >= 0 ? el->flip[slot] : 0;
    float *e = slot >= 0 ? el->e + slot * BLOCK : NULL;
    const f8 one = splat8(1.0f);
    unsigned __int128 even = stream ? stream->even : 0, odd = stream ? stream->odd : 0;
    for (int64_t j = 0; j < n; j += LANES) {
        f8 d = stored8(x, bf16, offset + j) - stored8(b, base_bf16, j);
        if (stream) {
            const q2 draws = {pcg64_output(even), pcg64_output(odd)};  /* in registers, not through memory */
            even = stream->a2 * even + stream->inc2;
            odd = stream->a2 * odd + stream->inc2;
            const s8 piece = (s8)draws;  /* little-endian: piece 4q + r is bits 16r.. of draw q */
            d *= (f8)((__builtin_convertvector(piece, i8) < cut) & (i8)one);
        }
        store8(sign + j, load8(sign + j) + c * d);
        if (e) store8(e + j, (f8)((i8)d ^ flip));
    }
    if (stream) {
        stream->even = even;
        stream->odd = odd;
    }
}

/* One block of dare_ties_streamed (n entries, a multiple of CHUNK): its models added one by one,
 * then elected a chunk at a time into out. */
static inline __attribute__((always_inline)) void dare_block(election_t *el, const void *const *x, const int bf16,
                                                             int64_t offset, const void *b, const int base_bf16,
                                                             int64_t n,
                                                             int64_t n_models, pcg64_pair_t *streams,
                                                             const int32_t *cuts, const float *signed_c,
                                                             float lambda, int normalize, float *out) {
    float sign[BLOCK] __attribute__((aligned(32)));
    memset(sign, 0, (size_t)n * sizeof *sign);
    for (int64_t i = 0; i < n_models; i++)
        dare_model(el, i, x[i], bf16, offset, b, base_bf16, n, cuts[i] <= 32767 ? &streams[i] : NULL, cuts[i],
                   signed_c[i], sign);
    for (int64_t at = 0; at < n; at += CHUNK) {
        f8 chunk_sign[VECTORS];
        for (int q = 0; q < VECTORS; q++) chunk_sign[q] = load8(sign + at + q * LANES);
        elect(el, el->e + at, BLOCK, chunk_sign, base_from(b, base_bf16, at), base_bf16, lambda, normalize, out + at);
    }
}

/* DARE-TIES over entries [first, first + count) from the inputs as stored: each block's task
 * vectors are computed and dropped as dare_keep drops them (model i's PCG64 stream, whose state
 * and increment are states[2i..] and incs[2i..] as (high, low) words, already advanced to entry
 * `first`, which is a multiple of 4; cuts[i] > 32767 keeps every entry, drawing nothing), then
 * elected as ties_combine elects the stack's; a last partial block through zero-padded copies.
 * Returns -1 if its scratch cannot be had, 1 if the result holds NaN or inf, else 0. */
int dare_ties_streamed(const void *const *inputs, int bf16, const void *base, int base_bf16, int64_t n_models,
                       int64_t first,
                       int64_t count, const uint64_t *states, const uint64_t *incs, const int32_t *cuts,
                       const float *signed_c, const float *absolute, const float *active, float lambda,
                       int normalize, float *out) {
    const int64_t models = n_models ? n_models : 1;
    election_t el;
    pcg64_pair_t *streams = malloc((size_t)models * sizeof *streams);
    float *pad = malloc((size_t)models * BLOCK * sizeof *pad);
    const void **rows = malloc((size_t)models * sizeof *rows);
    if (!streams || !pad || !rows || election_of(&el, n_models, signed_c, absolute, active) != 0) {
        free(streams);
        free(pad);
        free(rows);
        return -1;
    }
    for (int64_t i = 0; i < n_models; i++)
        streams[i] = pcg64_pair(((unsigned __int128)states[2 * i] << 64) | states[2 * i + 1],
                                ((unsigned __int128)incs[2 * i] << 64) | incs[2 * i + 1]);
    const int64_t end = first + count, full_end = end - count % BLOCK;
#define BLOCKS(B, BB) for (int64_t at = first; at < full_end; at += BLOCK) \
        dare_block(&el, inputs, B, at, base_from(base, BB, at), BB, BLOCK, n_models, streams, cuts, signed_c, \
                   lambda, normalize, out + at)
    if (bf16 && base_bf16) BLOCKS(1, 1);  /* a copy of the loop per dtype of the inputs and of the base */
    else if (bf16) BLOCKS(1, 0);
    else if (base_bf16) BLOCKS(0, 1);
    else BLOCKS(0, 0);
#undef BLOCKS
    if (full_end < end) {  /* its draws past the end are made and not used */
        const int64_t n = end - full_end, padded = n + (CHUNK - n % CHUNK) % CHUNK;
        float pad_base[BLOCK], pad_out[BLOCK];
        padded_entries(inputs, bf16, base, base_bf16, n_models, full_end, n, BLOCK, pad, rows, pad_base);
        dare_block(&el, rows, bf16, 0, pad_base, 0, padded, n_models, streams, cuts, signed_c, lambda, normalize,
                   pad_out);
        memcpy(out + full_end, pad_out, (size_t)n * sizeof *pad_out);
    }
    const int special = election_result(&el);
    streamed_fence();
    election_free(&el);
    free(streams);
    free(pad);
    free(rows);
    return special;
}
