/* The smallest Culvert function: every record passes through unchanged.
 *
 * It answers with culvert_pass, so that a host offering the "unchanged"
 * capability (proto/SPEC.md section 10), as Culvert's does, gets each
 * record named instead of encoded and sent back. With --emit it returns
 * each record with culvert_emit instead, sending it back, for comparing
 * the two. */
#include <string.h>

#include "culvert.h"

static int passthrough(void *user, const culvert_batch *batch, const culvert_record *in, culvert_out *out) {
    (void)batch;
    if (*(const int *)user) return culvert_emit(out, in, NULL);
    return culvert_pass(out, NULL);
}

int main(int argc, char **argv) {
    int emit = argc > 1 && strcmp(argv[1], "--emit") == 0;
    culvert_options opts = {.agent = "passthrough-c/1", .user = &emit};
    return culvert_run(passthrough, &opts);
}
