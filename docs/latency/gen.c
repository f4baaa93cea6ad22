/*
 * gen.c: 64-byte frames (60 + FCS; UDP 192.168.15.1:12345 -> 192.168.15.2:9, as
 * the e2e benchmark's 64-byte row) from IFNAME to DST_MAC for SECS seconds,
 * 32 per sendmmsg() on an AF_PACKET socket, as fast as one core sends them.
 * Run it in the sender's namespace; prints the frames sent.
 *
 *   cc -O2 -o /tmp/lat-gen docs/latency/gen.c
 *   ip netns exec NS /tmp/lat-gen IFNAME DST_MAC SECS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static void mac(const char *s, unsigned char *m)
{
	sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s IFNAME DST_MAC SECS\n", argv[0]);
		return 2;
	}
	unsigned char f[60] = {0};
	char path[128], src[32] = {0};
	snprintf(path, sizeof path, "/sys/class/net/%s/address", argv[1]);
	FILE *a = fopen(path, "r");
	if (!a || !fgets(src, sizeof src, a)) {
		perror(path);
		return 1;
	}
	mac(argv[2], f);
	mac(src, f + 6);
	f[12] = 0x08;
	unsigned char ip[20] = {0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 168, 15, 1, 192, 168, 15, 2};
	unsigned sum = 0;
	for (int i = 0; i < 20; i += 2)
		sum += ip[i] << 8 | ip[i + 1];
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	ip[10] = ~sum >> 8;
	ip[11] = ~sum & 0xff;
	memcpy(f + 14, ip, 20);
	unsigned char udp[8] = {0x30, 0x39, 0, 9, 0, 26, 0, 0};
	memcpy(f + 34, udp, 8);

	int s = socket(AF_PACKET, SOCK_RAW, 0);
	struct sockaddr_ll ll = {.sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(argv[1])};
	if (s < 0 || !ll.sll_ifindex || bind(s, (struct sockaddr *)&ll, sizeof ll) < 0) {
		perror("packet socket");
		return 1;
	}
	struct iovec iov = {f, sizeof f};
	struct mmsghdr m[32];
	memset(m, 0, sizeof m);
	for (int i = 0; i < 32; i++) {
		m[i].msg_hdr.msg_iov = &iov;
		m[i].msg_hdr.msg_iovlen = 1;
	}
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	double secs = atof(argv[3]);
	unsigned long long n = 0;
	do {
		int r = sendmmsg(s, m, 32, 0);
		if (r > 0)
			n += r;
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while (t.tv_sec - t0.tv_sec + (t.tv_nsec - t0.tv_nsec) / 1e9 < secs);
	printf("%llu\n", n);
	return 0;
}
