/* The control API of cella-vmm (Firecracker's request shapes over HTTP/1.1 + JSON on a unix socket).
 *
 * Three layers, so the VM is only ever touched by the VMM thread:
 *  - api_parse (request.c): an HTTP request -> a typed struct api_action, or a 4xx. Pure; fuzzed.
 *  - api_check_state (request.c): the state machine; which actions a VM state allows (409 otherwise).
 *  - the API thread (server.c): owns the socket and the connections, parses, and hands each action to
 *    the VMM thread through a struct api_chan (one call in flight; an eventfd wakes the VMM's event
 *    loop), then waits for the reply and writes it. It never looks at the VM itself. */
#pragma once
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/api/http.h"

struct cella_err;

enum api_state {
	API_STATE_NOT_STARTED, /* waiting for configuration and InstanceStart */
	API_STATE_RUNNING,
	API_STATE_PAUSED,
	API_STATE_ENDED, /* the guest is gone; the process is on its way out */
};
/* Firecracker's spelling: "Not started", "Running", "Paused"; and "Ended". */
const char *api_state_name(enum api_state s);

enum api_kind {
	API_GET_INFO,          /* GET / */
	API_GET_METRICS,       /* GET /metrics */
	API_PUT_BOOT_SOURCE,   /* PUT /boot-source */
	API_PUT_MACHINE_CONFIG,/* PUT /machine-config */
	API_PUT_DRIVE,         /* PUT /drives/{id} */
	API_PUT_NET,           /* PUT /network-interfaces/{id} */
	API_PUT_VSOCK,         /* PUT /vsock */
	API_INSTANCE_START,    /* PUT /actions {"action_type": "InstanceStart"} */
	API_SEND_CTRL_ALT_DEL, /* PUT /actions {"action_type": "SendCtrlAltDel"} */
	API_PAUSE,             /* PATCH /vm {"state": "Paused"} */
	API_RESUME,            /* PATCH /vm {"state": "Resumed"} */
	API_SNAPSHOT_CREATE,   /* PUT /snapshot/create */
	API_SNAPSHOT_LOAD,     /* PUT /snapshot/load */
	API_PATCH_DRIVE,       /* PATCH /drives/{id} (rate limiter) */
	API_PATCH_NET,         /* PATCH /network-interfaces/{id} (rate limiters) */
	API_KIND_COUNT,
};
const char *api_kind_name(enum api_kind k);

/* A token bucket as Firecracker spells it: size (bytes or ops), one_time_burst, refill_time (ms). */
struct api_bucket {
	bool set;
	uint64_t size, one_time_burst, refill_time_ms;
};
struct api_rate_limiter {
	bool set;
	struct api_bucket bandwidth, ops;
};

#define API_ID_MAX 64
#define API_MAX_OVERRIDES 8

/* One snapshot-load override: the device's id and its new host-side backend. */
struct api_override {
	char *id, *value;
};

/* Strings are malloc'd (api_action_free); absent optional strings are NULL. */
struct api_action {
	enum api_kind kind;
	char id[API_ID_MAX]; /* drive_id / iface_id from the path (the body's must match) */
	struct {
		char *kernel, *initrd, *cmdline;
	} boot;
	struct {
		uint32_t cpus;
		uint64_t mem_mib;
	} machine;
	struct {
		char *path;
		bool read_only, root;
		struct api_rate_limiter rl;
	} drive;
	struct {
		char *host_dev, *guest_mac;
		struct api_rate_limiter rx, tx;
	} net;
	struct {
		uint32_t guest_cid;
		char *uds_path;
	} vsock;
	struct {
		char *state_path, *mem_path;
		bool resume;
		/* drive_overrides (drive_id, path_on_host: a cella extension), network_overrides
		 * (iface_id, host_dev_name) and vsock_override.uds_path */
		struct api_override drives[API_MAX_OVERRIDES], nets[API_MAX_OVERRIDES];
		unsigned ndrives, nnets;
		char *vsock_uds;
	} snap;
};

void api_action_free(struct api_action *a);

/* Routes req and parses its JSON body. Returns 0 with a filled, or an HTTP status (400, 404, 405)
 * with err->msg saying why ("machine-config: vcpu_count: required"). */
int api_parse(const struct http_request *req, struct api_action *a, struct cella_err *err);

/* The state machine. Returns 0 when state s allows a, else 409 with err->msg naming both. */
int api_check_state(enum api_state s, const struct api_action *a, struct cella_err *err);

/* {"fault_message": msg} (malloc'd; NULL on out of memory). */
char *api_fault_json(const char *msg);

/* --- API thread <-> VMM thread --- */

struct api_call {
	struct api_action action;
	int status;   /* reply: HTTP status */
	char *body;   /* reply: malloc'd JSON, or NULL (204) */
	bool done;
};

struct api_chan {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct api_call *pending; /* the one call waiting for the VMM thread */
	bool closed;              /* the VMM thread answers no more: calls fail with 409 "ended" */
	int wake_fd;              /* eventfd: readable when a call is pending */
	/* kept by the API thread, read for GET /metrics */
	atomic_uint_fast64_t requests, rejected, disconnects;
};

/* The VMM thread, when wake_fd is readable: takes the pending call (NULL if none). */
struct api_call *api_chan_take(struct api_chan *ch);
/* The VMM thread answers the call it took (status, malloc'd body or NULL). */
void api_chan_reply(struct api_chan *ch, struct api_call *call, int status, char *body);
/* The VMM thread stops answering: the pending call and later ones get 409 (state ended). */
void api_chan_close(struct api_chan *ch);

struct api_server;

/* Creates the socket at path (mode 0600; refuses an existing path) and starts the API thread.
 * The caller's signal mask is inherited: block termination signals first. */
int api_server_start(const char *path, struct api_server **out, struct cella_err *err);
/* The eventfd the VMM thread polls, and the channel it answers on. */
struct api_chan *api_server_chan(struct api_server *s);
/* Stops and joins the thread, closes every connection, removes the socket file (if it is still ours),
 * frees s. NULL is fine. Call api_chan_close first so a waiting request is answered. */
void api_server_stop(struct api_server *s);
