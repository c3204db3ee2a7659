//go:build linux && cgo

// The direct spawner: a C constructor that runs before the Go runtime.
// It does nothing unless _CULVERT_SPAWN is set; then this process is the
// shim of one container start and never returns to Go. See doc.go for the
// request format and the order of the steps.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <grp.h>
#include <link.h>
#include <unistd.h>

#define SPAWN_ENV "_CULVERT_SPAWN"
#define MAX_REQUEST (16u << 20)

enum {
	TAG_ROOT = 1,
	TAG_HOSTNAME = 2,
	TAG_CLONEFLAGS = 3,
	TAG_NETNS = 4,
	TAG_UIDMAP = 5,
	TAG_GIDMAP = 6,
	TAG_MOUNT = 7,
	TAG_DEVICE = 8,
	TAG_MASK = 9,
	TAG_ROPATH = 10,
	TAG_RLIMIT = 11,
	TAG_ARG = 12,
	TAG_ENV = 13,
	TAG_CWD = 14,
	TAG_SECCOMP = 15,
	TAG_FLAGS = 16,
	TAG_CGROUP = 17,
	TAG_OPT_CGROUP = 18,
};

enum {
	FLAG_READONLY_ROOT = 1,
	FLAG_NO_NEW_PRIVS = 2,
	FLAG_LOOPBACK = 4,
};

struct mnt {
	uint64_t flags;
	char *src, *dst, *type, *data;
};

struct rlim {
	uint32_t resource;
	uint64_t soft, hard;
};

struct strs {
	char **v;
	size_t n;
};

struct req {
	char *root, *hostname, *netns, *uidmap, *gidmap, *cwd;
	uint64_t cloneflags;
	uint32_t flags;
	struct mnt *mounts;
	size_t nmounts;
	struct strs devices, masks, ropaths, args, env, cgroups, optcgroups;
	struct rlim *rlimits;
	size_t nrlimits;
	unsigned char *bpf;
	size_t bpflen;
};

static int status_fd = -1;

// base_nice is the server's priority, which a shim and its init get back
// when a start takes them: while they wait, they run at the lowest.
static int base_nice;

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

// fail reports step and err on the status pipe ('E', errno as u32, step
// length as u32, step) and exits.
static void __attribute__((noreturn)) fail(const char *step, const char *arg, int err)
{
	unsigned char buf[1024];
	size_t n = 0;
	buf[0] = 'E';
	put32(buf + 1, (uint32_t)err);
	n = (size_t)snprintf((char *)buf + 9, sizeof(buf) - 9, "%s%s%s", step, arg ? " " : "", arg ? arg : "");
	if (n > sizeof(buf) - 9 - 1)
		n = sizeof(buf) - 9 - 1;
	put32(buf + 5, (uint32_t)n);
	if (status_fd >= 0) {
		ssize_t w = write(status_fd, buf, 9 + n);
		(void)w;
	}
	_exit(126);
}

static int read_full(int fd, void *buf, size_t n)
{
	unsigned char *p = buf;
	while (n > 0) {
		ssize_t r = read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0) {
			errno = EPIPE;
			return -1;
		}
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
	const unsigned char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n);
	if (q == NULL)
		fail("read request", "(out of memory)", ENOMEM);
	return q;
}

// str copies a payload that must hold no NUL into a C string.
static char *str(const unsigned char *p, uint32_t n)
{
	if (memchr(p, 0, n) != NULL)
		fail("read request", "(NUL in a string)", EINVAL);
	char *s = xrealloc(NULL, (size_t)n + 1);
	memcpy(s, p, n);
	s[n] = 0;
	return s;
}

static void push(struct strs *s, char *v)
{
	s->v = xrealloc(s->v, (s->n + 2) * sizeof(char *));
	s->v[s->n++] = v;
	s->v[s->n] = NULL;
}

// cstr takes one NUL-terminated string from *p, within end.
static char *cstr(const unsigned char **p, const unsigned char *end)
{
	const unsigned char *z = memchr(*p, 0, (size_t)(end - *p));
	if (z == NULL)
		fail("read request", "(mount record)", EINVAL);
	char *s = (char *)*p;
	*p = z + 1;
	return s;
}

// shared is where the shim reads the request (a u32 length, then the
// body), mapped shared before the init is cloned: the init parses the
// same bytes, whether it was cloned for this start or ahead of it.
static unsigned char *shared;

static void map_shared(void)
{
	if (shared != NULL)
		return;
	void *m = mmap(NULL, 4 + MAX_REQUEST, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED)
		fail("map request", NULL, errno);
	shared = m;
}

// read_request reads the request from fd into shared.
static void read_request(int fd)
{
	unsigned char h[12];
	if (read_full(fd, h, sizeof(h)) < 0)
		fail("read request", "(header)", errno);
	if (memcmp(h, "CVSP", 4) != 0 || h[4] != 1 || h[5] != 0 || h[6] != 0 || h[7] != 0)
		fail("read request", "(not version 1)", EPROTO);
	uint32_t len = get32(h + 8);
	if (len > MAX_REQUEST)
		fail("read request", "(too long)", E2BIG);
	if (read_full(fd, shared + 4, len) < 0)
		fail("read request", "(body)", errno);
	put32(shared, len);
}

