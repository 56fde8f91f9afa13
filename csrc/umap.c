/*
 * bun-umap fault engine.
 *
 * One engine per process owns the userfaultfd, the table of regions, the per-page states, the
 * page buffer that bounds how much of all regions is resident, the FIFO used for eviction, the
 * queue of fill requests, and the monitor thread that turns fault messages into fill requests.
 *
 * Fill workers are Bun Worker threads. Each calls umap_worker_next() (which blocks in a condition
 * variable until a request is ready), reads the store into the staging buffer the request names,
 * and calls umap_worker_complete(), which installs the bytes with UFFDIO_COPY and wakes the
 * faulting threads. The workers reach these functions through the symbol pointers of the one
 * copy that the main thread compiled, so every thread shares the same globals.
 *
 * Conventions (after liburing): every exported function starts with umap_, returns 0, a count or
 * an id on success and -errno on failure; helpers are static. One mutex, E.mu, guards all engine
 * state; the slow system calls (UFFDIO_COPY of a whole batch, a store read) run outside it.
 *
 * Page states: EMPTY (not resident, not requested) -> FILLING (requested, reserved in the buffer)
 * -> PRESENT (installed) -> EMPTY (evicted with MADV_DONTNEED). A fill that fails for good leaves
 * the faulting page POISONED (SIGBUS on access, like a kernel mapping of a failing file) and the
 * rest of its batch EMPTY, so threads waiting there fault again and get a request of their own.
 *
 * Writable regions are registered for write-protect faults too, and their pages are installed
 * write-protected: the first write to a page faults, the monitor marks it DIRTY and lifts the
 * protection. To write a dirty page back (on eviction or flush) the engine protects it again
 * first and only then copies it into a write-back entry, so a write that lands during write-back
 * faults, marks the page dirty again and is written later: nothing is lost. An evicted page whose
 * write-back is still in flight is served from that entry's copy, never from the stale store.
 * Evictor workers take write-back entries from their own queue and call store.write().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uffd_compat.h"

#define UMAP_REGIONS_MAX 4096
#define UMAP_WORKERS_MAX 256
#define UMAP_QUEUE_MAX 8192
#define UMAP_TICKETS_MAX 1024
#define UMAP_COMMANDS_MAX 256
#define UMAP_FAULT_EVENTS_MAX 4096
#define UMAP_TICKET_ERROR_BYTES 512
/* A fill request covers at most this many bytes (or one page, where pages are larger): big
 * enough that a store read and a UFFDIO_COPY amortize their fixed costs, small enough that
 * several workers share a read-ahead window. */
#define UMAP_BATCH_BYTES_MAX (1u << 20)
/* The batch that holds the faulting page is kept smaller, so the faulting thread resumes sooner. */
#define UMAP_FAULT_BATCH_BYTES_MAX (256u << 10)
#define UMAP_SYSTEM_PAGE 4096u
/* A transparent huge page (x86-64 and arm64 with 4 KiB base pages): UFFDIO_MOVE hands one over
 * by moving a single page-table entry. */
#define UMAP_HUGE_PAGE (2u << 20)
/* UFFDIO_MOVE answers EAGAIN while a page is being migrated or split: retry, but not forever. */
#define UMAP_MOVE_RETRIES_MAX 16
#define UMAP_WRITEBACK_BUCKETS 4096
/* Failed fills a region remembers for umap_region_error(): the most recent ones. */
#define UMAP_REGION_ERRORS_MAX 64
/* Workers that died serving a request before it is failed instead of handed to another worker. */
#define UMAP_REQUEST_ATTEMPTS_MAX 3

/* A page's state byte holds one of these in its low bits, and the flags below above them. */
enum page_state { PAGE_EMPTY = 0, PAGE_FILLING = 1, PAGE_PRESENT = 2, PAGE_POISONED = 3 };
#define PAGE_STATE_MASK 0x03
/* Written since it was installed or last copied for write-back (writable regions). */
#define PAGE_DIRTY 0x10
/* A write-back entry holds bytes of this page that the store may not have yet. */
#define PAGE_WRITEBACK 0x20

enum request_kind { REQUEST_FILL = 0, REQUEST_WRITE = 1, REQUEST_MARKER = 2 };
enum worker_role { ROLE_FILLER = 0, ROLE_EVICTOR = 1 };
enum writeback_state { WB_FREE = 0, WB_QUEUED = 1, WB_WRITING = 2, WB_FAILED = 3 };

/* Which way the userfaultfd was opened: reported to TypeScript for diagnostics. */
enum open_mode { OPEN_NONE = 0, OPEN_SYSCALL = 1, OPEN_DEVICE = 2, OPEN_USER_MODE_ONLY = 3 };

/* Order and meaning of the numbers umap_region_stats() writes; src/engine.ts reads them. */
enum region_stat {
	STAT_FAULTS,            /* fault messages received for the region */
	STAT_DUPLICATE_FAULTS,  /* of those, on a page already being filled */
	STAT_FILLS,             /* pages installed */
	STAT_FILL_REQUESTS,     /* requests handed to workers (one store read each) */
	STAT_READ_AHEAD_PAGES,  /* pages requested beyond the faulting page */
	STAT_PREFETCH_PAGES,    /* pages requested by prefetch() */
	STAT_EVICTIONS,         /* pages dropped from the buffer */
	STAT_RESIDENT_PAGES,    /* pages installed or being filled now */
	STAT_BYTES_READ,        /* bytes installed from the store */
	STAT_FILL_ERRORS,       /* requests whose store read failed */
	STAT_POISONED_PAGES,    /* pages answered with SIGBUS after a failed fill */
	STAT_ZEROED_PAGES,      /* pages answered with zeros after a failed fill (no UFFDIO_POISON) */
	STAT_COPY_RACES,        /* pages UFFDIO_COPY found already installed (EEXIST) */
	STAT_WRITE_FAULTS,      /* write-protect faults: first writes to clean pages */
	STAT_WRITEBACKS,        /* pages written to the store */
	STAT_BYTES_WRITTEN,     /* bytes written to the store */
	STAT_WRITEBACK_ERRORS,  /* store writes that failed (the pages stay dirty) */
	STAT_WRITEBACK_SERVES,  /* faults served from a write-back entry's copy */
	STAT_MOVED_PAGES,       /* pages installed by UFFDIO_MOVE of the staging pages (no copy) */
	STAT_COUNT
};

/* How a fill that failed for good answered its faulting page. */
enum fill_answer { ANSWER_NONE = 0, ANSWER_POISONED = 1, ANSWER_ZEROED = 2 };

/* One failed fill, as umap_region_error() reports it. */
struct fill_error {
	uint64_t byte_offset;
	uint64_t byte_length;
	int answer; /* enum fill_answer, for the faulting page */
	char message[UMAP_TICKET_ERROR_BYTES];
};

struct region {
	int live;
	int closing;
	uint32_t generation;
	char *base;
	uint64_t mapped_bytes; /* page_count * page_size */
	uint64_t page_size;
	uint64_t page_count;
	uint8_t *state;
	int64_t read_ahead_fixed; /* pages, or -1 for adaptive */
	uint64_t stream_end;      /* adaptive read-ahead: page after the last sequential run */
	uint64_t stream_window;   /* adaptive read-ahead: pages to request on the next fault */
	uint64_t inflight_pages;
	uint64_t stat[STAT_COUNT];
	char *descriptor;
	uint64_t descriptor_bytes;
	int writable;
	uint64_t writeback_count;    /* live write-back entries of this region */
	uint64_t writeback_next_seq; /* snapshots are numbered; flush() waits for those below a mark */
	char write_error[UMAP_TICKET_ERROR_BYTES]; /* the last failed store write */
	int zero_failed_fills; /* answer a failed fill with zeros, not SIGBUS (onFillError: "zero") */
	struct fill_error *errors; /* ring of the last UMAP_REGION_ERRORS_MAX failed fills */
	uint64_t error_count;      /* failed fills recorded since the region was created */
};

struct request {
	uint32_t kind;         /* enum request_kind */
	uint32_t slot;
	uint32_t ticket;       /* 0 or the prefetch ticket this request counts towards */
	int32_t writeback;     /* REQUEST_WRITE: index of the write-back entry */
	uint64_t first_page;
	uint64_t page_count;   /* REQUEST_FILL: pages to fill */
	uint64_t fault_page;   /* the page whose fault made this request, or UINT64_MAX */
	uint32_t attempts;     /* workers that died serving it so far */
};

/* Bytes of one page on their way to the store. */
struct writeback {
	int state;             /* enum writeback_state */
	uint32_t slot;
	uint64_t page;
	char *data;            /* the copy being written (or to be written) */
	char *newer;           /* a later copy taken while data is being written: written next */
	uint64_t seq;          /* the oldest snapshot this entry carries (see writeback_next_seq) */
	uint64_t newer_seq;
	int accounted;         /* its bytes count in the page buffer (its page was evicted) */
	uint32_t attempts;     /* evictors that died writing it so far */
	int32_t next;          /* hash chain, or free list */
};

/* A bounded FIFO of requests; fills use it as a deque (fault batches go to the front). */
struct queue {
	struct request items[UMAP_QUEUE_MAX];
	uint32_t head;
	uint32_t count;
	pthread_cond_t ready; /* a request was queued, or the engine is stopping */
};

struct worker {
	int used;
	int busy;
	int role;       /* enum worker_role */
	uint64_t epoch; /* the engine run it serves: a worker of a stopped run never serves again */
	struct request req;
	char *staging;
	uint64_t staging_bytes;
};

struct ticket {
	int used;
	int orphaned; /* completed where no worker could report it: the main thread polls for it */
	uint64_t pending; /* requests not yet completed, the closing marker included */
	int failed;
	char error[UMAP_TICKET_ERROR_BYTES];
};

struct command {
	uint32_t slot;
	uint32_t ticket;
	uint64_t first_page;
	uint64_t page_count;
};

static struct engine {
	pthread_mutex_t mu;
	pthread_cond_t space_cv; /* buffer space or queue room was freed, or a region is closing */
	int running;
	int stopping;
	uint64_t epoch; /* counts engine starts */
	uint64_t releases; /* counts region releases: workers then close stores of gone regions */
	int uffd;
	int wake_fd;
	pthread_t monitor;
	int open_mode;
	int open_errno[3]; /* errno of each way tried: syscall, device, user-mode-only */
	uint64_t features;

	uint64_t buffer_bytes;
	uint64_t high_bytes;
	uint64_t low_bytes;
	uint64_t resident_bytes;
	/* Of resident_bytes, those of evicted pages whose write-back is still in flight: already
	 * on their way out, so eviction does not count them as bytes it still has to free. */
	uint64_t writeback_bytes;
	uint32_t fault_events_max;
	uint64_t stray_faults;

	struct region regions[UMAP_REGIONS_MAX];
	uint32_t sorted[UMAP_REGIONS_MAX]; /* live slots ordered by base address */
	uint32_t sorted_count;

	/* FIFO of reserved pages, oldest first: entry = slot << 48 | page. */
	uint64_t *fifo;
	uint64_t fifo_capacity;
	uint64_t fifo_head;
	uint64_t fifo_count;

	struct queue fills;  /* for fillers */
	struct queue writes; /* for evictors */

	/* Write-back entries, found by (slot, page) through a chained hash. */
	struct writeback *writebacks;
	int32_t writeback_capacity;
	int32_t writeback_free;
	int32_t writeback_buckets[UMAP_WRITEBACK_BUCKETS];

