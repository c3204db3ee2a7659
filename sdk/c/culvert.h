/* Culvert SDK for C: a framed-mode function (proto/SPEC.md) as a callback.
 *
 * One header and one source file, C99 plus POSIX, no protobuf library: the
 * handful of messages of the protocol are encoded and decoded by hand, and
 * decoded records point into the frame they came in (no copy, no
 * allocation per record).
 *
 *   #include "culvert.h"
 *
 *   static int shout(void *user, const culvert_batch *b, const culvert_record *in, culvert_out *out) {
 *       (void)user; (void)b;
 *       if (in->value.len == 0) return 0;                          // consumed: no output
 *       if (in->value.data[0] == '{') return culvert_fail(out, 0, "no JSON, please");
 *       if (in->value.data[0] == '!') return culvert_pass(out, NULL); // as it came, not sent back
 *       culvert_record r = *in;                                    // key and headers kept
 *       r.value.data = (const uint8_t *)"SHOUT"; r.value.len = 5;
 *       return culvert_emit(out, &r, NULL);                        // copied at once
 *   }
 *
 *   int main(void) {
 *       culvert_options o = { .agent = "shout/1" };
 *       return culvert_run(shout, &o);
 *   }
 *
 * Build: cc -O2 -Wall -Wextra -o shout shout.c culvert.c
 */
#ifndef CULVERT_H
#define CULVERT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The protocol version this SDK speaks. */
#define CULVERT_VERSION 1
/* The frame size limit until the handshake says otherwise (4 MiB). */
#define CULVERT_DEFAULT_MAX_FRAME (4u << 20)
/* The Ready.agent sent unless culvert_options.agent says otherwise. */
#define CULVERT_DEFAULT_AGENT "culvert-sdk-c/1"

/* Bytes or a string field: not NUL-terminated. In what the SDK hands to a
 * callback, data points into the frame being processed and is valid until
 * the callback returns. */
typedef struct culvert_bytes {
    const uint8_t *data;
    size_t len;
} culvert_bytes;

typedef struct culvert_header {
    culvert_bytes name; /* UTF-8 */
    culvert_bytes value;
} culvert_header;

typedef struct culvert_position {
    culvert_bytes connector, stream, subject, partition, sequence;
    uint64_t offset;
} culvert_position;

/* One record (proto/SPEC.md section 4.5). */
typedef struct culvert_record {
    culvert_bytes id;           /* UTF-8 */
    culvert_bytes key;
    culvert_bytes value;
    culvert_bytes content_type; /* UTF-8 */
    const culvert_header *headers;
    size_t n_headers;
    int has_event_time;
    int64_t event_seconds;
    int32_t event_nanos;
    culvert_position source; /* ignored in outputs: the host sets it */
} culvert_record;

/* What an instance serves, and the limits the host set (Hello). */
typedef struct culvert_init_context {
    culvert_bytes pipeline, function, partition, route;
    uint32_t instance, instances;
    uint32_t max_frame_bytes, max_batch_records, max_inflight_batches, keep_alive_ms;
} culvert_init_context;

/* A batch: ids count from 1 per instance; attempt is 1 on first delivery;
 * deadline_unix_ms is when the host kills the instance (0: none). */
typedef struct culvert_batch {
    uint64_t id;
    uint32_t attempt;
    int64_t deadline_unix_ms;
    const culvert_record *records;
    size_t n_records;
} culvert_batch;

/* Where the outcome of one record is reported. */
typedef struct culvert_out culvert_out;

/* culvert_emit adds an output for the record of out: rec is encoded (and so
 * copied) at once, so it may point anywhere, including into the input.
 * output names a route output, or NULL/"" for the default. Returns 0, or -1
 * (and fails the record) when rec has a string field that is not UTF-8, or
 * when the record already failed. rec->source is not sent. */
int culvert_emit(culvert_out *out, const culvert_record *rec, const char *output);

/* culvert_pass adds the input record of out, exactly as the host sent it,
 * as an output: what a filter, a router or a passthrough returns for a
 * record it keeps. output names a route output, or NULL/"" for the default.
 * When the host offers the protocol's "unchanged" capability (SPEC.md
 * section 10), as Culvert's does, the SDK accepts it in Ready and the
 * output only names the input record: the record is neither encoded nor
 * written back, and the host does not read it again. Otherwise the output
 * carries a copy of the input record's bytes, which means the same as
 * culvert_emit(out, in, output). Changes made to a copy of *in are not
 * seen: a callback that modifies its record returns it with culvert_emit.
 * Works in record and batch callbacks alike. Returns 0, or -1 (and fails
 * the record) when output is not UTF-8, or when the record already failed. */
int culvert_pass(culvert_out *out, const char *output);

/* culvert_fail fails the record of out, dropping its outputs: retryable
 * non-zero asks the host to retry it, zero sends it to the dead-letter
 * output. The message is printf-formatted. Returns -1, so that a record
 * callback can `return culvert_fail(...)`. */
int culvert_fail(culvert_out *out, int retryable, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* A record callback: report the outcome of in through out. Returning
 * non-zero without calling culvert_fail fails the record permanently. No
 * output and no failure means the record was consumed (filtered). */
typedef int (*culvert_record_fn)(void *user, const culvert_batch *batch, const culvert_record *in, culvert_out *out);

/* A batch callback: report the outcome of each batch->records[i] through
 * culvert_result(res, i), in any order. */
typedef struct culvert_results culvert_results;
typedef void (*culvert_batch_fn)(void *user, const culvert_batch *batch, culvert_results *res);
culvert_out *culvert_result(culvert_results *res, size_t i);

typedef struct culvert_options {
    const char *agent; /* Ready.agent; NULL: CULVERT_DEFAULT_AGENT */
    /* Runs after the host's Hello, before Ready. Non-zero refuses the
     * handshake with the message written into err (NUL-terminated), and
     * *retryable set if starting again may help. */
    int (*init)(void *user, const culvert_init_context *ctx, char *err, size_t errlen, int *retryable);
    /* Runs on Shutdown or end of input; non-zero makes the exit status 1. */
    int (*shutdown)(void *user);
    void *user; /* passed to every callback */
} culvert_options;

/* culvert_run is the main function of a function: it takes stdin and stdout
 * for the protocol (private close-on-exec copies; fd 1 then points at
 * stderr and fd 0 at /dev/null, so printf and child processes write to the
 * log), serves fn until Shutdown or end of input, and returns the exit
 * status: 0, or 1 with the reason on stderr. opts may be NULL. */
int culvert_run(culvert_record_fn fn, const culvert_options *opts);
int culvert_run_batch(culvert_batch_fn fn, const culvert_options *opts);

/* culvert_serve runs the protocol over in_fd and out_fd without touching
 * the process's stdio; exactly one of rfn and bfn is set. It returns 0 after
 * Shutdown or end of input, and -1 with a message in err otherwise. */
int culvert_serve(int in_fd, int out_fd, culvert_record_fn rfn, culvert_batch_fn bfn, const culvert_options *opts,
                  char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif /* CULVERT_H */
