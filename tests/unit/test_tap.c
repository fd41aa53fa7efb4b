/* The TAP backend in a private network namespace (every interface dies with it): bad names, create
 * (brought up, removed when the fd closes), attach to a persistent TAP (left in place), a second
 * attach while in use, a name taken by a non-TAP interface, offloads. Skips without /dev/net/tun or
 * CAP_NET_ADMIN. */
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/err.h"
#include "tap.h"
#include "vmm/virtio/tap.h"

static bool link_is_up(const char *name)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	bool up = s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_UP);
	if (s >= 0)
		close(s);
	return up;
}

int main(void)
{
	if (access("/dev/net/tun", R_OK | W_OK) < 0)
		TAP_SKIP_ALL("no /dev/net/tun");
	if (unshare(CLONE_NEWNET) < 0)
		TAP_SKIP_ALL("cannot make a network namespace (needs CAP_SYS_ADMIN)");
	struct cella_err err = { 0 };
	struct tap t, t2;

	TAP_OK(tap_open(&t, "", &err) == -EINVAL && t.fd == -1, "empty name refused: %s", err.msg);
	TAP_OK(tap_open(&t, "a-name-of-16-chr", &err) == -EINVAL, "16-byte name refused");
	TAP_OK(tap_open(&t, "a/b", NULL) == -EINVAL, "'/' refused");
	TAP_OK(tap_open(&t, "..", NULL) == -EINVAL, "'..' refused");

	/* create */
	cella_err_clear(&err);
	TAP_OK(tap_open(&t, "cella-t0", &err) == 0, "create: %s", err.msg);
	TAP_OK(t.created && t.fd >= 0 && if_nametoindex("cella-t0") > 0, "create: ours, interface exists");
	TAP_OK(link_is_up("cella-t0"), "create: link brought up");
	int fl = fcntl(t.fd, F_GETFL), fdfl = fcntl(t.fd, F_GETFD);
	TAP_OK((fl & O_NONBLOCK) && (fdfl & FD_CLOEXEC), "fd non-blocking and close-on-exec");
	struct ifreq ifr = { 0 };
	TAP_OK(ioctl(t.fd, TUNGETIFF, &ifr) == 0 && (ifr.ifr_flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)) ==
							   (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR),
	       "IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (0x%x)", (unsigned)ifr.ifr_flags);
	int hdr = 0;
	TAP_OK(ioctl(t.fd, TUNGETVNETHDRSZ, &hdr) == 0 && hdr == 12, "vnet header size 12 (%d)", hdr);
	cella_err_clear(&err);
	TAP_OK(tap_set_offload(&t, TAP_OFFLOAD_CSUM | TAP_OFFLOAD_TSO4 | TAP_OFFLOAD_TSO6, &err) == 0,
	       "offloads csum+tso4+tso6: %s", err.msg);
	TAP_OK(tap_set_offload(&t, 0, NULL) == 0, "offloads off");
	uint8_t ssize_hdr[12 + 60] = { 0 };
	memset(ssize_hdr + 12, 0xff, 6); /* broadcast destination */
	TAP_OK(write(t.fd, ssize_hdr, sizeof(ssize_hdr)) == (ssize_t)sizeof(ssize_hdr), "a frame behind a header is taken");
	TAP_OK(tap_open(&t2, "cella-t0", &err) == -EBUSY, "second attach while in use: %s", err.msg);
	tap_close(&t);
	tap_close(&t);
	TAP_OK(if_nametoindex("cella-t0") == 0, "created TAP gone once closed");

	/* attach to a persistent TAP someone else made */
	int pfd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	struct ifreq p = { .ifr_flags = IFF_TAP | IFF_NO_PI };
	snprintf(p.ifr_name, sizeof(p.ifr_name), "cella-p0");
	bool made = pfd >= 0 && ioctl(pfd, TUNSETIFF, &p) == 0 && ioctl(pfd, TUNSETPERSIST, 1) == 0;
	if (pfd >= 0)
		close(pfd);
	TAP_OK(made, "persistent TAP made");
	cella_err_clear(&err);
	TAP_OK(tap_open(&t, "cella-p0", &err) == 0 && !t.created, "attach: %s", err.msg);
	TAP_OK(!link_is_up("cella-p0"), "attach: the link is left as it was (down)");
	tap_close(&t);
	TAP_OK(if_nametoindex("cella-p0") > 0, "attached TAP stays after close");
	pfd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (pfd >= 0 && ioctl(pfd, TUNSETIFF, &p) == 0)
		ioctl(pfd, TUNSETPERSIST, 0);
	if (pfd >= 0)
		close(pfd);
	TAP_OK(if_nametoindex("cella-p0") == 0, "persistent TAP removed by the test");

	/* a name taken by something that is not a TAP */
	TAP_OK(tap_open(&t, "lo", &err) < 0 && t.fd == -1, "\"lo\" refused: %s", err.msg);

	printf("1..%d\n", tap_n);
	return tap_failed ? 1 : 0;
}
