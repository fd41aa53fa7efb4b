"""Tiny hand-assembled flat-binary guests for cella-vmm tests.

Each runs in 16-bit real mode at CS=0x1000, IP=0 (loaded at guest-physical 0x10000).
The source is GNU as syntax (.code16); the bytes were assembled from it with `as --64`
and `objcopy -O binary`.
"""

# mov $0x3f8,%dx; out "Hello\n"; out $123 -> port 0x440 (boot timer);
# mov $0x604,%dx; mov $0x3400,%ax; out %ax,%dx (PM1a_CNT = SLP_EN | SLP_TYP 5); 1: hlt; jmp 1b
HELLO = bytes.fromhex(
    "baf803b048eeb065eeb06ceeb06ceeb06feeb00aee"
    "ba4004b07bee"
    "ba0406b80034ef"
    "f4ebfd")

# mov $0x3f8,%dx; mov $'R',%al; out %al,%dx; mov $0xfe,%al; out %al,$0x64 (i8042 reset); hlt loop
REBOOT = bytes.fromhex("baf803b052eeb0fee664f4ebfd")

# lidt %cs:idtr (limit 0); int3 -> #GP -> double fault -> triple fault; idtr: .word 0; .long 0
TRIPLE_FAULT = bytes.fromhex("2e0f011e0a00ccf4ebfd000000000000")

# 1: jmp 1b
SPIN = bytes.fromhex("ebfe")

# 1: cli; hlt; jmp 1b  (halted with interrupts off: only a stop request ends it)
HALT = bytes.fromhex("faf4ebfc")

# ljmp $0xffff,$0x10 -> fetch from 0x100000, which is not RAM with --memory 1: KVM cannot
# emulate an instruction fetch from MMIO (KVM_EXIT_INTERNAL_ERROR, emulation failure)
BAD_FETCH = bytes.fromhex("ea1000ffff")

# echo: poll LSR (0x3fd) for data ready, read RBR, write it to THR; after '\n' power off
ECHO = bytes.fromhex(
    "bafd03eca80174fb"      # 1: mov $0x3fd,%dx; in %dx,%al; test $1,%al; jz 1b
    "baf803ecee3c0a75ef"    # mov $0x3f8,%dx; in %dx,%al; out %al,%dx; cmp $'\n',%al; jne echo
    "ba0406b80034eff4ebfd")  # ACPI S5; hlt loop

# mmio (needs --debug-device):
#   cli; mov $0x1234,%dx; in %dx,%al; mov $0x3f8,%dx; cmp $0xff,%al; jne 1f; out 'P'
#     (an unhandled port reads all-ones)
#   1: lgdtl %cs:gdtr; mov %cr0,%eax; or $1,%al; mov %eax,%cr0; ljmpl $0x08,$pm32  (flat 32-bit)
#   pm32: mov $0x10,%ax; mov %ax,%ds/%es/%ss; mov $0x3f8,%dx
#   movl $0x12345678,0xd0000000; mov 0xd0000000,%eax; cmp; jne 2f; out 'D'
#     (the debug device at 0xd0000000 keeps what was written)
#   2: movw $0xbeef,0xe0000000; mov 0xe0000000,%eax; cmp $-1,%eax; jne 3f; out 'U'
#     (unhandled MMIO: write dropped, read all-ones)
#   3: out '\n'; ACPI S5; hlt loop
#   gdt: null, code 0x00cf9a000000ffff, data 0x00cf92000000ffff; gdtr: .word 0x17; .long gdt
MMIO = bytes.fromhex(
    "faba3412ecbaf8033cff7503b050ee"
    "2e660f011690000f20c00c010f22c066ea260001000800"
    "66b810008ed88ec08ed066baf803"
    "c705000000d078563412a1000000d03d785634127503b044ee"
    "66c705000000e0efbea1000000e083f8ff7503b055ee"
    "b00aee66ba040666b8003466eff4ebfd"
    "0f1f440000"
    "0000000000000000ffff0000009acf00ffff00000092cf00"
    "170078000100")

# count (snapshot tests): cli; 1: incl counter; print counter in decimal + '\n' on COM1 (digits
# pushed on the stack, popped and sent); spin 0x1000 iterations (~10 ms where KVM emulates real mode); jmp 1b.
# The count lives in memory and passes through registers and the stack, so a restore that loses
# any of them shows. counter: .long 0 at 0x3c (assembled with as --64, ld -Ttext=0, objcopy).
COUNT = bytes.fromhex(
    "fa66ff063c0066a13c0066b90a00000031f66631d266f7f180c23052466685c075f0"
    "baf80358ee4e75fbb00aee66b900100000664975fcebc8"
    "8d740000000000")

# kbd: enables the i8042 keyboard port without interrupts or translation (command 0x60, byte 0),
# prints 'K', then copies every byte the keyboard sends (status bit 0, data port 0x60) to COM1.
#   cli; mov $0x60,%al; out %al,$0x64; mov $0,%al; out %al,$0x60; mov $0x3f8,%dx; mov $'K',%al
#   out %al,%dx; 1: in $0x64,%al; test $1,%al; jz 1b; in $0x60,%al; out %al,%dx; jmp 1b
KBD = bytes.fromhex("fab060e664b000e660baf803b04beee464a80174fae460eeebf5")

GUESTS = {
    "hello.bin": HELLO,
    "reboot.bin": REBOOT,
    "triple.bin": TRIPLE_FAULT,
    "spin.bin": SPIN,
    "halt.bin": HALT,
    "badfetch.bin": BAD_FETCH,
    "echo.bin": ECHO,
    "mmio.bin": MMIO,
    "count.bin": COUNT,
    "kbd.bin": KBD,
}


def write_guests(directory):
    """Writes every guest into directory; returns {name: path}."""
    import os
    paths = {}
    for name, code in GUESTS.items():
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(code)
        paths[name] = path
    return paths
