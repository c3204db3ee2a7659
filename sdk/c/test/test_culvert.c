/* Unit tests of the C SDK. It includes culvert.c to reach its internals.
 * Built and run by sdk/c/sdk_test.go, with and without
 * -fsanitize=address,undefined:
 *
 *   cc -Wall -Wextra -Werror -fsanitize=address,undefined -I. -o t test/test_culvert.c && ./t
 */
#include "../culvert.c"

#include <stdarg.h>
#include <sys/wait.h>

static int failed, passed, current_failed;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, #cond);                                                 \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fprintf(stderr, "\n");                                                                                     \
            current_failed = 1;                                                                                        \
        }                                                                                                              \
    } while (0)

static void run_test(const char *name, void (*fn)(void)) {
    current_failed = 0;
    fn();
    if (current_failed) {
        failed++;
        fprintf(stderr, "FAIL %s\n", name);
    } else {
        passed++;
        fprintf(stderr, "ok   %s\n", name);
    }
}
#define RUN(fn) run_test(#fn, fn)

static size_t unhex(const char *h, uint8_t *out) {
    size_t n = 0;
    while (*h) {
        if (*h == ' ' || *h == '\n') {
            h++;
            continue;
        }
        unsigned v;
        sscanf(h, "%2x", &v);
        out[n++] = (uint8_t)v;
        h += 2;
    }
    return n;
}

static culvert_bytes str(const char *s) { return (culvert_bytes){(const uint8_t *)s, strlen(s)}; }

static int eq(culvert_bytes b, const char *s) { return b.len == strlen(s) && memcmp(b.data, s, b.len) == 0; }

/* ---- building host frames ---- */

static void host_frame(buf *out, uint32_t field, const buf *content) {
    size_t body = tag_len(field) + varint_len(content->len) + content->len;
    buf_reserve(out, varint_len(body) + body);
    put_varint(out, body);
    put_tag(out, field, WT_LEN);
    put_varint(out, content->len);
    put_raw(out, content->p, content->len);
}

/* hello_caps writes a Hello offering the capabilities caps[0..ncaps). */
static void hello_caps(buf *out, uint32_t version, uint32_t max_frame, const char *const *caps, size_t ncaps) {
    buf c = {0};
    buf_reserve(&c, 64);
    put_tag(&c, 1, WT_LEN); /* packed versions */
    put_varint(&c, varint_len(version));
    put_varint(&c, version);
    put_varint_field(&c, 2, max_frame);
    for (size_t i = 0; i < ncaps; i++) {
        buf_reserve(&c, 16 + strlen(caps[i]));
        put_len_field(&c, 5, (const uint8_t *)caps[i], strlen(caps[i]));
    }
    buf_reserve(&c, 16);
    put_tag(&c, 6, WT_LEN); /* context: function "fn" */
    put_varint(&c, 4);
    put_len_field(&c, 2, (const uint8_t *)"fn", 2);
    host_frame(out, 16, &c);
    free(c.p);
}

static void hello(buf *out, uint32_t version, uint32_t max_frame) { hello_caps(out, version, max_frame, NULL, 0); }

static void batch_frame(buf *out, uint64_t id, const culvert_record *recs, size_t n) {
    buf c = {0};
    buf_reserve(&c, 32);
    put_varint_field(&c, 1, id);
    for (size_t i = 0; i < n; i++) {
        size_t rs = record_size(&recs[i]);
        buf_reserve(&c, 16 + rs);
        put_tag(&c, 2, WT_LEN);
        put_varint(&c, rs);
        put_record(&c, &recs[i]);
    }
    put_varint_field(&c, 4, 1);
    host_frame(out, 17, &c);
    free(c.p);
}

static void simple_frame(buf *out, uint32_t field, uint64_t v) {
    uint8_t b[16];
    buf c = {b, 0, sizeof b};
    put_varint_field(&c, 1, v);
    host_frame(out, field, &c);
}

/* ---- decoding what the function wrote ---- */

typedef struct {
    int kind; /* FunctionMessage field */
    uint64_t batch_id, nonce;
    int n_results;
    int n_outputs[64];
    int n_unchanged[64]; /* outputs with Output.unchanged true */
    int n_records[64];   /* outputs with Output.record set */
    char value[64][64];
    char output[64][32];
    char caps[64]; /* Ready.capabilities, joined by ',' */
    char failure[64][256];
    int retryable[64];
    char text[256]; /* Ready.agent or InitError.message */
    int flag;       /* Ready.version or InitError.retryable */
} fmsg;

static int copy_str(char *dst, size_t n, culvert_bytes b) {
    size_t k = b.len < n - 1 ? b.len : n - 1;
    memcpy(dst, b.data, k);
    dst[k] = 0;
    return 0;
}