// parse_request parses the request in shared into r; strings and the
// seccomp program point into it or into copies on the heap.
static void parse_request(struct req *r)
{
	memset(r, 0, sizeof(*r));
	uint32_t len = get32(shared);
	if (len > MAX_REQUEST)
		fail("read request", "(too long)", E2BIG);
	unsigned char *b = shared + 4;
	const unsigned char *p = b, *end = b + len;
	while (p < end) {
		if (end - p < 6)
			fail("read request", "(record header)", EPROTO);
		unsigned tag = (unsigned)p[0] | (unsigned)p[1] << 8;
		uint32_t n = get32(p + 2);
		p += 6;
		if (n > (uint32_t)(end - p))
			fail("read request", "(record length)", EPROTO);
		switch (tag) {
		case TAG_ROOT: r->root = str(p, n); break;
		case TAG_HOSTNAME: r->hostname = str(p, n); break;
		case TAG_NETNS: r->netns = str(p, n); break;
		case TAG_UIDMAP: r->uidmap = str(p, n); break;
		case TAG_GIDMAP: r->gidmap = str(p, n); break;
		case TAG_CWD: r->cwd = str(p, n); break;
		case TAG_DEVICE: push(&r->devices, str(p, n)); break;
		case TAG_MASK: push(&r->masks, str(p, n)); break;
		case TAG_ROPATH: push(&r->ropaths, str(p, n)); break;
		case TAG_ARG: push(&r->args, str(p, n)); break;
		case TAG_ENV: push(&r->env, str(p, n)); break;
		case TAG_CGROUP: push(&r->cgroups, str(p, n)); break;
		case TAG_OPT_CGROUP: push(&r->optcgroups, str(p, n)); break;
		case TAG_CLONEFLAGS:
			if (n != 8)
				fail("read request", "(clone flags)", EPROTO);
			r->cloneflags = get64(p);
			break;
		case TAG_FLAGS:
			if (n != 4)
				fail("read request", "(flags)", EPROTO);
			r->flags = get32(p);
			break;
		case TAG_RLIMIT:
			if (n != 20)
				fail("read request", "(rlimit)", EPROTO);
			r->rlimits = xrealloc(r->rlimits, (r->nrlimits + 1) * sizeof(struct rlim));
			r->rlimits[r->nrlimits++] = (struct rlim){get32(p), get64(p + 4), get64(p + 12)};
			break;
		case TAG_SECCOMP:
			if (n == 0 || n % sizeof(struct sock_filter) != 0 || n / sizeof(struct sock_filter) > BPF_MAXINSNS)
				fail("read request", "(seccomp program)", EPROTO);
			r->bpf = (unsigned char *)p;
			r->bpflen = n;
			break;
		case TAG_MOUNT: {
			if (n < 8)
				fail("read request", "(mount record)", EPROTO);
			const unsigned char *q = p + 8, *qe = p + n;
			struct mnt m = {.flags = get64(p)};
			m.src = cstr(&q, qe);
			m.dst = cstr(&q, qe);
			m.type = cstr(&q, qe);
			m.data = cstr(&q, qe);
			if (q != qe || m.dst[0] != '/')
				fail("read request", "(mount record)", EPROTO);
			r->mounts = xrealloc(r->mounts, (r->nmounts + 1) * sizeof(struct mnt));
			r->mounts[r->nmounts++] = m;
			break;
		}
		default:
			fail("read request", "(unknown record)", EPROTO);
		}
		p += n;
	}
	if (r->root == NULL || r->root[0] != '/' || r->args.n == 0 || r->uidmap == NULL || r->gidmap == NULL)
		fail("read request", "(root, command or id maps missing)", EPROTO);
	if (r->env.v == NULL)
		push(&r->env, NULL), r->env.n = 0;
}

// tied re-arms PR_SET_PDEATHSIG (credential changes clear it) and exits if
// the shim has gone meanwhile: the shim holds the other end of their
// socket pair until it exits, so a hang-up on it means it is gone.
static void tied(int sync_fd, const char *step)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
		fail("set parent death signal", step, errno);
	struct pollfd pfd = {.fd = sync_fd, .events = POLLIN};
	if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLERR)))
		_exit(126);
}

// resolve opens path under rootfd (O_PATH), never leaving it.
static int resolve(int rootfd, const char *path)
{
	struct open_how how = {
		.flags = O_PATH | O_CLOEXEC,
		.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
	};
	while (*path == '/')
		path++;
	if (*path == 0)
		path = ".";
	return (int)syscall(SYS_openat2, rootfd, path, &how, sizeof(how));
}

// make_mountpoint creates the missing directories of path under rootfd
// and path itself (a directory, or an empty file when the source is not
// one), as libcontainer does for mount points not in the root. Components
// are not followed if they are symlinks.
static void make_mountpoint(int rootfd, const char *path, const char *src)
{
	char buf[4096];
	struct stat st;
	int isdir = src == NULL || (stat(src, &st) == 0 && S_ISDIR(st.st_mode));
	if (strlen(path) >= sizeof(buf))
		fail("mount point", path, ENAMETOOLONG);
	strcpy(buf, path);
	int dir = dup(rootfd);
	char *save = NULL;
	char *c = strtok_r(buf, "/", &save);
	while (c != NULL) {
		char *next = strtok_r(NULL, "/", &save);
		if (next == NULL && !isdir) {
			int f = openat(dir, c, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
			if (f < 0 && errno != EEXIST)
				fail("mount point", path, errno);
			if (f >= 0)
				close(f);
			break;
		}
		if (mkdirat(dir, c, 0755) < 0 && errno != EEXIST)
			fail("mount point", path, errno);
		int d = openat(dir, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (d < 0)
			fail("mount point", path, errno);
		close(dir);
		dir = d;
		c = next;
	}
	close(dir);
}

static void fdpath(char *buf, size_t n, int fd)
{
	snprintf(buf, n, "/proc/self/fd/%d", fd);
}

// locked returns the mount flags of the mount at path that a mount
// namespace owned by a user namespace may not clear.
static unsigned long locked(const char *path)
{
	struct statvfs st;
	unsigned long f = 0;
	if (statvfs(path, &st) < 0)
		return 0;
	if (st.f_flag & ST_NOSUID)
		f |= MS_NOSUID;
	if (st.f_flag & ST_NODEV)
		f |= MS_NODEV;
	if (st.f_flag & ST_NOEXEC)
		f |= MS_NOEXEC;
	return f;
}

// remount_ro makes the bind mount at path read-only, keeping the flags
// it must keep (the atime flags are kept by the kernel when none is given).
static int remount_ro(const char *path, unsigned long flags)
{
	flags &= MS_NOSUID | MS_NODEV | MS_NOEXEC;
	return mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | flags | locked(path), NULL);
}

static int is_dev_tmpfs(const struct mnt *m)
{
	return strcmp(m->type, "tmpfs") == 0 && strcmp(m->dst, "/dev") == 0;
}

// dev_links makes /dev's symlinks in dev, as libcontainer does: the
// name of the one it could not make (errno set), or NULL.
static const char *dev_links(int dev)
{
	static const char *links[][2] = {
		{"pts/ptmx", "ptmx"},
		{"/proc/self/fd", "fd"},
		{"/proc/self/fd/0", "stdin"},
		{"/proc/self/fd/1", "stdout"},
		{"/proc/self/fd/2", "stderr"},
	};
	for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++)
		if (symlinkat(links[i][0], dev, links[i][1]) < 0 && errno != EEXIST)
			return links[i][1];
	if (access("/proc/kcore", F_OK) == 0 && symlinkat("/proc/kcore", dev, "core") < 0 && errno != EEXIST)
		return "core";
	return NULL;
}

static void setup_dev(int rootfd, const struct req *r)
{
	char p[64];
	int dev = resolve(rootfd, "/dev");
	if (dev < 0)
		fail("mount", "/dev", errno);
	for (size_t i = 0; i < r->devices.n; i++) {
		const char *host = r->devices.v[i];
		if (strncmp(host, "/dev/", 5) != 0 || strchr(host + 5, '/') != NULL)
			fail("bind device", host, EINVAL);
		int f = openat(dev, host + 5, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0);
		if (f < 0)
			fail("bind device", host, errno);
		close(f);
		int t = resolve(rootfd, host);
		if (t < 0)
			fail("bind device", host, errno);
		fdpath(p, sizeof(p), t);
		if (mount(host, p, NULL, MS_BIND, NULL) < 0)
			fail("bind device", host, errno);
		close(t);
	}
	const char *bad = dev_links(dev);
	if (bad != NULL)
		fail("symlink /dev", bad, errno);
	close(dev);
}

