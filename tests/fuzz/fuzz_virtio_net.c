/* libFuzzer target: virtio-net's TX and RX paths (header checks, chain copies, mergeable RX, the
 * ring walk under them) over a guest memory made of fuzzer bytes, with an in-memory backend.
 *
 * Input: byte 0 = driver features (bit i picks the i-th entry of pick[] below), byte 1 = queue
 * sizes (low nibble TX, high nibble RX: 1 << (n & 6)), bytes 2-3 = RX packet length, bytes 4-15 =
 * the RX packet's vnet header; the rest fills a 16 KiB guest RAM holding both rings (TX: desc 0x0,
 * avail 0x400, used 0x500; RX: desc 0x800, avail 0xc00, used 0xd00) and buffers. The backend's
 * writev touches every byte it is handed, so ASan catches a pointer that escaped RAM. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/err.h"
#include "base/log.h"
#include "vmm/virtio/net.h"

#define GPA 0x400000ull
#define RAM 0x4000ull

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static _Alignas(16) uint8_t ram[RAM];
static struct vq_mem mem = { .r = { { .gpa = GPA, .size = RAM, .host = ram } }, .n = 1 };
static struct virtio_mmio t;
static struct virtio_net net;
static uint8_t rx_hdr[12];
static uint32_t rx_len;
static int rx_left;

static int no_irq(void *ctx, unsigned irq, int level) { return 0; }
static const struct hw_host host = { .set_irq = no_irq };
static int offload(void *ctx, unsigned flags, struct cella_err *err) { return 0; }

static ssize_t be_writev(void *ctx, const struct iovec *iov, int cnt)
{
	size_t total = 0;
	volatile uint8_t sink = 0;
	for (int i = 0; i < cnt; i++) {
		const uint8_t *p = iov[i].iov_base;
		for (size_t j = 0; j < iov[i].iov_len; j++)
			sink ^= p[j];
		total += iov[i].iov_len;
	}
	if (total > VIRTIO_NET_MAX_PACKET || total < VIRTIO_NET_HDR_LEN + VIRTIO_NET_MIN_FRAME)
		__builtin_trap(); /* the device let a bad length through */
	(void)sink;
	return (ssize_t)total;
}

static ssize_t be_read(void *ctx, void *buf, size_t len)
{
	if (rx_left <= 0) {
		errno = EAGAIN;
		return -1;
	}
	rx_left--;
	uint32_t n = rx_len < len ? rx_len : (uint32_t)len;
	memset(buf, 0x5a, n);
	memcpy(buf, rx_hdr, n < 12 ? n : 12);
	return n;
}

static void wr(uint64_t off, uint32_t v) { virtio_mmio_ops.write(&t, off, (const uint8_t *)&v, 4); }

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	cella_log_open("/dev/null", CELLA_LOG_TEXT, CELLA_LOG_ERROR, NULL);
	struct virtio_net_backend be = { .fd = -1, .set_offload = offload, .read = be_read, .writev = be_writev };
	if (virtio_net_init(&net, "fuzz", (const uint8_t *)"\x02\0\0\0\0\1", &be, NULL, NULL) < 0 ||
	    virtio_mmio_init(&t, &virtio_net_ops, &net, &host, 5, &mem, NULL) < 0)
		__builtin_trap();
	virtio_net_attach(&net, &t);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const unsigned pick[8] = { VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4,
					  VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_MRG_RXBUF,
					  VIRTIO_NET_F_GUEST_TSO4, VIRTIO_F_EVENT_IDX };
	if (size < 16)
		return 0;
	uint64_t f = 1ull << VIRTIO_F_VERSION_1;
	for (int i = 0; i < 8; i++)
		if (data[0] & (1u << i))
			f |= 1ull << pick[i];
	uint16_t qsz[2] = { (uint16_t)(1u << ((data[1] >> 4) & 6)), (uint16_t)(1u << (data[1] & 6)) }; /* RX, TX */
	rx_len = (uint32_t)data[2] | (uint32_t)data[3] << 8;
	memcpy(rx_hdr, data + 4, 12);
	rx_left = 3;
	size_t n = size - 16 < RAM ? size - 16 : RAM;
	memset(ram, 0, sizeof(ram));
	memcpy(ram, data + 16, n);
	net.pending = 0;

	wr(VIRTIO_MMIO_STATUS, 0);
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)f);
	wr(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(f >> 32));
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	static const uint64_t base[2] = { 0x800, 0x0 }; /* RX, TX */
	for (unsigned q = 0; q < 2; q++) {
		wr(VIRTIO_MMIO_QUEUE_SEL, q);
		wr(VIRTIO_MMIO_QUEUE_NUM, qsz[q]);
		wr(VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)(GPA + base[q]));
		wr(VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)(GPA + base[q] + 0x400));
		wr(VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)(GPA + base[q] + 0x500));
		wr(VIRTIO_MMIO_QUEUE_READY, 1);
	}
	wr(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
				       VIRTIO_STATUS_DRIVER_OK);
	virtio_net_tx(&net);
	virtio_net_rx(&net);
	virtio_net_tx(&net);
	virtio_net_rx(&net);
	return 0;
}