	struct worker workers[UMAP_WORKERS_MAX];
	struct ticket tickets[UMAP_TICKETS_MAX];
	struct command commands[UMAP_COMMANDS_MAX];
	uint32_t command_count;
	/* Every filler died and none has registered since: faults are answered as failed fills
	 * rather than queued for nobody. */
	int fillers_lost;
	/* Likewise for evictors: write-backs are failed (their pages stay dirty, in their entries)
	 * rather than queued for nobody, which would leave eviction waiting for room forever. */
	int evictors_lost;
	uint64_t worker_deaths;
} E = {
	.mu = PTHREAD_MUTEX_INITIALIZER,
	.space_cv = PTHREAD_COND_INITIALIZER,
	.fills = { .ready = PTHREAD_COND_INITIALIZER },
	.writes = { .ready = PTHREAD_COND_INITIALIZER },
	.uffd = -1,
	.wake_fd = -1,
	.writeback_free = -1,
};

/* Answers for work no worker is left to do (see "worker deaths"). */
static void fail_queued_fills(void);
static void fail_queued_writes(void);

/* Assertions catch programmer errors and stay on in every build. */
#define UMAP_ASSERT(cond)                                                                     \
	do {                                                                                  \
		if (!(cond))                                                                  \
			umap_assert_failed(#cond, __LINE__);                                  \
	} while (0)

static void umap_assert_failed(const char *what, int line)
{
	char msg[256];
	int n = 0;
	const char *prefix = "bun-umap engine: assertion failed: ";
	while (prefix[n] && n < 200) {
		msg[n] = prefix[n];
		n++;
	}
	for (int i = 0; what[i] && n < 240; i++)
		msg[n++] = what[i];
	msg[n++] = ' ';
	msg[n++] = '@';
	char digits[12];
	int d = 0;
	do {
		digits[d++] = (char)('0' + line % 10);
		line /= 10;
	} while (line && d < 11);
	while (d && n < 254)
		msg[n++] = digits[--d];
	msg[n++] = '\n';
	ssize_t ignored = write(2, msg, (size_t)n);
	(void)ignored;
	abort();
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static int state_of(const struct region *r, uint64_t page)
{
	return r->state[page] & PAGE_STATE_MASK;
}

static void set_state(struct region *r, uint64_t page, int state)
{
	r->state[page] = (uint8_t)((r->state[page] & ~PAGE_STATE_MASK) | state);
}

/* EMPTY, with no write-back copy that would have to be served instead of the store. */
static int fillable(const struct region *r, uint64_t page)
{
	return r->state[page] == PAGE_EMPTY;
}

/* ---------------------------------------------------------------- userfaultfd primitives */

static int uffd_wake(uint64_t start, uint64_t len)
{
	struct uffdio_range range = { .start = start, .len = len };
	return ioctl(E.uffd, UFFDIO_WAKE, &range) ? -errno : 0;
}

/*
 * Installs len bytes from src at dst without waking anyone: the caller records the pages as
 * present first and then wakes the range, so a woken thread never sees counters or states that
 * lag behind the memory. EEXIST means another installation won for one system page: that page
 * is skipped and counted, since its bytes are already there. EAGAIN (the address space changed
 * under us) is retried from where the kernel stopped.
 */
static int uffd_copy(uint64_t dst, const char *src, uint64_t len, int write_protect,
		     uint64_t *races)
{
	uint64_t done = 0;
	while (done < len) {
		struct uffdio_copy copy = {
			.dst = dst + done,
			.src = (uint64_t)(uintptr_t)(src + done),
			.len = len - done,
			.mode = UFFDIO_COPY_MODE_DONTWAKE |
				(write_protect ? UFFDIO_COPY_MODE_WP : 0),
		};
		if (ioctl(E.uffd, UFFDIO_COPY, &copy) == 0) {
			done += (uint64_t)copy.copy;
			continue;
		}
		int err = errno;
		if (copy.copy > 0)
			done += (uint64_t)copy.copy;
		if (err == EAGAIN)
			continue;
		if (err == EEXIST) {
			done += UMAP_SYSTEM_PAGE;
			(*races)++;
			continue;
		}
		return -err;
	}
	return 0;
}

/*
 * Moves up to len bytes of staging pages to dst without waking anyone: the pages change owner
 * and no byte is copied; the staging range is left empty. Returns the bytes moved, from the
 * start, before the first page that could not be moved (the caller copies the rest: a page
 * already there, a split in progress or a kernel that refuses all count the same).
 */
static uint64_t uffd_move(uint64_t dst, const char *src, uint64_t len)
{
	uint64_t done = 0;
	int retries = 0;
	while (done < len) {
		struct uffdio_move move = {
			.dst = dst + done,
			.src = (uint64_t)(uintptr_t)(src + done),
			.len = len - done,
			.mode = UFFDIO_MOVE_MODE_DONTWAKE,
		};
		if (ioctl(E.uffd, UFFDIO_MOVE, &move) == 0) {
			done += (uint64_t)move.move;
			continue;
		}
		int err = errno;
		if (move.move > 0)
			done += (uint64_t)move.move;
		if (err != EAGAIN || retries++ == UMAP_MOVE_RETRIES_MAX)
			break;
	}
	return done;
}

/* Write-protects the range (protect != 0), or lifts the protection and wakes its writers. */
static int uffd_writeprotect(uint64_t start, uint64_t len, int protect)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = start, .len = len },
		.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};
	return ioctl(E.uffd, UFFDIO_WRITEPROTECT, &wp) ? -errno : 0;
}

static int uffd_poison(uint64_t start, uint64_t len)
{
	struct uffdio_poison poison = { .range = { .start = start, .len = len }, .mode = 0 };
	return ioctl(E.uffd, UFFDIO_POISON, &poison) ? -errno : 0;
}

static int uffd_open(int flags, int *mode)
{
	int fd = (int)syscall(SYS_userfaultfd, flags);
	if (fd >= 0) {
		*mode = OPEN_SYSCALL;
		return fd;
	}
	E.open_errno[0] = errno;
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev >= 0) {
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
		E.open_errno[1] = fd < 0 ? errno : 0;
		close(dev);
		if (fd >= 0) {
			*mode = OPEN_DEVICE;
			return fd;
		}
	} else {
		E.open_errno[1] = errno;
	}
	fd = (int)syscall(SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY);
	if (fd >= 0) {
		*mode = OPEN_USER_MODE_ONLY;
		return fd;
	}
	E.open_errno[2] = errno;
	return -E.open_errno[0];
}

/* ---------------------------------------------------------------- regions and the FIFO */

static struct region *region_at(uint32_t slot)
{
	if (slot >= UMAP_REGIONS_MAX || !E.regions[slot].live)
		return NULL;
	return &E.regions[slot];
}

static struct region *region_of_address(uint64_t addr)
{
	uint32_t lo = 0, hi = E.sorted_count;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		struct region *r = &E.regions[E.sorted[mid]];
		uint64_t base = (uint64_t)(uintptr_t)r->base;
		if (addr < base)
			hi = mid;
		else if (addr >= base + r->mapped_bytes)
			lo = mid + 1;
		else
			return r;
	}
	return NULL;
}

static uint64_t page_address(const struct region *r, uint64_t page)
{
	return (uint64_t)(uintptr_t)r->base + page * r->page_size;
}

static int fifo_push(uint32_t slot, uint64_t page)
{
	if (E.fifo_count == E.fifo_capacity) {
		uint64_t capacity = E.fifo_capacity ? E.fifo_capacity * 2 : 1024;
		uint64_t *grown = malloc(capacity * sizeof *grown);
		if (!grown)
			return -ENOMEM;
		for (uint64_t i = 0; i < E.fifo_count; i++)
			grown[i] = E.fifo[(E.fifo_head + i) % E.fifo_capacity];
		free(E.fifo);
		E.fifo = grown;
		E.fifo_capacity = capacity;
		E.fifo_head = 0;
	}
	E.fifo[(E.fifo_head + E.fifo_count) % E.fifo_capacity] = (uint64_t)slot << 48 | page;
	E.fifo_count++;
	return 0;
}

/* Drops every FIFO entry of a slot: called when its region is released. */
static void fifo_forget_slot(uint32_t slot)
{
	uint64_t kept = 0;
	for (uint64_t i = 0; i < E.fifo_count; i++) {
		uint64_t entry = E.fifo[(E.fifo_head + i) % E.fifo_capacity];
		if ((uint32_t)(entry >> 48) != slot)
			E.fifo[(E.fifo_head + kept++) % E.fifo_capacity] = entry;
	}
	E.fifo_count = kept;
}

static int queue_push(struct queue *q, const struct request *req, int urgent)
{
	if (q->count == UMAP_QUEUE_MAX)
		return -EAGAIN;
	if (urgent) {
		q->head = (q->head + UMAP_QUEUE_MAX - 1) % UMAP_QUEUE_MAX;
		q->items[q->head] = *req;
	} else {
		q->items[(q->head + q->count) % UMAP_QUEUE_MAX] = *req;
	}
	q->count++;
	pthread_cond_signal(&q->ready);
	return 0;
}

static struct request queue_pop(struct queue *q)
{
	UMAP_ASSERT(q->count > 0);
	struct request req = q->items[q->head];
	q->head = (q->head + 1) % UMAP_QUEUE_MAX;
	q->count--;
	pthread_cond_broadcast(&E.space_cv); /* the queue has room again */
	return req;
}

/* ---------------------------------------------------------------- write-back entries */

static uint32_t writeback_bucket(uint32_t slot, uint64_t page)
{
	uint64_t key = ((uint64_t)slot << 48 | page) * 0x9E3779B97F4A7C15ull;
	return (uint32_t)(key >> 52) % UMAP_WRITEBACK_BUCKETS;
}

static int32_t writeback_find(uint32_t slot, uint64_t page)
{
	if (!E.writebacks)
		return -1;
	for (int32_t i = E.writeback_buckets[writeback_bucket(slot, page)]; i >= 0;
	     i = E.writebacks[i].next)
		if (E.writebacks[i].slot == slot && E.writebacks[i].page == page)
			return i;
	return -1;
}

/* A new QUEUED entry for the page, holding a copy of its bytes; its index, or -ENOMEM. */
static int32_t writeback_create(struct region *r, uint64_t page, const char *bytes)
{
	if (E.writeback_free < 0) {
		int32_t capacity = E.writeback_capacity ? E.writeback_capacity * 2 : 256;
		struct writeback *grown = realloc(E.writebacks, (size_t)capacity * sizeof *grown);
		if (!grown)
			return -ENOMEM;
		if (!E.writebacks)
			for (int i = 0; i < UMAP_WRITEBACK_BUCKETS; i++)
				E.writeback_buckets[i] = -1;
		for (int32_t i = capacity - 1; i >= E.writeback_capacity; i--) {
			grown[i] = (struct writeback){ .state = WB_FREE, .next = E.writeback_free };
			E.writeback_free = i;
		}
		E.writebacks = grown;
		E.writeback_capacity = capacity;
	}
	char *data = malloc(r->page_size);
	if (!data)
		return -ENOMEM;
	memcpy(data, bytes, r->page_size);
	int32_t index = E.writeback_free;
	struct writeback *wb = &E.writebacks[index];
	E.writeback_free = wb->next;
	uint32_t slot = (uint32_t)(r - E.regions);
	uint32_t bucket = writeback_bucket(slot, page);
	*wb = (struct writeback){
		.state = WB_QUEUED,
		.slot = slot,
		.page = page,
		.data = data,
		.seq = r->writeback_next_seq++,
		.next = E.writeback_buckets[bucket],
	};
	E.writeback_buckets[bucket] = index;
	r->state[page] |= PAGE_WRITEBACK;
	r->writeback_count++;
	return index;
}

/* An entry's bytes stop counting in the buffer. */
static void writeback_unaccount(const struct region *r, struct writeback *wb)
{
	UMAP_ASSERT(wb->accounted);
	UMAP_ASSERT(E.resident_bytes >= r->page_size && E.writeback_bytes >= r->page_size);
	wb->accounted = 0;
	E.resident_bytes -= r->page_size;
	E.writeback_bytes -= r->page_size;
	pthread_cond_broadcast(&E.space_cv);
}