static int decode_fn(const uint8_t *p, size_t n, fmsg *m) {
    memset(m, 0, sizeof *m);
    rd r = {p, p + n};
    uint32_t f;
    int wt;
    culvert_bytes payload;
    if (rd_tag(&r, &f, &wt) < 0 || rd_bytes(&r, &payload) < 0 || r.p != r.end) return -1;
    m->kind = (int)f;
    rd q = {payload.data, payload.data + payload.len};
    while (q.p < q.end) {
        uint64_t v;
        culvert_bytes b;
        if (rd_tag(&q, &f, &wt) < 0) return -1;
        if (wt == WT_VARINT) {
            if (rd_varint(&q, &v) < 0) return -1;
            if (m->kind == 18 && f == 1) m->batch_id = v;
            if (m->kind == 19 && f == 1) m->nonce = v;
            if ((m->kind == 16 && f == 1) || (m->kind == 17 && f == 2)) m->flag = (int)v;
            continue;
        }
        if (rd_bytes(&q, &b) < 0) return -1;
        if ((m->kind == 16 && f == 3) || (m->kind == 17 && f == 1)) copy_str(m->text, sizeof m->text, b);
        if (m->kind == 16 && f == 2) {
            size_t l = strlen(m->caps);
            if (l && l < sizeof m->caps - 1) m->caps[l++] = ',';
            copy_str(m->caps + l, sizeof m->caps - l, b);
        }
        if (m->kind == 18 && f == 2) { /* RecordResult */
            int i = m->n_results++;
            rd rr = {b.data, b.data + b.len};
            while (rr.p < rr.end) {
                culvert_bytes x;
                if (rd_tag(&rr, &f, &wt) < 0 || rd_bytes(&rr, &x) < 0) return -1;
                rd o = {x.data, x.data + x.len};
                if (f == 1) { /* Output */
                    m->n_outputs[i]++;
                    while (o.p < o.end) {
                        culvert_bytes y;
                        uint64_t z;
                        if (rd_tag(&o, &f, &wt) < 0) return -1;
                        if (wt == WT_VARINT) {
                            if (rd_varint(&o, &z) < 0) return -1;
                            if (f == 3 && z) m->n_unchanged[i]++;
                            continue;
                        }
                        if (rd_bytes(&o, &y) < 0) return -1;
                        if (f == 2) copy_str(m->output[i], sizeof m->output[i], y);
                        if (f == 1) {
                            m->n_records[i]++;
                            culvert_record rec;
                            server s;
                            memset(&s, 0, sizeof s);
                            if (decode_record(&s, y, &rec) < 0) return -1;
                            copy_str(m->value[i], sizeof m->value[i], rec.value);
                            free(s.hdrs);
                        }
                    }
                } else if (f == 2) { /* Failure */
                    while (o.p < o.end) {
                        culvert_bytes y;
                        uint64_t z;
                        if (rd_tag(&o, &f, &wt) < 0) return -1;
                        if (wt == WT_VARINT) {
                            if (rd_varint(&o, &z) < 0) return -1;
                            m->retryable[i] = (int)z;
                        } else {
                            if (rd_bytes(&o, &y) < 0) return -1;
                            copy_str(m->failure[i], sizeof m->failure[i], y);
                        }
                    }
                }
            }
        }
    }
    return 0;
}

/* serve_raw runs culvert_serve over input and returns what it wrote in
 * *written (malloc'd) and *wn. Returns culvert_serve's result. */
static int serve_raw(const buf *input, culvert_record_fn rfn, culvert_batch_fn bfn, const culvert_options *opts,
                     uint8_t **written, size_t *wn, char *err, size_t errlen) {
    FILE *in = tmpfile(), *out = tmpfile();
    fwrite(input->p, 1, input->len, in);
    fflush(in);
    rewind(in);
    int rc = culvert_serve(fileno(in), fileno(out), rfn, bfn, opts, err, errlen);
    off_t size = lseek(fileno(out), 0, SEEK_END);
    *written = malloc((size_t)size + 1);
    lseek(fileno(out), 0, SEEK_SET);
    *wn = (size_t)read(fileno(out), *written, (size_t)size);
    fclose(in);
    fclose(out);
    return rc;
}

/* serve_bytes runs culvert_serve over input and decodes its frames into
 * msgs (at most max). Returns culvert_serve's result. */
static int serve_bytes(const buf *input, culvert_record_fn rfn, culvert_batch_fn bfn, const culvert_options *opts,
                       fmsg *msgs, int max, int *n, char *err, size_t errlen) {
    uint8_t *data;
    size_t got;
    int rc = serve_raw(input, rfn, bfn, opts, &data, &got, err, errlen);
    server s;
    memset(&s, 0, sizeof s);
    s.in_fd = -1;
    s.max = 64 << 20;
    s.rbuf = data;
    s.rend = got;
    s.rcap = got;
    *n = 0;
    const uint8_t *body;
    size_t len;
    while (*n < max && s.rstart < s.rend && next_frame(&s, &body, &len) == 1) {
        if (decode_fn(body, len, &msgs[*n]) < 0) {
            fprintf(stderr, "undecodable frame written by the SDK\n");
            current_failed = 1;
            break;
        }
        (*n)++;
    }
    free(data);
    return rc;
}

