# A boot disk for the VM tests: SeaBIOS loads sector 0 from the remote virtio-blk disk
# (through tether) and runs it. Everything it does goes through SeaBIOS's own virtio
# driver (int 13h), then straight at the device's registers:
#   1. loads its second stage (sectors 1..8) with int 13h AH=42h;
#   2. reads 64 KiB from LBA 16 and compares their 32-bit word sum with the one the
#      test stored at `expected_sum`;
#   3. writes LBA 200 with a known text (int 13h AH=43h), for the test to find in the
#      box's file;
#   4. finds the virtio-blk function (1af4:1042) on bus 0, reads num_queues from its
#      common configuration in BAR0 once to check it, then MMIO_READS more times
#      between two console lines that the test timestamps;
#   5. clears SeaBIOS's "no interrupt" flag in its ring, hooks the device's IRQ in the
#      PIC, reads once more, and waits for the device's INTx to be taken;
#   6. ends QEMU through isa-debug-exit (iobase 0xf4): 0x10 = all good (exit status
#      33); 0x11 stage 2 not loaded, 0x12 read failed, 0x13 checksum, 0x14 write
#      failed, 0x15 no device, 0x16 register value, 0x17 no INTx.
# Console: COM1 (0x3f8). Build: as --32 -o x.o bootdisk.S && ld -m elf_i386
#   -Ttext 0x7c00 --oformat binary -o disk.bin x.o

    .code16
    .set COM1, 0x3f8
    .set EXIT_PORT, 0xf4
    .set MMIO_READS, 20000
    .set DATA_LBA, 16
    .set WRITE_LBA, 200

    .text
    .globl _start
_start:
    cli
    xor     %ax, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    mov     $0x7c00, %sp
    sti
    mov     %dl, drive
    mov     $m_hello, %si
    call    puts
    # Stage 2: 8 sectors from LBA 1 to 0000:7e00.
    movw    $8, dap_count
    movw    $0x7e00, dap_off
    movw    $0, dap_seg
    movl    $1, dap_lba
    call    disk_read
    jc      1f
    jmp     stage2
1:  mov     $0x11, %al
    jmp     exit

# int 13h extended read with the packet at `dap`; CF on error.
disk_read:
    mov     $0x42, %ah
    jmp     2f
disk_write:
    mov     $0x4300, %ax
2:  mov     drive, %dl
    mov     $dap, %si
    int     $0x13
    ret

# Prints the NUL-terminated string at %si.
puts:
    lodsb
    test    %al, %al
    jz      1f
    call    putc
    jmp     puts
1:  ret

putc:
    push    %dx
    push    %ax
    mov     $COM1 + 5, %dx
1:  in      %dx, %al
    test    $0x20, %al
    jz      1b
    pop     %ax
    mov     $COM1, %dx
    out     %al, %dx
    pop     %dx
    ret

# Ends QEMU with code %al (isa-debug-exit), after a line saying which.
exit:
    push    %ax
    mov     $m_exit, %si
    call    puts
    pop     %ax
    push    %ax
    call    hex8
    mov     $m_crlf, %si
    call    puts
    pop     %ax
    out     %al, $EXIT_PORT
1:  hlt
    jmp     1b

hex8:
    push    %ax
    shr     $4, %al
    call    1f
    pop     %ax
1:  and     $0xf, %al
    add     $'0', %al
    cmp     $'9', %al
    jbe     2f
    add     $7, %al
2:  jmp     putc

drive:  .byte 0
dap:    .byte 16, 0
dap_count: .word 0
dap_off: .word 0
dap_seg: .word 0
dap_lba: .quad 0

m_hello: .asciz "tether-boot: sector 0 from the remote disk\r\n"
m_exit:  .asciz "tether-boot: exit "
m_crlf:  .asciz "\r\n"

    .org    0x1b0
expected_sum:
    .long   0
    .org    510
    .word   0xaa55

# ---- stage 2, at 0x7e00 ----
stage2:
    mov     $m_stage2, %si
    call    puts
    # 64 KiB from DATA_LBA into 1000:0000 and 1800:0000, 64 sectors each.
    xor     %ebx, %ebx
    mov     $0x1000, %cx
    movl    $DATA_LBA, dap_lba
3:  movw    $64, dap_count
    movw    $0, dap_off
    mov     %cx, dap_seg
    push    %cx
    call    disk_read
    pop     %cx
    jnc     4f
    mov     $0x12, %al
    jmp     exit
4:  mov     %cx, %es
    xor     %di, %di
5:  addl    %es:(%di), %ebx
    add     $4, %di
    cmp     $0x8000, %di
    jne     5b
    addl    $64, dap_lba
    add     $0x800, %cx
    cmp     $0x2000, %cx
    jne     3b
    xor     %ax, %ax
    mov     %ax, %es
    cmpl    expected_sum, %ebx
    je      6f
    mov     $0x13, %al
    jmp     exit
6:  mov     $m_sum, %si
    call    puts
    # Write LBA WRITE_LBA from 0000:0600 (the text, then zeros).
    mov     $0x600, %di
    xor     %ax, %ax
    mov     $256, %cx
    rep stosw
    mov     $m_written, %si
    mov     $0x600, %di
7:  lodsb
    stosb
    test    %al, %al
    jnz     7b
    movw    $1, dap_count
    movw    $0x600, dap_off
    movw    $0, dap_seg
    movl    $WRITE_LBA, dap_lba
    call    disk_write
    jnc     8f
    mov     $0x14, %al
    jmp     exit