/* Frees an entry whose bytes are in the store, or now live in the region's page again. */
static void writeback_remove(struct region *r, int32_t index)
{
	struct writeback *wb = &E.writebacks[index];
	uint32_t bucket = writeback_bucket(wb->slot, wb->page);
	int32_t *link = &E.writeback_buckets[bucket];
	while (*link != index)
		link = &E.writebacks[*link].next;
	*link = wb->next;
	if (wb->accounted)
		writeback_unaccount(r, wb);
	r->state[wb->page] &= (uint8_t)~PAGE_WRITEBACK;
	r->writeback_count--;
	free(wb->data);
	free(wb->newer);
	*wb = (struct writeback){ .state = WB_FREE, .next = E.writeback_free };
	E.writeback_free = index;
	pthread_cond_broadcast(&E.space_cv);
}

static int queue_write(int32_t index)
{
	struct request req = {
		.kind = REQUEST_WRITE,
		.slot = E.writebacks[index].slot,
		.writeback = index,
		.fault_page = UINT64_MAX,
	};
	return queue_push(&E.writes, &req, 0);
}

/*
 * Copies a dirty page, already write-protected again by the caller, into its write-back entry
 * and clears its DIRTY flag: a new entry, or the queued one updated, or (while the entry's copy
 * is being written) a newer copy that is written next. Writes that land after the protection
 * fault and mark the page dirty again. Returns the entry's index, or -ENOMEM (the page stays
 * dirty) or -EAGAIN (the write queue is full: the page stays dirty).
 */
static int32_t snapshot_page(struct region *r, uint64_t page)
{
	const char *bytes = r->base + page * r->page_size;
	int32_t index = writeback_find((uint32_t)(r - E.regions), page);
	if (index < 0) {
		if (E.writes.count == UMAP_QUEUE_MAX)
			return -EAGAIN;
		index = writeback_create(r, page, bytes);
		if (index < 0)
			return index;
		int queued = queue_write(index);
		UMAP_ASSERT(queued == 0);
	} else {
		struct writeback *wb = &E.writebacks[index];
		if (wb->state == WB_WRITING) {
			if (!wb->newer) {
				wb->newer = malloc(r->page_size);
				if (!wb->newer)
					return -ENOMEM;
				wb->newer_seq = r->writeback_next_seq++;
			}
			memcpy(wb->newer, bytes, r->page_size);
		} else {
			if (wb->state == WB_FAILED) {
				if (E.writes.count == UMAP_QUEUE_MAX)
					return -EAGAIN;
				wb->state = WB_QUEUED;
				int queued = queue_write(index);
				UMAP_ASSERT(queued == 0);
			}
			/* Queued: the newer bytes replace the copy; it still answers for the
			 * oldest snapshot it stood for, so its seq stays. */
			memcpy(wb->data, bytes, r->page_size);
		}
	}
	r->state[page] &= (uint8_t)~PAGE_DIRTY;
	return index;
}

/*
 * Evicts installed pages, oldest first, until no more than target_bytes are resident (not
 * counting evicted pages still being written back) or nothing more can go. Pages still being
 * filled are passed over and keep their place at the back. Contiguous pages of one region are
 * released with one madvise() call.
 */
static void evict_to(uint64_t target_bytes)
{
	uint64_t budget = E.fifo_count;
	struct region *run = NULL;
	uint64_t run_first = 0, run_count = 0;

	while (E.resident_bytes - E.writeback_bytes > target_bytes && budget-- > 0 && E.fifo_count > 0) {
		uint64_t entry = E.fifo[E.fifo_head];
		E.fifo_head = (E.fifo_head + 1) % E.fifo_capacity;
		E.fifo_count--;
		uint32_t slot = (uint32_t)(entry >> 48);
		uint64_t page = entry & ((1ull << 48) - 1);
		struct region *r = region_at(slot);
		if (!r || page >= r->page_count)
			continue;
		if (state_of(r, page) == PAGE_FILLING) {
			/* Cannot fail: the entry just popped left room. */
			int pushed = fifo_push(slot, page);
			UMAP_ASSERT(pushed == 0);
			continue;
		}
		if (state_of(r, page) != PAGE_PRESENT)
			continue; /* a stale entry: the page was already released */
		int accounted_elsewhere = 0;
		if (r->state[page] & PAGE_DIRTY) {
			/* Protect first, then copy: a write after this point faults and waits. */
			int32_t index = -EINVAL;
			if (uffd_writeprotect(page_address(r, page), r->page_size, 1) == 0)
				index = snapshot_page(r, page);
			if (index < 0) {
				/* No memory for the copy: keep the page, dirty, at the back. */
				int pushed = fifo_push(slot, page);
				UMAP_ASSERT(pushed == 0);
				continue;
			}
			/* The page's bytes move into the entry until the store has them: that keeps
			 * the buffer bounded while write-backs are slower than faults. */
			struct writeback *wb = &E.writebacks[index];
			if (!wb->accounted) {
				wb->accounted = 1;
				E.writeback_bytes += r->page_size;
				accounted_elsewhere = 1;
			}
		}
		if (run && (run != r || run_first + run_count != page)) {
			madvise(run->base + run_first * run->page_size, run_count * run->page_size,
				MADV_DONTNEED);
			run = NULL;
		}
		if (!run) {
			run = r;
			run_first = page;
			run_count = 0;
		}
		run_count++;
		/* The state changes before the pages go: a fault that follows the madvise() finds
		 * the page EMPTY and requests it again. Nothing can fault on it in between, since
		 * it is still installed, and E.mu keeps everything else out. */
		set_state(r, page, PAGE_EMPTY);
		r->stat[STAT_EVICTIONS]++;
		r->stat[STAT_RESIDENT_PAGES]--;
		if (!accounted_elsewhere) {
			UMAP_ASSERT(E.resident_bytes >= r->page_size);
			E.resident_bytes -= r->page_size;
		}
	}
	if (run)
		madvise(run->base + run_first * run->page_size, run_count * run->page_size,
			MADV_DONTNEED);
	if (E.evictors_lost)
		fail_queued_writes();
}

/*
 * Reserves buffer space for up to want_pages pages of r and returns how many it reserved. Above
 * the high-water mark it first evicts down to the low-water mark. Returns at least min_pages,
 * waiting for fills to finish when the buffer is full of pages still being filled, unless the
 * region starts closing or the engine stops (then 0).
 */
static uint64_t reserve_pages(struct region *r, uint64_t want_pages, uint64_t min_pages)
{
	for (;;) {
		if (E.stopping || r->closing || !r->live)
			return 0;
		uint64_t want_bytes = want_pages * r->page_size;
		if (E.resident_bytes + want_bytes > E.high_bytes)
			evict_to(E.low_bytes > want_bytes ? E.low_bytes - want_bytes : 0);
		uint64_t free_bytes =
			E.buffer_bytes > E.resident_bytes ? E.buffer_bytes - E.resident_bytes : 0;
		uint64_t pages = min_u64(want_pages, free_bytes / r->page_size);
		if (pages >= min_pages && pages > 0) {
			E.resident_bytes += pages * r->page_size;
			return pages;
		}
		if (min_pages == 0)
			return 0;
		pthread_cond_wait(&E.space_cv, &E.mu);
	}
}

static uint64_t batch_pages_max(const struct region *r, uint64_t bytes_max)
{
	uint64_t pages = bytes_max / r->page_size;
	return pages ? pages : 1;
}

/* Waits (releasing E.mu) until the fill queue has room; 0, or -ESHUTDOWN when stopping. */
static int wait_queue_room(struct region *r)
{
	while (E.fills.count == UMAP_QUEUE_MAX) {
		if (E.stopping || r->closing)
			return -ESHUTDOWN;
		pthread_cond_wait(&E.space_cv, &E.mu);
	}
	return 0;
}

/*
 * Requests the run of EMPTY pages that starts at first (at most page_count of them): reserves
 * buffer space, marks the pages FILLING and queues them in batches. With fault_page set, the
 * first page is required (this waits for space) and its batch goes to the front of the queue;
 * the rest of the run is read-ahead and is cut short where the buffer has no room. Returns the
 * number of pages requested, or 0 if the first page needs no fill any more.
 */
static uint64_t request_run(struct region *r, uint64_t first, uint64_t page_count,
			    uint64_t fault_page, uint32_t ticket)
{
	uint32_t slot = (uint32_t)(r - E.regions);
	int faulted = fault_page != UINT64_MAX;
	uint64_t reserved = reserve_pages(r, page_count, faulted ? 1 : 0);
	if (reserved == 0)
		return 0;
	/* reserve_pages() may have waited with E.mu released: count the EMPTY run again. */
	uint64_t run = 0;
	while (run < reserved && first + run < r->page_count && fillable(r, first + run))
		run++;
	E.resident_bytes -= (reserved - run) * r->page_size;
	if (run == 0) {
		pthread_cond_broadcast(&E.space_cv);
		return 0;
	}
	for (uint64_t i = 0; i < run; i++) {
		set_state(r, first + i, PAGE_FILLING);
		if (fifo_push(slot, first + i) != 0) {
			/* Out of memory for the FIFO: give back what is not queued yet. */
			for (uint64_t j = i; j < run; j++)
				set_state(r, first + j, PAGE_EMPTY);
			E.resident_bytes -= (run - i) * r->page_size;
			run = i;
			break;
		}
	}
	r->inflight_pages += run;
	r->stat[STAT_RESIDENT_PAGES] += run;

	uint64_t done = 0;
	while (done < run) {
		uint64_t limit = batch_pages_max(
			r, done == 0 && faulted ? UMAP_FAULT_BATCH_BYTES_MAX : UMAP_BATCH_BYTES_MAX);
		struct request req = {
			.kind = REQUEST_FILL,
			.slot = slot,
			.ticket = ticket,
			.first_page = first + done,
			.page_count = min_u64(limit, run - done),
			.fault_page = done == 0 ? fault_page : UINT64_MAX,
		};
		if (wait_queue_room(r) != 0) {
			/* Closing or stopping: the unqueued pages go back to EMPTY. */
			for (uint64_t i = done; i < run; i++)
				set_state(r, first + i, PAGE_EMPTY);
			r->inflight_pages -= run - done;
			r->stat[STAT_RESIDENT_PAGES] -= run - done;
			E.resident_bytes -= (run - done) * r->page_size;
			pthread_cond_broadcast(&E.space_cv);
			break;
		}
		if (ticket)
			E.tickets[ticket].pending++;
		int pushed = queue_push(&E.fills, &req, faulted && done == 0);
		UMAP_ASSERT(pushed == 0);
		r->stat[STAT_FILL_REQUESTS]++;
		done += req.page_count;
	}
	if (E.fillers_lost)
		fail_queued_fills();
	return run;
}

/* Pages to read ahead of a fault at page: fixed, or adaptive (doubling on sequential faults). */
static uint64_t read_ahead_for(struct region *r, uint64_t page)
{
	if (r->read_ahead_fixed >= 0)
		return (uint64_t)r->read_ahead_fixed;
	/* Never let one region's read-ahead take more than a quarter of the buffer. */
	uint64_t window_max = min_u64(E.buffer_bytes / 4, 16u << 20) / r->page_size;
	if (page == r->stream_end)
		r->stream_window = min_u64(r->stream_window ? r->stream_window * 2 : 4, window_max);
	else
		r->stream_window = 0;
	return r->stream_window;
}

/*
 * A fault on a page that read-ahead requested and that is still being filled means the reader
 * has caught up with the stream: request the next window now, so that it is on its way before
 * the reader gets there. (Userfaultfd shows no accesses to installed pages, so a fault that
 * waits on read-ahead is the only sign of progress a stream gives.)
 */
