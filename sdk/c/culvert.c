/* Culvert SDK for C: see culvert.h. The protocol is proto/SPEC.md; the
 * field numbers below are those of proto/culvert/v1/{function,record}.proto.
 */
#define _GNU_SOURCE
#include "culvert.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- growable output buffers ---------------------------------------- */

typedef struct buf {
    uint8_t *p;
    size_t len, cap;
} buf;

static int buf_reserve(buf *b, size_t n) {
    if (b->cap - b->len >= n) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    uint8_t *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static size_t varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* The put_* functions assume room was reserved. */
static void put_varint(buf *b, uint64_t v) {
    while (v >= 0x80) {
        b->p[b->len++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    b->p[b->len++] = (uint8_t)v;
}

static void put_raw(buf *b, const void *p, size_t n) {
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
}

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

static size_t tag_len(uint32_t field) { return varint_len((uint64_t)field << 3); }

static void put_tag(buf *b, uint32_t field, int wt) { put_varint(b, ((uint64_t)field << 3) | (uint64_t)wt); }

/* Size of a LEN field with n bytes of content, or 0 when it is empty and
 * proto3 leaves it out. */
static size_t len_field_size(uint32_t field, size_t n) { return n ? tag_len(field) + varint_len(n) + n : 0; }

static void put_len_field(buf *b, uint32_t field, const uint8_t *p, size_t n) {
    if (!n) return;
    put_tag(b, field, WT_LEN);
    put_varint(b, n);
    put_raw(b, p, n);
}

static size_t varint_field_size(uint32_t field, uint64_t v) { return v ? tag_len(field) + varint_len(v) : 0; }

static void put_varint_field(buf *b, uint32_t field, uint64_t v) {
    if (!v) return;
    put_tag(b, field, WT_VARINT);
    put_varint(b, v);
}

/* ---- decoding ------------------------------------------------------- */

typedef struct rd {
    const uint8_t *p, *end;
} rd;

static int rd_varint(rd *r, uint64_t *v) {
    uint64_t x = 0;
    for (int i = 0; i < 10; i++) {
        if (r->p >= r->end) return -1;
        uint8_t b = *r->p++;
        if (i == 9 && b > 1) return -1;
        x |= (uint64_t)(b & 0x7f) << (7 * i);
        if (b < 0x80) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

static int rd_tag(rd *r, uint32_t *field, int *wt) {
    uint64_t t;
    if (rd_varint(r, &t) < 0) return -1;
    if ((t >> 3) == 0 || (t >> 3) > 0x1fffffff) return -1;
    *field = (uint32_t)(t >> 3);
    *wt = (int)(t & 7);
    return 0;
}

static int rd_bytes(rd *r, culvert_bytes *out) {
    uint64_t n;
    if (rd_varint(r, &n) < 0 || n > (uint64_t)(r->end - r->p)) return -1;
    out->data = r->p;
    out->len = (size_t)n;
    r->p += n;
    return 0;
}

static int rd_skip(rd *r, int wt) {
    uint64_t v;
    culvert_bytes b;
    switch (wt) {
    case WT_VARINT: return rd_varint(r, &v);
    case WT_LEN: return rd_bytes(r, &b);
    case WT_I64:
        if (r->end - r->p < 8) return -1;
        r->p += 8;
        return 0;
    case WT_I32:
        if (r->end - r->p < 4) return -1;
        r->p += 4;
        return 0;
    }
    return -1; /* groups (3, 4) and wire types 6, 7 are not valid here */
}

/* Reads a varint field into *v after checking its wire type. */
#define RD_VARINT(r, wt, v)                                                                                            \
    do {                                                                                                               \
        uint64_t x_;                                                                                                   \
        if ((wt) != WT_VARINT || rd_varint((r), &x_) < 0) return -1;                                                   \
        (v) = x_;                                                                                                      \
    } while (0)
#define RD_BYTES(r, wt, b)                                                                                             \
    do {                                                                                                               \
        if ((wt) != WT_LEN || rd_bytes((r), &(b)) < 0) return -1;                                                      \
    } while (0)

static int decode_position(culvert_bytes in, culvert_position *pos) {
    rd r = {in.data, in.data + in.len};
    memset(pos, 0, sizeof *pos);
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (rd_tag(&r, &f, &wt) < 0) return -1;
        switch (f) {
        case 1: RD_BYTES(&r, wt, pos->connector); break;
        case 2: RD_BYTES(&r, wt, pos->stream); break;
        case 3: RD_BYTES(&r, wt, pos->subject); break;
        case 4: RD_BYTES(&r, wt, pos->partition); break;
        case 5: RD_VARINT(&r, wt, pos->offset); break;
        case 6: RD_BYTES(&r, wt, pos->sequence); break;
        default:
            if (rd_skip(&r, wt) < 0) return -1;
        }
    }
    return 0;
}

static int decode_timestamp(culvert_bytes in, culvert_record *rec) {
    rd r = {in.data, in.data + in.len};
    rec->has_event_time = 1;
    rec->event_seconds = 0;
    rec->event_nanos = 0;
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        uint64_t v;
        if (rd_tag(&r, &f, &wt) < 0) return -1;
        switch (f) {
        case 1: RD_VARINT(&r, wt, v); rec->event_seconds = (int64_t)v; break;
        case 2: RD_VARINT(&r, wt, v); rec->event_nanos = (int32_t)(uint32_t)v; break;
        default:
            if (rd_skip(&r, wt) < 0) return -1;
        }
    }
    return 0;
}

typedef struct culvert_results {
    culvert_out *outs;
    size_t n;
} results;

struct culvert_out {
    buf b; /* RecordResult fields: outputs, or one failure */
    int failed;
    /* For culvert_pass: the input record's bytes as the Batch carried them
     * (pointing into the frame; data is NULL outside a batch), and whether
     * the unchanged capability is in use. */
    culvert_bytes in;
    int unchanged;
};

typedef struct server {
    int in_fd, out_fd;
    culvert_record_fn rfn;
    culvert_batch_fn bfn;
    culvert_options opts;
    char *err;
    size_t errlen;

    uint8_t *rbuf;
    size_t rcap, rstart, rend;
    uint64_t offset; /* stream offset of rbuf[rstart] */
    uint32_t max;

    culvert_record *recs;
    size_t recs_cap;
    size_t *hstart;
    culvert_bytes *raw; /* raw[i]: the bytes of recs[i] in the Batch */
    int unchanged;      /* the unchanged capability is in use (SPEC.md 10) */
    culvert_header *hdrs;
    size_t hdrs_len, hdrs_cap;
    culvert_out *outs;
    size_t outs_cap;
    buf w;
} server;

static int add_header(server *s, culvert_bytes in) {
    if (s->hdrs_len == s->hdrs_cap) {
        size_t cap = s->hdrs_cap ? s->hdrs_cap * 2 : 64;
        culvert_header *h = realloc(s->hdrs, cap * sizeof *h);
        if (!h) return -1;
        s->hdrs = h;
        s->hdrs_cap = cap;
    }
    culvert_header *h = &s->hdrs[s->hdrs_len];
    memset(h, 0, sizeof *h);
    rd r = {in.data, in.data + in.len};
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (rd_tag(&r, &f, &wt) < 0) return -1;
        switch (f) {
        case 1: RD_BYTES(&r, wt, h->name); break;
        case 2: RD_BYTES(&r, wt, h->value); break;
        default:
            if (rd_skip(&r, wt) < 0) return -1;
        }
    }
    s->hdrs_len++;
    return 0;
}

/* decode_record fills rec; its headers are appended to s->hdrs and counted
 * in rec->n_headers (the pointer is set once the batch is decoded, since
 * the array may move). */
static int decode_record(server *s, culvert_bytes in, culvert_record *rec) {
    rd r = {in.data, in.data + in.len};
    memset(rec, 0, sizeof *rec);
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        culvert_bytes b;
        if (rd_tag(&r, &f, &wt) < 0) return -1;
        switch (f) {
        case 1: RD_BYTES(&r, wt, rec->id); break;
        case 2: RD_BYTES(&r, wt, rec->key); break;
        case 3: RD_BYTES(&r, wt, rec->value); break;
        case 4: RD_BYTES(&r, wt, rec->content_type); break;
        case 5:
            RD_BYTES(&r, wt, b);
            if (add_header(s, b) < 0) return -1;
            rec->n_headers++;
            break;
        case 6:
            RD_BYTES(&r, wt, b);
            if (decode_timestamp(b, rec) < 0) return -1;
            break;
        case 7:
            RD_BYTES(&r, wt, b);
            if (decode_position(b, &rec->source) < 0) return -1;
            break;
        default:
            if (rd_skip(&r, wt) < 0) return -1;
        }
    }
    return 0;
}

static int decode_batch(server *s, culvert_bytes in, culvert_batch *b) {
    rd r = {in.data, in.data + in.len};
    memset(b, 0, sizeof *b);
    s->hdrs_len = 0;
    size_t n = 0;
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        uint64_t v;
        culvert_bytes rb;
        if (rd_tag(&r, &f, &wt) < 0) return -1;
        switch (f) {
        case 1: RD_VARINT(&r, wt, b->id); break;
        case 2:
            RD_BYTES(&r, wt, rb);
            if (n == s->recs_cap) {
                size_t cap = s->recs_cap ? s->recs_cap * 2 : 64;
                culvert_record *nr = realloc(s->recs, cap * sizeof *nr);
                if (!nr) return -1;
                s->recs = nr;
                size_t *hs = realloc(s->hstart, cap * sizeof *hs);
                if (!hs) return -1;
                s->hstart = hs;
                culvert_bytes *raw = realloc(s->raw, cap * sizeof *raw);
                if (!raw) return -1;
                s->raw = raw;
                s->recs_cap = cap;
            }
            s->hstart[n] = s->hdrs_len;
            s->raw[n] = rb;
            if (decode_record(s, rb, &s->recs[n]) < 0) return -1;
            n++;
            break;
        case 3: RD_VARINT(&r, wt, v); b->deadline_unix_ms = (int64_t)v; break;
        case 4: RD_VARINT(&r, wt, v); b->attempt = (uint32_t)v; break;
        default:
            if (rd_skip(&r, wt) < 0) return -1;
        }
    }
    for (size_t i = 0; i < n; i++) s->recs[i].headers = s->recs[i].n_headers ? &s->hdrs[s->hstart[i]] : NULL;
    b->records = n ? s->recs : NULL;
    b->n_records = n;
    return 0;
}