8:  mov     $m_wrote, %si
    call    puts
    # Find 1af4:1042 on bus 0.
    xor     %bx, %bx
9:  mov     %bx, %ax
    call    cfg_read
    cmpl    $0x10421af4, %eax
    je      10f
    inc     %bx
    cmp     $32, %bx
    jne     9b
    mov     $0x15, %al
    jmp     exit
10: mov     %bx, devno
    mov     %bx, %ax
    or      $0x0400, %ax          # register 0x10 (BAR0) in the high byte
    call    cfg_read
    and     $0xfffffff0, %eax
    mov     %eax, bar0
    mov     %eax, %esi
    call    unreal
    # num_queues, at 0x12 in the common configuration, is 1.
    addr32 movw %fs:0x12(%esi), %ax
    cmp     $1, %ax
    je      11f
    mov     $0x16, %al
    jmp     exit
11: push    %esi
    mov     $m_mmio_start, %si
    call    puts
    pop     %esi
    mov     $MMIO_READS, %ecx
12: addr32 movw %fs:0x12(%esi), %ax
    dec     %ecx
    jnz     12b
    mov     $m_mmio_end, %si
    call    puts
    mov     bar0, %esi
    # INTx: SeaBIOS asks for no interrupts (avail flags = NO_INTERRUPT) and polls.
    # Clear that flag in its ring (queue 0's driver area, read from the common
    # configuration), take the device's interrupt line in the PIC with a handler of
    # ours, and read one more sector: the device raises INTx, which reaches the
    # guest's PIC through QEMU's irqfd; the handler counts it and ends it (EOI).
    addr32 movw $0, %fs:0x16(%esi)          # queue_select = 0
    addr32 movl %fs:0x28(%esi), %edi        # queue_driver (low half)
    addr32 movw $0, %fs:(%edi)              # avail->flags = 0
    mov     devno, %ax
    or      $0x0f00, %ax                    # register 0x3c: interrupt line
    call    cfg_read
    mov     %al, irq_line
    cli
    movzbw  %al, %bx
    mov     $8, %di                         # vector: 08h + IRQ, or 70h + IRQ - 8
    cmp     $8, %bl
    jb      13f
    mov     $0x70 - 8, %di
13: add     %bx, %di
    shl     $2, %di
    movw    $intx_isr, (%di)
    movw    $0, 2(%di)
    mov     %bl, %cl
    mov     $0x21, %dx
    cmp     $8, %cl
    jb      14f
    in      $0x21, %al                      # unmask the cascade (IRQ 2) too
    and     $0xfb, %al
    out     %al, $0x21
    mov     $0xa1, %dx
    sub     $8, %cl
14: mov     $1, %ah
    shl     %cl, %ah
    not     %ah
    in      %dx, %al
    and     %ah, %al
    out     %al, %dx
    sti
    movw    $1, dap_count
    movw    $0x600, dap_off
    movw    $0, dap_seg
    movl    $DATA_LBA, dap_lba
    call    disk_read
    jnc     15f
    mov     $0x12, %al
    jmp     exit
15: mov     $40, %cx                        # up to 40 timer ticks (about 2 s)
16: cmpb    $0, intx_count
    jne     17f
    hlt
    loop    16b
    mov     $0x17, %al
    jmp     exit
17: mov     $m_intx, %si
    call    puts
    mov     irq_line, %al
    call    hex8
    mov     $m_crlf, %si
    call    puts
    mov     $0x10, %al
    jmp     exit

intx_isr:
    push    %ax
    incb    %cs:intx_count
    mov     $0x20, %al                      # EOI to both PICs
    out     %al, $0xa0
    out     %al, $0x20
    pop     %ax
    iret

# Config dword: device number in %al, register/4 in %ah; value in %eax.
cfg_read:
    push    %dx
    movzx   %al, %edx
    shl     $11, %edx
    movzx   %ah, %eax
    shl     $2, %eax
    or      %edx, %eax
    or      $0x80000000, %eax
    mov     $0xcf8, %dx
    out     %eax, %dx
    mov     $0xcfc, %dx
    in      %dx, %eax
    pop     %dx
    ret

# "Unreal" mode: %fs keeps a flat 4 GiB limit after a trip through protected mode.
unreal:
    cli
    lgdtl   gdt_desc
    mov     %cr0, %eax
    or      $1, %al
    mov     %eax, %cr0
    jmp     1f
1:  mov     $8, %bx
    mov     %bx, %fs
    and     $0xfe, %al
    mov     %eax, %cr0
    jmp     2f
2:  sti
    ret

    .p2align 3
gdt:
    .quad   0
    .quad   0x00cf92000000ffff    # data: base 0, limit 4 GiB, writable
gdt_desc:
    .word   15
    .long   gdt

irq_line:     .byte 0
devno:        .word 0
intx_count:   .byte 0
bar0:         .long 0
m_intx:       .asciz "tether-boot: INTx taken through the PIC, IRQ 0x"
m_stage2:     .asciz "tether-boot: stage 2 loaded\r\n"
m_sum:        .asciz "tether-boot: 64 KiB read, checksum ok\r\n"
m_written:    .asciz "tether-boot wrote this sector through SeaBIOS and virtio-blk"
m_wrote:      .asciz "tether-boot: sector written\r\n"
m_mmio_start: .asciz "tether-boot: mmio-start\r\n"
m_mmio_end:   .asciz "tether-boot: mmio-end\r\n"

    .org    0x1200
