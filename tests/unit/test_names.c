/* Capability, rlimit and signal name tables. */
#include "base/util.h"
#include "runtime/names.h"
#include "tap.h"

#include <linux/capability.h>
#include <signal.h>
#include <sys/resource.h>

static void test_caps(void)
{
	TAP_OK(cella_cap_last() == 40, "capabilities known up to 40 (CAP_CHECKPOINT_RESTORE)");
	TAP_OK(cella_cap_last() >= CAP_LAST_CAP, "table covers the kernel headers' CAP_LAST_CAP (%d)", CAP_LAST_CAP);
	bool round = true;
	for (int c = 0; c <= cella_cap_last(); c++) {
		const char *n = cella_cap_name(c);
		if (!n || strncmp(n, "CAP_", 4) || cella_cap_from_name(n) != c) {
			round = false;
			printf("#   capability %d (%s) does not round-trip\n", c, n ? n : "NULL");
		}
	}
	TAP_OK(round, "every capability name round-trips");
	TAP_OK(cella_cap_from_name("CAP_CHOWN") == CAP_CHOWN, "CAP_CHOWN = %d", CAP_CHOWN);
	TAP_OK(cella_cap_from_name("CAP_SYS_ADMIN") == CAP_SYS_ADMIN, "CAP_SYS_ADMIN = %d", CAP_SYS_ADMIN);
	TAP_OK(cella_cap_from_name("CAP_AUDIT_READ") == CAP_AUDIT_READ, "CAP_AUDIT_READ = %d", CAP_AUDIT_READ);
	TAP_OK(cella_cap_from_name("CAP_PERFMON") == 38 && cella_cap_from_name("CAP_BPF") == 39, "PERFMON, BPF");
	TAP_OK(cella_cap_from_name("CAP_CHECKPOINT_RESTORE") == 40, "CAP_CHECKPOINT_RESTORE = 40");
	TAP_OK(cella_cap_from_name("CAP_TEST") == -1, "CAP_TEST is unknown");
	TAP_OK(cella_cap_from_name("cap_chown") == -1, "names are case-sensitive (as runc)");
	TAP_OK(cella_cap_from_name("CHOWN") == -1, "CAP_ prefix required");
	TAP_OK(cella_cap_from_name("") == -1 && cella_cap_from_name(NULL) == -1, "empty/NULL unknown");
	TAP_OK(cella_cap_name(-1) == NULL && cella_cap_name(41) == NULL && cella_cap_name(63) == NULL,
	       "out-of-range numbers have no name");
}

static void test_rlimits(void)
{
	static const struct {
		const char *name;
		int res;
	} want[] = {
		{ "RLIMIT_CPU", RLIMIT_CPU },		{ "RLIMIT_FSIZE", RLIMIT_FSIZE },
		{ "RLIMIT_DATA", RLIMIT_DATA },		{ "RLIMIT_STACK", RLIMIT_STACK },
		{ "RLIMIT_CORE", RLIMIT_CORE },		{ "RLIMIT_RSS", RLIMIT_RSS },
		{ "RLIMIT_NPROC", RLIMIT_NPROC },	{ "RLIMIT_NOFILE", RLIMIT_NOFILE },
		{ "RLIMIT_MEMLOCK", RLIMIT_MEMLOCK },	{ "RLIMIT_AS", RLIMIT_AS },
		{ "RLIMIT_LOCKS", RLIMIT_LOCKS },	{ "RLIMIT_SIGPENDING", RLIMIT_SIGPENDING },
		{ "RLIMIT_MSGQUEUE", RLIMIT_MSGQUEUE }, { "RLIMIT_NICE", RLIMIT_NICE },
		{ "RLIMIT_RTPRIO", RLIMIT_RTPRIO },	{ "RLIMIT_RTTIME", RLIMIT_RTTIME },
	};
	bool ok = true;
	for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
		const char *n = cella_rlimit_name(want[i].res);
		if (cella_rlimit_from_name(want[i].name) != want[i].res || !n || strcmp(n, want[i].name)) {
			ok = false;
			printf("#   %s does not round-trip\n", want[i].name);
		}
	}
	TAP_OK(ok, "all %zu RLIMIT_* names round-trip", ARRAY_SIZE(want));
	TAP_OK(RLIMIT_NLIMITS == 16, "kernel has 16 rlimits (table complete)");
	TAP_OK(cella_rlimit_from_name("RLIMIT_FOO") == -1, "unknown rlimit");
	TAP_OK(cella_rlimit_from_name("rlimit_nofile") == -1, "rlimit names are case-sensitive");
	TAP_OK(cella_rlimit_from_name("NOFILE") == -1, "RLIMIT_ prefix required");
	TAP_OK(cella_rlimit_name(99) == NULL && cella_rlimit_name(-1) == NULL, "unknown number has no name");
}