/* ---- tests ---- */

/* SPEC.md section 11.2: the worked Batch decodes to its fields. */
static void test_spec_batch_decodes(void) {
    uint8_t f[128];
    size_t n = unhex("4d 8a 01 4a 08 01 12 3d 0a 0b 6a 73 3a 4f 52 44 45 52 53 3a 31 12 02 6b 31 1a 07 7b 22 6e 22 3a 31 7d"
                     "22 10 61 70 70 6c 69 63 61 74 69 6f 6e 2f 6a 73 6f 6e 2a 0f 0a 04 74 79 70 65 12 07 63 72 65 61 74"
                     "65 64 18 80 d0 ea b6 b7 33 20 01",
                     f);
    CHECK(n == 78, "dump is %zu bytes", n);
    int kind;
    culvert_bytes payload;
    CHECK(decode_host(f + 1, n - 1, &kind, &payload) == 0 && kind == M_BATCH, "kind %d", kind);
    server s;
    memset(&s, 0, sizeof s);
    culvert_batch b;
    CHECK(decode_batch(&s, payload, &b) == 0, "decode");
    CHECK(b.id == 1 && b.attempt == 1 && b.deadline_unix_ms == 1767225600000LL, "id %llu attempt %u deadline %lld",
          (unsigned long long)b.id, b.attempt, (long long)b.deadline_unix_ms);
    CHECK(b.n_records == 1, "%zu records", b.n_records);
    const culvert_record *r = &b.records[0];
    CHECK(eq(r->id, "js:ORDERS:1") && eq(r->key, "k1") && eq(r->value, "{\"n\":1}") && eq(r->content_type, "application/json"),
          "fields");
    CHECK(r->n_headers == 1 && eq(r->headers[0].name, "type") && eq(r->headers[0].value, "created"), "headers");
    free(s.recs);
    free(s.hstart);
    free(s.raw);
    free(s.hdrs);
}

static void no_batch(void *u, const culvert_batch *b, culvert_results *r) {
    (void)u;
    (void)b;
    (void)r;
}

/* SPEC.md section 11.1 and 11.2: Ready and BatchResult encode byte for byte. */
static void test_spec_frames_encode(void) {
    uint8_t want[64];
    size_t wn = unhex("10 82 01 0d 08 01 1a 09 65 78 61 6d 70 6c 65 2f 31", want);
    buf in = {0};
    hello(&in, 1, 0);
    FILE *fin = tmpfile(), *fout = tmpfile();
    fwrite(in.p, 1, in.len, fin);
    rewind(fin);
    culvert_options o = {.agent = "example/1"};
    char err[256];
    CHECK(culvert_serve(fileno(fin), fileno(fout), NULL, no_batch, &o, err, sizeof err) == 0, "%s", err);
    uint8_t got[64];
    lseek(fileno(fout), 0, SEEK_SET);
    ssize_t gn = read(fileno(fout), got, sizeof got);
    CHECK(gn == (ssize_t)wn && memcmp(got, want, wn) == 0, "Ready is not SPEC.md's (%zd bytes)", gn);
    fclose(fin);
    fclose(fout);
    free(in.p);

    /* The result: one output whose record has only a value. */
    uint8_t want2[64];
    size_t wn2 = unhex("1e 92 01 1b 08 01 12 17 0a 15 0a 13 1a 11 7b 22 6e 22 3a 31 2c 22 6f 6b 22 3a 74 72 75 65 7d", want2);
    culvert_out out = {0};
    culvert_record rec = {0};
    rec.value = str("{\"n\":1,\"ok\":true}");
    CHECK(culvert_emit(&out, &rec, NULL) == 0, "emit");
    server s;
    memset(&s, 0, sizeof s);
    s.out_fd = fileno(fout = tmpfile());
    uint8_t idb[16];
    buf id = {idb, 0, sizeof idb};
    put_varint_field(&id, 1, 1);
    results res = {&out, 1};
    CHECK(send_frame(&s, 18, &id, &res) == 0, "send");
    lseek(s.out_fd, 0, SEEK_SET);
    gn = read(s.out_fd, got, sizeof got);
    CHECK(gn == (ssize_t)wn2 && memcmp(got, want2, wn2) == 0, "BatchResult is not SPEC.md's (%zd bytes)", gn);
    fclose(fout);
    free(out.b.p);
    free(s.w.p);
}

