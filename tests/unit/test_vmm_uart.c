/* The 8250/16550A register model, driven through its bus ops with a fake host (no KVM). */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "tap.h"
#include "vmm/hw/hw.h"

struct fake_host {
	int level;
	int irq_changes;
	unsigned irq;
	int wakes;
};

static int fake_set_irq(void *ctx, unsigned irq, int level)
{
	struct fake_host *h = ctx;
	h->irq = irq;
	h->level = level;
	h->irq_changes++;
	return 0;
}

static void fake_wake(void *ctx)
{
	struct fake_host *h = ctx;
	h->wakes++;
}

static struct serial_8250 *uart;

static uint8_t rd(unsigned reg)
{
	uint8_t v;
	serial_8250_ops.read(uart, reg, &v, 1);
	return v;
}

static void wr(unsigned reg, uint8_t v)
{
	serial_8250_ops.write(uart, reg, &v, 1);
}

int main(void)
{
	struct cella_err err = { 0 };
	struct fake_host fh = { 0 };
	struct hw_host host = { .set_irq = fake_set_irq, .wake = fake_wake, .ctx = &fh };
	int fds[2];
	if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
		TAP_SKIP_ALL("pipe2 failed");
	TAP_OK(serial_8250_new(&host, 4, fds[1], &uart, &err) == 0, "create");

	/* Transmit */
	TAP_OK(rd(5) == 0x60, "LSR: THR empty and transmitter empty, no data");
	TAP_OK(rd(2) == 0x01, "IIR: no interrupt pending");
	wr(0, 'H');
	wr(0, 'i');
	char out[8] = { 0 };
	TAP_OK(read(fds[0], out, sizeof(out)) == 2 && !memcmp(out, "Hi", 2), "THR writes reach the output fd");
	TAP_OK(serial_8250_tx_count(uart) == 2, "tx counted");
	TAP_OK(fh.irq_changes == 0, "no interrupt while IER is 0");

	/* Scratch and line control */
	wr(7, 0x5a);
	TAP_OK(rd(7) == 0x5a, "scratch register keeps its value");
	wr(3, 0x83);
	wr(0, 0x01);
	wr(1, 0x00);
	TAP_OK(rd(0) == 0x01 && rd(1) == 0x00, "DLAB: divisor latch read back");
	wr(3, 0x03);
	TAP_OK(rd(3) == 0x03, "LCR read back");
	TAP_OK(read(fds[0], out, sizeof(out)) < 0, "divisor writes were not transmitted");

	/* THR-empty interrupt, including Linux's re-assertion test */
	wr(1, 0x02);
	TAP_OK(fh.level == 1 && fh.irq == 4, "enabling THRI with THR empty raises IRQ 4");
	TAP_OK(rd(2) == 0x02, "IIR says THR empty");
	TAP_OK(fh.level == 0, "reading IIR acknowledged it: IRQ dropped");
	TAP_OK(rd(2) == 0x01, "nothing pending afterwards");
	wr(1, 0x00);
	wr(1, 0x02);
	TAP_OK(rd(2) == 0x02, "THRI re-asserted after IER toggle (no UART_BUG_THRE)");
	wr(0, 'x');
	TAP_OK(fh.level == 1 && rd(2) == 0x02, "each transmitted byte raises THR empty again");
	wr(1, 0x00);
	TAP_OK(fh.level == 0, "disabling THRI drops the IRQ");
	(void)!read(fds[0], out, sizeof(out));

	/* FIFO */
	wr(2, 0x07);
	TAP_OK((rd(2) & 0xc0) == 0xc0, "FIFO enabled: IIR bits 7:6 set (16550A)");

	/* Receive */
	TAP_OK(serial_8250_rx_room(uart) == SERIAL_RX_FIFO, "RX FIFO empty");
	TAP_OK(serial_8250_receive(uart, (const uint8_t *)"ab", 2) == 2, "two bytes received");
	TAP_OK(rd(5) & 0x01, "LSR: data ready");
	TAP_OK(fh.level == 0, "no IRQ while RDI disabled");
	wr(1, 0x01);
	TAP_OK(fh.level == 1 && (rd(2) & 0x0f) == 0x04, "RDI enabled: IRQ with IIR = received data");
	TAP_OK(rd(0) == 'a' && rd(0) == 'b', "RBR returns bytes in order");
	TAP_OK(!(rd(5) & 0x01) && fh.level == 0, "FIFO drained: no data ready, IRQ dropped");
	TAP_OK(rd(0) == 0, "RBR on empty FIFO reads 0");

	/* Bounded FIFO and the wake when it drains */
	uint8_t big[300];
	memset(big, 'z', sizeof(big));
	TAP_OK(serial_8250_receive(uart, big, sizeof(big)) == SERIAL_RX_FIFO, "receive takes only what fits");
	TAP_OK(serial_8250_rx_room(uart) == 0, "FIFO full");
	TAP_OK(serial_8250_receive(uart, big, 1) == 0, "nothing taken when full");
	TAP_OK(!(rd(5) & 0x02), "no overrun reported: bytes were refused, not lost");
	int wakes = fh.wakes;
	rd(0);
	TAP_OK(fh.wakes == wakes + 1, "reading from a full FIFO wakes the input side");
	rd(0);
	TAP_OK(fh.wakes == wakes + 1, "...only on the full -> not full edge");
	wr(2, 0x03);
	TAP_OK(serial_8250_rx_room(uart) == SERIAL_RX_FIFO && fh.level == 0, "FCR clear-RX empties the FIFO");
	wr(1, 0x00);

	/* Loopback, as Linux's probe uses it */
	wr(4, 0x1a);
	TAP_OK((rd(6) & 0xf0) == 0x90, "loopback: MSR = CTS|DCD for MCR = LOOP|RTS|OUT2");
	wr(0, 'L');
	TAP_OK(read(fds[0], out, sizeof(out)) < 0, "loopback: byte not sent out");
	TAP_OK((rd(5) & 0x01) && rd(0) == 'L', "loopback: byte came back on RBR");
	TAP_OK(serial_8250_receive(uart, (const uint8_t *)"q", 1) == 0, "loopback: outside input refused");
	wr(4, 0x0b);
	TAP_OK((rd(6) & 0xf0) == 0xb0, "normal mode: DCD, DSR, CTS asserted");

	/* Multi-byte access: each byte hits consecutive registers */
	uint8_t two[2] = { 0x11, 0x22 };
	serial_8250_ops.write(uart, 6, two, 2);
	TAP_OK(rd(7) == 0x22, "2-byte write at MSR also wrote SCR");

	serial_8250_free(uart);
	close(fds[0]);
	close(fds[1]);
	return tap_done();
}
