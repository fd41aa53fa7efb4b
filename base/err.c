#include "base/err.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int normalize(int code)
{
	if (code < 0)
		code = -code;
	return code ? code : EIO;
}

static int vset(struct cella_err *err, int code, int with_strerror, const char *fmt, va_list ap)
{
	code = normalize(code);
	if (!err)
		return -code;
	err->code = code;
	int n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	if (with_strerror && n >= 0 && (size_t)n < sizeof(err->msg))
		snprintf(err->msg + n, sizeof(err->msg) - (size_t)n, ": %s", strerror(code));
	return -code;
}

int cella_err_set(struct cella_err *err, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vset(err, code, 0, fmt, ap);
	va_end(ap);
	return r;
}

int cella_err_sys(struct cella_err *err, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vset(err, code, 1, fmt, ap);
	va_end(ap);
	return r;
}

int cella_err_wrap(struct cella_err *err, const char *fmt, ...)
{
	if (!err)
		return -EIO;
	char ctx[CELLA_ERR_MSG_MAX];
	char old[CELLA_ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ctx, sizeof(ctx), fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof(old));
	old[sizeof(old) - 1] = '\0';
	snprintf(err->msg, sizeof(err->msg), "%s%s%s", ctx, old[0] ? ": " : "", old);
	err->code = normalize(err->code);
	return -err->code;
}

void cella_err_clear(struct cella_err *err)
{
	if (!err)
		return;
	err->code = 0;
	err->msg[0] = '\0';
}
