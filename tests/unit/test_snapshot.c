/* Snapshot building blocks without KVM: the state file (sections, CRC, version, truncation), a chip's
 * save/load round trip (the 8250 with bytes waiting and its interrupt pending), and the VM config
 * written as JSON and read back. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "base/err.h"
#include "base/util.h"
#include "tap.h"
#include "vmm/hw/hw.h"
#include "vmm/snapfile.h"
#include "vmm/virtio/mmio.h"
#include "vmm/vmm.h"

static char dir[] = "/tmp/cella-snap-test-XXXXXX";

static char *path(const char *name)
{
	return cella_path_join(dir, name);
}

static int write_sample(const char *p)
{
	struct snap_writer w;
	snap_writer_init(&w);
	snap_begin(&w, "alpha");
	snap_put_u32(&w, 0xdeadbeef);
	snap_put_u64(&w, 42);
	snap_begin(&w, "vcpu%u.regs", 3); /* begin closes the open section */
	snap_put(&w, "hello", 5);
	snap_end(&w);
	struct cella_err err = { 0 };
	int r = snap_writer_finish(&w, p, &err);
	snap_writer_free(&w);
	return r;
}

static void test_state_file(void)
{
	_cleanup_free_ char *p = path("state");
	TAP_OK(write_sample(p) == 0, "state file written");
	struct snap_file f;
	struct cella_err err = { 0 };
	TAP_OK(snap_file_open(&f, p, &err) == 0, "read back: %s", err.msg);
	struct snap_sec s;
	TAP_OK(snap_find(&f, &s, "alpha") == 1, "section alpha found");
	TAP_OK(snap_get_u32(&s) == 0xdeadbeef && snap_get_u64(&s) == 42, "values read back");
	TAP_OK(snap_sec_done(&s, &err) == 0, "section alpha consumed exactly");
	TAP_OK(snap_find(&f, &s, "vcpu3.regs") == 1 && s.len == 5, "printf-named section, 5 bytes");
	snap_get_u32(&s);
	TAP_OK(snap_sec_done(&s, &err) == -EINVAL && strstr(err.msg, "1 unexpected trailing bytes"),
	       "leftover bytes are an error: %s", err.msg);
	TAP_OK(snap_find(&f, &s, "vcpu3.regs") == 1, "found again");
	snap_get_u64(&s);
	TAP_OK(s.bad && snap_sec_done(&s, &err) == -EINVAL && strstr(err.msg, "\"vcpu3.regs\": truncated"),
	       "reading past the end is an error naming the section: %s", err.msg);
	TAP_OK(snap_need(&f, &s, &err, "vcpu%u.regs", 4) == -EINVAL &&
	       !strcmp(err.msg, "state file: no section \"vcpu4.regs\""), "a missing section is named: %s", err.msg);
	snap_file_close(&f);

	/* every way of damaging the file is refused with its own message */
	_cleanup_free_ char *data = NULL;
	size_t len = 0;
	TAP_OK(cella_read_file(p, 1 << 20, &data, &len, &err) == 0, "raw file");
	struct {
		const char *what, *want;
		size_t off;
		int flip;
		size_t cut;
	} cases[] = {
		{ "body byte flipped", "CRC mismatch (corrupted)", 40, 0x10, 0 },
		{ "header byte flipped", "header CRC mismatch", 12, 1, 0 },
		{ "magic", "bad magic", 0, 1, 0 },
		{ "last 8 bytes cut", "truncated or extended", 0, 0, 8 },
		{ "cut inside the header", "truncated (20 bytes", 0, 0, (size_t)-1 },
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		_cleanup_free_ char *copy = malloc(len);
		memcpy(copy, data, len);
		size_t n = cases[i].cut == (size_t)-1 ? 20 : len - cases[i].cut;
		copy[cases[i].off] ^= (char)cases[i].flip;
		_cleanup_free_ char *q = path("damaged");
		cella_write_file(q, copy, n, 0600, &err);
		int r = snap_file_open(&f, q, &err);
		TAP_OK(r < 0 && strstr(err.msg, cases[i].want), "%s: %s", cases[i].what, err.msg);
	}
	/* a well-formed file of another version */
	_cleanup_free_ char *copy = malloc(len);
	memcpy(copy, data, len);
	uint32_t v = 7;
	memcpy(copy + 8, &v, 4);
	uint32_t c = (uint32_t)crc32(0, (const Bytef *)copy, 28);
	memcpy(copy + 28, &c, 4);
	_cleanup_free_ char *q = path("v7");
	cella_write_file(q, copy, len, 0600, &err);
	TAP_OK(snap_file_open(&f, q, &err) == -ENOTSUP && strstr(err.msg, "format version 7, this cella-vmm reads version 1"),
	       "other version: %s", err.msg);
}

