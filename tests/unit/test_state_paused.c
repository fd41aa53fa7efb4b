/* state_paused: "paused" comes from the saved cgroup instance's freezer (v1 freezer.state, or
 * cgroup.freeze on a pure v2 host), read from a fake directory here. */
#include "base/util.h"
#include "runtime/state.h"
#include "tap.h"

#include <jansson.h>
#include <unistd.h>

static char dir[] = "/tmp/cella-paused-XXXXXX";

static void put(const char *file, const char *content)
{
	_cleanup_free_ char *p = cella_path_join(dir, file);
	cella_write_file(p, content, strlen(content), 0644, NULL);
}

static bool paused_with(const char *mode, const char *type, const char *controllers)
{
	struct container_state st = { 0 };
	st.cgroup = json_pack("{s:s, s:[{s:s, s:s, s:s}]}", "mode", mode, "dirs", "type", type, "controllers",
			      controllers, "path", dir);
	bool r = state_paused(&st);
	json_decref(st.cgroup);
	return r;
}

int main(void)
{
	if (!mkdtemp(dir))
		TAP_SKIP_ALL("mkdtemp failed");
	struct container_state none = { 0 };
	TAP_OK(!state_paused(&none), "no saved cgroup: not paused");

	put("freezer.state", "FROZEN\n");
	TAP_OK(paused_with("hybrid", "v1", "freezer"), "v1 freezer FROZEN: paused");
	TAP_OK(!paused_with("v1", "v1", "memory"), "no freezer hierarchy: not paused");
	put("freezer.state", "THAWED\n");
	TAP_OK(!paused_with("v1", "v1", "freezer"), "v1 freezer THAWED: running");
	put("freezer.state", "FREEZING\n");
	TAP_OK(!paused_with("v1", "v1", "freezer"), "v1 FREEZING is not (yet) paused");

	put("cgroup.freeze", "1\n");
	TAP_OK(paused_with("v2", "v2", "cpu,memory,pids"), "v2 cgroup.freeze 1: paused");
	TAP_OK(!paused_with("hybrid", "v2", "hugetlb"), "hybrid: the v2 dir does not drive the freezer");
	put("cgroup.freeze", "0\n");
	TAP_OK(!paused_with("v2", "v2", "cpu,memory,pids"), "v2 cgroup.freeze 0: running");

	cella_rm_rf(dir, NULL);
	return tap_done();
}
