/*
 * lancet's benchmark load generator, built static and run inside a podman
 * container so the agent sees the load as container activity.
 *
 *   loadgen exec N PATH          fork+exec PATH N times, waiting for each
 *   loadgen connect N IP PORT [RATE]  N TCP connects (and closes) to IP:PORT,
 *                                at most RATE a second when given
 *   loadgen scan N IP...         N connects to distinct ports (1, 2, ...) of
 *                                the addresses in turn, refused or not
 *   loadgen files N DIR          N create+write+close+unlink in DIR (64 names)
 *   loadgen unique N DIR         the same, each file with a name of its own
 *                                (fanotify merges events of one name still
 *                                queued, so counting needs distinct names)
 *   loadgen serve PORT           accept and close connections forever
 *
 * Prints one line: "<mode> <n> <seconds> <ops/s>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int do_exec(long n, const char *path)
{
	char *argv[] = { (char *)path, NULL };
	char *envp[] = { NULL };
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			return perror("fork"), 1;
		if (pid == 0) {
			execve(path, argv, envp);
			_exit(127);
		}
		int st;
		if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "child failed\n");
			return 1;
		}
	}
	return 0;
}

static int do_connect(long n, const char *ip, int port, double rate)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1)
		return fprintf(stderr, "bad ip %s\n", ip), 1;
	double start = now();
	for (long i = 0; i < n; i++) {
		/* Paced: connection i starts no earlier than i / rate. */
		if (rate > 0) {
			double wait = start + i / rate - now();
			if (wait > 0) {
				struct timespec ts = { (time_t)wait, (long)((wait - (time_t)wait) * 1e9) };
				nanosleep(&ts, NULL);
			}
		}
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0)
			return perror("socket"), 1;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			return perror("connect"), 1;
		/* Wait for the server's close: the whole connection lifecycle. */
		char b;
		(void)read(fd, &b, 1);
		close(fd);
	}
	return 0;
}

static int do_scan(long n, int nips, char **ips)
{
	struct sockaddr_in sa[16];
	if (nips < 1 || nips > 16)
		return fprintf(stderr, "1 to 16 addresses\n"), 1;
	for (int k = 0; k < nips; k++) {
		sa[k] = (struct sockaddr_in){ .sin_family = AF_INET };
		if (inet_pton(AF_INET, ips[k], &sa[k].sin_addr) != 1)
			return fprintf(stderr, "bad ip %s\n", ips[k]), 1;
	}
	for (long i = 0; i < n; i++) {
		struct sockaddr_in *a = &sa[i % nips];
		a->sin_port = htons((unsigned short)(1 + (i / nips) % 65535));
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0)
			return perror("socket"), 1;
		(void)connect(fd, (struct sockaddr *)a, sizeof(*a));
		close(fd);
	}
	return 0;
}

static int do_files(long n, const char *dir, long names)
{
	char path[4096];
	for (long i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/f%ld", dir, i % names);
		int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
		if (fd < 0)
			return perror("open"), 1;
		if (write(fd, "lancet\n", 7) != 7)
			return perror("write"), 1;
		close(fd);
		if (unlink(path) < 0)
			return perror("unlink"), 1;
	}
	return 0;
}

static int do_serve(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1024) < 0)
		return perror("bind/listen"), 1;
	for (;;) {
		int c = accept(fd, NULL, NULL);
		if (c >= 0)
			close(c);
	}
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return fprintf(stderr, "usage: loadgen exec|connect|scan|files|unique|serve ...\n"), 2;
	if (!strcmp(argv[1], "serve"))
		return do_serve(atoi(argv[2]));
	long n = atol(argv[2]);
	double t0 = now();
	int rc;
	if (!strcmp(argv[1], "exec") && argc == 4)
		rc = do_exec(n, argv[3]);
	else if (!strcmp(argv[1], "connect") && (argc == 5 || argc == 6))
		rc = do_connect(n, argv[3], atoi(argv[4]), argc == 6 ? atof(argv[5]) : 0);
	else if (!strcmp(argv[1], "scan") && argc >= 4)
		rc = do_scan(n, argc - 3, argv + 3);
	else if (!strcmp(argv[1], "files") && argc == 4)
		rc = do_files(n, argv[3], 64);
	else if (!strcmp(argv[1], "unique") && argc == 4)
		rc = do_files(n, argv[3], n > 0 ? n : 1);
	else
		return fprintf(stderr, "bad arguments\n"), 2;
	double dt = now() - t0;
	if (rc == 0)
		printf("%s %ld %.6f %.1f\n", argv[1], n, dt, n / dt);
	return rc;
}