// PROC_MASKS and PROC_RO are the masked and read-only /proc paths of
// every start (runc's: maskedPaths and readonlyPaths in package
// container, which TestInitClonedAhead holds equal to these, as a start
// with them attaches the /proc made ahead): an init cloned ahead mounts
// its /proc with them, detached, for a start that asks for the same.
static const char *const PROC_MASKS[] = {
	"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
	"/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/proc/interrupts",
};
static const char *const PROC_RO[] = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"};
#define PROC_FLAGS (MS_NOSUID | MS_NODEV | MS_NOEXEC)
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static int high(int fd);

// proc_ahead is the /proc an init cloned ahead made (a detached mount
// with its masks and read-only paths), or -1.
static int proc_ahead = -1;

// new_mount makes a new filesystem of type, with the string options
// opts (key, value, ..., NULL; or NULL), and returns it as a detached
// mount with the mount attributes attrs, or -1.
static int new_mount(const char *type, const char *const *opts, unsigned attrs)
{
	int fs = (int)syscall(SYS_fsopen, type, FSOPEN_CLOEXEC);
	if (fs < 0)
		return -1;
	int mfd = -1;
	for (; opts != NULL && *opts != NULL; opts += 2)
		if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, opts[0], opts[1], 0) < 0)
			goto out;
	if (syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0)
		mfd = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, attrs);
out:
	close(fs);
	return mfd;
}

// detached_sub mounts src (a detached mount, consumed) on path below the
// detached mount at dir.
static int detached_sub(int src, int dir, const char *path)
{
	if (src < 0)
		return -1;
	int rc = (int)syscall(SYS_move_mount, src, "", dir, path, MOVE_MOUNT_F_EMPTY_PATH);
	close(src);
	return rc;
}

