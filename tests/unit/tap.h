/* Minimal TAP producer for unit test programs (exit 77 = skip, as automake and crun do). */
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_n, tap_failed;

#define TAP_OK(cond, ...)                                                                   \
	do {                                                                                \
		int _tap_c = !!(cond);                                                      \
		tap_n++;                                                                    \
		if (_tap_c) {                                                                 \
			printf("ok %d - ", tap_n);                                          \
		} else {                                                                    \
			tap_failed++;                                                       \
			printf("not ok %d - ", tap_n);                                      \
		}                                                                           \
		printf(__VA_ARGS__);                                                        \
		printf("\n");                                                               \
		if (!_tap_c)                                                                \
			printf("#   failed at %s:%d: %s\n", __FILE__, __LINE__, #cond);       \
		fflush(stdout);                                                             \
	} while (0)

#define TAP_STREQ(a, b, ...)                                                                \
	do {                                                                                \
		const char *_a = (a), *_b = (b);                                            \
		TAP_OK(_a && _b && strcmp(_a, _b) == 0, __VA_ARGS__);                       \
		if (!(_a && _b && strcmp(_a, _b) == 0))                                     \
			printf("#   got: \"%s\"\n#   want: \"%s\"\n", _a ? _a : "(null)",   \
			       _b ? _b : "(null)");                                         \
	} while (0)

#define TAP_SKIP_ALL(reason)                                                                \
	do {                                                                                \
		printf("1..0 # SKIP %s\n", reason);                                         \
		exit(77);                                                                   \
	} while (0)

static inline int tap_done(void)
{
	printf("1..%d\n", tap_n);
	return tap_failed ? 1 : 0;
}
