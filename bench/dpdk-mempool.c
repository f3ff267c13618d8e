/* DPDK's side of the buffer pool comparison in bench/dpdk-compare.sh: the loop of
 * mempool_perf_autotest's "cache=512 cores=1 n_get_bulk=32 n_put_bulk=32 n_keep=32"
 * configuration, alone, so that it can run alternately with ours instead of inside
 * the autotest's 35-minute sweep.
 *
 * One lcore takes 32 objects with rte_mempool_generic_get (its per-lcore cache of
 * 512 in front of the pool's ring), puts them back with rte_mempool_generic_put, and
 * counts objects per second over SECONDS (default 3), as the autotest's rate_persec.
 * The pool has the autotest's shape: 2048-byte elements, enough of them for the
 * kept objects and a full cache. The bulk size is read at run time, as in the
 * autotest's constant_n=0 lines (a bulk size known at compile time lets the compiler
 * unroll the copies: the constant_n=1 lines, about twice as fast here).
 *
 *   dpdk-mempool [SECONDS [BULK]]    (EAL arguments are fixed: --no-huge -m 256
 *                                     --no-pci -l 0 --log-level=3)
 *
 * Output: "dpdk_mempool_cache512_bulk32 RATE objs/s".
 */
#include <stdio.h>
#include <stdlib.h>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_mempool.h>

#define KEEP 32
#define CACHE 512
#define ELT_SIZE 2048
#define ROUNDS_PER_CHECK (65536 / KEEP)

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 3.0;
	int bulk = argc > 2 ? atoi(argv[2]) : 32;
	char *eal[] = {"dpdk-mempool", "--no-huge", "-m", "256", "--no-pci",
		       "-l", "0", "--log-level=3", NULL};
	if (seconds <= 0 || bulk <= 0 || KEEP % bulk != 0) {
		fprintf(stderr, "usage: dpdk-mempool [SECONDS > 0 [BULK dividing %d]]\n", KEEP);
		return 2;
	}
	if (rte_eal_init(8, eal) < 0) {
		fprintf(stderr, "rte_eal_init failed\n");
		return 1;
	}
	struct rte_mempool *mp = rte_mempool_create(
		"tether_cmp", (KEEP + CACHE * 2) - 1, ELT_SIZE, CACHE, 0, NULL, NULL,
		NULL, NULL, SOCKET_ID_ANY, 0);
	if (mp == NULL) {
		fprintf(stderr, "rte_mempool_create failed\n");
		return 1;
	}
	struct rte_mempool_cache *cache =
		rte_mempool_default_cache(mp, rte_lcore_id());
	void *objs[KEEP];
	uint64_t hz = rte_get_timer_hz();
	uint64_t start = rte_get_timer_cycles();
	uint64_t end = start + (uint64_t)(seconds * hz);
	uint64_t count = 0, now;
	do {
		for (int r = 0; r < ROUNDS_PER_CHECK; r++) {
			for (int i = 0; i < KEEP; i += bulk)
				if (rte_mempool_generic_get(mp, &objs[i], bulk,
							    cache) < 0) {
					fprintf(stderr, "pool ran dry\n");
					return 1;
				}
			for (int i = 0; i < KEEP; i += bulk)
				rte_mempool_generic_put(mp, &objs[i], bulk,
							cache);
		}
		count += (uint64_t)ROUNDS_PER_CHECK * KEEP;
		now = rte_get_timer_cycles();
	} while (now < end);
	printf("dpdk_mempool_cache512_bulk32 %.0f objs/s\n",
	       (double)count * hz / (double)(now - start));
	rte_mempool_free(mp);
	rte_eal_cleanup();
	return 0;
}