// prepare_proc makes proc_ahead: the pid namespace's /proc as a start
// mounts it (nosuid, nodev, noexec; the masks and read-only paths), but
// detached, so that the start attaches it in one step (0.3 ms less on
// its path, measured). It needs the new mount API and mounts on detached
// mounts (Linux 6.15); where a step fails, starts mount /proc
// themselves.
static void prepare_proc(void)
{
	int mfd = new_mount("proc", NULL, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
	if (mfd < 0)
		return;
	for (size_t i = 0; i < NELEM(PROC_MASKS); i++) {
		const char *rel = PROC_MASKS[i] + 6; // below /proc/
		struct stat st;
		if (fstatat(mfd, rel, &st, 0) < 0) {
			if (errno == ENOENT)
				continue; // as mask_paths: not in this kernel
			goto fail;
		}
		int src;
		if (S_ISDIR(st.st_mode)) {
			src = new_mount("tmpfs", NULL, MOUNT_ATTR_RDONLY);
		} else {
			src = (int)syscall(SYS_open_tree, AT_FDCWD, "/dev/null", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
		}
		if (detached_sub(src, mfd, rel) < 0)
			goto fail;
	}
	for (size_t i = 0; i < NELEM(PROC_RO); i++) {
		const char *rel = PROC_RO[i] + 6;
		int t = (int)syscall(SYS_open_tree, mfd, rel, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
		if (t < 0) {
			if (errno == ENOENT)
				continue;
			goto fail;
		}
		struct mount_attr a = {.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC};
		if (syscall(SYS_mount_setattr, t, "", AT_EMPTY_PATH | AT_RECURSIVE, &a, sizeof(a)) < 0) {
			close(t);
			goto fail;
		}
		if (detached_sub(t, mfd, rel) < 0)
			goto fail;
	}
	proc_ahead = high(mfd);
	return;
fail:
	close(mfd);
}

// DEV_FLAGS, DEV_DATA and DEV_NODES are the /dev of every start
// (config_linux.go's): a tmpfs, read-only once the four device nodes are
// bound into it.
#define DEV_FLAGS (MS_NOSUID | MS_STRICTATIME | MS_NOEXEC | MS_RDONLY)
#define DEV_DATA "mode=755,size=64k"
static const char *const DEV_NODES[] = {"/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"};

// dev_ahead is the /dev a waiting shim made for its init (detached,
// filled and read-only), or -1.
static int dev_ahead = -1;

// prepare_dev makes dev_ahead, in the waiting shim: a start attaches it
// in one step rather than mount a tmpfs, make four files, bind the
// devices onto them, make the symlinks and remount it read-only (0.2-0.3
// ms of its path). The shim makes it, not the init: the init's files
// could not be made before its id maps are written. The tmpfs belongs to
// the host's user namespace, so its files show as nobody's inside, as
// the host's device nodes bound into a start's own /dev do. Where a step
// fails (no new mount API, or no mounts on detached mounts: Linux 6.15),
// starts make their /dev themselves.
static void prepare_dev(void)
{
	static const char *const opts[] = {"mode", "755", "size", "64k", NULL}; // DEV_DATA
	int mfd = new_mount("tmpfs", opts, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC | MOUNT_ATTR_STRICTATIME);
	if (mfd < 0)
		return;
	for (size_t i = 0; i < NELEM(DEV_NODES); i++) {
		const char *name = DEV_NODES[i] + 5; // below /dev/
		int f = openat(mfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0);
		if (f < 0)
			goto fail;
		close(f);
		int src = (int)syscall(SYS_open_tree, AT_FDCWD, DEV_NODES[i], OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
		if (detached_sub(src, mfd, name) < 0)
			goto fail;
	}
	if (dev_links(mfd) != NULL)
		goto fail;
	struct mount_attr a = {.attr_set = MOUNT_ATTR_RDONLY};
	if (syscall(SYS_mount_setattr, mfd, "", AT_EMPTY_PATH, &a, sizeof(a)) < 0)
		goto fail;
	dev_ahead = high(mfd);
	return;
fail:
	close(mfd);
}

// in_list says whether s is one of the n strings of list.
static int in_list(const char *s, char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(s, list[i]) == 0)
			return 1;
	return 0;
}

// same_list says whether the request's list l holds the n strings of
// list (which has none twice), in any order: as many, each of each in
// the other.
static int same_list(const struct strs *l, const char *const *list, size_t n)
{
	if (l->n != n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!in_list(l->v[i], (char *const *)list, n) || !in_list(list[i], l->v, n))
			return 0;
	return 1;
}

// proc_fits says whether the start's /proc mount m is the one made ahead:
// plain proc with the same flags, masks and read-only paths.
static int proc_fits(const struct req *r, const struct mnt *m)
{
	return proc_ahead >= 0 && strcmp(m->type, "proc") == 0 && strcmp(m->dst, "/proc") == 0 &&
	       (m->flags & ~(uint64_t)MS_REC) == PROC_FLAGS && m->data[0] == 0 &&
	       same_list(&r->masks, PROC_MASKS, NELEM(PROC_MASKS)) && same_list(&r->ropaths, PROC_RO, NELEM(PROC_RO));
}

// proc_attached is set once a start attached proc_ahead: its masks and
// read-only paths are in place already.
static int proc_attached;

// dev_fits says whether the start's /dev mount m is the one made ahead.
static int dev_fits(const struct req *r, const struct mnt *m)
{
	return dev_ahead >= 0 && is_dev_tmpfs(m) && (m->flags & ~(uint64_t)MS_REC) == DEV_FLAGS &&
	       strcmp(m->data, DEV_DATA) == 0 && same_list(&r->devices, DEV_NODES, NELEM(DEV_NODES));
}

// attach mounts the detached mount *fd on the mount point t (both
// consumed), and says so on the status pipe with the byte said.
static void attach(int *fd, int t, const char *dst, const char *said)
{
	if (syscall(SYS_move_mount, *fd, "", t, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
		fail("mount", dst, errno);
	close(*fd);
	*fd = -1;
	close(t);
	if (write_full(status_fd, said, 1) < 0)
		_exit(126);
}

static void do_mounts(int rootfd, const struct req *r)
{
	char p[64];
	int have_dev = 0, dev_attached = 0;
	for (size_t i = 0; i < r->nmounts; i++) {
		const struct mnt *m = &r->mounts[i];
		int bind = strcmp(m->type, "bind") == 0;
		int t = resolve(rootfd, m->dst);
		if (t < 0 && errno == ENOENT) {
			make_mountpoint(rootfd, m->dst, bind ? m->src : NULL);
			t = resolve(rootfd, m->dst);
		}
		if (t < 0)
			fail("mount", m->dst, errno);
		fdpath(p, sizeof(p), t);
		if (bind) {
			if (mount(m->src, p, NULL, MS_BIND | (m->flags & MS_REC), NULL) < 0)
				fail("bind", m->src, errno);
			close(t);
			if (m->flags & MS_RDONLY) {
				// Through the mount just made, not the one under it.
				if ((t = resolve(rootfd, m->dst)) < 0)
					fail("bind", m->dst, errno);
				fdpath(p, sizeof(p), t);
				if (remount_ro(p, m->flags) < 0)
					fail("remount read-only", m->dst, errno);
				close(t);
			}
			continue;
		}
		if (proc_fits(r, m)) {
			attach(&proc_ahead, t, m->dst, "A");
			proc_attached = 1;
			continue;
		}
		if (dev_fits(r, m)) {
			attach(&dev_ahead, t, m->dst, "D");
			dev_attached = 1;
			continue;
		}
		// Read-only filesystems are made read-only once filled (/dev).
		unsigned long fl = m->flags & ~(unsigned long)MS_RDONLY;
		if (mount(m->src, p, m->type, fl, m->data[0] ? m->data : NULL) < 0)
			fail("mount", m->dst, errno);
		close(t);
		if (is_dev_tmpfs(m))
			have_dev = 1;
	}
	if (have_dev)
		setup_dev(rootfd, r);
	for (size_t i = 0; i < r->nmounts; i++) {
		const struct mnt *m = &r->mounts[i];
		if (strcmp(m->type, "bind") == 0 || !(m->flags & MS_RDONLY) || (dev_attached && is_dev_tmpfs(m)))
			continue;
		int t = resolve(rootfd, m->dst);
		if (t < 0)
			fail("remount read-only", m->dst, errno);
		fdpath(p, sizeof(p), t);
		if (mount(m->src, p, m->type, MS_REMOUNT | m->flags, m->data[0] ? m->data : NULL) < 0)
			fail("remount read-only", m->dst, errno);
		close(t);
	}
}

static void mask_paths(const struct req *r)
{
	if (proc_attached)
		return; // the /proc made ahead has them
	for (size_t i = 0; i < r->masks.n; i++) {
		const char *path = r->masks.v[i];
		struct stat st;
		if (stat(path, &st) < 0) {
			if (errno == ENOENT)
				continue;
			fail("mask", path, errno);
		}
		int err = S_ISDIR(st.st_mode) ? mount("tmpfs", path, "tmpfs", MS_RDONLY, NULL)
					      : mount("/dev/null", path, NULL, MS_BIND, NULL);
		if (err < 0)
			fail("mask", path, errno);
	}
	for (size_t i = 0; i < r->ropaths.n; i++) {
		const char *path = r->ropaths.v[i];
		if (access(path, F_OK) < 0) {
			if (errno == ENOENT)
				continue;
			fail("read-only path", path, errno);
		}
		if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) < 0 || remount_ro(path, MS_NOSUID | MS_NODEV | MS_NOEXEC) < 0)
			fail("read-only path", path, errno);
	}
}

static void loopback_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		fail("loopback up", NULL, errno);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		fail("loopback up", NULL, errno);
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		fail("loopback up", NULL, errno);
	close(s);
}

// lookup resolves the command as libcontainer's init does (exec.LookPath
// inside the new root): a name with a slash as it is, otherwise the first
// executable regular file of that name in the environment's PATH.
static const char *lookup(const struct req *r, char *buf, size_t size)
{
	const char *name = r->args.v[0];
	struct stat st;
	if (strchr(name, '/') != NULL) {
		if (stat(name, &st) < 0)
			fail("find command", name, errno);
		if (S_ISDIR(st.st_mode) || access(name, X_OK) < 0)
			fail("find command", name, S_ISDIR(st.st_mode) ? EISDIR : errno);
		return name;
	}
	const char *path = NULL;
	for (size_t i = 0; i < r->env.n; i++)
		if (strncmp(r->env.v[i], "PATH=", 5) == 0)
			path = r->env.v[i] + 5;
	while (path != NULL) {
		const char *end = strchr(path, ':');
		size_t n = end ? (size_t)(end - path) : strlen(path);
		if (n == 0)
			snprintf(buf, size, "./%s", name);
		else
			snprintf(buf, size, "%.*s/%s", (int)n, path, name);
		if (stat(buf, &st) == 0 && S_ISREG(st.st_mode) && access(buf, X_OK) == 0)
			return buf;
		path = end ? end + 1 : NULL;
	}
	fail("find command", name, ENOENT);
}

// drop_bounding empties the capability bounding set and the ambient set,
// or returns -1 (errno set) with the step in *step. Neither is what the
// process may do now (its effective set), only what an execve can give
// back, so an init cloned ahead does this before its start: about 40
// calls less on the start's path (0.09 ms, measured).
static int drop_bounding(const char **step)
{
	*step = "(bounding set)";
	for (int c = 0; c <= 63; c++)
		if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0) {
			if (errno == EINVAL)
				break;
			return -1;
		}
	*step = "(ambient)";
	return prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
}

// bounding_dropped is set once drop_bounding did its work ahead.
static int bounding_dropped;

static void drop_caps(void)
{
	const char *step;
	if (!bounding_dropped && drop_bounding(&step) < 0)
		fail("drop capabilities", step, errno);
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof(d));
	if (syscall(SYS_capset, &h, d) < 0)
		fail("drop capabilities", "(capset)", errno);
}

