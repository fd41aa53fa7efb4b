/* National Semiconductor 8250/16550A UART, the guest console.
 *
 * Eight registers at base+0..7; with LCR.DLAB set, offsets 0 and 1 are the divisor latch. The
 * transmitter is infinitely fast: a byte written to THR goes straight to the output fd and THR is
 * empty again, so the "THR empty" interrupt is pending after every write until IIR is read. Received
 * bytes wait in a bounded FIFO fed by the VMM's input loop. The interrupt line is level-modelled:
 * asserted while IIR has a cause, deasserted otherwise. Loopback (MCR bit 4) is modelled because
 * Linux's probe relies on it. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/log.h"
#include "base/util.h"
#include "vmm/hw/hw.h"
#include "vmm/snapfile.h"

enum {
	REG_RBR_THR_DLL = 0,
	REG_IER_DLM = 1,
	REG_IIR_FCR = 2,
	REG_LCR = 3,
	REG_MCR = 4,
	REG_LSR = 5,
	REG_MSR = 6,
	REG_SCR = 7,
};

#define IER_RDI 0x01  /* received data available */
#define IER_THRI 0x02 /* THR empty */
#define IER_RLSI 0x04 /* receiver line status */
#define IER_MSI 0x08  /* modem status */

#define IIR_NO_INT 0x01
#define IIR_MSI 0x00
#define IIR_THRI 0x02
#define IIR_RDI 0x04
#define IIR_RLSI 0x06
#define IIR_FIFO_ON 0xc0

#define FCR_ENABLE 0x01
#define FCR_CLEAR_RX 0x02
#define FCR_CLEAR_TX 0x04

#define LCR_DLAB 0x80

#define MCR_DTR 0x01
#define MCR_RTS 0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10

#define LSR_DR 0x01
#define LSR_OE 0x02
#define LSR_BI 0x10
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define LSR_ERRORS 0x1e

#define MSR_DCTS 0x01
#define MSR_DDSR 0x02
#define MSR_TERI 0x04
#define MSR_DDCD 0x08
#define MSR_CTS 0x10
#define MSR_DSR 0x20
#define MSR_RI 0x40
#define MSR_DCD 0x80

struct serial_8250 {
	pthread_mutex_t lock;
	const struct hw_host *host;
	unsigned irq;
	int out_fd;
	bool irq_level;

	uint8_t ier, lcr, mcr, msr, scr, dll, dlm, fcr;
	uint8_t lsr_errors;   /* sticky error bits, cleared by reading LSR */
	bool thr_ipending;    /* THR-empty interrupt not yet acknowledged by reading IIR */

	uint8_t rx[SERIAL_RX_FIFO];
	size_t rx_head, rx_count;
	uint64_t tx_count;
};

static const struct hw_host null_host;

int serial_8250_new(const struct hw_host *host, unsigned irq, int out_fd, struct serial_8250 **out,
		    struct cella_err *err)
{
	struct serial_8250 *s = calloc(1, sizeof(*s));
	if (!s)
		return cella_err_set(err, ENOMEM, "serial: out of memory");
	pthread_mutex_init(&s->lock, NULL);
	s->host = host ? host : &null_host;
	s->irq = irq;
	s->out_fd = out_fd;
	s->lcr = 0x03; /* 8N1 */
	s->mcr = MCR_OUT2;
	s->msr = MSR_DCD | MSR_DSR | MSR_CTS;
	s->dll = 0x0c; /* 9600 baud */
	*out = s;
	return 0;
}

