/* libFuzzer target: the input is the byte stream a host would write to the
 * function's stdin. It runs the whole protocol loop (frame splitting,
 * decoding of every host message, encoding of results) with a callback that
 * echoes each record (culvert_emit, or culvert_pass for values of 3 bytes)
 * and fails some. Built by sdk/c/sdk_test.go:
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. -o fuzz test/fuzz_culvert.c
 *   ./fuzz -max_total_time=60 corpus/
 */
#include "../culvert.c"

#include <sys/mman.h>

static int echo(void *u, const culvert_batch *b, const culvert_record *in, culvert_out *out) {
    (void)u;
    (void)b;
    if (in->value.len == 1 && in->value.data[0] == 'f') return culvert_fail(out, 1, "fail %.*s", (int)in->id.len, (const char *)in->id.data);
    if (in->value.len == 3) return culvert_pass(out, in->key.len ? "named" : NULL); /* unchanged, or the bytes copied */
    if (culvert_emit(out, in, in->key.len ? "named" : NULL) < 0) return -1;
    return in->value.len == 2 ? culvert_emit(out, in, NULL) : 0;
}

/* decode_exact decodes data as one frame body, in place: the input buffer
 * is exactly its size, so that the sanitizer sees any read past the end
 * (inside the protocol loop, bodies sit in a larger read buffer). */
static void decode_exact(const uint8_t *data, size_t size) {
    int kind;
    culvert_bytes payload;
    if (decode_host(data, size, &kind, &payload) < 0) return;
    server s;
    memset(&s, 0, sizeof s);
    culvert_batch b;
    culvert_init_context ctx;
    int has_v1;
    uint64_t versions[8];
    size_t nv;
    int unchanged;
    if (kind == M_BATCH && decode_batch(&s, payload, &b) == 0) {
        culvert_out out = {0};
        for (size_t i = 0; i < b.n_records; i++) {
            out.b.len = 0;
            out.failed = 0;
            culvert_emit(&out, &b.records[i], NULL);
            out.in = s.raw[i];
            out.unchanged = (int)(i % 2);
            culvert_pass(&out, NULL);
        }
        free(out.b.p);
    }
    if (kind == M_HELLO) decode_hello(payload, &ctx, &has_v1, versions, &nv, &unchanged);
    free(s.recs);
    free(s.hstart);
    free(s.raw);
    free(s.hdrs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    decode_exact(data, size);
    static int null_fd = -1;
    if (null_fd < 0) null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    int in = memfd_create("fuzz-input", MFD_CLOEXEC);
    if (in < 0) return 0;
    if (write_all(in, data, size) == 0 && lseek(in, 0, SEEK_SET) == 0) {
        char err[256];
        culvert_serve(in, null_fd, echo, NULL, NULL, err, sizeof err);
    }
    close(in);
    return 0;
}

#ifdef CULVERT_FUZZ_MAIN
/* A driver for fuzzing without libFuzzer (sdk/c/ctest's FuzzCServe): it
 * reads inputs as a 4-byte big-endian length and the bytes on stdin, runs
 * each, and answers "ok" on stdout. A sanitizer report ends the process,
 * which the Go side sees as a failure. */
int main(void) {
    for (;;) {
        uint8_t n[4];
        if (fread(n, 1, 4, stdin) != 4) return 0;
        size_t len = (size_t)n[0] << 24 | (size_t)n[1] << 16 | (size_t)n[2] << 8 | n[3];
        uint8_t *data = malloc(len ? len : 1);
        if (!data || fread(data, 1, len, stdin) != len) return 1;
        LLVMFuzzerTestOneInput(data, len);
        free(data);
        fputs("ok\n", stdout);
        fflush(stdout);
    }
}
#endif