// high moves fd to a descriptor at or above 64, close-on-exec, so that the
// descriptors a start brings can take 0-4.
static int high(int fd)
{
	int h = fcntl(fd, F_DUPFD_CLOEXEC, 64);
	if (h < 0)
		_exit(125);
	close(fd);
	return h;
}

// PRECLONE are the namespaces of an init cloned ahead: every one a start
// asks for by default (network none) but the cgroup namespace, which the
// init enters once it is in its cgroups.
#define PRECLONE (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET)

static void __attribute__((noreturn)) init_main(int sync_fd, int ahead);
struct child;
static void __attribute__((noreturn)) shim(int reqfd, int stfd, int life, struct child *pre, int taken);
static void __attribute__((noreturn)) server(int sock, int life, char *argv0);

// touch writes a byte of each page from p to end with the value it has,
// which gives this process its own copy of a page it shares copy-on-write.
static void touch(const void *p, const void *end)
{
	for (uintptr_t a = (uintptr_t)p & ~(uintptr_t)4095; a < (uintptr_t)end; a += 4096) {
		volatile unsigned char *c = (volatile unsigned char *)(a < (uintptr_t)p ? (uintptr_t)p : a);
		*c = *c;
	}
}

// peek reads a byte of each page from p to end: a page of a file
// (code, read-only data) is then mapped in this process. A fork or clone
// does not copy those mappings, so each such page a start runs first
// would be a fault on its path.
static void peek(const void *p, const void *end)
{
	for (uintptr_t a = (uintptr_t)p & ~(uintptr_t)4095; a < (uintptr_t)end; a += 4096) {
		volatile const unsigned char *c = (volatile const unsigned char *)(a < (uintptr_t)p ? (uintptr_t)p : a);
		(void)*c;
	}
}

// touch_libs maps each shared library's pages (libc's code and data,
// its malloc arena, ld.so's state): it reads the read-only ones,
// including those made read-only after relocation (PT_GNU_RELRO), and
// touches the writable ones. The executable is left: its C code and
// globals are a few pages (prefault maps them by name) among the Go
// runtime's megabytes.
static int touch_libs(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	(void)data;
	if (info->dlpi_name == NULL || info->dlpi_name[0] == 0)
		return 0;
	uintptr_t ro = 0, roend = 0;
	for (int i = 0; i < info->dlpi_phnum; i++)
		if (info->dlpi_phdr[i].p_type == PT_GNU_RELRO) {
			ro = (info->dlpi_addr + info->dlpi_phdr[i].p_vaddr) & ~(uintptr_t)4095;
			roend = (info->dlpi_addr + info->dlpi_phdr[i].p_vaddr + info->dlpi_phdr[i].p_memsz) & ~(uintptr_t)4095;
		}
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		if (ph->p_type != PT_LOAD)
			continue;
		uintptr_t a = info->dlpi_addr + ph->p_vaddr, end = a + ph->p_memsz;
		if (!(ph->p_flags & PF_W)) {
			peek((const void *)a, (const void *)end);
			continue;
		}
		if (a < roend && end > ro) {
			peek((const void *)a, (const void *)(roend < end ? roend : end));
			a = roend > a ? roend : a;
		}
		if (a < end)
			touch((const void *)a, (const void *)end);
	}
	return 0;
}

// prefault touches memory that a start will use: stack, the malloc
// arena (below the sizes malloc maps or trims), the start of the shared
// request, errno, this file's globals and the libraries' data. A page
// fault costs 15-20 us in the VMs culvert is measured on (a
// copy-on-write fault after a fork or clone, or a fresh page); a start
// takes them here, ahead, rather than on its path. Measured with the
// page-fault count (getrusage) at each step of a start: the pages of
// code and data a fork or clone leaves unmapped or shared were 10-15
// faults on the path of each of the shim and the init; none are left.
static void prefault(void)
{
	volatile char stack[64 << 10];
	for (size_t i = 0; i < sizeof(stack); i += 4096)
		stack[i] = 0;
	void *heap = malloc(96 << 10);
	if (heap != NULL) {
		memset(heap, 0, 96 << 10);
		free(heap);
	}
	volatile unsigned char *req = shared;
	for (size_t i = 0; req != NULL && i < (64u << 10); i += 4096)
		req[i] = req[i];
	errno = 0;
	touch(&status_fd, &status_fd + 1);
	touch(&shared, &shared + 1);
	touch(&base_nice, &base_nice + 1);
	dl_iterate_phdr(touch_libs, NULL);
	// This file's code: the span of its functions, which the compiler
	// keeps together (bounded, in case it did not).
	const uintptr_t fns[] = {(uintptr_t)put32, (uintptr_t)parse_request, (uintptr_t)do_mounts, (uintptr_t)mask_paths,
				 (uintptr_t)lookup, (uintptr_t)drop_caps, (uintptr_t)init_main, (uintptr_t)shim, (uintptr_t)server};
	uintptr_t lo = fns[0], hi = fns[0];
	for (size_t i = 1; i < sizeof(fns) / sizeof(fns[0]); i++) {
		lo = fns[i] < lo ? fns[i] : lo;
		hi = fns[i] > hi ? fns[i] : hi;
	}
	if (hi - lo < (256u << 10))
		peek((const void *)lo, (const void *)(hi + 8192));
}

// recv_fds receives one message of one byte, *c, from sock with flags,
// keeping up to max of the descriptors it carries in fds (closing the
// rest); *total is how many it carried, or -1 if some were cut off (then
// it keeps none). It returns what recvmsg returned.
static ssize_t recv_fds(int sock, char *c, int *fds, int max, int *total, int flags)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(8 * sizeof(int))];
	} cm;
	struct iovec iov = {.iov_base = c, .iov_len = 1};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof(cm.buf)};
	ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | flags);
	*total = 0;
	if (n <= 0)
		return n;
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); h != NULL; h = CMSG_NXTHDR(&mh, h)) {
		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
			continue;
		int m = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (int i = 0; i < m; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
			if (*total < max)
				fds[*total] = fd;
			else
				close(fd);
			(*total)++;
		}
	}
	if (mh.msg_flags & MSG_CTRUNC) {
		for (int i = 0; i < *total && i < max; i++)
			close(fds[i]);
		*total = -1;
	}
	return n;
}

