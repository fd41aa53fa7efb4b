/* cella checkpoint --image-path DIR [--work-path DIR] [--leave-running] [--tcp-established]
 *                  [--ext-unix-sk] [--shell-job] [--file-locks] [--manage-cgroups-mode M] ID
 * cella restore --image-path DIR [--work-path DIR] [--bundle B] [--detach] [--pid-file F]
 *               [--console-socket S] [same CRIU flags] ID
 * runc's names; flags runc has that we take without effect: --no-subreaper, --no-pivot. */
#include "cmd/cella/cella.h"
#include "runtime/container_ctl.h"

#include <errno.h>
#include <string.h>

enum {
	O_IMAGE = 1, O_WORK, O_LEAVE, O_TCP, O_UNIX, O_SHELL, O_LOCKS, O_CGMODE,
	O_BUNDLE, O_DETACH, O_PIDFILE, O_CONSOLE, O_IGNORED,
};

static const struct opt cr_opts[] = {
	{ "image-path", 0, true, O_IMAGE },
	{ "work-path", 0, true, O_WORK },
	{ "leave-running", 0, false, O_LEAVE },
	{ "tcp-established", 0, false, O_TCP },
	{ "ext-unix-sk", 0, false, O_UNIX },
	{ "shell-job", 0, false, O_SHELL },
	{ "file-locks", 0, false, O_LOCKS },
	{ "manage-cgroups-mode", 0, true, O_CGMODE },
	{ "bundle", 'b', true, O_BUNDLE },
	{ "detach", 'd', false, O_DETACH },
	{ "pid-file", 0, true, O_PIDFILE },
	{ "console-socket", 0, true, O_CONSOLE },
	{ "no-subreaper", 0, false, O_IGNORED },
	{ "no-pivot", 0, false, O_IGNORED },
	{ NULL, 0, false, 0 },
};

/* restore: the restore-only flags are allowed; checkpoint: --leave-running only. */
static int parse(int argc, char **argv, bool restore, struct container_restore_opts *o, struct cella_err *err)
{
	const char *val;
	int i = 1, id;
	while ((id = opt_next(argc, argv, &i, cr_opts, &val, err)) != -1) {
		bool on = val && !strcmp(val, "true");
		if (id == -2)
			return -EINVAL;
		if ((restore && id == O_LEAVE) || (!restore && id >= O_BUNDLE)) {
			const struct opt *o2 = cr_opts;
			while (o2->id != id)
				o2++;
			return cella_err_set(err, EINVAL, "flag provided but not defined: --%s", o2->name);
		}
		switch (id) {
		case 0:
			if (o->id)
				return cella_err_set(err, EINVAL, "%s: unexpected argument \"%s\"", argv[0], val);
			o->id = val;
			break;
		case O_IMAGE: o->cr.image_path = val; break;
		case O_WORK: o->cr.work_path = val; break;
		case O_LEAVE: o->cr.leave_running = on; break;
		case O_TCP: o->cr.tcp_established = on; break;
		case O_UNIX: o->cr.ext_unix_sk = on; break;
		case O_SHELL: o->cr.shell_job = on; break;
		case O_LOCKS: o->cr.file_locks = on; break;
		case O_CGMODE: o->cr.manage_cgroups_mode = val; break;
		case O_BUNDLE: o->bundle = val; break;
		case O_DETACH: o->detach = on; break;
		case O_PIDFILE: o->pid_file = val; break;
		case O_CONSOLE: o->console_socket = val; break;
		default: break;
		}
	}
	if (!o->id)
		return cella_err_set(err, EINVAL, "%s: container id cannot be empty", argv[0]);
	if (!o->cr.image_path)
		return cella_err_set(err, EINVAL, "%s: --image-path is required", argv[0]);
	return 0;
}

int verb_checkpoint(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	struct container_restore_opts o = { 0 };
	int r = parse(argc, argv, false, &o, err);
	if (r < 0)
		return r;
	return container_checkpoint(&g->rt, o.id, &o.cr, err);
}

int verb_restore(const struct global_opts *g, int argc, char **argv, struct cella_err *err)
{
	struct container_restore_opts o = { 0 };
	int r = parse(argc, argv, true, &o, err);
	if (r < 0)
		return r;
	int status = 0;
	r = container_restore(&g->rt, &o, &status, err);
	if (r < 0)
		return r;
	if (!o.detach)
		cella_exit_status = status;
	return 0;
}