/* The capability behind culvert_pass (SPEC.md section 10). */
static const char cap_unchanged[] = "unchanged";

/* decode_hello fills ctx and the versions offered, and sets *unchanged when
 * Hello.capabilities lists "unchanged"; other capabilities are ignored. */
static int decode_hello(culvert_bytes in, culvert_init_context *ctx, int *has_v1, uint64_t versions[8], size_t *nv,
                        int *unchanged) {
    rd r = {in.data, in.data + in.len};
    memset(ctx, 0, sizeof *ctx);
    *has_v1 = 0;
    *nv = 0;
    *unchanged = 0;
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        uint64_t v;
        culvert_bytes b;
        if (rd_tag(&r, &f, &wt) < 0) return -1;
        switch (f) {
        case 1:
            if (wt == WT_LEN) { /* packed */
                RD_BYTES(&r, wt, b);
                rd p = {b.data, b.data + b.len};
                while (p.p < p.end) {
                    if (rd_varint(&p, &v) < 0) return -1;
                    if (v == CULVERT_VERSION) *has_v1 = 1;
                    if (*nv < 8) versions[(*nv)++] = v;
                }
            } else {
                RD_VARINT(&r, wt, v);
                if (v == CULVERT_VERSION) *has_v1 = 1;
                if (*nv < 8) versions[(*nv)++] = v;
            }
            break;
        case 2: RD_VARINT(&r, wt, v); ctx->max_frame_bytes = (uint32_t)v; break;
        case 3: RD_VARINT(&r, wt, v); ctx->max_batch_records = (uint32_t)v; break;
        case 4: RD_VARINT(&r, wt, v); ctx->max_inflight_batches = (uint32_t)v; break;
        case 6: {
            RD_BYTES(&r, wt, b);
            rd c = {b.data, b.data + b.len};
            while (c.p < c.end) {
                uint32_t cf;
                int cwt;
                if (rd_tag(&c, &cf, &cwt) < 0) return -1;
                switch (cf) {
                case 1: RD_BYTES(&c, cwt, ctx->pipeline); break;
                case 2: RD_BYTES(&c, cwt, ctx->function); break;
                case 3: RD_VARINT(&c, cwt, v); ctx->instance = (uint32_t)v; break;
                case 4: RD_VARINT(&c, cwt, v); ctx->instances = (uint32_t)v; break;
                case 5: RD_BYTES(&c, cwt, ctx->partition); break;
                case 6: RD_BYTES(&c, cwt, ctx->route); break;
                default:
                    if (rd_skip(&c, cwt) < 0) return -1;
                }
            }
            break;
        }
        case 5:
            RD_BYTES(&r, wt, b);
            if (b.len == sizeof cap_unchanged - 1 && memcmp(b.data, cap_unchanged, b.len) == 0) *unchanged = 1;
            break;
        case 7: RD_VARINT(&r, wt, v); ctx->keep_alive_ms = (uint32_t)v; break;
        default: /* unknown fields */
            if (rd_skip(&r, wt) < 0) return -1;
        }
    }
    return 0;
}

