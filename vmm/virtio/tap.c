/* TAP backend: see tap.h. */
#include "vmm/virtio/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/err.h"
#include "base/util.h"

_Static_assert(TAP_OFFLOAD_CSUM == TUN_F_CSUM && TAP_OFFLOAD_TSO4 == TUN_F_TSO4 && TAP_OFFLOAD_TSO6 == TUN_F_TSO6 &&
		       TAP_OFFLOAD_TSO_ECN == TUN_F_TSO_ECN && TAP_OFFLOAD_UFO == TUN_F_UFO,
	       "TAP_OFFLOAD_* are the TUN_F_* bits");

static int set_iff(int fd, const char *name, short flags)
{
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	ifr.ifr_flags = flags;
	return ioctl(fd, TUNSETIFF, &ifr) < 0 ? -errno : 0;
}

static int link_up(const char *name, struct cella_err *err)
{
	_cleanup_close_ int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return cella_err_sys(err, errno, "tap %s: socket", name);
	struct ifreq ifr = { 0 };
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		return cella_err_sys(err, errno, "tap %s: SIOCGIFFLAGS", name);
	if (ifr.ifr_flags & IFF_UP)
		return 0;
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		return cella_err_sys(err, errno, "tap %s: bringing the link up", name);
	return 0;
}

int tap_open(struct tap *t, const char *name, struct cella_err *err)
{
	t->fd = -1;
	t->created = false;
	size_t len = strlen(name);
	if (len == 0 || len >= IFNAMSIZ || strchr(name, '/') || strchr(name, ':') || strpbrk(name, " \t\n") ||
	    !strcmp(name, ".") || !strcmp(name, ".."))
		return cella_err_set(err, EINVAL, "tap \"%s\": not a valid interface name (1..%d bytes, no '/', ':' "
				     "or spaces)", name, IFNAMSIZ - 1);
	_cleanup_close_ int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return cella_err_sys(err, errno, "tap %s: /dev/net/tun%s", name,
				     errno == ENOENT ? " (is the tun module loaded?)" : "");
	unsigned features = 0;
	if (ioctl(fd, TUNGETFEATURES, &features) < 0)
		return cella_err_sys(err, errno, "tap %s: TUNGETFEATURES", name);
	if (!(features & IFF_VNET_HDR))
		return cella_err_set(err, ENOTSUP, "tap %s: the kernel's TAP lacks IFF_VNET_HDR", name);
	const short flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	/* IFF_TUN_EXCL makes "create" fail with EBUSY when the name exists, so we know for sure whether
	 * the interface is ours (and will vanish with our fd) without a racy lookup first. */
	bool created = true;
	int r = set_iff(fd, name, flags | IFF_TUN_EXCL);
	if (r == -EBUSY) {
		created = false;
		r = set_iff(fd, name, flags);
	}
	if (r < 0) {
		const char *why = "";
		if (r == -EPERM)
			why = " (needs CAP_NET_ADMIN, or the TAP belongs to another user)";
		else if (r == -EBUSY)
			why = " (already attached by another process)";
		else if (r == -EINVAL && !created)
			why = " (an interface of that name exists and is not a single-queue TAP)";
		return cella_err_sys(err, -r, "tap %s: %s%s", name, created ? "create" : "attach", why);
	}
	int hdr = TAP_VNET_HDR_LEN;
	if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0)
		return cella_err_sys(err, errno, "tap %s: TUNSETVNETHDRSZ %d", name, hdr);
	/* no offloads until the guest negotiates them: the kernel finishes checksums and segments */
	if (ioctl(fd, TUNSETOFFLOAD, 0ul) < 0)
		return cella_err_sys(err, errno, "tap %s: TUNSETOFFLOAD", name);
	if (created && (r = link_up(name, err)) < 0)
		return r;
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->created = created;
	t->fd = TAKE_FD(fd);
	return 0;
}

int tap_set_offload(struct tap *t, unsigned flags, struct cella_err *err)
{
	if (ioctl(t->fd, TUNSETOFFLOAD, (unsigned long)flags) < 0)
		return cella_err_sys(err, errno, "tap %s: TUNSETOFFLOAD 0x%x", t->name, flags);
	return 0;
}

void tap_close(struct tap *t)
{
	if (t->fd >= 0)
		close(t->fd);
	t->fd = -1;
}