// receive takes one message of one byte from the shim on sync, with
// exactly max descriptors; it exits if the shim is gone or the message is
// not the one expected.
static void receive(int sync, char want, int *fds, int max)
{
	char c;
	int total;
	ssize_t n;
	while ((n = recv_fds(sync, &c, fds, max, &total, 0)) < 0 && errno == EINTR)
		;
	if (n <= 0 || c != want || total != max)
		_exit(126); // the shim is gone, or a wrong message
}

// init is the container's pid 1 until it execs the function. It is
// cloned by the shim, for its start or ahead of one (ahead: network
// namespace new, loopback brought up here), and waits for the shim's
// release: a message carrying the start's stdin, stdout, stderr and
// status pipe, sent once the request is in shared. A second message says
// the id maps are written (the init takes its ids once they are); a
// third, that the init is in its cgroups.
static void __attribute__((noreturn)) init_main(int sync_fd, int ahead)
{
	struct req rq, *r = &rq;
	int fds[4];
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
		fail("set parent death signal", NULL, errno);
	if (ahead) {
		// Nothing of the waiting shim's but the socket pair and the /dev
		// it made, and its stdio until the start's replaces it.
		sync_fd = high(sync_fd);
		unsigned lo = (unsigned)sync_fd, hi = (unsigned)sync_fd;
		if (dev_ahead >= 0) {
			lo = (unsigned)dev_ahead < lo ? (unsigned)dev_ahead : lo;
			hi = (unsigned)dev_ahead > hi ? (unsigned)dev_ahead : hi;
		}
		if (syscall(SYS_close_range, 3u, lo - 1, 0) < 0 ||
		    (hi - lo > 1 && syscall(SYS_close_range, lo + 1, hi - 1, 0) < 0) ||
		    syscall(SYS_close_range, hi + 1, ~0u, 0) < 0)
			_exit(126);
		loopback_up();
		if (setsid() < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
			_exit(126);
		prepare_proc();
		const char *step;
		bounding_dropped = drop_bounding(&step) == 0;
		prefault();
	}
	receive(sync_fd, 'r', fds, 4);
	for (int i = 0; i < 3; i++)
		if (dup2(fds[i], i) < 0)
			_exit(126);
	for (int i = 0; i < 3; i++)
		if (fds[i] > 2)
			close(fds[i]);
	status_fd = fds[3];
	parse_request(r);
	receive(sync_fd, 'm', NULL, 0);
	if (!ahead && setsid() < 0)
		fail("setsid", NULL, errno);
	if (setgroups(0, NULL) < 0)
		fail("setgroups", NULL, errno);
	if (setresgid(0, 0, 0) < 0)
		fail("setresgid", NULL, errno);
	if (setresuid(0, 0, 0) < 0)
		fail("setresuid", NULL, errno);
	tied(sync_fd, "(after setresuid)");
	if (r->hostname != NULL && sethostname(r->hostname, strlen(r->hostname)) < 0)
		fail("sethostname", NULL, errno);
	if (!ahead && mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		fail("make / private", NULL, errno);
	if (mount(r->root, r->root, "bind", MS_BIND | MS_REC, NULL) < 0)
		fail("bind root", r->root, errno);
	int rootfd = open(r->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rootfd < 0)
		fail("open root", r->root, errno);
	do_mounts(rootfd, r);
	if (fchdir(rootfd) < 0)
		fail("chdir root", r->root, errno);
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		fail("pivot_root", NULL, errno);
	if (umount2(".", MNT_DETACH) < 0)
		fail("unmount old root", NULL, errno);
	if (chdir("/") < 0)
		fail("chdir /", NULL, errno);
	close(rootfd);
	mask_paths(r);
	if ((r->flags & FLAG_READONLY_ROOT) && remount_ro("/", 0) < 0)
		fail("remount / read-only", NULL, errno);
	if ((r->flags & FLAG_LOOPBACK) && !ahead)
		loopback_up();
	for (size_t i = 0; i < r->nrlimits; i++) {
		struct rlimit rl = {.rlim_cur = r->rlimits[i].soft, .rlim_max = r->rlimits[i].hard};
		if (setrlimit((int)r->rlimits[i].resource, &rl) < 0)
			fail("setrlimit", NULL, errno);
	}
	if (syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) < 0)
		fail("close_range", NULL, errno);
	if (chdir(r->cwd ? r->cwd : "/") < 0)
		fail("chdir", r->cwd, errno);
	char found[4096];
	const char *path = lookup(r, found, sizeof(found));
	// In its cgroups before the function runs, and their view rooted there.
	receive(sync_fd, 'c', NULL, 0);
	if ((r->cloneflags & CLONE_NEWCGROUP) && unshare(CLONE_NEWCGROUP) < 0)
		fail("unshare cgroup namespace", NULL, errno);
	drop_caps();
	if ((r->flags & FLAG_NO_NEW_PRIVS) && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		fail("no_new_privs", NULL, errno);
	if (r->bpf != NULL) {
		struct sock_fprog prog = {
			.len = (unsigned short)(r->bpflen / sizeof(struct sock_filter)),
			.filter = (struct sock_filter *)r->bpf,
		};
		if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
			fail("seccomp", NULL, errno);
	}
	execve(path, r->args.v, r->env.v);
	fail("execve", path, errno);
}

static void write_map(pid_t pid, const char *file, const char *map)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/%d/%s", (int)pid, file);
	int fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write_full(fd, map, strlen(map)) < 0) {
		int err = errno;
		kill(pid, SIGKILL);
		fail("write", file, err);
	}
	close(fd);
}

// join_cgroup writes pid to dir/cgroup.procs; on failure it returns the
// errno, or 0.
static int join_cgroup(const char *dir, const char *pid, size_t n)
{
	char path[4096];
	if (dir[0] != '/' || (size_t)snprintf(path, sizeof(path), "%s/cgroup.procs", dir) >= sizeof(path))
		return EINVAL;
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	int err = write_full(fd, pid, n) < 0 ? errno : 0;
	close(fd);
	return err;
}

// join_cgroups moves the init into the instance's cgroup, in every
// hierarchy the request names, before it runs the function. The optional
// ones (named hierarchies) are joined as the cgroup manager joins them:
// where it can.
static void join_cgroups(const struct req *r, pid_t init)
{
	char pid[16];
	int n = snprintf(pid, sizeof(pid), "%d", (int)init);
	for (size_t i = 0; i < r->cgroups.n; i++) {
		int err = join_cgroup(r->cgroups.v[i], pid, (size_t)n);
		if (err != 0) {
			kill(init, SIGKILL);
			fail("join cgroup", r->cgroups.v[i], err);
		}
	}
	for (size_t i = 0; i < r->optcgroups.n; i++)
		(void)join_cgroup(r->optcgroups.v[i], pid, (size_t)n);
}


// child is a cloned init: its pid and the shim's end of their socket pair.
struct child {
	pid_t pid;
	int sync;
};