static void extend_stream(struct region *r, uint64_t page)
{
	if (r->read_ahead_fixed >= 0 || r->stream_window == 0 || page >= r->stream_end ||
	    page + r->stream_window < r->stream_end || r->stream_end >= r->page_count)
		return;
	uint64_t first = r->stream_end;
	if (!fillable(r, first))
		return;
	uint64_t want = min_u64(r->stream_window, r->page_count - first);
	uint64_t requested = request_run(r, first, want, UINT64_MAX, 0);
	r->stat[STAT_READ_AHEAD_PAGES] += requested;
	r->stream_end = first + requested;
}

/*
 * Installs an evicted page from its write-back entry, whose copy is newer than the store.
 * Reserves buffer space (waiting for it if need be) and installs the page write-protected and
 * clean, unless the entry's write failed: then the page takes the bytes back as dirty and the
 * entry goes. Returns 1 if it installed the page, 0 if the page no longer needed it.
 */
static int serve_from_writeback(struct region *r, uint64_t page)
{
	if (reserve_pages(r, 1, 1) == 0)
		return 0;
	/* reserve_pages() may have waited with E.mu released. */
	int32_t index = writeback_find((uint32_t)(r - E.regions), page);
	if (state_of(r, page) != PAGE_EMPTY || index < 0 || r->closing) {
		E.resident_bytes -= r->page_size;
		pthread_cond_broadcast(&E.space_cv);
		return 0;
	}
	struct writeback *wb = &E.writebacks[index];
	uint64_t races = 0;
	int copied = uffd_copy(page_address(r, page), wb->newer ? wb->newer : wb->data, r->page_size,
			       1, &races);
	if (copied != 0 || fifo_push((uint32_t)(r - E.regions), page) != 0) {
		/* The entry still holds the bytes: the thread faults again and we try again. */
		E.resident_bytes -= r->page_size;
		pthread_cond_broadcast(&E.space_cv);
		return 0;
	}
	set_state(r, page, PAGE_PRESENT);
	r->stat[STAT_RESIDENT_PAGES]++;
	r->stat[STAT_WRITEBACK_SERVES]++;
	if (wb->state == WB_FAILED) {
		r->state[page] |= PAGE_DIRTY;
		writeback_remove(r, index);
	}
	return 1;
}

/* A write to a write-protected page: the page is dirty from now on; let the write through. */
static void handle_write_fault(struct region *r, uint64_t page)
{
	r->stat[STAT_WRITE_FAULTS]++;
	if (state_of(r, page) != PAGE_PRESENT) {
		/* Evicted since the fault: the thread retries and meets a missing page instead. */
		uffd_wake(page_address(r, page), r->page_size);
		return;
	}
	r->state[page] |= PAGE_DIRTY;
	if (uffd_writeprotect(page_address(r, page), r->page_size, 0) != 0)
		uffd_wake(page_address(r, page), r->page_size);
}

static void handle_fault(uint64_t addr, uint64_t flags)
{
	struct region *r = region_of_address(addr);
	if (!r || r->closing) {
		/* No live region owns the address (it is being released): answer, never park. */
		E.stray_faults++;
		uffd_wake(addr & ~(uint64_t)(UMAP_SYSTEM_PAGE - 1), UMAP_SYSTEM_PAGE);
		return;
	}
	uint64_t page = (addr - (uint64_t)(uintptr_t)r->base) / r->page_size;
	r->stat[STAT_FAULTS]++;
	if (flags & UFFD_PAGEFAULT_FLAG_WP) {
		handle_write_fault(r, page);
		return;
	}
	switch (state_of(r, page)) {
	case PAGE_FILLING:
		/* Already requested: the UFFDIO_COPY that installs it wakes this thread too. */
		r->stat[STAT_DUPLICATE_FAULTS]++;
		extend_stream(r, page);
		return;
	case PAGE_EMPTY:
		break;
	default:
		/* Installed (or poisoned) since the fault was raised: the thread only needs waking. */
		uffd_wake(page_address(r, page), r->page_size);
		return;
	}
	if (r->state[page] & PAGE_WRITEBACK) {
		serve_from_writeback(r, page);
		uffd_wake(page_address(r, page), r->page_size);
		return;
	}
	uint64_t ahead = read_ahead_for(r, page);
	uint64_t want = min_u64(1 + ahead, r->page_count - page);
	uint64_t requested = request_run(r, page, want, page, 0);
	if (requested == 0) {
		uffd_wake(page_address(r, page), r->page_size);
		return;
	}
	r->stat[STAT_READ_AHEAD_PAGES] += requested - 1;
	if (r->read_ahead_fixed < 0)
		r->stream_end = page + requested;
}

/* Runs a prefetch command: requests every EMPTY page of the range, then the ticket's marker. */
static void run_prefetch(const struct command *cmd)
{
	struct region *r = region_at(cmd->slot);
	uint64_t page = cmd->first_page;
	uint64_t end = cmd->first_page + cmd->page_count;
	/* The marker counts from the start: the loop below may wait with E.mu released, and the
	 * ticket's first requests must not bring it to zero (and free it) before its marker is
	 * queued. */
	E.tickets[cmd->ticket].pending++;
	while (r && !r->closing && page < end) {
		if (state_of(r, page) != PAGE_EMPTY) {
			page++;
			continue;
		}
		if (r->state[page] & PAGE_WRITEBACK) {
			if (serve_from_writeback(r, page))
				r->stat[STAT_PREFETCH_PAGES]++;
			page++;
			continue;
		}
		uint64_t requested = request_run(r, page, end - page, UINT64_MAX, cmd->ticket);
		if (requested == 0) {
			/* No room even after evicting: wait for a fill to finish, then go on. */
			if (fillable(r, page) && !E.stopping && !r->closing)
				pthread_cond_wait(&E.space_cv, &E.mu);
			continue;
		}
		r->stat[STAT_PREFETCH_PAGES] += requested;
		page += requested;
	}
	/* The marker closes the ticket once every request before it has completed. */
	struct request marker = {
		.kind = REQUEST_MARKER,
		.slot = cmd->slot,
		.ticket = cmd->ticket,
		.fault_page = UINT64_MAX,
	};
	while (E.fills.count == UMAP_QUEUE_MAX && !E.stopping)
		pthread_cond_wait(&E.space_cv, &E.mu);
	if (queue_push(&E.fills, &marker, 0) != 0)
		E.tickets[cmd->ticket].pending--; /* stopping: nobody is waiting for it any more */
}

static void *monitor_main(void *unused)
{
	(void)unused;
	struct uffd_msg *msgs = malloc(sizeof *msgs * UMAP_FAULT_EVENTS_MAX);
	UMAP_ASSERT(msgs != NULL);
	for (;;) {
		struct pollfd fds[2] = {
			{ .fd = E.uffd, .events = POLLIN },
			{ .fd = E.wake_fd, .events = POLLIN },
		};
		if (poll(fds, 2, -1) < 0 && errno != EINTR)
			break;
		if (fds[1].revents & POLLIN) {
			uint64_t count;
			ssize_t ignored = read(E.wake_fd, &count, sizeof count);
			(void)ignored;
		}
		pthread_mutex_lock(&E.mu);
		if (E.stopping) {
			pthread_mutex_unlock(&E.mu);
			break;
		}
		while (E.command_count > 0) {
			struct command cmd = E.commands[0];
			E.command_count--;
			memmove(&E.commands[0], &E.commands[1], E.command_count * sizeof cmd);
			run_prefetch(&cmd);
		}
		uint32_t events_max = E.fault_events_max;
		pthread_mutex_unlock(&E.mu);

		if (!(fds[0].revents & POLLIN))
			continue;
		ssize_t got = read(E.uffd, msgs, sizeof *msgs * events_max);
		if (got < 0)
			continue; /* EAGAIN: another wake-up raced us to the messages */
		pthread_mutex_lock(&E.mu);
		for (ssize_t i = 0; i < got / (ssize_t)sizeof *msgs && !E.stopping; i++) {
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				handle_fault(msgs[i].arg.pagefault.address,
					     msgs[i].arg.pagefault.flags);
		}
		pthread_mutex_unlock(&E.mu);
	}
	free(msgs);
	return NULL;
}

static void poke_monitor(void)
{
	uint64_t one = 1;
	ssize_t ignored = write(E.wake_fd, &one, sizeof one);
	(void)ignored;
}

/* ---------------------------------------------------------------- engine life cycle */

/*
 * Opens the userfaultfd, negotiates features and starts the monitor thread. feature_mask names
 * features to leave off (tests use it to stand in for older kernels). Returns the features
 * granted (>= 0), -EALREADY if running, or -errno of the first way tried to open a userfaultfd
 * (umap_engine_open_errno() gives all three).
 */
int64_t umap_engine_start(uint64_t feature_mask)
{
	pthread_mutex_lock(&E.mu);
	if (E.running) {
		pthread_mutex_unlock(&E.mu);
		return -EALREADY;
	}
	E.open_errno[0] = E.open_errno[1] = E.open_errno[2] = 0;
	E.open_mode = OPEN_NONE;
	int mode = OPEN_NONE;
	int probe = uffd_open(O_CLOEXEC | O_NONBLOCK, &mode);
	if (probe < 0) {
		pthread_mutex_unlock(&E.mu);
		return probe;
	}
	/* The first UFFDIO_API call fixes an fd's features, so ask a probe fd what is offered. */
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	int failed = ioctl(probe, UFFDIO_API, &api) ? -errno : 0;
	close(probe);
	if (failed) {
		pthread_mutex_unlock(&E.mu);
		return failed;
	}
	uint64_t wanted = UFFD_FEATURE_POISON | UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_MOVE;
	uint64_t features = api.features & wanted & ~feature_mask;

	int fd = uffd_open(O_CLOEXEC | O_NONBLOCK, &mode);
	if (fd < 0) {
		pthread_mutex_unlock(&E.mu);
		return fd;
	}
	struct uffdio_api granted = { .api = UFFD_API, .features = features };
	if (ioctl(fd, UFFDIO_API, &granted)) {
		int err = errno;
		close(fd);
		pthread_mutex_unlock(&E.mu);
		return -err;
	}
	int wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (wake_fd < 0) {
		int err = errno;
		close(fd);
		pthread_mutex_unlock(&E.mu);
		return -err;
	}
	E.uffd = fd;
	E.wake_fd = wake_fd;
	E.open_mode = mode;
	E.features = features;
	E.stopping = 0;
	E.stray_faults = 0;
	E.resident_bytes = 0;
	E.writeback_bytes = 0;
	E.fills.head = E.fills.count = 0;
	E.writes.head = E.writes.count = 0;
	E.command_count = 0;
	E.fillers_lost = 0;
	E.evictors_lost = 0;
	E.worker_deaths = 0;
	if (E.fault_events_max == 0)
		E.fault_events_max = 256;
	int err = pthread_create(&E.monitor, NULL, monitor_main, NULL);
	if (err) {
		close(fd);
		close(wake_fd);
		E.uffd = E.wake_fd = -1;
		pthread_mutex_unlock(&E.mu);
		return -err;
	}
	E.running = 1;
	E.epoch++;
	pthread_mutex_unlock(&E.mu);
	return (int64_t)features;
}

/* The userfaultfd features granted when the engine started (UFFD_FEATURE_* bits). */
int64_t umap_engine_features(void)
{
	return (int64_t)E.features;
}

/* The way the userfaultfd was opened (enum open_mode), and errno of each way tried (index 0-2). */
int umap_engine_open_mode(void)
{
	return E.open_mode;
}

int umap_engine_open_errno(int way)
{
	return way >= 0 && way < 3 ? E.open_errno[way] : -EINVAL;
}

/*
 * Sizes the page buffer shared by all regions and the monitor's read batch. Shrinking takes
 * effect at the next fault. Returns 0 or -EINVAL.
 */
