// What kafka_sync.so shows PostgreSQL: the symbols it looks up by name.
//
// The library is built with -fvisibility=hidden (PostgreSQL loads it with
// RTLD_GLOBAL, so every other global of ours would be visible to, and could
// be bound by, the server and other extensions). PostgreSQL 16 marks the
// entry points for export itself; 15 does not on ELF: the Makefile defines
// PGDLLEXPORT as 16 does, which covers Pg_magic_func, _PG_init,
// _PG_output_plugin_init, the background worker mains and pg_finfo_<f>, and
// force-includes this header into every file that uses PG_FUNCTION_INFO_V1,
// whose PostgreSQL 15 form leaves the function f itself unexported.
// `make check-symbols` fails the build when one of them is missing.
#pragma once

extern "C" {
#include "postgres.h"

#include "fmgr.h"
}

#undef PG_FUNCTION_INFO_V1
/* PostgreSQL 16's definition: the function is PGDLLEXPORT too. */
#define PG_FUNCTION_INFO_V1(funcname)                                                                                  \
    extern PGDLLEXPORT Datum funcname(PG_FUNCTION_ARGS);                                                               \
    extern PGDLLEXPORT const Pg_finfo_record *CppConcat(pg_finfo_, funcname)(void);                                    \
    const Pg_finfo_record *CppConcat(pg_finfo_, funcname)(void) {                                                      \
        static const Pg_finfo_record my_finfo = {1};                                                                   \
        return &my_finfo;                                                                                              \
    }                                                                                                                  \
    extern int no_such_variable