// clone_init clones an init into flags' namespaces (ahead: before its
// start, at the lowest priority the shim runs at then).
static int clone_init(unsigned long flags, int ahead, struct child *c)
{
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
		return -1;
	pid_t pid = (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, 0);
	if (pid < 0) {
		int err = errno;
		close(sp[0]);
		close(sp[1]);
		errno = err;
		return -1;
	}
	if (pid == 0) {
		close(sp[0]);
		init_main(sp[1], ahead);
	}
	close(sp[1]);
	c->pid = pid;
	c->sync = high(sp[0]);
	return 0;
}

// release sends the init one message: a byte, with descriptors.
static int release(int sync, char c, const int *fds, int n)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(4 * sizeof(int))];
	} cm;
	struct iovec iov = {.iov_base = &c, .iov_len = 1};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (n > 0) {
		memset(&cm, 0, sizeof(cm));
		mh.msg_control = cm.buf;
		mh.msg_controllen = CMSG_SPACE((size_t)n * sizeof(int));
		struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
		h->cmsg_level = SOL_SOCKET;
		h->cmsg_type = SCM_RIGHTS;
		h->cmsg_len = CMSG_LEN((size_t)n * sizeof(int));
		memcpy(CMSG_DATA(h), fds, (size_t)n * sizeof(int));
	}
	ssize_t w;
	while ((w = sendmsg(sync, &mh, MSG_NOSIGNAL)) < 0 && errno == EINTR)
		;
	return w == 1 ? 0 : -1;
}

// usable says whether the init cloned ahead can serve request r: the
// namespaces it has, loopback up, and still alive.
static int usable(const struct child *pre, const struct req *r)
{
	if (pre == NULL || pre->pid <= 0)
		return 0;
	if ((r->cloneflags & ~(uint64_t)CLONE_NEWCGROUP) != PRECLONE || r->netns != NULL || !(r->flags & FLAG_LOOPBACK))
		return 0;
	int st;
	return waitpid(pre->pid, &st, WNOHANG) == 0;
}

// shim runs one start: the request on reqfd, the status pipe on stfd.
// life, if not -1, is the read end of the runtime's life pipe: when it
// hangs up (every culvert process holding its write end is gone), the
// shim kills the init, and with it the container's pid namespace. pre,
// if not NULL, is an init cloned ahead, used if the request fits it.
// taken, if not -1, is the fork server's pipe: the shim says there that
// it took its start once the init is released, off the start's path.
static void __attribute__((noreturn)) shim(int reqfd, int stfd, int life, struct child *pre, int taken)
{
	struct req r;
	status_fd = stfd;
	// First its own pid: the runtime learns which child to wait for (a
	// shim forked by the server is the runtime's child too) from the
	// status pipe, with the rest.
	unsigned char hello[5] = {'S'};
	put32(hello + 1, (uint32_t)getpid());
	if (write_full(status_fd, hello, sizeof(hello)) < 0)
		_exit(126);
	// A signal relayed below must not leave a core of the shim.
	struct rlimit nocore = {0, 0};
	if (setrlimit(RLIMIT_CORE, &nocore) < 0)
		fail("setrlimit", "(shim core)", errno);
	map_shared();
	read_request(reqfd);
	close(reqfd);
	parse_request(&r);
	struct child c;
	if (usable(pre, &r)) {
		c = *pre;
		if (setpriority(PRIO_PROCESS, (id_t)c.pid, base_nice) < 0) {
			int err = errno;
			kill(c.pid, SIGKILL);
			fail("setpriority", "(init)", err);
		}
	} else {
		if (pre != NULL && pre->pid > 0) {
			kill(pre->pid, SIGKILL);
			while (waitpid(pre->pid, NULL, 0) < 0 && errno == EINTR)
				;
			close(pre->sync);
		}
		if (r.netns != NULL) {
			int ns = open(r.netns, O_RDONLY | O_CLOEXEC);
			if (ns < 0 || setns(ns, CLONE_NEWNET) < 0)
				fail("join network namespace", r.netns, errno);
			close(ns);
		}
		if (clone_init((unsigned long)r.cloneflags & ~(unsigned long)CLONE_NEWCGROUP, 0, &c) < 0)
			fail("clone", NULL, errno);
	}
	pid_t pid = c.pid;
	// The init is released first: it wakes and reads the request while
	// the maps are written (it takes its ids once told they are).
	int fds[4] = {0, 1, 2, status_fd};
	if (release(c.sync, 'r', fds, 4) < 0) {
		kill(pid, SIGKILL);
		_exit(126);
	}
	write_map(pid, "uid_map", r.uidmap);
	write_map(pid, "gid_map", r.gidmap);
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0) {
		int err = errno;
		kill(pid, SIGKILL);
		fail("pidfd_open", "(init)", err);
	}
	// The init's pid is on the status pipe before the init's 'A' or
	// 'D', which come after 'm' (a failure of its own, 'E', may come
	// first: the runtime reads one in place of the pid too).
	unsigned char msg[5] = {'P'};
	put32(msg + 1, (uint32_t)pid);
	if (write_full(status_fd, msg, sizeof(msg)) < 0 || release(c.sync, 'm', NULL, 0) < 0) {
		kill(pid, SIGKILL);
		_exit(126);
	}
	// The init sets itself up meanwhile; it runs nothing of the
	// function's before this says it is in its cgroups.
	join_cgroups(&r, pid);
	if (release(c.sync, 'c', NULL, 0) < 0) {
		kill(pid, SIGKILL);
		_exit(126);
	}
	close(status_fd);
	if (taken >= 0) {
		(void)write(taken, "t", 1);
		close(taken);
	}
	// Wait for the init, or for the runtime to go.
	for (;;) {
		struct pollfd p[2] = {{.fd = pidfd, .events = POLLIN}, {.fd = life, .events = POLLIN}};
		int n = poll(p, life >= 0 ? 2 : 1, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || (life >= 0 && p[1].revents != 0)) {
			kill(pid, SIGKILL);
			break;
		}
		if (p[0].revents != 0)
			break;
	}
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			_exit(126);
	if (WIFSIGNALED(st)) {
		int sig = WTERMSIG(st);
		sigset_t set;
		signal(sig, SIG_DFL);
		sigemptyset(&set);
		sigaddset(&set, sig);
		sigprocmask(SIG_UNBLOCK, &set, NULL);
		kill(getpid(), sig);
		_exit(128 + sig);
	}
	_exit(WEXITSTATUS(st));
}