int umap_engine_configure(uint64_t buffer_bytes, uint32_t high_percent, uint32_t low_percent,
			  uint32_t fault_events_max)
{
	if (buffer_bytes < UMAP_SYSTEM_PAGE || high_percent == 0 || high_percent > 100 ||
	    low_percent > high_percent || fault_events_max == 0 ||
	    fault_events_max > UMAP_FAULT_EVENTS_MAX)
		return -EINVAL;
	pthread_mutex_lock(&E.mu);
	E.buffer_bytes = buffer_bytes;
	E.high_bytes = buffer_bytes / 100 * high_percent + buffer_bytes % 100 * high_percent / 100;
	E.low_bytes = buffer_bytes / 100 * low_percent + buffer_bytes % 100 * low_percent / 100;
	E.fault_events_max = fault_events_max;
	pthread_cond_broadcast(&E.space_cv);
	pthread_mutex_unlock(&E.mu);
	return 0;
}

/*
 * Stops the monitor thread, tells every worker waiting in umap_worker_next() to return 0, and
 * closes the userfaultfd. Regions must be released first. Returns 0, -EBUSY while a region is
 * live, or -EALREADY if the engine is not running.
 */
int umap_engine_stop(void)
{
	pthread_mutex_lock(&E.mu);
	if (!E.running) {
		pthread_mutex_unlock(&E.mu);
		return -EALREADY;
	}
	if (E.sorted_count > 0) {
		pthread_mutex_unlock(&E.mu);
		return -EBUSY;
	}
	E.stopping = 1;
	pthread_cond_broadcast(&E.fills.ready);
	pthread_cond_broadcast(&E.writes.ready);
	pthread_cond_broadcast(&E.space_cv);
	pthread_mutex_unlock(&E.mu);
	poke_monitor();
	pthread_join(E.monitor, NULL);

	pthread_mutex_lock(&E.mu);
	close(E.uffd);
	close(E.wake_fd);
	E.uffd = E.wake_fd = -1;
	E.running = 0;
	for (int i = 0; i < UMAP_TICKETS_MAX; i++)
		E.tickets[i].used = 0;
	free(E.fifo);
	E.fifo = NULL;
	E.fifo_capacity = E.fifo_head = E.fifo_count = 0;
	/* Released regions took their write-back entries with them: only the table is left. */
	free(E.writebacks);
	E.writebacks = NULL;
	E.writeback_capacity = 0;
	E.writeback_free = -1;
	pthread_mutex_unlock(&E.mu);
	return 0;
}

/* Bytes of all regions that are resident or being filled. */
int64_t umap_engine_resident_bytes(void)
{
	pthread_mutex_lock(&E.mu);
	int64_t bytes = (int64_t)E.resident_bytes;
	pthread_mutex_unlock(&E.mu);
	return bytes;
}

/* Faults on addresses no live region owned (each was answered with a wake-up). */
int64_t umap_engine_stray_faults(void)
{
	pthread_mutex_lock(&E.mu);
	int64_t count = (int64_t)E.stray_faults;
	pthread_mutex_unlock(&E.mu);
	return count;
}

/* ---------------------------------------------------------------- regions */

static void sorted_insert(uint32_t slot)
{
	uint64_t base = (uint64_t)(uintptr_t)E.regions[slot].base;
	uint32_t at = E.sorted_count;
	while (at > 0 && (uint64_t)(uintptr_t)E.regions[E.sorted[at - 1]].base > base) {
		E.sorted[at] = E.sorted[at - 1];
		at--;
	}
	E.sorted[at] = slot;
	E.sorted_count++;
}

static void sorted_remove(uint32_t slot)
{
	uint32_t at = 0;
	while (at < E.sorted_count && E.sorted[at] != slot)
		at++;
	UMAP_ASSERT(at < E.sorted_count);
	memmove(&E.sorted[at], &E.sorted[at + 1], (E.sorted_count - at - 1) * sizeof E.sorted[0]);
	E.sorted_count--;
}

/*
 * Creates a region of page_count pages of page_size bytes (a power of two, at least the system
 * page), aligned to page_size and registered for missing-page faults, and for write-protect
 * faults if writable. read_ahead_pages is fixed, or -1 for adaptive. descriptor is the store's
 * description (JSON) that workers read back. Returns the region's slot, or -EINVAL, -ENOSPC (too
 * many regions), -ENOMEM, -EOPNOTSUPP (writable, but the kernel cannot write-protect this
 * memory), -errno of mmap or UFFDIO_REGISTER, or -ESHUTDOWN if the engine is not running.
 */
int64_t umap_region_create(uint64_t page_count, uint64_t page_size, int64_t read_ahead_pages,
			   int writable, const char *descriptor, uint64_t descriptor_bytes)
{
	if (page_size < UMAP_SYSTEM_PAGE || (page_size & (page_size - 1)) || page_count == 0 ||
	    page_count >= (1ull << 48) || page_count > UINT64_MAX / page_size ||
	    read_ahead_pages < -1)
		return -EINVAL;
	uint64_t mapped = page_count * page_size;
	/* Over-map by one page, then trim, to align the region to its page size. */
	char *raw = mmap(NULL, mapped + page_size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (raw == MAP_FAILED)
		return -errno;
	uint64_t misalign = (uint64_t)(uintptr_t)raw & (page_size - 1);
	uint64_t lead = misalign ? page_size - misalign : 0;
	char *base = raw + lead;
	if (lead)
		munmap(raw, lead);
	if (page_size - lead)
		munmap(base + mapped, page_size - lead);

	/* calloc of a large size maps zero pages lazily: untouched state costs nothing. */
	uint8_t *state = calloc(page_count, 1);
	char *desc = malloc(descriptor_bytes + 1);
	if (!state || !desc) {
		free(state);
		free(desc);
		munmap(base, mapped);
		return -ENOMEM;
	}
	memcpy(desc, descriptor, descriptor_bytes);
	desc[descriptor_bytes] = 0;

	pthread_mutex_lock(&E.mu);
	int err = 0;
	uint32_t slot = 0;
	if (!E.running)
		err = -ESHUTDOWN;
	while (!err && slot < UMAP_REGIONS_MAX && E.regions[slot].live)
		slot++;
	if (!err && slot == UMAP_REGIONS_MAX)
		err = -ENOSPC;
	if (!err && writable && !(E.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP))
		err = -EOPNOTSUPP;
	if (!err) {
		struct uffdio_register reg = {
			.range = { .start = (uint64_t)(uintptr_t)base, .len = mapped },
			.mode = UFFDIO_REGISTER_MODE_MISSING | (writable ? UFFDIO_REGISTER_MODE_WP : 0),
		};
		if (ioctl(E.uffd, UFFDIO_REGISTER, &reg)) {
			err = -errno;
		} else if (writable && !(reg.ioctls & ((uint64_t)1 << _UFFDIO_WRITEPROTECT))) {
			ioctl(E.uffd, UFFDIO_UNREGISTER, &reg.range);
			err = -EOPNOTSUPP;
		} else if (!writable && (E.features & UFFD_FEATURE_MOVE) &&
			   page_size % UMAP_HUGE_PAGE == 0) {
			/* Pages that fill by moving whole huge pages (see can_move()): with huge
			 * pages allowed, a fault reaches userfaultfd at the huge-page level, before
			 * the kernel gives the range a page table of its own, so the page-table
			 * entry of a whole huge page can still be moved in. A hint: if it fails,
			 * the moves go by system pages. */
			madvise(base, mapped, MADV_HUGEPAGE);
		}
	}
	if (err) {
		pthread_mutex_unlock(&E.mu);
		free(state);
		free(desc);
		munmap(base, mapped);
		return err;
	}
	struct region *r = &E.regions[slot];
	uint32_t generation = r->generation + 1;
	memset(r, 0, sizeof *r);
	r->live = 1;
	r->generation = generation;
	r->base = base;
	r->mapped_bytes = mapped;
	r->page_size = page_size;
	r->page_count = page_count;
	r->state = state;
	r->read_ahead_fixed = read_ahead_pages;
	r->descriptor = desc;
	r->descriptor_bytes = descriptor_bytes;
	r->writable = writable != 0;
	r->writeback_next_seq = 1;
	sorted_insert(slot);
	pthread_mutex_unlock(&E.mu);
	return slot;
}

/* The region's first byte, or NULL if the slot is not live. */
void *umap_region_base(uint32_t slot)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	void *base = r ? r->base : NULL;
	pthread_mutex_unlock(&E.mu);
	return base;
}

/* The slot's generation (changes each time the slot is reused), or 0 if it is not live. */
int64_t umap_region_generation(uint32_t slot)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	int64_t generation = r ? r->generation : 0;
	pthread_mutex_unlock(&E.mu);
	return generation;
}

/*
 * Copies the store descriptor of a live region into buf. Returns its length (which may exceed
 * capacity: nothing is copied then), or -ENOENT if the slot is not live at that generation.
 */
int64_t umap_region_descriptor(uint32_t slot, uint32_t generation, char *buf, uint64_t capacity)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	int64_t result = -ENOENT;
	if (r && r->generation == generation) {
		result = (int64_t)r->descriptor_bytes;
		if (r->descriptor_bytes <= capacity)
			memcpy(buf, r->descriptor, r->descriptor_bytes);
	}
	pthread_mutex_unlock(&E.mu);
	return result;
}

/*
 * Writes the region's counters (enum region_stat order) to out as doubles. Returns STAT_COUNT,
 * or -ENOENT.
 */
int umap_region_stats(uint32_t slot, double *out)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	if (!r) {
		pthread_mutex_unlock(&E.mu);
		return -ENOENT;
	}
	for (int i = 0; i < STAT_COUNT; i++)
		out[i] = (double)r->stat[i];
	pthread_mutex_unlock(&E.mu);
	return STAT_COUNT;
}

/*
 * How a fill of the region that fails for good answers its faulting page: zero != 0 installs
 * zeros (the access goes on, the error is recorded), 0 raises SIGBUS through UFFDIO_POISON where
 * the kernel has it (the default). Returns 0 or -ENOENT.
 */
int umap_region_set_zero_failed_fills(uint32_t slot, int zero)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	if (r)
		r->zero_failed_fills = zero != 0;
	pthread_mutex_unlock(&E.mu);
	return r ? 0 : -ENOENT;
}

/* 1 if a failed fill of the region is answered with zeros, 0 if with SIGBUS, or -ENOENT. */
int umap_region_zero_failed_fills(uint32_t slot)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	int zero = r ? r->zero_failed_fills : -ENOENT;
	pthread_mutex_unlock(&E.mu);
	return zero;
}

/*
 * Reports failed fill number index of the region, counting from the oldest one still kept (the
 * last UMAP_REGION_ERRORS_MAX are). Writes its byte offset, byte length, answer (enum
 * fill_answer) and the number of failed fills ever recorded to out[0..3], copies its message
 * into msg (at most capacity bytes) and returns the message's length. -ENOENT past the last.
 */
int64_t umap_region_error(uint32_t slot, uint64_t index, double *out, char *msg, uint64_t capacity)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	uint64_t kept = r ? min_u64(r->error_count, UMAP_REGION_ERRORS_MAX) : 0;
	if (!r || !r->errors || index >= kept) {
		pthread_mutex_unlock(&E.mu);
		return -ENOENT;
	}
	uint64_t oldest = r->error_count - kept;
	const struct fill_error *e = &r->errors[(oldest + index) % UMAP_REGION_ERRORS_MAX];
	out[0] = (double)e->byte_offset;
	out[1] = (double)e->byte_length;
	out[2] = e->answer;
	out[3] = (double)r->error_count;
	uint64_t len = min_u64(strnlen(e->message, sizeof e->message), capacity);
	memcpy(msg, e->message, len);
	pthread_mutex_unlock(&E.mu);
	return (int64_t)len;
}

/*
 * Counts the pages of [first_page, first_page + page_count) in the given state. Returns the
 * count, or -ENOENT / -EINVAL.
 */