static int echo_rec(void *u, const culvert_batch *b, const culvert_record *in, culvert_out *out) {
    (void)u;
    (void)b;
    if (eq(in->value, "drop")) return 0;
    if (eq(in->value, "fail")) return culvert_fail(out, 0, "bad value %d", 42);
    if (eq(in->value, "retry")) return culvert_fail(out, 1, "try later");
    if (eq(in->value, "rc")) return 7;
    if (eq(in->value, "two")) {
        culvert_record a = {0}, z = {0};
        a.value = str("a");
        z.value = str("b");
        culvert_emit(out, &a, NULL);
        return culvert_emit(out, &z, "alerts");
    }
    if (eq(in->value, "badid")) {
        culvert_record r = *in;
        r.id = str("\xff\xfe");
        return culvert_emit(out, &r, NULL);
    }
    if (eq(in->value, "failmsg")) return culvert_fail(out, 0, "invalid \xff utf-8");
    if (eq(in->value, "big")) {
        static uint8_t big[3000];
        memset(big, 'B', sizeof big);
        culvert_record r = *in;
        r.value = (culvert_bytes){big, sizeof big};
        return culvert_emit(out, &r, NULL);
    }
    return culvert_emit(out, in, NULL);
}

static void test_records(void) {
    culvert_header hs[2] = {{str("h"), {(const uint8_t *)"\0\1", 2}}, {str("h"), str("again")}};
    const char *vals[] = {"keep", "drop", "fail", "retry", "rc", "two", "badid", "failmsg"};
    culvert_record recs[8];
    for (int i = 0; i < 8; i++) {
        memset(&recs[i], 0, sizeof recs[i]);
        recs[i].id = str("id");
        recs[i].value = str(vals[i]);
        recs[i].headers = hs;
        recs[i].n_headers = 2;
    }
    buf in = {0};
    hello(&in, 1, 0);
    batch_frame(&in, 1, recs, 8);
    fmsg m[4];
    int n;
    char err[256];
    int rc = serve_bytes(&in, echo_rec, NULL, NULL, m, 4, &n, err, sizeof err);
    CHECK(rc == 0, "serve: %s", err);
    CHECK(n == 2 && m[0].kind == 16 && m[0].flag == 1 && strcmp(m[0].text, CULVERT_DEFAULT_AGENT) == 0, "ready");
    CHECK(m[1].kind == 18 && m[1].batch_id == 1 && m[1].n_results == 8, "result: kind %d, %d results", m[1].kind,
          m[1].n_results);
    CHECK(m[1].n_outputs[0] == 1 && strcmp(m[1].value[0], "keep") == 0, "keep");
    CHECK(m[1].n_outputs[1] == 0 && m[1].failure[1][0] == 0, "drop");
    CHECK(strcmp(m[1].failure[2], "bad value 42") == 0 && !m[1].retryable[2], "fail: %s", m[1].failure[2]);
    CHECK(strcmp(m[1].failure[3], "try later") == 0 && m[1].retryable[3], "retry");
    CHECK(strstr(m[1].failure[4], "returned 7") != NULL && m[1].n_outputs[4] == 0, "rc: %s", m[1].failure[4]);
    CHECK(m[1].n_outputs[5] == 2 && strcmp(m[1].output[5], "alerts") == 0, "two");
    CHECK(strstr(m[1].failure[6], "not valid UTF-8") != NULL && m[1].n_outputs[6] == 0, "badid: %s", m[1].failure[6]);
    CHECK(strcmp(m[1].failure[7], "invalid ? utf-8") == 0, "failmsg: %s", m[1].failure[7]);
    free(in.p);
}

static void all_fail(void *u, const culvert_batch *b, culvert_results *res) {
    (void)u;
    for (size_t i = b->n_records; i-- > 0;) /* any order */
        culvert_fail(culvert_result(res, i), (int)(i % 2), "record %zu of batch %llu", i, (unsigned long long)b->id);
    CHECK(culvert_result(res, b->n_records) == NULL, "result past the end");
}

static void test_batch_callback_and_empty_batch(void) {
    culvert_record recs[3];
    memset(recs, 0, sizeof recs);
    buf in = {0};
    hello(&in, 1, 0);
    batch_frame(&in, 1, NULL, 0);
    batch_frame(&in, 2, recs, 3);
    fmsg m[4];
    int n;
    char err[256];
    CHECK(serve_bytes(&in, NULL, all_fail, NULL, m, 4, &n, err, sizeof err) == 0, "serve: %s", err);
    CHECK(n == 3 && m[1].n_results == 0 && m[1].batch_id == 1, "empty batch");
    CHECK(m[2].n_results == 3 && m[2].batch_id == 2 && strcmp(m[2].failure[2], "record 2 of batch 2") == 0 &&
              m[2].retryable[1] && !m[2].retryable[2],
          "batch");
    free(in.p);
}

static int stops;
static int count_stop(void *u) {
    (void)u;
    stops++;
    return 0;
}