void serial_8250_free(struct serial_8250 *s)
{
	if (!s)
		return;
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* The highest-priority pending cause, as IIR's low nibble. */
static uint8_t pending_cause(const struct serial_8250 *s)
{
	if ((s->ier & IER_RLSI) && (s->lsr_errors & LSR_ERRORS))
		return IIR_RLSI;
	if ((s->ier & IER_RDI) && s->rx_count)
		return IIR_RDI;
	if ((s->ier & IER_THRI) && s->thr_ipending)
		return IIR_THRI;
	if ((s->ier & IER_MSI) && (s->msr & (MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD)))
		return IIR_MSI;
	return IIR_NO_INT;
}

static void update_irq(struct serial_8250 *s)
{
	bool level = pending_cause(s) != IIR_NO_INT;
	if (level == s->irq_level)
		return;
	s->irq_level = level;
	if (s->host->set_irq) {
		int r = s->host->set_irq(s->host->ctx, s->irq, level);
		if (r < 0)
			log_warn("serial: setting IRQ %u to %d: %s", s->irq, level, strerror(-r));
	}
}

static void rx_push(struct serial_8250 *s, uint8_t byte)
{
	if (s->rx_count == SERIAL_RX_FIFO) {
		s->lsr_errors |= LSR_OE;
		return;
	}
	s->rx[(s->rx_head + s->rx_count) % SERIAL_RX_FIFO] = byte;
	s->rx_count++;
}

static uint8_t rx_pop(struct serial_8250 *s)
{
	if (!s->rx_count)
		return 0;
	uint8_t byte = s->rx[s->rx_head];
	s->rx_head = (s->rx_head + 1) % SERIAL_RX_FIFO;
	s->rx_count--;
	return byte;
}

/* Modem status as seen in loopback: outputs wired back to inputs. */
static uint8_t loopback_msr(uint8_t mcr)
{
	uint8_t msr = 0;
	if (mcr & MCR_RTS)
		msr |= MSR_CTS;
	if (mcr & MCR_DTR)
		msr |= MSR_DSR;
	if (mcr & MCR_OUT1)
		msr |= MSR_RI;
	if (mcr & MCR_OUT2)
		msr |= MSR_DCD;
	return msr;
}

static void transmit(struct serial_8250 *s, uint8_t byte)
{
	s->tx_count++;
	if (s->mcr & MCR_LOOP) {
		rx_push(s, byte);
		return;
	}
	if (s->out_fd < 0)
		return;
	int r = cella_write_all(s->out_fd, &byte, 1);
	if (r < 0 && r != -EAGAIN) {
		log_warn("serial: writing guest output: %s; dropping further output", strerror(-r));
		s->out_fd = -1;
	}
}

static uint8_t reg_read(struct serial_8250 *s, unsigned reg, bool *drained)
{
	uint8_t v = 0;
	switch (reg) {
	case REG_RBR_THR_DLL:
		if (s->lcr & LCR_DLAB)
			return s->dll;
		*drained = s->rx_count == SERIAL_RX_FIFO;
		return rx_pop(s);
	case REG_IER_DLM:
		return (s->lcr & LCR_DLAB) ? s->dlm : s->ier;
	case REG_IIR_FCR:
		v = pending_cause(s);
		if (v == IIR_THRI)
			s->thr_ipending = false; /* reading IIR acknowledges THR empty */
		return v | ((s->fcr & FCR_ENABLE) ? IIR_FIFO_ON : 0);
	case REG_LCR:
		return s->lcr;
	case REG_MCR:
		return s->mcr;
	case REG_LSR:
		v = LSR_THRE | LSR_TEMT | s->lsr_errors | (s->rx_count ? LSR_DR : 0);
		s->lsr_errors = 0;
		return v;
	case REG_MSR:
		if (s->mcr & MCR_LOOP)
			return loopback_msr(s->mcr);
		v = s->msr;
		s->msr &= ~(MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD);
		return v;
	case REG_SCR:
		return s->scr;
	}
	return 0xff;
}

static void reg_write(struct serial_8250 *s, unsigned reg, uint8_t v)
{
	switch (reg) {
	case REG_RBR_THR_DLL:
		if (s->lcr & LCR_DLAB) {
			s->dll = v;
			return;
		}
		transmit(s, v);
		s->thr_ipending = true; /* THR is empty again at once */
		return;
	case REG_IER_DLM:
		if (s->lcr & LCR_DLAB) {
			s->dlm = v;
			return;
		}
		/* Enabling the THR-empty interrupt while THR is empty raises it (Linux tests this). */
		if ((v & IER_THRI) && !(s->ier & IER_THRI))
			s->thr_ipending = true;
		else if (!(v & IER_THRI))
			s->thr_ipending = false;
		s->ier = v & 0x0f;
		return;
	case REG_IIR_FCR:
		if ((v ^ s->fcr) & FCR_ENABLE)
			v |= FCR_CLEAR_RX | FCR_CLEAR_TX;
		if (v & FCR_CLEAR_RX)
			s->rx_head = s->rx_count = 0;
		s->fcr = v & 0xc9; /* enable, DMA mode, trigger level */
		return;
	case REG_LCR:
		s->lcr = v;
		return;
	case REG_MCR:
		s->mcr = v & 0x1f;
		return;
	case REG_SCR:
		s->scr = v;
		return;
	default: /* LSR and MSR writes are factory-test only */
		return;
	}
}

static void serial_read(void *opaque, uint64_t offset, uint8_t *data, uint32_t len)
{
	struct serial_8250 *s = opaque;
	bool drained = false;
	pthread_mutex_lock(&s->lock);
	for (uint32_t i = 0; i < len; i++)
		data[i] = offset + i < 8 ? reg_read(s, (unsigned)(offset + i), &drained) : 0xff;
	update_irq(s);
	pthread_mutex_unlock(&s->lock);
	if (drained && s->host->wake)
		s->host->wake(s->host->ctx);
}

static void serial_write(void *opaque, uint64_t offset, const uint8_t *data, uint32_t len)
{
	struct serial_8250 *s = opaque;
	pthread_mutex_lock(&s->lock);
	for (uint32_t i = 0; i < len; i++)
		if (offset + i < 8)
			reg_write(s, (unsigned)(offset + i), data[i]);
	update_irq(s);
	pthread_mutex_unlock(&s->lock);
}

const struct bus_ops serial_8250_ops = { .read = serial_read, .write = serial_write };

size_t serial_8250_rx_room(struct serial_8250 *s)
{
	pthread_mutex_lock(&s->lock);
	size_t room = SERIAL_RX_FIFO - s->rx_count;
	pthread_mutex_unlock(&s->lock);
	return room;
}

size_t serial_8250_receive(struct serial_8250 *s, const uint8_t *buf, size_t len)
{
	pthread_mutex_lock(&s->lock);
	size_t n = 0;
	/* In loopback the line is disconnected from the outside world. */
	if (!(s->mcr & MCR_LOOP))
		for (; n < len && s->rx_count < SERIAL_RX_FIFO; n++)
			rx_push(s, buf[n]);
	update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return n;
}

uint64_t serial_8250_tx_count(struct serial_8250 *s)
{
	pthread_mutex_lock(&s->lock);
	uint64_t n = s->tx_count;
	pthread_mutex_unlock(&s->lock);
	return n;
}

void serial_8250_save(struct serial_8250 *s, struct snap_writer *w)
{
	pthread_mutex_lock(&s->lock);
	uint8_t regs[] = { s->ier, s->lcr, s->mcr, s->msr, s->scr, s->dll, s->dlm, s->fcr, s->lsr_errors };
	snap_put(w, regs, sizeof(regs));
	snap_put_bool(w, s->thr_ipending);
	snap_put_u64(w, s->tx_count);
	snap_put_u32(w, (uint32_t)s->rx_count);
	for (size_t i = 0; i < s->rx_count; i++) /* oldest first */
		snap_put_u8(w, s->rx[(s->rx_head + i) % SERIAL_RX_FIFO]);
	pthread_mutex_unlock(&s->lock);
}

int serial_8250_load(struct serial_8250 *s, struct snap_sec *sec, struct cella_err *err)
{
	uint8_t regs[9];
	snap_get(sec, regs, sizeof(regs));
	bool thr = snap_get_bool(sec);
	uint64_t tx = snap_get_u64(sec);
	uint32_t n = snap_get_u32(sec);
	if (n > SERIAL_RX_FIFO)
		return cella_err_set(err, EINVAL, "serial: %u bytes in a %d-byte receive FIFO", n, SERIAL_RX_FIFO);
	pthread_mutex_lock(&s->lock);
	s->ier = regs[0] & 0x0f;
	s->lcr = regs[1];
	s->mcr = regs[2] & 0x1f;
	s->msr = regs[3];
	s->scr = regs[4];
	s->dll = regs[5];
	s->dlm = regs[6];
	s->fcr = regs[7] & 0xc9;
	s->lsr_errors = regs[8] & LSR_ERRORS;
	s->thr_ipending = thr;
	s->tx_count = tx;
	s->rx_head = 0;
	snap_get(sec, s->rx, n);
	s->rx_count = n;
	/* The line level follows from the registers: raise it again if a cause is pending. */
	s->irq_level = false;
	update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return 0;
}