int64_t umap_region_count_state(uint32_t slot, uint64_t first_page, uint64_t page_count,
				uint32_t state)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	int64_t count = 0;
	if (!r)
		count = -ENOENT;
	else if (first_page > r->page_count || page_count > r->page_count - first_page)
		count = -EINVAL;
	else
		for (uint64_t p = first_page; p < first_page + page_count; p++)
			count += state_of(r, p) == (int)state;
	pthread_mutex_unlock(&E.mu);
	return count;
}

/*
 * Asks for every page of the range to be filled. Returns a ticket (> 0): the worker that
 * completes the ticket's last request reports it. -ENOENT, -EINVAL, or -EAGAIN when too many
 * prefetches are pending (try again after one completes).
 */
int64_t umap_region_prefetch(uint32_t slot, uint64_t first_page, uint64_t page_count)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	int64_t result = 0;
	if (!r || r->closing)
		result = -ENOENT;
	else if (first_page > r->page_count || page_count > r->page_count - first_page)
		result = -EINVAL;
	else if (E.command_count == UMAP_COMMANDS_MAX)
		result = -EAGAIN;
	if (result == 0) {
		uint32_t ticket = 1;
		while (ticket < UMAP_TICKETS_MAX && E.tickets[ticket].used)
			ticket++;
		if (ticket == UMAP_TICKETS_MAX) {
			result = -EAGAIN;
		} else {
			memset(&E.tickets[ticket], 0, sizeof E.tickets[ticket]);
			E.tickets[ticket].used = 1;
			E.commands[E.command_count++] = (struct command){
				.slot = slot,
				.ticket = ticket,
				.first_page = first_page,
				.page_count = page_count,
			};
			result = ticket;
		}
	}
	pthread_mutex_unlock(&E.mu);
	if (result > 0)
		poke_monitor();
	return result;
}

/*
 * Takes a completed ticket's outcome and frees the ticket: copies the first error message (if
 * any) into buf and returns its length, 0 if the ticket succeeded, or -EINVAL for a ticket that
 * is not complete. Only the thread that waits on the ticket takes it, so a ticket number is
 * never reused before its waiter has its outcome.
 */
int64_t umap_ticket_take(uint32_t ticket, char *buf, uint64_t capacity)
{
	pthread_mutex_lock(&E.mu);
	int64_t result = -EINVAL;
	if (ticket > 0 && ticket < UMAP_TICKETS_MAX && E.tickets[ticket].used &&
	    E.tickets[ticket].pending == 0) {
		struct ticket *t = &E.tickets[ticket];
		result = 0;
		if (t->failed) {
			uint64_t len = strnlen(t->error, sizeof t->error);
			len = min_u64(len, capacity);
			memcpy(buf, t->error, len);
			result = len ? (int64_t)len : 1;
		}
		t->used = 0;
	}
	pthread_mutex_unlock(&E.mu);
	return result;
}

/*
 * Starts writing back every dirty page of a writable region: each is write-protected again and
 * copied into a write-back entry for the evictors (writes that land later mark it dirty again),
 * and entries whose write failed are queued again. Returns a mark (> 0): once
 * umap_region_writeback_pending() reports nothing below it, every page dirty at this call is in
 * the store. -ENOENT; -ENOMEM or -EAGAIN if a copy could not be queued (call again).
 */
int64_t umap_region_flush(uint32_t slot)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	if (!r) {
		pthread_mutex_unlock(&E.mu);
		return -ENOENT;
	}
	int64_t result = 0;
	for (uint64_t first = 0; first < r->page_count && result == 0;) {
		if (!(r->state[first] & PAGE_DIRTY)) {
			first++;
			continue;
		}
		/* One protection call for each run of dirty pages, then a copy of each page. */
		uint64_t run = 1;
		while (first + run < r->page_count && (r->state[first + run] & PAGE_DIRTY))
			run++;
		result = uffd_writeprotect(page_address(r, first), run * r->page_size, 1);
		for (uint64_t p = first; p < first + run && result == 0; p++) {
			int32_t index = snapshot_page(r, p);
			if (index < 0)
				result = index;
		}
		first += run;
	}
	if (E.writebacks)
		for (int32_t i = 0; i < E.writeback_capacity && result == 0; i++) {
			struct writeback *wb = &E.writebacks[i];
			if (wb->state != WB_FAILED || wb->slot != slot)
				continue;
			if (queue_write(i) != 0)
				result = -EAGAIN;
			else
				wb->state = WB_QUEUED;
		}
	if (E.evictors_lost)
		fail_queued_writes();
	if (result == 0)
		result = (int64_t)r->writeback_next_seq;
	pthread_mutex_unlock(&E.mu);
	return result;
}

/*
 * How the write-backs below a flush mark stand: the number still queued or being written
 * (> 0), 0 when all are in the store, or -EIO if none is pending but one failed: an entry below
 * the mark is waiting for a retry, or the region's count of failed writes has passed
 * failures_before (its count when the flush began; the page of such a write is dirty again).
 * With -EIO the last store error is copied into error, at most capacity bytes. -ENOENT.
 */
int64_t umap_region_writeback_pending(uint32_t slot, uint64_t mark, uint64_t failures_before,
				      char *error, uint64_t capacity)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	if (!r) {
		pthread_mutex_unlock(&E.mu);
		return -ENOENT;
	}
	int64_t pending = 0, failed = 0;
	for (int32_t i = 0; E.writebacks && i < E.writeback_capacity; i++) {
		struct writeback *wb = &E.writebacks[i];
		if (wb->state == WB_FREE || wb->slot != slot || wb->seq >= mark)
			continue;
		if (wb->state == WB_FAILED)
			failed++;
		else
			pending++;
	}
	if (pending == 0 && (failed > 0 || r->stat[STAT_WRITEBACK_ERRORS] > failures_before)) {
		uint64_t len = min_u64(strnlen(r->write_error, sizeof r->write_error), capacity);
		memcpy(error, r->write_error, len);
		if (len < capacity)
			error[len] = 0;
		pending = -EIO;
	}
	pthread_mutex_unlock(&E.mu);
	return pending;
}

/*
 * First step of releasing a region: new faults and prefetches on it are refused and queued
 * requests for it are dropped. Returns the number of its pages still being filled (wait for 0
 * with umap_region_inflight(), then call umap_region_release()), or -ENOENT.
 */
int64_t umap_region_close_begin(uint32_t slot)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	if (!r) {
		pthread_mutex_unlock(&E.mu);
		return -ENOENT;
	}
	r->closing = 1;
	/* Drop its queued fills (its write-backs stay: they carry data the store lacks); tickets
	 * the fills counted towards are settled by their markers. */
	uint32_t kept = 0;
	for (uint32_t i = 0; i < E.fills.count; i++) {
		struct request req = E.fills.items[(E.fills.head + i) % UMAP_QUEUE_MAX];
		if (req.slot == slot && req.kind == REQUEST_FILL) {
			for (uint64_t p = req.first_page; p < req.first_page + req.page_count; p++)
				set_state(r, p, PAGE_EMPTY);
			r->inflight_pages -= req.page_count;
			r->stat[STAT_RESIDENT_PAGES] -= req.page_count;
			E.resident_bytes -= req.page_count * r->page_size;
			if (req.ticket)
				E.tickets[req.ticket].pending--;
			continue;
		}
		E.fills.items[(E.fills.head + kept++) % UMAP_QUEUE_MAX] = req;
	}
	E.fills.count = kept;
	pthread_cond_broadcast(&E.space_cv);
	int64_t inflight = (int64_t)r->inflight_pages;
	pthread_mutex_unlock(&E.mu);
	return inflight;
}

/* Pages of the region still being filled by workers, or -ENOENT. */
int64_t umap_region_inflight(uint32_t slot)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	int64_t inflight = r ? (int64_t)r->inflight_pages : -ENOENT;
	pthread_mutex_unlock(&E.mu);
	return inflight;
}

/*
 * Unregisters and unmaps a closing region with no fills or write-backs in flight, and frees its
 * slot. Returns 0, -ENOENT, or -EBUSY (not closing, or fills or write-backs still pending).
 */
int umap_region_release(uint32_t slot)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	if (!r) {
		pthread_mutex_unlock(&E.mu);
		return -ENOENT;
	}
	if (!r->closing || r->inflight_pages > 0 || r->writeback_count > 0) {
		pthread_mutex_unlock(&E.mu);
		return -EBUSY;
	}
	struct uffdio_range range = { .start = (uint64_t)(uintptr_t)r->base, .len = r->mapped_bytes };
	/* Unregistering wakes any thread still parked on the range; it then faults on ordinary
	 * anonymous memory, or (after munmap) gets SIGSEGV, as with any unmapped memory. */
	ioctl(E.uffd, UFFDIO_UNREGISTER, &range);
	munmap(r->base, r->mapped_bytes);
	UMAP_ASSERT(E.resident_bytes >= r->stat[STAT_RESIDENT_PAGES] * r->page_size);
	E.resident_bytes -= r->stat[STAT_RESIDENT_PAGES] * r->page_size;
	fifo_forget_slot(slot);
	sorted_remove(slot);
	free(r->state);
	free(r->descriptor);
	free(r->errors);
	r->state = NULL;
	r->descriptor = NULL;
	r->errors = NULL;
	r->live = 0;
	r->closing = 0;
	E.releases++;
	pthread_cond_broadcast(&E.space_cv);
	pthread_mutex_unlock(&E.mu);
	return 0;
}

/* ---------------------------------------------------------------- workers */

/* Order and meaning of the numbers umap_worker_next() writes; src/fill-worker.ts reads them. */
enum worker_field {
	REQ_SLOT,
	REQ_GENERATION,
	REQ_BYTE_OFFSET,  /* of the first page, in the region (and so in the store) */
	REQ_BYTE_LENGTH,  /* 0 for a ticket marker */
	REQ_STAGING,      /* address of the bytes: the worker's staging buffer, or a write-back copy */
	REQ_STAGING_BYTES,
	REQ_TICKET,
	REQ_FAULTED,      /* 1 if a thread faulted on the request's first page */
	REQ_KIND,         /* enum request_kind */
	REQ_RELEASES,     /* regions released so far: when it changes, drop stores of gone ones */
	REQ_FIELDS
};

/* A worker thread that ends without unregistering (it died: a store called process.exit(), an
 * uncaught error, terminate()) runs this key's destructor, so the engine learns of it at once
 * and on a thread of its own, even while the main thread is parked on a fault. */
static pthread_key_t worker_key;
static pthread_once_t worker_key_once = PTHREAD_ONCE_INIT;
static void worker_thread_gone(void *value);

static void make_worker_key(void)
{
	int err = pthread_key_create(&worker_key, worker_thread_gone);
	UMAP_ASSERT(err == 0);
}

/*
 * Claims a worker slot for the running engine, as a filler or an evictor (enum worker_role).
 * Returns its id, -EINVAL, -ENOSPC, or -ESHUTDOWN.
 */
int umap_worker_register(int role)
{
	if (role != ROLE_FILLER && role != ROLE_EVICTOR)
		return -EINVAL;
	pthread_mutex_lock(&E.mu);
	if (!E.running || E.stopping) {
		pthread_mutex_unlock(&E.mu);
		return -ESHUTDOWN;
	}
	int id = 0;
	while (id < UMAP_WORKERS_MAX && E.workers[id].used)
		id++;
	if (id == UMAP_WORKERS_MAX) {
		pthread_mutex_unlock(&E.mu);
		return -ENOSPC;
	}
	E.workers[id].used = 1;
	E.workers[id].busy = 0;
	E.workers[id].role = role;
	E.workers[id].epoch = E.epoch;
	if (role == ROLE_FILLER)
		E.fillers_lost = 0;
	else
		E.evictors_lost = 0;
	pthread_mutex_unlock(&E.mu);
	pthread_once(&worker_key_once, make_worker_key);
	pthread_setspecific(worker_key, (void *)(intptr_t)(id + 1));
	return id;
}

