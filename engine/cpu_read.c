/* How fast this machine streams memory, for engine/read_bound.py: the weights a one-token decode
 * reads in full, read once the way the decode step shares them out (each thread a contiguous
 * share of every buffer, all threads at once), with nothing computed but an XOR of their 64-bit
 * words. No decode of that token can take less time than this read. */
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* XOR of every 64-bit word of the n buffers (a byte at a time past the last whole word), so that
 * no read can be left out and a test can check that each byte was read. */
uint64_t read_buffers(const unsigned char *const *buffers, const int64_t *bytes, int n, int threads) {
    uint64_t all = 0;
#pragma omp parallel num_threads(threads) reduction(^ : all)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        for (int b = 0; b < n; b++) {
            const unsigned char *p = buffers[b];
            const int64_t words = bytes[b] / 8, begin = words * t / nt, end = words * (t + 1) / nt;
            uint64_t mine = 0;
#pragma omp simd reduction(^ : mine)
            for (int64_t w = begin; w < end; w++) {
                uint64_t word; /* (memcpy: a buffer need not be 8-byte aligned; it compiles to a load) */
                memcpy(&word, p + 8 * w, 8);
                mine ^= word;
            }
            if (t == nt - 1)
                for (int64_t i = words * 8; i < bytes[b]; i++) mine ^= p[i];
            all ^= mine;
        }
    }
    return all;
}
