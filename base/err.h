/* Errors with context: an int return (0 or -errno) plus an optional message chain. */
#pragma once
#include <stdarg.h>
#include <stddef.h>

#define CELLA_ERR_MSG_MAX 2048

struct cella_err {
	int code;                     /* positive errno of the first failure, 0 if none */
	char msg[CELLA_ERR_MSG_MAX];  /* "outer context: inner context: cause" */
};

/* Records a failure and returns -code. err may be NULL. code may be given as +errno or -errno. */
int cella_err_set(struct cella_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Like cella_err_set, appending ": strerror(code)". */
int cella_err_sys(struct cella_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prefixes existing message with more context ("ctx: old"); returns -err->code (or -EIO). */
int cella_err_wrap(struct cella_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void cella_err_clear(struct cella_err *err);