/* Frees a worker slot and its staging buffer (the worker must not be busy). Returns 0/-EINVAL. */
int umap_worker_unregister(int id)
{
	if (id < 0 || id >= UMAP_WORKERS_MAX)
		return -EINVAL;
	pthread_mutex_lock(&E.mu);
	struct worker *w = &E.workers[id];
	if (!w->used || w->busy) {
		pthread_mutex_unlock(&E.mu);
		return -EINVAL;
	}
	if (w->staging)
		munmap(w->staging, w->staging_bytes);
	memset(w, 0, sizeof *w);
	pthread_mutex_unlock(&E.mu);
	/* Called on the worker's own thread: its exit is no longer a death. */
	pthread_once(&worker_key_once, make_worker_key);
	pthread_setspecific(worker_key, NULL);
	return 0;
}

/*
 * Maps a worker's staging buffer: anonymous memory aligned to a huge page and marked for
 * transparent huge pages, so that a store read of a 2 MiB page lands in one huge page that
 * UFFDIO_MOVE can hand to the region whole (see can_move()). Returns NULL if out of memory.
 */
static char *staging_map(uint64_t bytes)
{
	uint64_t mapped = bytes + UMAP_HUGE_PAGE;
	char *raw = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return NULL;
	uint64_t misalign = (uint64_t)(uintptr_t)raw & (UMAP_HUGE_PAGE - 1);
	uint64_t lead = misalign ? UMAP_HUGE_PAGE - misalign : 0;
	if (lead)
		munmap(raw, lead);
	if (mapped - lead > bytes)
		munmap(raw + lead + bytes, mapped - lead - bytes);
	/* A hint: without huge pages the moves go system page by system page, still correct. */
	madvise(raw + lead, bytes, MADV_HUGEPAGE);
	return raw + lead;
}

/*
 * Whether a fill of r from this staging buffer installs by UFFDIO_MOVE instead of UFFDIO_COPY:
 * for read-only regions (a moved page cannot be installed write-protected) whose pages are
 * whole huge pages, so each one moves as one page-table entry. Smaller pages would split the
 * staging buffer's huge page and move 4 KiB at a time, which costs more than the copy saves.
 */
static int can_move(const struct region *r, const char *staging)
{
	return (E.features & UFFD_FEATURE_MOVE) && !r->writable &&
	       r->page_size % UMAP_HUGE_PAGE == 0 &&
	       (uint64_t)(uintptr_t)staging % UMAP_HUGE_PAGE == 0;
}

/*
 * Blocks until a request for the worker's role is ready, then writes it to out (enum
 * worker_field order, as doubles) and returns 1; returns 0 when the engine stops, -EINVAL for a
 * bad id or a worker that has not completed its previous request, -ENOMEM if its staging buffer
 * cannot grow.
 */
static int worker_next(int id, double *out, int block);

int umap_worker_next(int id, double *out)
{
	return worker_next(id, out, 1);
}

/*
 * As umap_worker_next(), but never blocks: returns -EAGAIN at once when no request is ready.
 * For workers whose stores have fetches of their own in flight, which only progress while the
 * worker's event loop runs, so the worker must not sleep in the engine.
 */
int umap_worker_try_next(int id, double *out)
{
	return worker_next(id, out, 0);
}

static int worker_next(int id, double *out, int block)
{
	if (id < 0 || id >= UMAP_WORKERS_MAX)
		return -EINVAL;
	pthread_mutex_lock(&E.mu);
	struct worker *w = &E.workers[id];
	if (!w->used || w->busy) {
		pthread_mutex_unlock(&E.mu);
		return -EINVAL;
	}
	struct queue *q = w->role == ROLE_EVICTOR ? &E.writes : &E.fills;
	while (block && !E.stopping && w->epoch == E.epoch && q->count == 0)
		pthread_cond_wait(&q->ready, &E.mu);
	if (E.stopping || w->epoch != E.epoch) {
		pthread_mutex_unlock(&E.mu);
		return 0;
	}
	if (q->count == 0) {
		pthread_mutex_unlock(&E.mu);
		return -EAGAIN;
	}
	struct request req = queue_pop(q);
	struct region *r = &E.regions[req.slot];
	const char *bytes_at = w->staging;
	uint64_t bytes = 0;
	if (req.kind == REQUEST_WRITE) {
		struct writeback *wb = &E.writebacks[req.writeback];
		UMAP_ASSERT(wb->state == WB_QUEUED);
		wb->state = WB_WRITING;
		bytes_at = wb->data;
		bytes = r->page_size;
		req.first_page = wb->page;
	} else if (req.kind == REQUEST_FILL) {
		bytes = req.page_count * r->page_size;
		if (bytes > w->staging_bytes) {
			uint64_t grown = bytes < UMAP_BATCH_BYTES_MAX ? UMAP_BATCH_BYTES_MAX : bytes;
			char *staging = staging_map(grown);
			if (!staging) {
				/* Put the request back for a worker that has room. */
				int pushed = queue_push(q, &req, 1);
				UMAP_ASSERT(pushed == 0);
				pthread_mutex_unlock(&E.mu);
				return -ENOMEM;
			}
			if (w->staging)
				munmap(w->staging, w->staging_bytes);
			w->staging = staging;
			w->staging_bytes = grown;
		}
		bytes_at = w->staging;
	}
	w->busy = 1;
	w->req = req;
	out[REQ_SLOT] = req.slot;
	out[REQ_GENERATION] = r->generation;
	out[REQ_BYTE_OFFSET] = (double)(req.first_page * r->page_size);
	out[REQ_BYTE_LENGTH] = (double)bytes;
	out[REQ_STAGING] = (double)(uintptr_t)bytes_at;
	out[REQ_STAGING_BYTES] = (double)(req.kind == REQUEST_WRITE ? bytes : w->staging_bytes);
	out[REQ_TICKET] = req.ticket;
	out[REQ_FAULTED] = req.fault_page != UINT64_MAX;
	out[REQ_KIND] = req.kind;
	out[REQ_RELEASES] = (double)E.releases;
	pthread_mutex_unlock(&E.mu);
	return 1;
}

/*
 * Answers a fault whose fill failed for good, so the thread neither hangs nor faults forever:
 * with UFFDIO_POISON the page gets a poison marker (its access raises SIGBUS) and leaves the
 * buffer; without it the page is installed as zeros (the worker has said so on stderr) and stays
 * in the buffer, to be read again from the store once evicted. Returns 0 or -errno.
 */
static int answer_failed_fault(struct region *r, uint64_t page, int *answer)
{
	uint64_t start = page_address(r, page);
	if ((E.features & UFFD_FEATURE_POISON) && !r->zero_failed_fills) {
		int poisoned = uffd_poison(start, r->page_size);
		if (poisoned == 0) {
			set_state(r, page, PAGE_POISONED);
			r->stat[STAT_POISONED_PAGES]++;
			E.resident_bytes -= r->page_size;
			r->stat[STAT_RESIDENT_PAGES]--;
			*answer = ANSWER_POISONED;
		}
		return poisoned;
	}
	struct uffdio_zeropage zero = { .range = { .start = start, .len = r->page_size }, .mode = 0 };
	if (ioctl(E.uffd, UFFDIO_ZEROPAGE, &zero))
		return -errno;
	set_state(r, page, PAGE_PRESENT);
	r->stat[STAT_ZEROED_PAGES]++;
	*answer = ANSWER_ZEROED;
	return 0;
}

/* Remembers a failed fill for umap_region_error(); the oldest record goes when the ring is full. */
static void record_fill_error(struct region *r, const struct request *req, int answer,
			      const char *error, uint64_t error_bytes)
{
	if (!r->errors) {
		r->errors = calloc(UMAP_REGION_ERRORS_MAX, sizeof *r->errors);
		if (!r->errors)
			return; /* the counters still count it */
	}
	struct fill_error *e = &r->errors[r->error_count % UMAP_REGION_ERRORS_MAX];
	e->byte_offset = req->first_page * r->page_size;
	e->byte_length = req->page_count * r->page_size;
	e->answer = answer;
	uint64_t len = error ? min_u64(error_bytes, sizeof e->message - 1) : 0;
	memcpy(e->message, error, len);
	e->message[len] = 0;
	r->error_count++;
}

/* Settles one request of a ticket; returns the ticket if that was its last one, else 0. */
static uint32_t ticket_settle(uint32_t ticket, const char *error, uint64_t error_bytes)
{
	if (!ticket)
		return 0;
	struct ticket *t = &E.tickets[ticket];
	UMAP_ASSERT(t->used && t->pending > 0);
	if (error && !t->failed) {
		t->failed = 1;
		uint64_t len = min_u64(error_bytes, sizeof t->error - 1);
		memcpy(t->error, error, len);
		t->error[len] = 0;
	}
	return --t->pending == 0 ? ticket : 0;
}

/*
 * Completes a write-back (E.mu held). On success the entry goes, or its newer copy is queued; on
 * failure the bytes stay dirty: in the page if it is installed again, else in the entry, marked
 * FAILED for the next flush() to retry. A failed entry stops counting in the buffer, so a store
 * that keeps failing costs memory beyond the buffer rather than a hang.
 */
static void complete_write(struct region *r, int32_t index, int status, const char *error,
			   uint64_t error_bytes)
{
	struct writeback *wb = &E.writebacks[index];
	UMAP_ASSERT(wb->state == WB_WRITING);
	if (status == 0) {
		r->stat[STAT_WRITEBACKS]++;
		r->stat[STAT_BYTES_WRITTEN] += r->page_size;
	} else {
		r->stat[STAT_WRITEBACK_ERRORS]++;
		uint64_t len = min_u64(error_bytes, sizeof r->write_error - 1);
		memcpy(r->write_error, error, len);
		r->write_error[len] = 0;
	}
	if (wb->newer) {
		/* A later copy supersedes this one, written or not. */
		free(wb->data);
		wb->data = wb->newer;
		wb->newer = NULL;
		if (status == 0)
			wb->seq = wb->newer_seq;
	} else if (status == 0) {
		writeback_remove(r, index);
		return;
	}
	if (status != 0 && state_of(r, wb->page) == PAGE_PRESENT) {
		/* The page was installed again from this copy: it holds the bytes, dirty. */
		r->state[wb->page] |= PAGE_DIRTY;
		writeback_remove(r, index);
		return;
	}
	if (status != 0) {
		wb->state = WB_FAILED;
		if (wb->accounted)
			writeback_unaccount(r, wb);
		return;
	}
	wb->state = WB_QUEUED;
	int queued = queue_write(index);
	UMAP_ASSERT(queued == 0); /* this worker's own request just left the queue */
}

/*
 * Fails a fill request whose pages are FILLING (E.mu held): the faulting page is answered as the
 * region says (SIGBUS or zeros), the rest return to EMPTY, and their waiters are woken to fault
 * again. Returns the ticket this completed, or 0.
 */
static uint32_t fail_fill(struct region *r, const struct request *req, const char *error,
			  uint64_t error_bytes)
{
	r->stat[STAT_FILL_ERRORS]++;
	int answer = ANSWER_NONE;
	for (uint64_t p = req->first_page; p < req->first_page + req->page_count; p++) {
		if (p == req->fault_page && answer_failed_fault(r, p, &answer) == 0)
			continue;
		set_state(r, p, PAGE_EMPTY);
		E.resident_bytes -= r->page_size;
		r->stat[STAT_RESIDENT_PAGES]--;
	}
	record_fill_error(r, req, answer, error, error_bytes);
	uffd_wake(page_address(r, req->first_page), req->page_count * r->page_size);
	r->inflight_pages -= req->page_count;
	pthread_cond_broadcast(&E.space_cv);
	return ticket_settle(req->ticket, error, error_bytes);
}

