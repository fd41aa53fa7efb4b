/* api-call SOCKET METHOD PATH [JSON]: one HTTP/1.1 request to cella-vmm's control API over a unix
 * socket, for the nested sandbox (no curl there; build with cc -static). Prints the status code and
 * the body on one line; exit 0 for a 2xx reply, 1 otherwise, 2 when the socket cannot be used. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 4 || argc > 5) {
		fprintf(stderr, "usage: api-call SOCKET METHOD PATH [JSON]\n");
		return 2;
	}
	const char *body = argc == 5 ? argv[4] : "";
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", argv[1]);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror(argv[1]);
		return 2;
	}
	char req[8192];
	int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
		"Content-Length: %zu\r\n\r\n%s", argv[2], argv[3], strlen(body), body);
	if (n < 0 || (size_t)n >= sizeof(req) || write(fd, req, (size_t)n) != n) {
		perror("write");
		return 2;
	}
	static char reply[1 << 16];
	size_t len = 0;
	ssize_t got;
	while (len < sizeof(reply) - 1 && (got = read(fd, reply + len, sizeof(reply) - 1 - len)) > 0)
		len += (size_t)got;
	reply[len] = 0;
	int status = 0;
	if (sscanf(reply, "HTTP/1.1 %d", &status) != 1) {
		fprintf(stderr, "no HTTP reply\n");
		return 2;
	}
	char *b = strstr(reply, "\r\n\r\n");
	printf("%d %s\n", status, b ? b + 4 : "");
	return status >= 200 && status < 300 ? 0 : 1;
}