// server_child is the shim of one start, forked by the server: the five
// descriptors the start sent become 0-4 (stdin, stdout, stderr, request,
// status), and the shim proceeds as one started by exec.
static void __attribute__((noreturn)) server_child(int fds[5], int sock, int life, char *argv0, struct child *pre, int taken)
{
	int tmp[5];
	close(sock);
	for (int i = 0; i < 5; i++)
		if ((tmp[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 10)) < 0)
			_exit(125);
	for (int i = 0; i < 5; i++)
		close(fds[i]);
	for (int i = 0; i < 5; i++)
		if (dup2(tmp[i], i) < 0)
			_exit(125);
	for (int i = 0; i < 5; i++)
		close(tmp[i]);
	// Named as a shim started by exec is, in ps and /proc.
	if (argv0 != NULL) {
		size_t n = strlen(argv0);
		memset(argv0, 0, n);
		memcpy(argv0, "culvert-spawn", n < 13 ? n : 13);
	}
	shim(3, 4, life, pre, taken);
}

// WAIT_NAME is the name (PR_SET_NAME, at most 15 bytes) of a shim forked
// ahead while it waits for its start; the runtime reaps the one left
// waiting when it stops the server.
#define WAIT_NAME "culvert-spawn-w"

// AHEAD_DELAY_MS is how long after a start took the waiting shim the
// server forks the next one (see server).
#define AHEAD_DELAY_MS 30

// waiting is a shim forked ahead by the server (with CLONE_PARENT, so it
// is the runtime's child). At the lowest priority, unless a start is
// already waiting for it, it clones an init ahead (see PRECLONE); then it
// takes the next message from sock: a byte
// and, as SCM_RIGHTS, the five descriptors of a start; it tells the
// server on taken (which forks the next) and runs that start. It exits
// when the runtime closes its end of the socket or the life pipe hangs
// up; its init, tied to it by PR_SET_PDEATHSIG, goes with it.
static void __attribute__((noreturn)) waiting(int sock, int life, int taken, char *argv0)
{
	struct child pre = {0, -1};
	if (prctl(PR_SET_NAME, WAIT_NAME, 0, 0, 0) < 0)
		_exit(125);
	taken = high(taken); // out of the way of the start's 0-4
	errno = 0;
	base_nice = getpriority(PRIO_PROCESS, 0);
	if ((base_nice == -1 && errno != 0) || setpriority(PRIO_PROCESS, 0, 19) < 0)
		_exit(125);
	map_shared();
	prefault();
	// A start already waiting for this shim clones its own init.
	struct pollfd first[2] = {{.fd = sock, .events = POLLIN}, {.fd = life, .events = POLLIN}};
	int woke;
	while ((woke = poll(first, 2, 0)) < 0 && errno == EINTR)
		;
	if (woke == 0) {
		prepare_dev();
		if (clone_init(PRECLONE, 1, &pre) < 0)
			pre.pid = 0; // cloned at the start instead
		prefault();
	}
	// Woken by its start at the server's priority; the init cloned
	// ahead gets it back from the shim.
	if (setpriority(PRIO_PROCESS, 0, base_nice) < 0)
		_exit(125);
	for (;;) {
		struct pollfd p[2] = {{.fd = sock, .events = POLLIN}, {.fd = life, .events = POLLIN}};
		int n = poll(p, 2, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || p[1].revents != 0)
			_exit(0);
		char b;
		int fds[5], nfds;
		ssize_t r = recv_fds(sock, &b, fds, 5, &nfds, MSG_DONTWAIT);
		if (r == 0)
			_exit(0); // the runtime closed its end
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			_exit(1);
		}
		if (nfds == 5) {
			// Named as a start's shim before anything else: from here
			// on the runtime's stop leaves this process to its start.
			if (prctl(PR_SET_NAME, "culvert-spawn", 0, 0, 0) < 0)
				_exit(125);
			server_child(fds, sock, life, argv0, &pre, taken);
		}
		for (int i = 0; i < nfds && i < 5; i++)
			close(fds[i]);
	}
}

// server is the fork server: one per runtime. It keeps one shim forked
// ahead, waiting for the next start on sock, and forks the next
// AHEAD_DELAY_MS after that one took a start (at once if another start
// is already waiting), until the runtime closes the socket or its life
// pipe hangs up.
static void __attribute__((noreturn)) server(int sock, int life, char *argv0)
{
	struct rlimit nocore = {0, 0};
	if (setrlimit(RLIMIT_CORE, &nocore) < 0)
		_exit(125);
	sock = high(sock);
	life = high(life);
	int taken[2];
	if (pipe2(taken, O_CLOEXEC) < 0)
		_exit(125);
	for (;;) {
		pid_t pid = (pid_t)syscall(SYS_clone, (unsigned long)(CLONE_PARENT | SIGCHLD), NULL, NULL, NULL, 0);
		if (pid == 0) {
			close(taken[0]);
			waiting(sock, life, taken[1], argv0);
		}
		if (pid < 0)
			_exit(1);
		// The shim says it took a start once it has released its init;
		// one that exits before that (killed, or failed) took one too,
		// which its pidfd tells (ESRCH: it is gone already; without a
		// pidfd otherwise, only its word counts).
		int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
		int gone = pidfd < 0 && errno == ESRCH;
		while (!gone) {
			// The socket with no events: only its hang-up wakes the
			// server; the waiting shim reads the messages.
			struct pollfd p[4] = {{.fd = taken[0], .events = POLLIN}, {.fd = life, .events = POLLIN}, {.fd = sock, .events = 0}, {.fd = pidfd, .events = POLLIN}};
			int n = poll(p, pidfd >= 0 ? 4 : 3, -1);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 || p[1].revents != 0 || p[2].revents != 0)
				_exit(0);
			char c;
			if (p[0].revents != 0 && read(taken[0], &c, 1) == 1)
				break;
			if (pidfd >= 0 && p[3].revents != 0)
				break;
		}
		if (pidfd >= 0)
			close(pidfd);
		// The next shim (and the init it clones) is made once the start
		// that took this one has had the time to reach its function:
		// made alongside that start, on the other core, it slowed the
		// start by more than it saved the next one. A start that comes
		// meanwhile has it made at once.
		for (;;) {
			struct pollfd p[2] = {{.fd = life, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
			int n = poll(p, 2, AHEAD_DELAY_MS);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 || p[0].revents != 0 || (p[1].revents & (POLLHUP | POLLERR)))
				_exit(0);
			break;
		}
	}
}

__attribute__((constructor)) static void culvert_spawn(int argc, char **argv, char **envp)
{
	const char *v = getenv(SPAWN_ENV);
	int reqfd, stfd, life = -1;
	(void)envp;
	if (v == NULL)
		return;
	if (sscanf(v, "server,%d,%d", &reqfd, &life) == 2) {
		if (reqfd < 3 || life < 3)
			_exit(125);
		server(reqfd, life, argc > 0 ? argv[0] : NULL);
	}
	int k = sscanf(v, "%d,%d,%d", &reqfd, &stfd, &life);
	if (k < 2 || reqfd < 3 || stfd < 3 || (k == 3 && life < 3))
		_exit(125);
	shim(reqfd, stfd, k == 3 ? life : -1, NULL, -1);
}