static void test_keep_alive_order_and_shutdown(void) {
    culvert_record r = {0};
    r.value = str("x");
    buf in = {0};
    hello(&in, 1, 0);
    batch_frame(&in, 1, &r, 1);
    simple_frame(&in, 18, 7); /* keep-alive */
    batch_frame(&in, 2, &r, 1);
    simple_frame(&in, 19, 0); /* shutdown */
    batch_frame(&in, 3, &r, 1);
    fmsg m[8];
    int n;
    char err[256];
    culvert_options o = {.shutdown = count_stop};
    stops = 0;
    CHECK(serve_bytes(&in, echo_rec, NULL, &o, m, 8, &n, err, sizeof err) == 0, "serve: %s", err);
    CHECK(n == 4 && m[1].kind == 18 && m[2].kind == 19 && m[2].nonce == 7 && m[3].kind == 18 && m[3].batch_id == 2,
          "frames: %d", n);
    CHECK(stops == 1, "shutdown ran %d times", stops);
    /* End of input also runs the shutdown callback. */
    in.len = 0;
    hello(&in, 1, 0);
    stops = 0;
    CHECK(serve_bytes(&in, echo_rec, NULL, &o, m, 8, &n, err, sizeof err) == 0 && stops == 1, "EOF");
    free(in.p);
}

static int init_fails(void *u, const culvert_init_context *ctx, char *err, size_t errlen, int *retryable) {
    (void)u;
    snprintf(err, errlen, "cannot serve %.*s", (int)ctx->function.len, (const char *)ctx->function.data);
    *retryable = 1;
    return 1;
}

static void test_handshake_refusals(void) {
    buf in = {0};
    hello(&in, 2, 0);
    fmsg m[2];
    int n;
    char err[256];
    CHECK(serve_bytes(&in, echo_rec, NULL, NULL, m, 2, &n, err, sizeof err) == -1, "unsupported version accepted");
    CHECK(n == 1 && m[0].kind == 17 && strcmp(m[0].text, "unsupported protocol versions [2]: culvert-sdk-c/1 speaks [1]") == 0 &&
              !m[0].flag,
          "InitError: %s", m[0].text);
    in.len = 0;
    hello(&in, 1, 0);
    culvert_options o = {.init = init_fails};
    CHECK(serve_bytes(&in, echo_rec, NULL, &o, m, 2, &n, err, sizeof err) == -1, "init failure accepted");
    CHECK(n == 1 && m[0].kind == 17 && strcmp(m[0].text, "cannot serve fn") == 0 && m[0].flag == 1, "InitError: %s", m[0].text);
    free(in.p);
}

