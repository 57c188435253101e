// The few lines of test harness the unit tests share: CHECK counts checks and
// reports failures without stopping, so one run shows every broken promise.
#pragma once

#include <cstdio>

namespace unit_check {
inline int failures = 0;
inline int checks = 0;
} // namespace unit_check

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        unit_check::checks++;                                                                                          \
        if (!(cond)) {                                                                                                 \
            unit_check::failures++;                                                                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                                   \
        }                                                                                                              \
    } while (0)
