/* Guest-side MMIO round trip: maps a PCI BAR through sysfs (resourceN) and times
 * COUNT 16-bit reads of the register at OFFSET, one clock reading per read.
 * Prints "mmio-read-ns median=M mean=A min=L max=H n=COUNT" (nanoseconds).
 * Built static by the VM test (gcc -static -O2) and put in the guest's initramfs.
 * usage: mmio-time RESOURCE OFFSET COUNT */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s RESOURCE OFFSET COUNT\n", argv[0]);
        return 2;
    }
    unsigned long off = strtoul(argv[2], NULL, 0);
    long n = strtol(argv[3], NULL, 0);
    int fd = open(argv[1], O_RDWR | O_SYNC);
    if (fd < 0 || n <= 0) {
        perror(argv[1]);
        return 1;
    }
    volatile uint8_t *bar = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (bar == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    uint64_t *t = calloc((size_t)n, sizeof *t);
    uint64_t sum = 0;
    uint16_t v = 0;
    for (long i = 0; i < n; i++) {
        uint64_t a = now_ns();
        v = *(volatile uint16_t *)(bar + off);
        t[i] = now_ns() - a;
        sum += t[i];
    }
    qsort(t, (size_t)n, sizeof *t, cmp);
    printf("mmio-read-ns median=%llu mean=%llu min=%llu max=%llu n=%ld value=%u\n",
           (unsigned long long)t[n / 2], (unsigned long long)(sum / (uint64_t)n),
           (unsigned long long)t[0], (unsigned long long)t[n - 1], n, v);
    return 0;
}