static void test_protocol_violations(void) {
    struct {
        const char *name, *hex, *want;
    } cases[] = {
        {"printed text", "68 65 6c 6c 6f 0a", "not a culvert.v1 frame"},
        {"batch first", "04 8a 01 01 00", "first frame is not Hello"},
        {"length too long", "80 80 80 80 80 01", "longer than 5 bytes"},
        {"length 1", "01 82", "out of range"},
        {"over the limit", "81 80 80 02 82 01", "out of range"},
        {"cut frame", "05 82 01 03 0a", "ended inside a frame"},
        {"cut length", "80", "ended inside a frame"},
        {"bad nested length", "04 82 01 05 0a", "undecodable"},
        {"group wire type", "05 82 01 02 0b 00", "undecodable"},
        {"second hello", "05 82 01 02 08 01 03 82 01 00", "second Hello"},
        {"unknown frame", "05 82 01 02 08 01 03 fa 01 00", "empty or unknown frame"},
        {"tag off the grid", "05 82 01 02 08 01 03 83 01 00", "not a culvert.v1 frame"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t b[64];
        buf in = {b, unhex(cases[i].hex, b), sizeof b};
        fmsg m[4];
        int n;
        char err[512];
        int rc = serve_bytes(&in, echo_rec, NULL, NULL, m, 4, &n, err, sizeof err);
        CHECK(rc == -1 && strstr(err, cases[i].want) != NULL, "%s: rc %d, error %s", cases[i].name, rc, err);
    }
}

static void test_tolerance(void) {
    /* A non-minimal frame length, unknown fields in the envelope and the
     * Hello, and versions that are not packed. */
    uint8_t b[64];
    buf in = {b, unhex("8f 80 00 82 01 07 08 01 08 02 f8 07 05 68 07 aa 01 00", b), sizeof b};
    fmsg m[2];
    int n;
    char err[256];
    CHECK(serve_bytes(&in, echo_rec, NULL, NULL, m, 2, &n, err, sizeof err) == 0, "%s", err);
    CHECK(n == 1 && m[0].kind == 16, "no Ready");
}

static void test_frame_limit_fails_largest(void) {
    culvert_record recs[2];
    memset(recs, 0, sizeof recs);
    recs[0].value = str("small");
    recs[1].value = str("big");
    buf in = {0};
    hello(&in, 1, 2048);
    batch_frame(&in, 1, recs, 2);
    fmsg m[2];
    int n;
    char err[256];
    CHECK(serve_bytes(&in, echo_rec, NULL, NULL, m, 2, &n, err, sizeof err) == 0, "%s", err);
    CHECK(n == 2 && strcmp(m[1].value[0], "small") == 0, "small record lost");
    CHECK(strstr(m[1].failure[1], "exceed the frame limit of 2048 bytes") != NULL, "big: %s", m[1].failure[1]);
    free(in.p);
}

static void test_utf8(void) {
    struct {
        const char *s;
        int ok;
    } cases[] = {
        {"", 1}, {"ascii", 1}, {"caf\xc3\xa9", 1}, {"\xe2\x82\xac", 1}, {"\xf0\x9f\x98\x80", 1},
        {"\xff", 0}, {"\xc3", 0}, {"\xc0\xaf", 0}, {"\xed\xa0\x80", 0}, {"\xf4\x90\x80\x80", 0}, {"\xe2\x82", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(utf8_valid((const uint8_t *)cases[i].s, strlen(cases[i].s)) == cases[i].ok, "case %zu", i);
}

static int printing(void *u, const culvert_batch *b, const culvert_record *in, culvert_out *out) {
    (void)u;
    (void)b;
    printf("printf from the callback\n");
    fflush(stdout);
    if (system("echo child process") != 0) return culvert_fail(out, 0, "system failed");
    return culvert_emit(out, in, NULL);
}

/* culvert_run moves fd 1 away: printf and a child's output reach stderr,
 * and stdout carries only frames. */
static void test_stdout_taken(void) {
    int to_child[2], from_child[2], err_child[2];
    CHECK(pipe(to_child) == 0 && pipe(from_child) == 0 && pipe(err_child) == 0, "pipe");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(to_child[0], 0);
        dup2(from_child[1], 1);
        dup2(err_child[1], 2);
        close(to_child[1]);
        close(from_child[0]);
        close(err_child[0]);
        _exit(culvert_run(printing, NULL));
    }
    close(to_child[0]);
    close(from_child[1]);
    close(err_child[1]);
    culvert_record r = {0};
    r.value = str("x");
    buf in = {0};
    hello(&in, 1, 0);
    batch_frame(&in, 1, &r, 1);
    simple_frame(&in, 19, 0);
    CHECK(write_all(to_child[1], in.p, in.len) == 0, "write");
    close(to_child[1]);
    uint8_t out[4096], errb[4096];
    size_t on = 0, en = 0;
    ssize_t k;
    while ((k = read(from_child[0], out + on, sizeof out - on)) > 0) on += (size_t)k;
    while ((k = read(err_child[0], errb + en, sizeof errb - 1 - en)) > 0) en += (size_t)k;
    errb[en] = 0;
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d; stderr: %s", status, errb);
    server s;
    memset(&s, 0, sizeof s);
    s.max = 1 << 20;
    s.rbuf = out;
    s.rend = s.rcap = on;
    const uint8_t *body;
    size_t len;
    fmsg m;
    int kinds[4], n = 0;
    s.in_fd = -1;
    while (n < 4 && s.rstart < s.rend && next_frame(&s, &body, &len) == 1 && decode_fn(body, len, &m) == 0)
        kinds[n++] = m.kind;
    CHECK(s.rstart == on, "stdout has %zu bytes that are not frames", on - s.rstart);
    CHECK(n == 2 && kinds[0] == 16 && kinds[1] == 18, "%d frames", n);
    CHECK(strstr((char *)errb, "printf from the callback") && strstr((char *)errb, "child process"), "stderr: %s", errb);
    close(from_child[0]);
    close(err_child[0]);
    free(in.p);
}

/* ---- the unchanged capability (SPEC.md sections 4.3, 6 and 10) ---- */

static const char *const offer_unchanged[] = {"log-frames", "unchanged", "some-future-capability"};
static const char *const offer_other[] = {"log-frames"};

/* keep_name: whether in's value is "keep-NAME", with NAME copied to name. */
static int keep_name(const culvert_record *in, char *name, size_t size) {
    if (in->value.len <= 5 || memcmp(in->value.data, "keep-", 5) != 0) return 0;
    copy_str(name, size, (culvert_bytes){in->value.data + 5, in->value.len - 5});
    return 1;
}

/* pass_rec passes records on as they came: "drop" is consumed, a value
 * "keep-NAME" goes to the default output and to NAME, others to the
 * default output. */
static int pass_rec(void *u, const culvert_batch *b, const culvert_record *in, culvert_out *out) {
    (void)u;
    (void)b;
    char name[32];
    if (eq(in->value, "drop")) return 0;
    if (keep_name(in, name, sizeof name)) {
        if (culvert_pass(out, NULL) < 0) return -1;
        return culvert_pass(out, name);
    }
    return culvert_pass(out, NULL);
}

/* emit_rec answers as pass_rec does, with culvert_emit of the input. */
static int emit_rec(void *u, const culvert_batch *b, const culvert_record *in, culvert_out *out) {
    (void)u;
    (void)b;
    char name[32];
    if (eq(in->value, "drop")) return 0;
    if (keep_name(in, name, sizeof name)) {
        if (culvert_emit(out, in, NULL) < 0) return -1;
        return culvert_emit(out, in, name);
    }
    return culvert_emit(out, in, NULL);
}

static void pass_batch(void *u, const culvert_batch *b, culvert_results *res) {
    for (size_t i = b->n_records; i-- > 0;) /* any order */
        (void)pass_rec(u, b, &b->records[i], culvert_result(res, i));
}

/* pass_records fills recs[3] with "a", "keep-x" and "drop", with ids, keys,
 * a content type, repeated headers and an event time. */
static void pass_records(culvert_record recs[3], const culvert_header *hs) {
    const char *vals[] = {"a", "keep-x", "drop"};
    for (int i = 0; i < 3; i++) {
        memset(&recs[i], 0, sizeof recs[i]);
        recs[i].id = str(i == 0 ? "in:1" : i == 1 ? "in:2" : "in:3");
        recs[i].key = str("k\xff");
        recs[i].value = str(vals[i]);
        recs[i].content_type = str("text/plain");
        recs[i].headers = hs;
        recs[i].n_headers = 2;
        recs[i].has_event_time = 1;
        recs[i].event_seconds = 1767225600;
        recs[i].event_nanos = 5;
    }
}

/* Offered: Ready lists the capability (and only that of the offers), and
 * each pass is Output{unchanged: true}, with no record, its output name
 * kept: byte for byte. The batch callback gets the same answers. */
static void test_pass_unchanged(void) {
    culvert_header hs[2] = {{str("h"), {(const uint8_t *)"\0\1", 2}}, {str("h"), str("again")}};
    culvert_record recs[3];
    pass_records(recs, hs);
    buf in = {0};
    hello_caps(&in, 1, 0, offer_unchanged, 3);
    batch_frame(&in, 1, recs, 3);
    for (int v = 0; v < 2; v++) {
        fmsg m[3];
        int n;
        char err[256];
        int rc = serve_bytes(&in, v ? NULL : pass_rec, v ? pass_batch : NULL, NULL, m, 3, &n, err, sizeof err);
        CHECK(rc == 0, "serve %d: %s", v, err);
        CHECK(n == 2 && m[0].kind == 16 && m[0].flag == 1 && strcmp(m[0].caps, "unchanged") == 0, "%d: Ready capabilities \"%s\"", v,
              m[0].caps);
        CHECK(m[1].kind == 18 && m[1].n_results == 3, "%d: result", v);
        CHECK(m[1].n_outputs[0] == 1 && m[1].n_unchanged[0] == 1 && m[1].n_records[0] == 0 && m[1].output[0][0] == 0,
              "%d: a: %d outputs, %d unchanged, %d records", v, m[1].n_outputs[0], m[1].n_unchanged[0], m[1].n_records[0]);
        CHECK(m[1].n_outputs[1] == 2 && m[1].n_unchanged[1] == 2 && m[1].n_records[1] == 0 && strcmp(m[1].output[1], "x") == 0,
              "%d: keep-x: %d outputs, %d unchanged, %d records, output \"%s\"", v, m[1].n_outputs[1], m[1].n_unchanged[1],
              m[1].n_records[1], m[1].output[1]);
        CHECK(m[1].n_outputs[2] == 0 && m[1].failure[2][0] == 0, "%d: drop", v);
    }
    /* The BatchResult, byte for byte: Output{unchanged: true} is 18 01,
     * and Output{output: "x", unchanged: true} 12 01 78 18 01. */
    uint8_t want[64];
    size_t wn = unhex("1a 92 01 17 08 01 12 04 0a 02 18 01 12 0b 0a 02 18 01 0a 05 12 01 78 18 01 12 00", want);
    uint8_t *got;
    size_t gn;
    char err[256];
    CHECK(serve_raw(&in, pass_rec, NULL, NULL, &got, &gn, err, sizeof err) == 0, "%s", err);
    CHECK(gn > wn && memcmp(got + gn - wn, want, wn) == 0, "the BatchResult is not Output.unchanged (%zu bytes written)", gn);
    free(got);
    free(in.p);
}

/* Not offered (or only other capabilities): Ready lists none, and a pass
 * sends the record back: every byte written is what an echo with
 * culvert_emit writes. */
static void test_pass_without_capability(void) {
    culvert_header hs[2] = {{str("h"), {(const uint8_t *)"\0\1", 2}}, {str("h"), str("again")}};
    culvert_record recs[3];
    pass_records(recs, hs);
    for (int v = 0; v < 2; v++) {
        buf in = {0};
        hello_caps(&in, 1, 0, offer_other, (size_t)v);
        batch_frame(&in, 1, recs, 3);
        fmsg m[3];
        int n;
        char err[256];
        CHECK(serve_bytes(&in, pass_rec, NULL, NULL, m, 3, &n, err, sizeof err) == 0, "%d: %s", v, err);
        CHECK(n == 2 && m[0].kind == 16 && m[0].caps[0] == 0, "%d: Ready capabilities \"%s\"", v, m[0].caps);
        CHECK(m[1].n_outputs[0] == 1 && m[1].n_records[0] == 1 && m[1].n_unchanged[0] == 0 && strcmp(m[1].value[0], "a") == 0,
              "%d: a", v);
        CHECK(m[1].n_outputs[1] == 2 && m[1].n_records[1] == 2 && m[1].n_unchanged[1] == 0 && strcmp(m[1].value[1], "keep-x") == 0 &&
                  strcmp(m[1].output[1], "x") == 0,
              "%d: keep-x", v);
        uint8_t *passed, *echoed;
        size_t pn, en;
        CHECK(serve_raw(&in, pass_rec, NULL, NULL, &passed, &pn, err, sizeof err) == 0, "%s", err);
        CHECK(serve_raw(&in, emit_rec, NULL, NULL, &echoed, &en, err, sizeof err) == 0, "%s", err);
        CHECK(pn == en && memcmp(passed, echoed, pn) == 0, "%d: passed records (%zu bytes) differ from echoed ones (%zu bytes)", v,
              pn, en);
        free(passed);
        free(echoed);
        free(in.p);
    }

    /* The bytes are the input's as the Batch carried them, a field from a
     * future version included. */
    uint8_t rb[64];
    buf r = {rb, 0, sizeof rb};
    put_len_field(&r, 3, (const uint8_t *)"v", 1);
    put_tag(&r, 900, WT_LEN);
    put_varint(&r, 3);
    put_raw(&r, "new", 3);
    uint8_t cb[96];
    buf c = {cb, 0, sizeof cb};
    put_varint_field(&c, 1, 1);
    put_len_field(&c, 2, r.p, r.len);
    buf in = {0};
    hello(&in, 1, 0);
    host_frame(&in, 17, &c);
    uint8_t *got;
    size_t gn;
    char err[256];
    CHECK(serve_raw(&in, pass_rec, NULL, NULL, &got, &gn, err, sizeof err) == 0, "%s", err);
    /* ... 12 (RecordResult) 0c, 0a (Output) 0a, 0a (record) 08, the record. */
    CHECK(gn > r.len && memcmp(got + gn - r.len, r.p, r.len) == 0 && got[gn - r.len - 1] == r.len &&
              got[gn - r.len - 2] == 0x0a,
          "the input record's bytes were not copied");
    free(got);
    free(in.p);
}

/* Offered, a callback that emits its records still sends them. */
static void test_emit_with_capability(void) {
    culvert_header hs[2] = {{str("h"), {(const uint8_t *)"\0\1", 2}}, {str("h"), str("again")}};
    culvert_record recs[3];
    pass_records(recs, hs);
    buf in = {0};
    hello_caps(&in, 1, 0, offer_unchanged + 1, 1);
    batch_frame(&in, 1, recs, 3);
    fmsg m[3];
    int n;
    char err[256];
    CHECK(serve_bytes(&in, emit_rec, NULL, NULL, m, 3, &n, err, sizeof err) == 0, "%s", err);
    CHECK(n == 2 && strcmp(m[0].caps, "unchanged") == 0, "Ready capabilities \"%s\"", m[0].caps);
    CHECK(m[1].n_outputs[0] == 1 && m[1].n_records[0] == 1 && m[1].n_unchanged[0] == 0 && strcmp(m[1].value[0], "a") == 0, "a");
    CHECK(m[1].n_outputs[1] == 2 && m[1].n_records[1] == 2 && m[1].n_unchanged[1] == 0 && strcmp(m[1].output[1], "x") == 0,
          "keep-x");
    free(in.p);
}

/* culvert_pass outside a batch, after a failure and with an output name
 * that is not UTF-8 fails the record. */
static void test_pass_errors(void) {
    culvert_out out = {0};
    CHECK(culvert_pass(&out, NULL) == -1 && out.failed, "no input record accepted");
    CHECK(culvert_pass(&out, NULL) == -1, "pass after a failure accepted");
    culvert_out named = {0};
    named.in = str("\x1a\x01v");
    named.unchanged = 1;
    CHECK(culvert_pass(&named, "\xff") == -1 && named.failed, "an output name that is not UTF-8 accepted");
    free(out.b.p);
    free(named.b.p);
}

int main(void) {
    RUN(test_spec_batch_decodes);
    RUN(test_spec_frames_encode);
    RUN(test_records);
    RUN(test_batch_callback_and_empty_batch);
    RUN(test_keep_alive_order_and_shutdown);
    RUN(test_handshake_refusals);
    RUN(test_protocol_violations);
    RUN(test_tolerance);
    RUN(test_frame_limit_fails_largest);
    RUN(test_utf8);
    RUN(test_stdout_taken);
    RUN(test_pass_unchanged);
    RUN(test_pass_without_capability);
    RUN(test_emit_with_capability);
    RUN(test_pass_errors);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
