/* Fused CPU kernels for the merge methods: each makes one or two passes where
 * torch and numpy make a dozen, with their temporaries. Built and loaded by kernels.py, which
 * also says which Python code each one stands in for (the torch path, kept for CUDA).
 *
 * Compiled with -fno-trapping-math: without it gcc may not turn the comparisons below into
 * vector selects (a comparison may trap), and these loops run 25x slower. No -ffast-math: it
 * would reorder sums and, in a shared library, switch the whole process to flush-to-zero. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define BLOCK 256  /* entries per block of ties_combine: its three accumulators stay in L1 */
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

/* Linear's weighted sum of n_models inputs [numel], each read once in its stored dtype (bf16: a
 * bfloat16, else float32): out = c_0 x_0, then out = fma(x_i, c_i, out) for i = 1, 2, ..: what
 * torch's mul and add_(x, alpha=c) compute where ATen's vector code has FMA (AVX2, AVX-512),
 * rounded the same way. Block by block, so the sums are written to memory once, not per model. */
void weighted_sum(const void *const *inputs, int bf16, const float *c, int64_t n_models, int64_t numel,
                  float *out) {
    for (int64_t start = 0; start < numel; start += SUM_BLOCK) {
        int64_t n = numel - start < SUM_BLOCK ? numel - start : SUM_BLOCK;
        float *o = out + start;
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
    }
}

/* TIES's election on one block of n entries: out = base + lambda * s * (sum_i |c_i| P_i) /
 * (sum_i w_i [P_i > 0]) with s = +1 where sum_i c_i d_i >= 0 (else -1) and P_i = max(sign(c_i) d_i s, 0);
 * the divisor is used only when `normalize`, and a zero divisor counts as 1. d: n_models rows of the
 * block's task vectors, `stride` apart; c = `signed_c`, |c| = `absolute`, w = `active`. In two steps,
 * the sums sum_i c_i d_i (add_signs, model by model) and the rest (average_agreeing), shared by the
 * stacked and the streamed merge so that both round alike. */
static inline void add_signs(float *sign, const float *di, float c, int64_t n) {
    for (int64_t j = 0; j < n; j++) sign[j] += c * di[j];
}

static inline void average_agreeing(float *sign, const float *d, int64_t stride, int64_t n_models, int64_t n,
                                    const float *signed_c, const float *absolute, const float *active,
                                    const float *base, float lambda, int normalize, float *out) {
    float total[BLOCK], divisor[BLOCK], against[BLOCK];  /* against = -s: g d s for g = -1 */
    memset(total, 0, sizeof total);
    memset(divisor, 0, sizeof divisor);
    for (int64_t j = 0; j < n; j++) {
        sign[j] = 1.0f - 2.0f * (float)(sign[j] < 0);
        against[j] = -sign[j];
    }
    for (int64_t i = 0; i < n_models; i++) {
        if (signed_c[i] == 0) continue;  /* a zero term never agrees */
        const float *di = d + i * stride, *s = signed_c[i] > 0 ? sign : against;
        const float a = absolute[i], w = active[i];
        if (normalize) {
            for (int64_t j = 0; j < n; j++) {
                float x = di[j] * s[j];  /* sign(c_i) d_i s, exactly */
                float agreeing = 0.5f * (x + fabsf(x));  /* max(x, 0), exactly */
                total[j] += a * agreeing;
                divisor[j] += agreeing > 0 ? w : 0.0f;
            }
        } else {
            for (int64_t j = 0; j < n; j++) {
                float x = di[j] * s[j];
                total[j] += a * (0.5f * (x + fabsf(x)));
            }
        }
    }
    for (int64_t j = 0; j < n; j++) {
        float merged = sign[j] * total[j];
        if (normalize) merged /= divisor[j] + (float)(divisor[j] == 0);
        out[j] = base[j] + lambda * merged;
    }
}

/* TIES's election over a stack: deltas holds n_models rows of numel entries, `stride` apart, row i
 * (part of) model i's trimmed task vector. Reads the stack, never writes it (a search's cache
 * keeps it for the next candidate). */
