/* The checks of the C test programs: each counts, and a failure prints where it was and the last
 * btb error. A program ends by printing "<passed> passed, <failed> failed" (the Rust harness in
 * ffi/tests/c_programs.rs reads that line). */
#ifndef BTB_TEST_CHECK_H
#define BTB_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

#include "btb.h"

static int passed, failed;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (cond) {                                                                  \
            passed++;                                                                \
        } else {                                                                     \
            failed++;                                                                \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, \
                    #cond, btb_last_error_message());                                \
        }                                                                            \
    } while (0)

#define EXPECT(call, status) CHECK((call) == (status))
#define OK(call) EXPECT((call), BTB_OK)
#define MSG_HAS(needle) CHECK(strstr(btb_last_error_message(), (needle)) != NULL)

#endif