enum { M_NONE = 0, M_HELLO = 16, M_BATCH = 17, M_KEEP_ALIVE = 18, M_SHUTDOWN = 19 };

/* decode_host finds the frame kind of a HostMessage body; the last oneof
 * field wins, as in protobuf. Unknown fields are skipped. */
static int decode_host(const uint8_t *p, size_t n, int *kind, culvert_bytes *payload) {
    rd r = {p, p + n};
    *kind = M_NONE;
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (rd_tag(&r, &f, &wt) < 0) return -1;
        if (f >= M_HELLO && f <= M_SHUTDOWN) {
            RD_BYTES(&r, wt, *payload);
            *kind = (int)f;
        } else if (rd_skip(&r, wt) < 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- encoding ------------------------------------------------------- */

static int utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* Replaces each byte that does not start a valid UTF-8 sequence in a
 * NUL-terminated message by '?', so that it can travel in a string field. */
static void utf8_sanitize(char *m) {
    size_t n = strlen(m);
    for (size_t i = 0; i < n;) {
        uint8_t c = (uint8_t)m[i];
        size_t k = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (k && k <= n - i && utf8_valid((const uint8_t *)m + i, k)) {
            i += k;
        } else {
            m[i++] = '?';
        }
    }
}

static size_t header_size(const culvert_header *h) {
    return len_field_size(1, h->name.len) + len_field_size(2, h->value.len);
}

static size_t timestamp_size(const culvert_record *r) {
    return varint_field_size(1, (uint64_t)r->event_seconds) + varint_field_size(2, (uint64_t)(int64_t)r->event_nanos);
}

static size_t record_size(const culvert_record *r) {
    size_t n = len_field_size(1, r->id.len) + len_field_size(2, r->key.len) + len_field_size(3, r->value.len) +
               len_field_size(4, r->content_type.len);
    for (size_t i = 0; i < r->n_headers; i++) {
        size_t h = header_size(&r->headers[i]);
        n += tag_len(5) + varint_len(h) + h;
    }
    if (r->has_event_time) {
        size_t t = timestamp_size(r);
        n += tag_len(6) + varint_len(t) + t;
    }
    return n;
}

static void put_record(buf *b, const culvert_record *r) {
    put_len_field(b, 1, r->id.data, r->id.len);
    put_len_field(b, 2, r->key.data, r->key.len);
    put_len_field(b, 3, r->value.data, r->value.len);
    put_len_field(b, 4, r->content_type.data, r->content_type.len);
    for (size_t i = 0; i < r->n_headers; i++) {
        const culvert_header *h = &r->headers[i];
        put_tag(b, 5, WT_LEN);
        put_varint(b, header_size(h));
        put_len_field(b, 1, h->name.data, h->name.len);
        put_len_field(b, 2, h->value.data, h->value.len);
    }
    if (r->has_event_time) {
        put_tag(b, 6, WT_LEN);
        put_varint(b, timestamp_size(r));
        put_varint_field(b, 1, (uint64_t)r->event_seconds);
        put_varint_field(b, 2, (uint64_t)(int64_t)r->event_nanos);
    }
}

static void set_failure(culvert_out *out, int retryable, const char *msg) {
    size_t mlen = strlen(msg);
    size_t f = len_field_size(1, mlen) + (retryable ? 2 : 0);
    out->b.len = 0;
    out->failed = 1;
    if (buf_reserve(&out->b, tag_len(2) + varint_len(f) + f) < 0) {
        out->b.len = 0; /* out of memory: an empty failure still fails the record */
        if (buf_reserve(&out->b, 2) < 0) return;
        f = mlen = 0;
    }
    put_tag(&out->b, 2, WT_LEN);
    put_varint(&out->b, f);
    put_len_field(&out->b, 1, (const uint8_t *)msg, mlen);
    if (retryable) put_varint_field(&out->b, 2, 1);
}

int culvert_fail(culvert_out *out, int retryable, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt ? fmt : "failed", ap);
    va_end(ap);
    utf8_sanitize(msg);
    set_failure(out, retryable, msg);
    return -1;
}

static int field_utf8(culvert_out *out, const char *what, culvert_bytes b) {
    if (b.len && !utf8_valid(b.data, b.len)) {
        culvert_fail(out, 0, "culvert: an output's %s is not valid UTF-8", what);
        return -1;
    }
    return 0;
}

int culvert_emit(culvert_out *out, const culvert_record *rec, const char *output) {
    if (out->failed) return -1;
    if (!rec) return culvert_fail(out, 0, "culvert: an output is a NULL record");
    size_t olen = output ? strlen(output) : 0;
    if (field_utf8(out, "id", rec->id) < 0 || field_utf8(out, "content type", rec->content_type) < 0) return -1;
    for (size_t i = 0; i < rec->n_headers; i++)
        if (field_utf8(out, "header name", rec->headers[i].name) < 0) return -1;
    if (olen && !utf8_valid((const uint8_t *)output, olen))
        return culvert_fail(out, 0, "culvert: an output name is not valid UTF-8");
    size_t rs = record_size(rec);
    size_t os = tag_len(1) + varint_len(rs) + rs + len_field_size(2, olen);
    if (buf_reserve(&out->b, tag_len(1) + varint_len(os) + os) < 0)
        return culvert_fail(out, 1, "culvert: out of memory for an output of %zu bytes", os);
    put_tag(&out->b, 1, WT_LEN); /* RecordResult.outputs */
    put_varint(&out->b, os);
    put_tag(&out->b, 1, WT_LEN); /* Output.record */
    put_varint(&out->b, rs);
    put_record(&out->b, rec);
    put_len_field(&out->b, 2, (const uint8_t *)output, olen); /* Output.output */
    return 0;
}

int culvert_pass(culvert_out *out, const char *output) {
    if (out->failed) return -1;
    if (!out->in.data) return culvert_fail(out, 0, "culvert: culvert_pass outside a batch has no input record");
    size_t olen = output ? strlen(output) : 0;
    if (olen && !utf8_valid((const uint8_t *)output, olen))
        return culvert_fail(out, 0, "culvert: an output name is not valid UTF-8");
    /* Output{output, unchanged: true} when the host took the capability,
     * else Output{record: the input's bytes, output}. */
    size_t os = out->unchanged ? len_field_size(2, olen) + tag_len(3) + 1
                               : tag_len(1) + varint_len(out->in.len) + out->in.len + len_field_size(2, olen);
    if (buf_reserve(&out->b, tag_len(1) + varint_len(os) + os) < 0)
        return culvert_fail(out, 1, "culvert: out of memory for an output of %zu bytes", os);
    put_tag(&out->b, 1, WT_LEN); /* RecordResult.outputs */
    put_varint(&out->b, os);
    if (!out->unchanged) {
        put_tag(&out->b, 1, WT_LEN); /* Output.record */
        put_varint(&out->b, out->in.len);
        put_raw(&out->b, out->in.data, out->in.len);
    }
    put_len_field(&out->b, 2, (const uint8_t *)output, olen); /* Output.output */
    if (out->unchanged) put_varint_field(&out->b, 3, 1);     /* Output.unchanged */
    return 0;
}

culvert_out *culvert_result(culvert_results *res, size_t i) { return i < res->n ? &res->outs[i] : NULL; }

/* ---- I/O ------------------------------------------------------------ */

static int fail(server *s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static int fail(server *s, const char *fmt, ...) {
    if (s->err && s->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s->err, s->errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* next_frame returns 1 with the next frame body, 0 at a clean end of input,
 * -1 on error. The body stays valid until the next call. */
static int next_frame(server *s, const uint8_t **body, size_t *len) {
    for (;;) {
        size_t avail = s->rend - s->rstart;
        const uint8_t *p = s->rbuf ? s->rbuf + s->rstart : s->rbuf; /* no arithmetic on NULL */
        uint64_t n = 0;
        size_t hl = 0;
        int complete = 0;
        for (size_t i = 0; i < 5 && i < avail; i++) {
            n |= (uint64_t)(p[i] & 0x7f) << (7 * i);
            if (p[i] < 0x80) {
                hl = i + 1;
                complete = 1;
                break;
            }
        }
        if (!complete && avail >= 5)
            return fail(s, "protocol violation at offset %llu: frame length is longer than 5 bytes",
                        (unsigned long long)s->offset);
        if (complete) {
            if (n < 2 || n > s->max)
                return fail(s, "protocol violation at offset %llu: frame length %llu is out of range [2, %u]",
                            (unsigned long long)s->offset, (unsigned long long)n, s->max);
            if (avail > hl) {
                uint8_t t0 = p[hl];
                if (t0 < 0x82 || t0 > 0xfa || (t0 - 0x82) % 8 != 0 || (avail > hl + 1 && p[hl + 1] != 0x01))
                    return fail(s, "protocol violation at offset %llu: not a culvert.v1 frame (body starts %02x)",
                                (unsigned long long)s->offset, t0);
            }
            if (avail >= hl + n) {
                *body = p + hl;
                *len = (size_t)n;
                s->rstart += hl + (size_t)n;
                s->offset += hl + n;
                return 1;
            }
        }
        /* Need more bytes: make room for the whole frame, then read. */
        size_t need = complete ? hl + (size_t)n : 5;
        if (s->rstart > 0) {
            memmove(s->rbuf, s->rbuf + s->rstart, avail);
            s->rend = avail;
            s->rstart = 0;
        }
        if (s->rcap < need || s->rcap - s->rend < 4096) {
            size_t cap = s->rcap ? s->rcap : 1 << 16;
            while (cap < need || cap - s->rend < 4096) cap *= 2;
            uint8_t *nb = realloc(s->rbuf, cap);
            if (!nb) return fail(s, "out of memory for a frame of %zu bytes", need);
            s->rbuf = nb;
            s->rcap = cap;
        }
        ssize_t k;
        do {
            k = read(s->in_fd, s->rbuf + s->rend, s->rcap - s->rend);
        } while (k < 0 && errno == EINTR);
        if (k < 0) return fail(s, "reading the host's frames: %s", strerror(errno));
        if (k == 0) {
            if (s->rend == s->rstart) return 0;
            return fail(s, "protocol violation at offset %llu: the input ended inside a frame",
                        (unsigned long long)s->offset);
        }
        s->rend += (size_t)k;
    }
}

/* send_frame frames the FunctionMessage field `field` whose content is
 * content[0..clen) followed by the record results of res (when res). */
static int send_frame(server *s, uint32_t field, const buf *content, const results *res) {
    size_t inner = content->len;
    if (res)
        for (size_t i = 0; i < res->n; i++) inner += tag_len(2) + varint_len(res->outs[i].b.len) + res->outs[i].b.len;
    size_t body = tag_len(field) + varint_len(inner) + inner;
    s->w.len = 0;
    if (buf_reserve(&s->w, varint_len(body) + body) < 0) return fail(s, "out of memory for a frame of %zu bytes", body);
    put_varint(&s->w, body);
    put_tag(&s->w, field, WT_LEN);
    put_varint(&s->w, inner);
    put_raw(&s->w, content->p, content->len);
    if (res)
        for (size_t i = 0; i < res->n; i++) {
            put_tag(&s->w, 2, WT_LEN); /* BatchResult.results */
            put_varint(&s->w, res->outs[i].b.len);
            put_raw(&s->w, res->outs[i].b.p, res->outs[i].b.len);
        }
    if (write_all(s->out_fd, s->w.p, s->w.len) < 0) return fail(s, "writing a frame: %s", strerror(errno));
    return 0;
}

/* ---- the protocol --------------------------------------------------- */

static int send_init_error(server *s, const char *msg, int retryable) {
    char m[1024];
    snprintf(m, sizeof m, "%s", msg);
    utf8_sanitize(m);
    size_t ml = strlen(m);
    buf c = {0};
    if (buf_reserve(&c, len_field_size(1, ml) + 2) < 0) return fail(s, "out of memory");
    put_len_field(&c, 1, (const uint8_t *)m, ml);
    if (retryable) put_varint_field(&c, 2, 1);
    int rc = send_frame(s, 17, &c, NULL);
    free(c.p);
    if (rc < 0) return rc;
    return fail(s, "init failed: %s", m);
}

static int handshake(server *s, culvert_bytes payload) {
    culvert_init_context ctx;
    int has_v1;
    uint64_t versions[8];
    size_t nv;
    int unchanged;
    if (decode_hello(payload, &ctx, &has_v1, versions, &nv, &unchanged) < 0)
        return fail(s, "protocol violation: undecodable Hello of %zu bytes", payload.len);
    if (ctx.max_frame_bytes) s->max = ctx.max_frame_bytes;
    if (!has_v1) {
        char msg[256], *p = msg;
        size_t left = sizeof msg;
        int k = snprintf(p, left, "unsupported protocol versions [");
        for (size_t i = 0; i < nv && k > 0 && (size_t)k < left; i++) {
            p += k;
            left -= (size_t)k;
            k = snprintf(p, left, i ? " %llu" : "%llu", (unsigned long long)versions[i]);
        }
        if (k > 0 && (size_t)k < left) {
            p += k;
            left -= (size_t)k;
            snprintf(p, left, "]: %s speaks [%d]", CULVERT_DEFAULT_AGENT, CULVERT_VERSION);
        }
        return send_init_error(s, msg, 0);
    }
    if (s->opts.init) {
        char msg[1024] = "";
        int retryable = 0;
        if (s->opts.init(s->opts.user, &ctx, msg, sizeof msg, &retryable) != 0) {
            msg[sizeof msg - 1] = 0;
            return send_init_error(s, msg[0] ? msg : "the init callback failed", retryable);
        }
    }
    const char *agent = s->opts.agent ? s->opts.agent : CULVERT_DEFAULT_AGENT;
    char a[256];
    snprintf(a, sizeof a, "%s", agent);
    utf8_sanitize(a);
    size_t al = strlen(a);
    /* Ready.capabilities: "unchanged" when offered, so that culvert_pass
     * names the input record instead of sending it back. */
    size_t cl = unchanged ? sizeof cap_unchanged - 1 : 0;
    buf c = {0};
    if (buf_reserve(&c, 2 + len_field_size(2, cl) + len_field_size(3, al)) < 0) return fail(s, "out of memory");
    put_varint_field(&c, 1, CULVERT_VERSION);
    put_len_field(&c, 2, (const uint8_t *)cap_unchanged, cl);
    put_len_field(&c, 3, (const uint8_t *)a, al);
    int rc = send_frame(s, 16, &c, NULL);
    free(c.p);
    if (rc == 0) s->unchanged = unchanged;
    return rc;
}

static int batch(server *s, culvert_bytes payload) {
    culvert_batch b;
    if (decode_batch(s, payload, &b) < 0) return fail(s, "protocol violation: undecodable Batch of %zu bytes", payload.len);
    if (b.n_records > s->outs_cap) {
        culvert_out *o = realloc(s->outs, b.n_records * sizeof *o);
        if (!o) return fail(s, "out of memory for a batch of %zu records", b.n_records);
        memset(o + s->outs_cap, 0, (b.n_records - s->outs_cap) * sizeof *o);
        s->outs = o;
        s->outs_cap = b.n_records;
    }
    results res = {s->outs, b.n_records};
    for (size_t i = 0; i < res.n; i++) {
        res.outs[i].b.len = 0;
        res.outs[i].failed = 0;
        res.outs[i].in = s->raw[i];
        res.outs[i].unchanged = s->unchanged;
    }
    if (s->rfn) {
        for (size_t i = 0; i < res.n; i++) {
            int rc = s->rfn(s->opts.user, &b, &b.records[i], &res.outs[i]);
            if (rc != 0 && !res.outs[i].failed) culvert_fail(&res.outs[i], 0, "the record callback returned %d", rc);
        }
    } else {
        s->bfn(s->opts.user, &b, &res);
    }
    uint8_t idb[16];
    buf id = {idb, 0, sizeof idb};
    put_varint_field(&id, 1, b.id); /* BatchResult.batch_id */
    /* A result over the frame limit: fail the records with the largest
     * outputs until it fits. */
    for (;;) {
        size_t inner = id.len, big = res.n;
        for (size_t i = 0; i < res.n; i++) {
            inner += tag_len(2) + varint_len(res.outs[i].b.len) + res.outs[i].b.len;
            if (!res.outs[i].failed && (big == res.n || res.outs[i].b.len > res.outs[big].b.len)) big = i;
        }
        size_t body = tag_len(18) + varint_len(inner) + inner;
        if (body <= s->max || big == res.n) break;
        size_t was = res.outs[big].b.len;
        culvert_fail(&res.outs[big], 0,
                     "the outputs of this record (%zu bytes) make the batch result exceed the frame limit of %u bytes",
                     was, s->max);
        fprintf(stderr, "culvert: record %zu of batch %llu: outputs of %zu bytes exceed the frame limit of %u bytes\n",
                big, (unsigned long long)b.id, was, s->max);
    }
    return send_frame(s, 18, &id, &res);
}

static int keep_alive(server *s, culvert_bytes payload) {
    rd r = {payload.data, payload.data + payload.len};
    uint64_t nonce = 0;
    while (r.p < r.end) {
        uint32_t f;
        int wt;
        if (rd_tag(&r, &f, &wt) < 0) return fail(s, "protocol violation: undecodable KeepAlive");
        if (f == 1 && wt == WT_VARINT) {
            if (rd_varint(&r, &nonce) < 0) return fail(s, "protocol violation: undecodable KeepAlive");
        } else if (rd_skip(&r, wt) < 0) {
            return fail(s, "protocol violation: undecodable KeepAlive");
        }
    }
    uint8_t nb[16];
    buf c = {nb, 0, sizeof nb};
    put_varint_field(&c, 1, nonce);
    return send_frame(s, 19, &c, NULL);
}

static int stop(server *s) {
    if (s->opts.shutdown && s->opts.shutdown(s->opts.user) != 0) return fail(s, "the shutdown callback failed");
    return 0;
}

static int serve_loop(server *s) {
    const uint8_t *body;
    size_t len;
    int kind;
    culvert_bytes payload = {0};
    int rc = next_frame(s, &body, &len);
    if (rc <= 0) return rc; /* 0: the host gave up before the handshake */
    if (decode_host(body, len, &kind, &payload) < 0)
        return fail(s, "protocol violation: undecodable HostMessage of %zu bytes", len);
    if (kind != M_HELLO) return fail(s, "protocol violation: the host's first frame is not Hello");
    if (handshake(s, payload) < 0) return -1;
    for (;;) {
        rc = next_frame(s, &body, &len);
        if (rc < 0) return -1;
        if (rc == 0) return stop(s);
        if (decode_host(body, len, &kind, &payload) < 0)
            return fail(s, "protocol violation: undecodable HostMessage of %zu bytes", len);
        switch (kind) {
        case M_BATCH:
            if (batch(s, payload) < 0) return -1;
            break;
        case M_KEEP_ALIVE:
            /* Batches run inline: every batch received before this ping
             * has been answered, so echoing now keeps the order. */
            if (keep_alive(s, payload) < 0) return -1;
            break;
        case M_SHUTDOWN: return stop(s);
        case M_HELLO: return fail(s, "protocol violation: the host sent a second Hello");
        default:
            return fail(s, "protocol violation: the host sent an empty or unknown frame, which protocol version 1 does not allow");
        }
    }
}

int culvert_serve(int in_fd, int out_fd, culvert_record_fn rfn, culvert_batch_fn bfn, const culvert_options *opts,
                  char *err, size_t errlen) {
    server s;
    memset(&s, 0, sizeof s);
    s.in_fd = in_fd;
    s.out_fd = out_fd;
    s.rfn = rfn;
    s.bfn = bfn;
    if (opts) s.opts = *opts;
    s.err = err;
    s.errlen = errlen;
    s.max = CULVERT_DEFAULT_MAX_FRAME;
    if (err && errlen) err[0] = 0;
    int rc = (!rfn == !bfn) ? fail(&s, "culvert_serve needs exactly one of a record and a batch callback") : serve_loop(&s);
    for (size_t i = 0; i < s.outs_cap; i++) free(s.outs[i].b.p);
    free(s.outs);
    free(s.recs);
    free(s.hstart);
    free(s.raw);
    free(s.hdrs);
    free(s.rbuf);
    free(s.w.p);
    return rc;
}

/* take_stdio moves the protocol to private close-on-exec copies of fds 0
 * and 1, then points fd 1 at stderr and fd 0 at /dev/null. */
static int take_stdio(int *in_fd, int *out_fd) {
    fflush(stdout);
    int o = fcntl(1, F_DUPFD_CLOEXEC, 3);
    if (o < 0) return -1;
    int i = fcntl(0, F_DUPFD_CLOEXEC, 3);
    if (i < 0) {
        close(o);
        return -1;
    }
    if (dup2(2, 1) < 0) {
        int n = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (n < 0 || dup2(n, 1) < 0) return -1;
        close(n);
    }
    int n = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (n < 0 || dup2(n, 0) < 0) return -1;
    close(n);
    setvbuf(stdout, NULL, _IOLBF, 0); /* printf lines reach the log promptly */
    *in_fd = i;
    *out_fd = o;
    return 0;
}

static int run(culvert_record_fn rfn, culvert_batch_fn bfn, const culvert_options *opts) {
    int in_fd, out_fd;
    if (take_stdio(&in_fd, &out_fd) < 0) {
        fprintf(stderr, "culvert: taking stdin and stdout for the protocol: %s\n", strerror(errno));
        return 1;
    }
    char err[1024];
    int rc = culvert_serve(in_fd, out_fd, rfn, bfn, opts, err, sizeof err);
    fflush(stdout);
    close(in_fd);
    close(out_fd);
    if (rc < 0) {
        fprintf(stderr, "culvert: %s\n", err);
        return 1;
    }
    return 0;
}

int culvert_run(culvert_record_fn fn, const culvert_options *opts) { return run(fn, NULL, opts); }

int culvert_run_batch(culvert_batch_fn fn, const culvert_options *opts) { return run(NULL, fn, opts); }
