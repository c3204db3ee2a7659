/* Echo function that honours the conformance convention (proto/SPEC.md,
 * appendix A), so that `culvert fn conform -- ./conformance` can drive every
 * rule: with CULVERT_CONFORMANCE=1 in its environment, a record's
 * culvert-conformance header asks it to echo, emit N copies, drop, fail,
 * fail retryably or print to stdout. Every other record is echoed.
 *
 * A plain echo passes the record on with culvert_pass, so that a host
 * offering the "unchanged" capability (SPEC.md section 10) gets
 * Output.unchanged, and every other host the record back: the kit's
 * "unchanged" rule checks both answers.
 *
 * With --batch it serves the same answers through the per-batch API
 * (culvert_run_batch), reporting each record through culvert_result, so
 * that the kit checks that API too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "culvert.h"

static const char header[] = "culvert-conformance";

static int is(culvert_bytes b, const char *s) { return b.len == strlen(s) && memcmp(b.data, s, b.len) == 0; }

/* emit_count parses "emit=N", N from 0 to 1000 without sign or leading zeros. */
static int emit_count(culvert_bytes d) {
    if (d.len < 6 || d.len > 9 || memcmp(d.data, "emit=", 5) != 0) return -1;
    if (d.data[5] == '0' && d.len > 6) return -1;
    int n = 0;
    for (size_t i = 5; i < d.len; i++) {
        if (d.data[i] < '0' || d.data[i] > '9') return -1;
        n = n * 10 + (d.data[i] - '0');
    }
    return n <= 1000 ? n : -1;
}

static int handle(void *user, const culvert_batch *batch, const culvert_record *in, culvert_out *out) {
    (void)batch;
    const int *enabled = user;
    const culvert_bytes *d = NULL;
    for (size_t i = 0; *enabled && i < in->n_headers; i++)
        if (is(in->headers[i].name, header)) {
            d = &in->headers[i].value;
            break;
        }
    if (!d || is(*d, "echo")) return culvert_pass(out, NULL);
    if (is(*d, "drop")) return 0;
    if (is(*d, "fail")) return culvert_fail(out, 0, "failure requested by the %s header", header);
    if (is(*d, "retry")) return culvert_fail(out, 1, "failure requested by the %s header", header);
    int n = emit_count(*d);
    for (int i = 0; i < n; i++)
        if (culvert_emit(out, in, NULL) < 0) return -1;
    if (n >= 0) return 0;
    if (d->len >= 7 && memcmp(d->data, "stdout=", 7) == 0) {
        for (size_t i = 7; i < d->len; i++)
            if (d->data[i] < 0x20 || d->data[i] > 0x7e) goto unknown;
        printf("%.*s\n", (int)(d->len - 7), (const char *)d->data + 7);
        return culvert_emit(out, in, NULL);
    }
unknown:
    return culvert_fail(out, 0, "%s: unknown directive \"%.*s\" (echo, emit=N, drop, fail, retry, stdout=TEXT)", header,
                        (int)(d->len > 64 ? 64 : d->len), (const char *)d->data);
}

/* handle_batch answers each record as handle does. handle returns non-zero
 * only after culvert_fail or a failed culvert_emit has failed that record,
 * so the other records of the batch are not touched. */
static void handle_batch(void *user, const culvert_batch *batch, culvert_results *res) {
    for (size_t i = 0; i < batch->n_records; i++) (void)handle(user, batch, &batch->records[i], culvert_result(res, i));
}

int main(int argc, char **argv) {
    const char *env = getenv("CULVERT_CONFORMANCE");
    int enabled = env && strcmp(env, "1") == 0;
    if (argc > 1 && strcmp(argv[1], "--batch") == 0) {
        culvert_options opts = {.agent = "conformance-c-batch/1", .user = &enabled};
        return culvert_run_batch(handle_batch, &opts);
    }
    culvert_options opts = {.agent = "conformance-c/1", .user = &enabled};
    return culvert_run(handle, &opts);
}
