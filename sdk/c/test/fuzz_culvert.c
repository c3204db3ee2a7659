/* libFuzzer target: the input is the byte stream a host would write to the
 * function's stdin. It runs the whole protocol loop (frame splitting,
 * decoding of every host message, encoding of results) with a callback that
 * echoes each record and fails some. Built by sdk/c/sdk_test.go:
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
    if (culvert_emit(out, in, in->key.len ? "named" : NULL) < 0) return -1;
    return in->value.len == 2 ? culvert_emit(out, in, NULL) : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
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
