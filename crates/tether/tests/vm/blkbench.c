/* Guest-side block benchmark, in place of fio (which the test guest does not have):
 * COUNT reads (or writes) of BS bytes with O_DIRECT, sequential from offset 0 or at
 * random BS-aligned offsets within the first SPAN bytes, one at a time (queue depth 1,
 * as dd). Prints "blkbench mode=M bs=B ops=N secs=S MBps=X iops=Y lat_us=L".
 * Built static by the VM tests and put in the guest's initramfs.
 * usage: blkbench DEVICE seq|rand|seqwrite BS COUNT [SPAN] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s DEVICE seq|rand|seqwrite BS COUNT [SPAN]\n", argv[0]);
        return 2;
    }
    const char *mode = argv[2];
    size_t bs = strtoul(argv[3], NULL, 0);
    long n = strtol(argv[4], NULL, 0);
    unsigned long long span = argc > 5 ? strtoull(argv[5], NULL, 0) : (unsigned long long)bs * n;
    int write = strcmp(mode, "seqwrite") == 0;
    int fd = open(argv[1], (write ? O_WRONLY : O_RDONLY) | O_DIRECT);
    void *buf;
    if (fd < 0 || bs == 0 || n <= 0 || posix_memalign(&buf, 4096, bs) != 0) {
        perror(argv[1]);
        return 1;
    }
    memset(buf, 0x5a, bs);
    unsigned long long blocks = span / bs;
    srand(7);
    double t0 = now();
    for (long i = 0; i < n; i++) {
        off_t off = strcmp(mode, "rand") == 0
                        ? (off_t)(((unsigned long long)rand() * 2654435761u) % blocks) * (off_t)bs
                        : (off_t)i * (off_t)bs;
        ssize_t r = write ? pwrite(fd, buf, bs, off) : pread(fd, buf, bs, off);
        if (r != (ssize_t)bs) {
            perror("blkbench I/O");
            return 1;
        }
    }
    double s = now() - t0;
    printf("blkbench mode=%s bs=%zu ops=%ld secs=%.3f MBps=%.2f iops=%.0f lat_us=%.1f\n", mode, bs,
           n, s, (double)bs * (double)n / s / 1e6, (double)n / s, s / (double)n * 1e6);
    return 0;
}
