/* linux.seccomp → libseccomp translation: what builds, what is refused and how it is named. */
#include "base/err.h"
#include "runtime/config.h"
#include "runtime/seccomp.h"
#include "tap.h"

#include <errno.h>
#include <jansson.h>

/* Parses {"ociVersion", "root", "process", "linux": {"namespaces", "seccomp": sc}} and builds. */
static int build(const char *sc, struct cella_err *err)
{
	char doc[4096];
	snprintf(doc, sizeof(doc),
		 "{\"ociVersion\": \"1.2.0\", \"root\": {\"path\": \"rootfs\"}, \"process\": {\"args\": [\"sh\"], "
		 "\"cwd\": \"/\", \"user\": {\"uid\": 0, \"gid\": 0}}, \"linux\": {\"namespaces\": [{\"type\": "
		 "\"mount\"}], \"seccomp\": %s}}",
		 sc);
	json_t *j = json_loads(doc, 0, NULL);
	if (!j)
		return cella_err_set(err, EINVAL, "bad test json");
	struct oci_config *cfg = NULL;
	int r = oci_config_parse(j, "config.json", &cfg, err);
	json_decref(j);
	if (r < 0)
		return r;
	struct cella_seccomp *f = NULL;
	r = cella_seccomp_build(cfg->linux_.seccomp, &f, err);
	cella_seccomp_free(f);
	oci_config_free(cfg);
	return r;
}

static void ok(const char *sc, const char *what)
{
	struct cella_err e = { 0 };
	int r = build(sc, &e);
	TAP_OK(r == 0, "%s builds", what);
	if (r)
		printf("#   %s\n", e.msg);
}

static void bad(const char *sc, const char *want, const char *what)
{
	struct cella_err e = { 0 };
	int r = build(sc, &e);
	TAP_OK(r < 0 && strstr(e.msg, want), "%s is refused (\"%s\")", what, want);
	if (!(r < 0 && strstr(e.msg, want)))
		printf("#   got %d: %s\n", r, e.msg);
}

int main(void)
{
	ok("{\"defaultAction\": \"SCMP_ACT_ALLOW\"}", "allow-all");
	ok("{\"defaultAction\": \"SCMP_ACT_ERRNO\", \"defaultErrnoRet\": 38, \"syscalls\": [{\"names\": [\"read\", "
	   "\"write\"], \"action\": \"SCMP_ACT_ALLOW\"}]}",
	   "default errno with an allow list");
	ok("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"architectures\": [\"SCMP_ARCH_X86_64\", \"SCMP_ARCH_X86\", "
	   "\"SCMP_ARCH_X32\"], \"flags\": [\"SECCOMP_FILTER_FLAG_LOG\", \"SECCOMP_FILTER_FLAG_SPEC_ALLOW\", "
	   "\"SECCOMP_FILTER_FLAG_TSYNC\"]}",
	   "architectures and flags");
	ok("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"architectures\": [\"SCMP_ARCH_X86_64\", "
	   "\"SCMP_ARCH_LOONGARCH64\", \"SCMP_ARCH_M68K\", \"SCMP_ARCH_SHEB\"]}",
	   "architectures this libseccomp may not know (skipped)");
	ok("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"syscalls\": [{\"names\": [\"no_such_syscall\"], \"action\": "
	   "\"SCMP_ACT_ERRNO\"}]}",
	   "an unknown syscall name (skipped)");
	ok("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"syscalls\": [{\"names\": [\"chmod\"], \"action\": "
	   "\"SCMP_ACT_ERRNO\", \"args\": [{\"index\": 1, \"value\": 2, \"valueTwo\": 2, \"op\": "
	   "\"SCMP_CMP_MASKED_EQ\"}, {\"index\": 1, \"value\": 448, \"op\": \"SCMP_CMP_EQ\"}]}]}",
	   "two conditions on the same argument (one rule each)");
	ok("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"syscalls\": [{\"names\": [\"clone\"], \"action\": "
	   "\"SCMP_ACT_ERRNO\", \"args\": [{\"index\": 0, \"value\": 1, \"op\": \"SCMP_CMP_GE\"}, {\"index\": 1, "
	   "\"value\": 0, \"op\": \"SCMP_CMP_NE\"}]}]}",
	   "conditions on different arguments (ANDed)");
	ok("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"syscalls\": [{\"names\": [\"mkdir\"], \"action\": "
	   "\"SCMP_ACT_ALLOW\"}]}",
	   "a rule equal to the default action (dropped)");
	ok("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"listenerPath\": \"/run/agent.sock\", \"syscalls\": "
	   "[{\"names\": [\"mkdir\"], \"action\": \"SCMP_ACT_NOTIFY\"}]}",
	   "notify with a listener");
	bad("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"syscalls\": [{\"names\": [\"mkdir\"], \"action\": "
	    "\"SCMP_ACT_KILL\", \"errnoRet\": 5}]}",
	    "linux.seccomp.syscalls[0]: errnoRet is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE",
	    "errnoRet with a kill action");
	bad("{\"defaultAction\": \"SCMP_ACT_ERRNO\", \"defaultErrnoRet\": 70000}", "errnoRet 70000 out of range",
	    "an errno beyond 16 bits");
	bad("{\"defaultAction\": \"SCMP_ACT_NOPE\"}", "linux.seccomp.defaultAction: unknown seccomp action",
	    "an unknown action");
	bad("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"flags\": [\"SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV\"]}",
	    "linux.seccomp.flags[0]: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV is not supported", "an unsupported flag");
	bad("{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"syscalls\": [{\"names\": [\"mkdir\"], \"action\": "
	    "\"SCMP_ACT_NOTIFY\"}]}",
	    "listenerPath: required", "notify without a listener");
	return tap_done();
}