void ties_combine(const float *deltas, int64_t n_models, int64_t numel, int64_t stride, const float *signed_c,
                  const float *absolute, const float *active, const float *base, float lambda,
                  int normalize, float *out) {
    float sign[BLOCK];
    for (int64_t start = 0; start < numel; start += BLOCK) {
        int64_t n = numel - start < BLOCK ? numel - start : BLOCK;
        memset(sign, 0, sizeof sign);
        for (int64_t i = 0; i < n_models; i++) add_signs(sign, deltas + i * stride + start, signed_c[i], n);
        average_agreeing(sign, deltas + start, stride, n_models, n, signed_c, absolute, active, base + start,
                         lambda, normalize, out + start);
    }
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

static inline uint64_t pcg64_output(unsigned __int128 state) {  /* XSL-RR */
    uint64_t folded = (uint64_t)(state >> 64) ^ (uint64_t)state;
    unsigned rotation = (unsigned)(state >> 122);
    return (folded >> rotation) | (folded << ((-rotation) & 63));
}

/* numpy's PCG64 (a 128-bit LCG, state = a * state + inc, and the XSL-RR output of each new state):
 * `count` 64-bit draws, as random_raw gives them. Made by two chains that each step two states
 * at once (a^2 * state + (a + 1) * inc), which the CPU runs side by side, where one chain's every
 * multiply waits on the previous one (dare_keep on 49152 entries: 39 -> 33 us). */
static void pcg64_fill(unsigned __int128 *state_io, unsigned __int128 inc, uint64_t *draws, int64_t count) {
    const unsigned __int128 a = ((unsigned __int128)2549297995355413924ULL << 64) | 4865540595714422341ULL;
    unsigned __int128 state = *state_io;  /* a local: kept in registers */
    int64_t q = 0;
    if (count >= 2) {
        const unsigned __int128 a2 = a * a, inc2 = (a + 1) * inc;
        unsigned __int128 even = a * state + inc, odd = a * even + inc;
        for (; q + 2 <= count; q += 2) {
            draws[q] = pcg64_output(even);
            draws[q + 1] = pcg64_output(odd);
            state = odd;
            even = a2 * even + inc2;
            odd = a2 * odd + inc2;
        }
    }
    for (; q < count; q++) {
        state = a * state + inc;
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
 * again, block by block, and trims it there. */

/* out = x - base on entries [start, start + n) of one input read as stored: subtract's arithmetic,
 * for a block of the streamed merges. */
static inline void task_vector(const void *input, int bf16, const float *base, int64_t start, int64_t n,
                               float *out) {
    if (bf16) {
        const uint16_t *x = (const uint16_t *)input + start;
        for (int64_t j = 0; j < n; j++) out[j] = bfloat16_value(x[j]) - base[start + j];
    } else {
        const float *x = (const float *)input + start;
        for (int64_t j = 0; j < n; j++) out[j] = x[j] - base[start + j];
    }
}

static inline void task_vector_bits(const void *input, int bf16, const float *base, int64_t start, int64_t n,
                                    uint32_t *bits, uint32_t *special) {
    uint32_t found = 0;
    if (bf16) {
        const uint16_t *x = (const uint16_t *)input + start;
        for (int64_t j = 0; j < n; j++) {
            found |= (uint32_t)((x[j] & 0x7f80u) == 0x7f80u);
            bits[j] = magnitude_bits(bfloat16_value(x[j]) - base[start + j]);
        }
    } else {
        const float *x = (const float *)input + start;
        for (int64_t j = 0; j < n; j++) {
            uint32_t raw;
            memcpy(&raw, &x[j], sizeof raw);
            found |= (uint32_t)((raw & 0x7f800000u) == 0x7f800000u);
            bits[j] = magnitude_bits(x[j] - base[start + j]);
        }
    }
    *special |= found;
}

/* The magnitudes' bits of each model's task vector on runs of `run` entries starting every `every`
 * entries: out holds n_models rows of `per_model` entries (the sampled ones, in order). */
void task_vector_sample(const void *const *inputs, int bf16, const float *base, int64_t n_models, int64_t numel,
                        int64_t run, int64_t every, uint32_t *out, int64_t per_model) {
    uint32_t special = 0;  /* NaN or inf: ties_bracket reports it */
    for (int64_t i = 0; i < n_models; i++) {
        int64_t written = 0;
        for (int64_t start = 0; start < numel && written < per_model; start += every) {
            int64_t n = numel - start < run ? numel - start : run;
            if (n > per_model - written) n = per_model - written;
            task_vector_bits(inputs[i], bf16, base, start, n, out + i * per_model + written, &special);
            written += n;
        }
    }
}

#define HEAVY 4  /* values per model counted, not listed, in ties_bracket */
#define TIE_BLOCK 4096  /* entries per count of a heavy value */
#define NO_VALUE 0xffffffffu  /* pads a model's heavy values: never a magnitude's bits */

/* Over entries [first, first + count): per model i, above[i] = how many magnitudes' bits exceed
 * hi[i]; of those in [lo[i], hi[i]], the ones equal to one of the model's HEAVY values
 * heavy[i][h] are counted per TIE_BLOCK of entries into heavy_counts[i][h][index / TIE_BLOCK]
 * (added to; a bf16 checkpoint's deltas tie by the million at a few values), the others listed in
 * index order as (bits, index) in row i of cand_bits and cand_index (`capacity` each; found[i]
 * counts them all, so found[i] > capacity says the list overflowed). Returns whether an input
 * holds NaN or inf. */
int ties_bracket(const void *const *inputs, int bf16, const float *base, int64_t n_models, int64_t first,
                 int64_t count, const uint32_t *lo, const uint32_t *hi, const uint32_t *heavy,
                 int32_t *heavy_counts, int64_t n_tie_blocks, int64_t *above, uint32_t *cand_bits,
                 uint32_t *cand_index, int64_t capacity, int64_t *found) {
    uint32_t bits[BLOCK];
    uint8_t inside[BLOCK];
    uint32_t special = 0;
    for (int64_t i = 0; i < n_models; i++) {
        above[i] = 0;
        found[i] = 0;
    }
    for (int64_t start = first, n; start < first + count; start += n) {
        n = first + count - start < BLOCK ? first + count - start : BLOCK;
        if (n > TIE_BLOCK - start % TIE_BLOCK) n = TIE_BLOCK - start % TIE_BLOCK;  /* one tie block */
        memset(inside + n, 0, BLOCK - n);
        for (int64_t i = 0; i < n_models; i++) {
            task_vector_bits(inputs[i], bf16, base, start, n, bits, &special);
            const int32_t l = (int32_t)lo[i], h = (int32_t)hi[i];  /* bits < 2^31 */
            const uint32_t *v = heavy + i * HEAVY;
            int32_t n_above = 0, n_inside = 0;
            for (int64_t j = 0; j < n; j++) {
                int32_t b = (int32_t)bits[j];
                n_above += b > h;
                n_inside += (b >= l) & (b <= h);
            }
            above[i] += n_above;
            for (int q = 0; q < HEAVY && v[q] != NO_VALUE && n_inside > 0; q++) {  /* each a count of its own */
                const int32_t value = (int32_t)v[q];
                int32_t equal = 0;
                for (int64_t j = 0; j < n; j++) equal += (int32_t)bits[j] == value;
                heavy_counts[(i * HEAVY + q) * n_tie_blocks + start / TIE_BLOCK] += equal;
                n_inside -= equal;
            }
            if (n_inside == 0) continue;  /* all of them heavy: nothing to list */
            for (int64_t j = 0; j < n; j++) {
                int32_t b = (int32_t)bits[j];
                int32_t is_heavy = 0;
                for (int q = 0; q < HEAVY; q++) is_heavy |= bits[j] == v[q];
                inside[j] = (uint8_t)((b >= l) & (b <= h) & !is_heavy);
            }
            int64_t listed = found[i];
            uint32_t *row_bits = cand_bits + i * capacity, *row_index = cand_index + i * capacity;
            for (int64_t j = 0; j < BLOCK; j += 8) {  /* eight flags a word: most words are 0 */
                uint64_t word;
                memcpy(&word, inside + j, sizeof word);
                if (word == 0) continue;
                for (int64_t q = j; q < j + 8; q++) {
                    if (!inside[q]) continue;
                    if (listed < capacity) {
                        row_bits[listed] = bits[q];
                        row_index[listed] = (uint32_t)(start + q);
                    }
                    listed++;
                }
            }
            found[i] = listed;
        }
    }
    return special != 0;
}

/* TIES over entries [first, first + count) from the inputs as stored: each block's task vectors
 * are computed and trimmed (kth, cut: see above) into a small buffer, then elected by add_signs
 * and average_agreeing, as ties_combine elects the stack's. Returns -1 if the buffer cannot be had. */
int ties_streamed(const void *const *inputs, int bf16, const float *base, int64_t n_models, int64_t first,
                  int64_t count, const uint32_t *kth, const int64_t *cut, const float *signed_c,
                  const float *absolute, const float *active, float lambda, int normalize, float *out) {
    float *d = malloc((size_t)n_models * BLOCK * sizeof *d);
    float sign[BLOCK];
    if (d == NULL) return -1;
    for (int64_t start = first; start < first + count; start += BLOCK) {
        int64_t n = first + count - start < BLOCK ? first + count - start : BLOCK;
        const float *b = base + start;
        memset(sign, 0, sizeof sign);
        for (int64_t i = 0; i < n_models; i++) {
            float *di = d + i * BLOCK;
            task_vector(inputs[i], bf16, base, start, n, di);
            /* ties at kth are kept before cut[i] and dropped from it: only the block that holds
             * cut[i] has two parts; a dropped entry becomes +0, as in keep_top */
            const int32_t t = (int32_t)kth[i];
            const int32_t floor = cut[i] < start + n ? t + 1 : t;  /* kept after the split: bits >= floor */
            const int64_t split = cut[i] > start && cut[i] < start + n ? cut[i] - start : 0;
            for (int64_t j = 0; j < split; j++) di[j] = (int32_t)magnitude_bits(di[j]) >= t ? di[j] : 0.0f;
            for (int64_t j = split; j < n; j++) di[j] = (int32_t)magnitude_bits(di[j]) >= floor ? di[j] : 0.0f;
            add_signs(sign, di, signed_c[i], n);
        }
        average_agreeing(sign, d, BLOCK, n_models, n, signed_c, absolute, active, b, lambda, normalize,
                         out + start);
    }
    free(d);
    return 0;
}

/* DARE-TIES over entries [first, first + count) from the inputs as stored: each block's task
 * vectors are computed and dropped as dare_keep drops them (model i's PCG64 stream, whose state
 * and increment are states[2i..] and incs[2i..] as (high, low) words, already advanced to entry
 * `first`, which is a multiple of 4; cuts[i] > 32767 keeps every entry, drawing nothing), then
 * elected as ties_combine elects the stack's. Returns -1 if the buffer cannot be had. */
int dare_ties_streamed(const void *const *inputs, int bf16, const float *base, int64_t n_models, int64_t first,
                       int64_t count, const uint64_t *states, const uint64_t *incs, const int32_t *cuts,
                       const float *signed_c, const float *absolute, const float *active, float lambda,
                       int normalize, float *out) {
    float *d = malloc((size_t)n_models * BLOCK * sizeof *d);
    unsigned __int128 *state = malloc((size_t)n_models * sizeof *state);
    float sign[BLOCK];
    uint64_t draws[BLOCK / 4];
    int16_t pieces[BLOCK];
    if (d == NULL || state == NULL) {
        free(d);
        free(state);
        return -1;
    }
    for (int64_t i = 0; i < n_models; i++) state[i] = ((unsigned __int128)states[2 * i] << 64) | states[2 * i + 1];
    for (int64_t start = first; start < first + count; start += BLOCK) {
        int64_t n = first + count - start < BLOCK ? first + count - start : BLOCK;
        const float *b = base + start;
        memset(sign, 0, sizeof sign);
        for (int64_t i = 0; i < n_models; i++) {
            float *di = d + i * BLOCK;
            task_vector(inputs[i], bf16, base, start, n, di);
            if (cuts[i] <= 32767) {
                unsigned __int128 inc = ((unsigned __int128)incs[2 * i] << 64) | incs[2 * i + 1];
                const int32_t cut = cuts[i];
                pcg64_fill(&state[i], inc, draws, (n + 3) / 4);
                memcpy(pieces, draws, sizeof pieces);  /* little-endian: piece 4q + r is bits 16r.. of draw q */
                for (int64_t j = 0; j < n; j++) di[j] *= (float)(pieces[j] < cut);
            }
            add_signs(sign, di, signed_c[i], n);
        }
        average_agreeing(sign, d, BLOCK, n_models, n, signed_c, absolute, active, b, lambda, normalize,
                         out + start);
    }
    free(d);
    free(state);
    return 0;
}
