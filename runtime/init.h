/* The container init: what the create runtime hands to its child, the parent<->child sync
 * protocol, and the setup steps (one file each: mounts.c, devices.c, process.c, terminal.c,
 * namespaces.c). Internal to runtime/. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <termios.h>

#include "runtime/config.h"

struct cella_err;
struct cgroup_instance;
struct cgroup_join;

/* Messages over the SOCK_SEQPACKET socketpair between the runtime (P) and the child (C). */
enum sync_type {
	SYNC_USERMAP = 1, /* C -> P: I unshared a user namespace, write my uid/gid maps */
	SYNC_USERMAP_ACK, /* P -> C: maps written */
	SYNC_PID,         /* C -> P: the init is my child `pid` (pid namespace needed a fork); I exit */
	SYNC_GO,          /* P -> C: id maps written, in every cgroup: proceed with the setup */
	SYNC_READY,       /* C -> P: set up; about to wait on exec.fifo */
	SYNC_ACK,         /* P -> C: state recorded; you are on your own */
	SYNC_ERROR,       /* C -> P: setup failed: msg */
	SYNC_SECCOMP,     /* C -> P: seccomp notify fd follows (SCM_RIGHTS message) for listenerPath */
	SYNC_HOOKS,       /* C -> P: mounts prepared, not pivoted: run prestart/createRuntime hooks */
	SYNC_HOOKS_DONE,  /* P -> C: hooks succeeded (on failure the runtime kills the init) */
};

struct sync_msg {
	int32_t type;
	int32_t code; /* positive errno for SYNC_ERROR */
	int32_t pid;
	char msg[2048];
};

int sync_send(int fd, int type, int code, pid_t pid, const char *msg);
/* Receives one message; -EPIPE on EOF (the other side died). */
int sync_recv(int fd, struct sync_msg *m);

struct init_args {
	const struct oci_config *cfg;
	const char *bundle;      /* absolute */
	const char *rootfs;      /* absolute, symlinks resolved */
	int sync_fd;
	int console_fd;          /* connected --console-socket or -1 */
	int fifo_fd;             /* O_PATH fd of exec.fifo */
	int ns_fds[OCI_NS_COUNT]; /* namespaces to join (setns), -1 = not joined */
	unsigned long clone_flags; /* namespaces the clone itself created */
	bool staged;             /* clone without flags: the child joins/unshares and may fork */
	bool no_pivot;
	unsigned preserve_fds;
	bool in_userns;          /* new or joined user namespace: no mknod, bind host devices */
	struct cgroup_instance *cgroup; /* for "cgroup" mounts, may be NULL */
	struct cgroup_join *cgroup_join; /* the child moves itself into the v1 cgroups; NULL = the
					  * runtime moves it */
};

/* The child's whole life: namespaces, rootfs, process, wait for start, execve. Never returns. */
_Noreturn void container_init(struct init_args *a);

/* namespaces.c */
/* Opens every linux.namespaces[].path (O_RDONLY) into fds[] (others -1); checks each is a
 * namespace file of the right type. */
int ns_open_joined(const struct oci_config *cfg, int fds[OCI_NS_COUNT], struct cella_err *err);
void ns_close_joined(int fds[OCI_NS_COUNT]);
/* Writes /proc/PID/{uid_map,setgroups,gid_map} from linux.uidMappings/gidMappings. */
int ns_write_id_maps(pid_t pid, const struct oci_config *cfg, struct cella_err *err);
/* fork()-like raw clone with namespace flags (no stack switch, so it works under ASan). With
 * cgroup_fd >= 0 (a v2 directory) the child is born in that cgroup when the kernel allows it:
 * *in_cgroup says whether it was. */
pid_t ns_clone(unsigned long flags, int cgroup_fd, bool *in_cgroup);

/* mounts.c — run in the child, in its mount namespace */
int rootfs_prepare(struct init_args *a, struct cella_err *err);  /* propagation, rootfs bind, mounts, /dev */
int rootfs_pivot(struct init_args *a, struct cella_err *err);    /* pivot_root or MS_MOVE+chroot */
int rootfs_finalize(struct init_args *a, struct cella_err *err); /* readonly/masked paths, ro root */
/* Bind-mounts the pty slave on /dev/console (after pivot). */
int rootfs_mount_console(const char *slave, struct cella_err *err);

/* devices.c — default /dev nodes, symlinks and linux.devices, relative to the rootfs fd */
int devices_setup(struct init_args *a, int rootfd, bool dev_is_bind, struct cella_err *err);
/* Opens (creating dirs/file as needed) path inside the root without escaping it; O_PATH fd. */
int root_open(int rootfd, const char *path, bool make, bool as_dir, struct cella_err *err);

/* process.c */
int process_rlimits(const struct oci_process *p, struct cella_err *err);
int process_user_caps(const struct oci_process *p, struct cella_err *err);
/* envp for execve (adds HOME / PATH defaults as runc does); malloc'd vector. */
char **process_env(const struct oci_process *p);
/* Resolves args[0] with PATH from env (inside the container): malloc'd path or NULL + err. */
char *process_find_exec(const char *file, char *const *env, struct cella_err *err);

/* terminal.c */
/* Opens a pty (in the container's /dev/ptmx), makes the slave our controlling terminal and
 * stdio, and sends the master over sock with SCM_RIGHTS (runc's recvtty protocol). The init
 * (exec false) also mounts it on /dev/console; an exec'd process (exec true) first starts a
 * new session and leaves /dev/console to the init. */
int terminal_setup(const struct oci_process *p, int sock, bool exec, struct cella_err *err);
int terminal_send_fd(int sock, int fd, const char *name, struct cella_err *err);
/* Receives one fd; -EPIPE on EOF. */
int terminal_recv_fd(int sock, struct cella_err *err);
/* A connected stream socket to --console-socket PATH (O_CLOEXEC). */
int console_connect(const char *path, struct cella_err *err);

/* Foreground run/exec with a terminal and no --console-socket: the runtime holds the pty master
 * and copies between it and its own stdio (raw mode if stdin is a terminal), as runc does. */
struct tty_proxy {
	int master; /* -1 = no terminal: tty_proxy_wait only forwards signals */
	bool raw, stdin_open;
	struct termios saved;
};
/* Takes master (raw mode and window size from stdin if it is a terminal). */
void tty_proxy_start(struct tty_proxy *t, int master);
/* Waits for pid (we are its parent or subreaper) while copying the terminal and forwarding the
 * signals read from sigfd (SIGWINCH resizes the pty); returns its exit status, 128+n for signal n. */
int tty_proxy_wait(pid_t pid, int sigfd, struct tty_proxy *t);
/* Drains and closes the master, restores stdin's mode. */
void tty_proxy_stop(struct tty_proxy *t);