/*
 * Completes the worker's current request (status 0, or < 0 with error naming why). A fill:
 * with status 0 the staging buffer holds the bytes of every page of the request: they are
 * installed (write-protected in writable regions) and the waiting threads woken; with status <
 * 0 the faulting page is poisoned, so the access that needed it gets SIGBUS instead of wrong
 * bytes, and the rest return to EMPTY and their waiters are woken to fault again. A write-back:
 * see complete_write(). Returns the ticket this completed (> 0; take its outcome with
 * umap_ticket_take), 0, or -EINVAL if the worker has no request.
 */
int64_t umap_worker_complete(int id, int status, const char *error, uint64_t error_bytes)
{
	if (id < 0 || id >= UMAP_WORKERS_MAX)
		return -EINVAL;
	pthread_mutex_lock(&E.mu);
	struct worker *w = &E.workers[id];
	if (!w->used || !w->busy) {
		pthread_mutex_unlock(&E.mu);
		return -EINVAL;
	}
	struct request req = w->req;
	struct region *r = &E.regions[req.slot];
	if (!E.running || w->epoch != E.epoch) {
		/* A request of an engine run that has stopped: only a ticket marker can be (fills
		 * and write-backs keep their region alive), and its ticket went with the run. A
		 * worker can hold one that long while it closes the stores of released regions. */
		UMAP_ASSERT(req.kind == REQUEST_MARKER);
		w->busy = 0;
		pthread_mutex_unlock(&E.mu);
		return 0;
	}
	if (req.kind == REQUEST_WRITE) {
		complete_write(r, req.writeback, status, error, error_bytes);
		w->busy = 0;
		pthread_mutex_unlock(&E.mu);
		return 0;
	}
	uint64_t first = page_address(r, req.first_page);
	uint64_t bytes = req.page_count * r->page_size;
	int write_protect = r->writable;
	/* Counted before the copy: the copy makes the pages readable at once (read-ahead pages have
	 * no waiter to wake first), and a reader that sees the bytes must not see counters that lag
	 * behind them. A failed copy takes the counts back. */
	int counted = req.kind == REQUEST_FILL && status == 0;
	if (counted) {
		r->stat[STAT_FILLS] += req.page_count;
		r->stat[STAT_BYTES_READ] += bytes;
	}
	int use_move = req.kind == REQUEST_FILL && can_move(r, w->staging);
	pthread_mutex_unlock(&E.mu);

	/* The pages are FILLING, so nothing else installs or evicts them, and the region cannot
	 * be released while they are in flight: the copy can run without the lock. */
	uint64_t races = 0;
	uint64_t moved = 0;
	if (req.kind == REQUEST_FILL && status == 0) {
		/* Move what can be moved (the staging pages go to the region, no copy), copy the
		 * rest: a page the move refused still sits in the staging buffer. */
		if (use_move)
			moved = uffd_move(first, w->staging, bytes) & ~(uint64_t)(UMAP_SYSTEM_PAGE - 1);
		int copied = moved == bytes ? 0
					    : uffd_copy(first + moved, w->staging + moved, bytes - moved,
							write_protect, &races);
		if (copied != 0) {
			status = copied;
			error = "UFFDIO_COPY failed";
			error_bytes = strlen(error);
		}
	}

	pthread_mutex_lock(&E.mu);
	uint32_t done;
	if (req.kind == REQUEST_FILL && status != 0) {
		if (counted) {
			r->stat[STAT_FILLS] -= req.page_count;
			r->stat[STAT_BYTES_READ] -= bytes;
		}
		done = fail_fill(r, &req, error, error_bytes);
	} else {
		if (req.kind == REQUEST_FILL) {
			for (uint64_t p = req.first_page; p < req.first_page + req.page_count; p++)
				set_state(r, p, PAGE_PRESENT);
			r->stat[STAT_COPY_RACES] += races;
			r->stat[STAT_MOVED_PAGES] += moved / r->page_size;
			/* The installed pages' waiters resume. */
			uffd_wake(first, bytes);
			r->inflight_pages -= req.page_count;
		}
		done = ticket_settle(req.ticket, status ? error : NULL, error_bytes);
	}
	w->busy = 0;
	pthread_cond_broadcast(&E.space_cv);
	pthread_mutex_unlock(&E.mu);
	return done;
}

/* ---------------------------------------------------------------- worker deaths */

static int workers_alive(int role)
{
	int alive = 0;
	for (int i = 0; i < UMAP_WORKERS_MAX; i++)
		alive += E.workers[i].used && E.workers[i].role == role &&
			 E.workers[i].epoch == E.epoch;
	return alive;
}

/* A ticket completed where no worker will report it: the main thread finds it by polling. */
static void orphan_ticket(uint32_t ticket)
{
	if (ticket)
		E.tickets[ticket].orphaned = 1;
}

static const char FILLERS_LOST[] =
	"no fill worker is left (each one died); a replacement starts once the main thread runs";

/*
 * With no filler left, fails every queued fill (E.mu held), so that no thread stays parked on a
 * request nobody will serve; ticket markers stay queued for the replacement workers.
 */
static void fail_queued_fills(void)
{
	uint32_t kept = 0, count = E.fills.count;
	for (uint32_t i = 0; i < count; i++) {
		struct request req = E.fills.items[(E.fills.head + i) % UMAP_QUEUE_MAX];
		if (req.kind == REQUEST_FILL && E.regions[req.slot].live) {
			orphan_ticket(fail_fill(&E.regions[req.slot], &req, FILLERS_LOST,
						sizeof FILLERS_LOST - 1));
			continue;
		}
		E.fills.items[(E.fills.head + kept++) % UMAP_QUEUE_MAX] = req;
	}
	E.fills.count = kept;
	pthread_cond_broadcast(&E.space_cv);
}

static const char EVICTORS_LOST[] =
	"no write-back worker is left (each one died); the page stays dirty for the next flush";

/*
 * With no evictor left, fails every queued write-back (E.mu held): its bytes stay in its entry
 * (or its page), dirty, and stop counting in the buffer, so eviction can go on; the next flush()
 * queues them again, and fails at once while no evictor is there to take them.
 */
static void fail_queued_writes(void)
{
	while (E.writes.count > 0) {
		struct request req = queue_pop(&E.writes);
		struct writeback *wb = &E.writebacks[req.writeback];
		UMAP_ASSERT(wb->state == WB_QUEUED);
		wb->state = WB_WRITING;
		complete_write(&E.regions[req.slot], req.writeback, -EIO, EVICTORS_LOST,
			       sizeof EVICTORS_LOST - 1);
	}
}

/*
 * Hands the request of a worker that died to another worker of its role, or fails it when
 * none is left or UMAP_REQUEST_ATTEMPTS_MAX workers have died serving it (E.mu held).
 */
static void reassign_request(struct worker *w)
{
	static const char died[] = "the worker serving it died (its store ended the thread)";
	struct request req = w->req;
	struct region *r = &E.regions[req.slot];
	if (req.kind == REQUEST_WRITE) {
		struct writeback *wb = &E.writebacks[req.writeback];
		wb->attempts++;
		if (wb->attempts < UMAP_REQUEST_ATTEMPTS_MAX && workers_alive(ROLE_EVICTOR) > 0 &&
		    E.writes.count < UMAP_QUEUE_MAX) {
			wb->state = WB_QUEUED;
			int queued = queue_write(req.writeback);
			UMAP_ASSERT(queued == 0);
		} else {
			complete_write(r, req.writeback, -EIO, died, sizeof died - 1);
		}
		return;
	}
	req.attempts++;
	if (req.attempts < UMAP_REQUEST_ATTEMPTS_MAX && workers_alive(ROLE_FILLER) > 0 &&
	    queue_push(&E.fills, &req, 1) == 0)
		return;
	if (req.kind == REQUEST_FILL)
		orphan_ticket(fail_fill(r, &req, died, sizeof died - 1));
	else
		orphan_ticket(ticket_settle(req.ticket, NULL, 0));
}

static void worker_thread_gone(void *value)
{
	int id = (int)(intptr_t)value - 1;
	UMAP_ASSERT(id >= 0 && id < UMAP_WORKERS_MAX);
	pthread_mutex_lock(&E.mu);
	struct worker *w = &E.workers[id];
	if (!w->used) {
		pthread_mutex_unlock(&E.mu);
		return;
	}
	int current = E.running && w->epoch == E.epoch;
	int role = w->role;
	E.worker_deaths += current;
	/* Out of the pool first, so that its request is not handed back to it. */
	w->used = 0;
	if (w->busy && current)
		reassign_request(w);
	if (w->staging)
		munmap(w->staging, w->staging_bytes);
	memset(w, 0, sizeof *w);
	if (current && !E.stopping && role == ROLE_FILLER && workers_alive(ROLE_FILLER) == 0) {
		static const char note[] = "bun-umap engine: every fill worker died; faults are answered "
					   "as failed fills until a replacement starts\n";
		ssize_t ignored = write(2, note, sizeof note - 1);
		(void)ignored;
		E.fillers_lost = 1;
		fail_queued_fills();
	}
	if (current && !E.stopping && role == ROLE_EVICTOR && workers_alive(ROLE_EVICTOR) == 0) {
		E.evictors_lost = 1;
		fail_queued_writes();
	}
	pthread_mutex_unlock(&E.mu);
}

/* Workers of the given role (enum worker_role) registered with the running engine. */
int umap_engine_workers(int role)
{
	pthread_mutex_lock(&E.mu);
	int alive = workers_alive(role);
	pthread_mutex_unlock(&E.mu);
	return alive;
}

/* Workers of the running engine that died without unregistering. */
int64_t umap_engine_worker_deaths(void)
{
	pthread_mutex_lock(&E.mu);
	int64_t deaths = (int64_t)E.worker_deaths;
	pthread_mutex_unlock(&E.mu);
	return deaths;
}

/*
 * Writes up to capacity tickets that completed without a worker to report them (their worker
 * died) to out, and returns how many; each is reported once. Take each with umap_ticket_take().
 */
int64_t umap_ticket_orphans(uint32_t *out, uint64_t capacity)
{
	pthread_mutex_lock(&E.mu);
	int64_t count = 0;
	for (uint32_t t = 1; t < UMAP_TICKETS_MAX && (uint64_t)count < capacity; t++) {
		if (E.tickets[t].used && E.tickets[t].orphaned && E.tickets[t].pending == 0) {
			E.tickets[t].orphaned = 0;
			out[count++] = t;
		}
	}
	pthread_mutex_unlock(&E.mu);
	return count;
}

/*
 * Test hook: installs a zero page at the given page of a region without changing its state, so
 * that the next fill of that page meets EEXIST, as when another installation wins a race.
 * Returns 0 or -errno.
 */
int umap_test_preinstall_zero_page(uint32_t slot, uint64_t page)
{
	pthread_mutex_lock(&E.mu);
	struct region *r = region_at(slot);
	int result = -ENOENT;
	if (r && page < r->page_count) {
		struct uffdio_zeropage zero = {
			.range = { .start = page_address(r, page), .len = UMAP_SYSTEM_PAGE },
			.mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE,
		};
		result = ioctl(E.uffd, UFFDIO_ZEROPAGE, &zero) ? -errno : 0;
	}
	pthread_mutex_unlock(&E.mu);
	return result;
}

/* Duplicates a file descriptor (close-on-exec): a region keeps its own, shared by its workers. */
int umap_fd_dup(int fd)
{
	int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	return dup < 0 ? -errno : dup;
}

int umap_fd_close(int fd)
{
	return close(fd) ? -errno : 0;
}

/* The system page size in bytes. */
int64_t umap_system_page_size(void)
{
	return sysconf(_SC_PAGESIZE);
}