static int irq_level[16];
static int set_irq(void *ctx, unsigned irq, int level)
{
	irq_level[irq & 15] = level;
	return 0;
}
static const struct hw_host host = { .set_irq = set_irq };

static void test_serial_round_trip(void)
{
	struct cella_err err = { 0 };
	struct serial_8250 *a, *b;
	serial_8250_new(&host, 4, -1, &a, &err);
	uint8_t ier = 0x01; /* received-data interrupt */
	serial_8250_ops.write(a, 1, &ier, 1);
	uint8_t scr = 0x5a;
	serial_8250_ops.write(a, 7, &scr, 1);
	serial_8250_receive(a, (const uint8_t *)"xyz", 3);
	uint8_t byte;
	serial_8250_ops.read(a, 0, &byte, 1); /* 'x' consumed: the FIFO head moved */
	TAP_OK(irq_level[4] == 1, "IRQ 4 up with data waiting");

	struct snap_writer w;
	snap_writer_init(&w);
	snap_begin(&w, "dev.serial");
	serial_8250_save(a, &w);
	snap_end(&w);
	_cleanup_free_ char *p = path("serial");
	snap_writer_finish(&w, p, &err);
	snap_writer_free(&w);

	irq_level[4] = 0;
	serial_8250_new(&host, 4, -1, &b, &err);
	struct snap_file f;
	struct snap_sec s;
	TAP_OK(snap_file_open(&f, p, &err) == 0 && snap_find(&f, &s, "dev.serial") == 1, "section back");
	TAP_OK(serial_8250_load(b, &s, &err) == 0 && snap_sec_done(&s, &err) == 0, "loaded: %s", err.msg);
	TAP_OK(irq_level[4] == 1, "the restored UART raises its pending interrupt again");
	uint8_t got[3] = { 0 };
	serial_8250_ops.read(b, 7, &got[0], 1);
	serial_8250_ops.read(b, 0, &got[1], 1);
	serial_8250_ops.read(b, 0, &got[2], 1);
	TAP_OK(got[0] == 0x5a && got[1] == 'y' && got[2] == 'z', "scratch register and FIFO order kept");
	snap_file_close(&f);

	/* a FIFO count beyond the FIFO is refused */
	snap_writer_init(&w);
	snap_begin(&w, "dev.serial");
	uint8_t regs[10] = { 0 };
	snap_put(&w, regs, sizeof(regs));
	snap_put_u64(&w, 0);
	snap_put_u32(&w, 100000);
	snap_end(&w);
	snap_writer_finish(&w, p, &err);
	snap_writer_free(&w);
	snap_file_open(&f, p, &err);
	snap_find(&f, &s, "dev.serial");
	TAP_OK(serial_8250_load(b, &s, &err) == -EINVAL && strstr(err.msg, "receive FIFO"), "%s", err.msg);
	snap_file_close(&f);
	serial_8250_free(a);
	serial_8250_free(b);
}

/* --- virtio transport: a queue mid-use survives save/load into a fresh transport --- */
#define GPA 0x100000ull
static _Alignas(16) uint8_t ram[0x10000];
static struct vq_mem mem = { .r = { { .gpa = GPA, .size = sizeof(ram), .host = ram } }, .n = 1 };

static uint32_t rd(struct virtio_mmio *t, uint64_t off)
{
	uint32_t v;
	virtio_mmio_ops.read(t, off, (uint8_t *)&v, 4);
	return v;
}
static void wr(struct virtio_mmio *t, uint64_t off, uint32_t v)
{
	virtio_mmio_ops.write(t, off, (const uint8_t *)&v, 4);
}
static void offer(uint16_t idx, uint32_t len)
{
	struct { uint64_t a; uint32_t l; uint16_t f, n; } d = { GPA + 0x4000, len, VIRTQ_DESC_F_WRITE, 0 };
	memcpy(ram, &d, 16);
	uint16_t *avail = (uint16_t *)(ram + 0x1000);
	avail[2 + ((idx - 1) & 7)] = 0;
	avail[1] = idx;
}