static void test_signals(void)
{
	TAP_OK(cella_signal_from_name("KILL") == SIGKILL, "KILL");
	TAP_OK(cella_signal_from_name("SIGKILL") == SIGKILL, "SIGKILL");
	TAP_OK(cella_signal_from_name("kill") == SIGKILL, "kill (case-insensitive)");
	TAP_OK(cella_signal_from_name("sigterm") == SIGTERM, "sigterm");
	TAP_OK(cella_signal_from_name("SigHup") == SIGHUP, "SigHup");
	TAP_OK(cella_signal_from_name("9") == 9, "9");
	TAP_OK(cella_signal_from_name("15") == SIGTERM, "15");
	TAP_OK(cella_signal_from_name("64") == 64, "64 (highest real-time)");
	TAP_OK(cella_signal_from_name("65") == -1, "65 rejected");
	TAP_OK(cella_signal_from_name("0") == -1, "0 rejected");
	TAP_OK(cella_signal_from_name("-9") == -1, "-9 rejected");
	TAP_OK(cella_signal_from_name("9x") == -1, "9x rejected");
	TAP_OK(cella_signal_from_name("0009") == -1, "overlong number rejected");
	TAP_OK(cella_signal_from_name("") == -1 && cella_signal_from_name(NULL) == -1, "empty/NULL rejected");
	TAP_OK(cella_signal_from_name("SIG") == -1, "bare SIG rejected");
	TAP_OK(cella_signal_from_name("SIGFOO") == -1 && cella_signal_from_name("FOO") == -1, "unknown name");
	TAP_OK(cella_signal_from_name("USR1") == SIGUSR1 && cella_signal_from_name("SIGUSR2") == SIGUSR2, "USR1/USR2");
	TAP_OK(cella_signal_from_name("WINCH") == SIGWINCH && cella_signal_from_name("CHLD") == SIGCHLD &&
		       cella_signal_from_name("CLD") == SIGCHLD && cella_signal_from_name("IOT") == SIGABRT,
	       "WINCH, CHLD, aliases CLD and IOT");
	TAP_OK(cella_signal_from_name("RTMIN") == SIGRTMIN && cella_signal_from_name("SIGRTMIN+3") == SIGRTMIN + 3 &&
		       cella_signal_from_name("rtmax-1") == SIGRTMAX - 1 && cella_signal_from_name("RTMAX") == SIGRTMAX,
	       "RTMIN, RTMIN+n, RTMAX-n");
	TAP_OK(cella_signal_from_name("RTMIN-1") == -1 && cella_signal_from_name("RTMAX+1") == -1 &&
		       cella_signal_from_name("RTMIN+99") == -1,
	       "out-of-range real-time names rejected");
	bool round = true;
	for (int s = 1; s < 32; s++) {
		const char *n = cella_signal_name(s);
		char buf[32];
		if (!n) {
			round = false;
			printf("#   signal %d has no name\n", s);
			continue;
		}
		snprintf(buf, sizeof(buf), "SIG%s", n);
		if (cella_signal_from_name(n) != s || cella_signal_from_name(buf) != s) {
			round = false;
			printf("#   signal %d (%s) does not round-trip\n", s, n);
		}
	}
	TAP_OK(round, "signals 1..31 have names that round-trip");
	TAP_STREQ(cella_signal_name(SIGABRT), "ABRT", "canonical name before alias");
	TAP_OK(cella_signal_name(0) == NULL && cella_signal_name(40) == NULL, "no name for 0 or real-time");
}

int main(void)
{
	test_caps();
	test_rlimits();
	test_signals();
	return tap_done();
}
