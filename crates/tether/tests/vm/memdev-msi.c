/* Guest-side MSI check for a memdev (crates/endpoint/src/memdev.rs) with no driver
 * bound: through the device's sysfs config file it turns on memory decoding and bus
 * mastering and points the MSI capability at the local APIC (address 0xfee00000,
 * data = VECTOR, fixed delivery) with MSI enabled, exactly what a driver's
 * pci_enable_msi would write; then, through resource0, it has the device DMA 64 bytes
 * from guest-physical SRC into its buffer with an interrupt at the end. With no
 * handler on VECTOR the guest kernel reports the interrupt's arrival itself ("No irq
 * handler for vector"). Prints "memdev-msi control=C status=S error=E done=D".
 * Built static by the VM test (gcc -static -O2) and put in the guest's initramfs.
 * usage: memdev-msi DEVICE_SYSFS_DIR VECTOR SRC */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int cfg;

static uint32_t cfg_read(int off, int len) {
    uint32_t v = 0;
    if (pread(cfg, &v, (size_t)len, off) != len) {
        perror("config read");
        exit(1);
    }
    return v;
}

static void cfg_write(int off, uint32_t v, int len) {
    if (pwrite(cfg, &v, (size_t)len, off) != len) {
        perror("config write");
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s DEVICE_SYSFS_DIR VECTOR SRC\n", argv[0]);
        return 2;
    }
    char path[512];
    uint32_t vector = (uint32_t)strtoul(argv[2], NULL, 0);
    uint64_t src = strtoull(argv[3], NULL, 0);
    snprintf(path, sizeof path, "%s/config", argv[1]);
    cfg = open(path, O_RDWR);
    if (cfg < 0) {
        perror(path);
        return 1;
    }
    int cap = (int)cfg_read(0x34, 1) & 0xfc;
    for (int hops = 0; cap >= 0x40 && hops < 48; hops++) {
        if (cfg_read(cap, 1) == 0x05)
            break;
        cap = (int)cfg_read(cap + 1, 1) & 0xfc;
    }
    if (cap < 0x40) {
        fprintf(stderr, "no MSI capability\n");
        return 1;
    }
    cfg_write(0x04, cfg_read(0x04, 2) | 0x6, 2);
    uint32_t control = cfg_read(cap + 2, 2);
    int data_at = cap + 8;
    cfg_write(cap + 4, 0xfee00000u, 4);
    if (control & 0x80) {
        cfg_write(cap + 8, 0, 4);
        data_at = cap + 12;
    }
    cfg_write(data_at, vector, 2);
    /* Enable, one vector (Multiple Message Enable 0). */
    cfg_write(cap + 2, (control & ~0x70u) | 1, 2);
    control = cfg_read(cap + 2, 2);

    snprintf(path, sizeof path, "%s/resource0", argv[1]);
    int fd = open(path, O_RDWR | O_SYNC);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    volatile uint32_t *r = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    if (r[0] != 0x68746574) {
        fprintf(stderr, "not a memdev: magic %#x\n", r[0]);
        return 1;
    }
    r[0x08 / 4] = (uint32_t)src;
    r[0x0c / 4] = (uint32_t)(src >> 32);
    r[0x18 / 4] = 64;
    r[0x1c / 4] = 0;
    r[0x2c / 4] = 1;
    r[0x20 / 4] = 1;
    uint32_t status = 0;
    for (int i = 0; i < 5000; i++) {
        status = r[0x24 / 4];
        if (status >= 2)
            break;
        usleep(1000);
    }
    printf("memdev-msi control=%#x status=%u error=%u done=%u\n", control, status,
           r[0x28 / 4], r[0x30 / 4]);
    r[0x24 / 4] = 0;
    return status == 2 ? 0 : 1;
}