static void test_virtio_round_trip(void)
{
	struct cella_err err = { 0 };
	static struct virtio_mmio a, b, c;
	virtio_mmio_init(&a, &virtio_rng_ops, NULL, &host, 5, &mem, &err);
	wr(&a, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(&a, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(&a, VIRTIO_MMIO_DRIVER_FEATURES, 1); /* VERSION_1 */
	wr(&a, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	wr(&a, VIRTIO_MMIO_QUEUE_NUM, 8);
	wr(&a, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)GPA);
	wr(&a, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)(GPA + 0x1000));
	wr(&a, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)(GPA + 0x2000));
	wr(&a, VIRTIO_MMIO_QUEUE_READY, 1);
	wr(&a, VIRTIO_MMIO_STATUS, 0xf);
	offer(1, 16);
	wr(&a, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	uint16_t *used = (uint16_t *)(ram + 0x2000);
	TAP_OK(used[1] == 1 && irq_level[5] == 1, "one request served, interrupt pending");

	struct snap_writer w;
	snap_writer_init(&w);
	snap_begin(&w, "virtio.rng");
	TAP_OK(virtio_mmio_save(&a, &w, &err) == 0, "transport saved");
	snap_end(&w);
	_cleanup_free_ char *p = path("virtio");
	snap_writer_finish(&w, p, &err);
	snap_writer_free(&w);

	irq_level[5] = 0;
	virtio_mmio_init(&b, &virtio_rng_ops, NULL, &host, 5, &mem, &err);
	struct snap_file f;
	struct snap_sec s;
	snap_file_open(&f, p, &err);
	snap_find(&f, &s, "virtio.rng");
	TAP_OK(virtio_mmio_load(&b, &s, &err) == 0 && snap_sec_done(&s, &err) == 0, "loaded: %s", err.msg);
	TAP_OK(rd(&b, VIRTIO_MMIO_STATUS) == 0xf && rd(&b, VIRTIO_MMIO_QUEUE_READY) == 1 &&
	       rd(&b, VIRTIO_MMIO_INTERRUPT_STATUS) == VIRTIO_INT_USED, "status, queue and interrupt status back");
	TAP_OK(irq_level[5] == 1, "interrupt line raised again");
	TAP_OK(b.q[0].vq.last_avail == 1 && b.q[0].vq.used_idx == 1, "ring indexes back");
	offer(2, 16);
	wr(&b, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	TAP_OK(used[1] == 2, "the restored device serves the next request, not the old one again");

	/* the section of another device type is refused */
	static const struct virtio_dev_ops other = { .name = "virtio-other", .device_id = 99, .nqueues = 1 };
	virtio_mmio_init(&c, &other, NULL, &host, 5, &mem, &err);
	snap_find(&f, &s, "virtio.rng");
	TAP_OK(virtio_mmio_load(&c, &s, &err) == -EINVAL && strstr(err.msg, "virtio device 4"), "%s", err.msg);
	snap_file_close(&f);

	/* a ring address the checks refuse fails the load */
	snap_writer_init(&w);
	snap_begin(&w, "virtio.rng");
	a.q[0].driver = 0xdead0000;
	virtio_mmio_save(&a, &w, &err);
	snap_end(&w);
	snap_writer_finish(&w, p, &err);
	snap_writer_free(&w);
	virtio_mmio_destroy(&b);
	virtio_mmio_init(&b, &virtio_rng_ops, NULL, &host, 5, &mem, &err);
	snap_file_open(&f, p, &err);
	snap_find(&f, &s, "virtio.rng");
	TAP_OK(virtio_mmio_load(&b, &s, &err) < 0 && strstr(err.msg, "queue 0"), "bad ring refused: %s", err.msg);
	snap_file_close(&f);
	virtio_mmio_destroy(&a);
	virtio_mmio_destroy(&b);
	virtio_mmio_destroy(&c);
}

static void test_config_json(void)
{
	struct vmm_config a, b;
	vmm_config_init(&a);
	vmm_config_init(&b);
	a.kernel = strdup("/k/vmlinuz");
	a.initrd = strdup("/k/initrd");
	a.cmdline = strdup("console=ttyS0 \"quoted\"");
	a.cpus = 3;
	a.memory_mib = 768;
	a.console = VMM_CONSOLE_FILE;
	a.console_path = strdup("/tmp/console.log");
	a.rng = true;
	a.pit = true;
	a.vsock_cid = 42;
	a.vsock_uds = strdup("/tmp/v.sock");
	struct cella_err err = { 0 };
	_cleanup_free_ char *json = NULL;
	TAP_OK(vmm_config_to_json(&a, &json, &err) == 0, "config as JSON: %s", json ? json : err.msg);
	TAP_OK(vmm_config_from_json_text(&b, json, strlen(json), "snapshot config", &err) == 0, "read back: %s",
	       err.msg);
	TAP_OK(!strcmp(b.kernel, a.kernel) && !strcmp(b.initrd, a.initrd) && !strcmp(b.cmdline, a.cmdline) &&
	       b.cpus == 3 && b.memory_mib == 768 && b.console == VMM_CONSOLE_FILE &&
	       !strcmp(b.console_path, a.console_path) && b.rng && b.pit && b.vsock_cid == 42 && b.vsock_uds &&
		       !strcmp(b.vsock_uds, "/tmp/v.sock"),
	       "every field survives");
	vmm_config_free(&a);
	vmm_config_free(&b);
}

int main(void)
{
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_state_file();
	test_serial_round_trip();
	test_virtio_round_trip();
	test_config_json();
	struct cella_err err = { 0 };
	cella_rm_rf(dir, &err);
	return tap_done();
}
