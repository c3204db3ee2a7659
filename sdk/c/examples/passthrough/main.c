/* The smallest Culvert function: every record passes through unchanged. */
#include "culvert.h"

static int passthrough(void *user, const culvert_batch *batch, const culvert_record *in, culvert_out *out) {
    (void)user;
    (void)batch;
    return culvert_emit(out, in, NULL);
}

int main(void) {
    culvert_options opts = {.agent = "passthrough-c/1"};
    return culvert_run(passthrough, &opts);
}
