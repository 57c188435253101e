// The one place where C++ and PostgreSQL error handling meet.
//
// PostgreSQL reports errors with longjmp; C++ with exceptions. Either one
// crossing the other's frames is undefined behaviour that ends in a crashed
// backend (and a crashed backend restarts the whole server). Two guards keep
// them apart, and no other file hand-writes PG_TRY or sigsetjmp:
//
//   ks_guard(f)    PostgreSQL calls C++: run f; a C++ exception escaping it is
//                  turned into ereport(ERROR) *after* every destructor ran.
//   pg_call(f)     C++ calls PostgreSQL: run f under a local sigsetjmp; a
//                  PostgreSQL ERROR becomes a PgError exception carrying the
//                  copied ErrorData, so C++ unwinding proceeds normally.
//
// A PgError that reaches ks_guard is re-thrown as the original PostgreSQL
// error (same SQLSTATE, detail, hint), so users see PostgreSQL's own words.
#pragma once

extern "C" {
#include "postgres.h"

#include "utils/elog.h"
#include "utils/memutils.h"
}

#include <csetjmp>
#include <exception>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

/* LSN_FORMAT_ARGS of PostgreSQL 15 does not compile as C++. */
#define KS_LSN_ARGS(lsn) (uint32)((lsn) >> 32), (uint32)(lsn)

namespace kafka_sync {

// A PostgreSQL ERROR caught by pg_call, travelling as a C++ exception.
class PgError : public std::exception {
  public:
    explicit PgError(ErrorData *edata) : edata_(edata) {}
    const char *what() const noexcept override {
        return edata_ && edata_->message ? edata_->message : "PostgreSQL error";
    }
    ErrorData *edata() const { return edata_; }

  private:
    ErrorData *edata_; // palloc'd in the context that was current at pg_call
};

// An error C++ code reports to the user: ks_guard raises it as
// ereport(ERROR) with this SQLSTATE, message, detail and hint, so call sites
// need not copy messages out of the guarded block by hand. Any other C++
// exception is an internal error ("kafka_sync: <what>").
class Error : public std::exception {
  public:
    Error(int sqlstate, std::string message, std::string detail = std::string(), std::string hint = std::string())
        : sqlstate_(sqlstate), message_(std::move(message)), detail_(std::move(detail)), hint_(std::move(hint)) {}
    const char *what() const noexcept override { return message_.c_str(); }
    int sqlstate() const { return sqlstate_; }
    const std::string &detail() const { return detail_; }
    const std::string &hint() const { return hint_; }

  private:
    int sqlstate_;
    std::string message_, detail_, hint_;
};

// What ks_guard carries past the end of its catch blocks (plain arrays: no
// destructor may be pending when it longjmps). Longer texts are cut.
struct GuardedError {
    int sqlstate = ERRCODE_INTERNAL_ERROR;
    bool internal = true; // not a kafka_sync::Error: prefixed "kafka_sync: "
    char message[2048] = "";
    char detail[1024] = "";
    char hint[1024] = "";
    void set(const char *m) { strlcpy(message, m, sizeof(message)); }
    void set(const Error &e) {
        internal = false;
        sqlstate = e.sqlstate();
        strlcpy(message, e.what(), sizeof(message));
        strlcpy(detail, e.detail().c_str(), sizeof(detail));
        strlcpy(hint, e.hint().c_str(), sizeof(hint));
    }
};

// Raise the error carried out of a guarded block. Lives out of line so that
// ks_guard's frame holds no C++ object when it longjmps.
[[noreturn]] void raise_guarded_error(ErrorData *pg_error, const GuardedError &error);

// Runs fn(arg) in an internal subtransaction (as a PL/pgSQL EXCEPTION block
// does). Returns nullptr when it succeeded; when it raised an ERROR, rolls
// the subtransaction back and returns the copied error. fn must be plain C
// style: no C++ object with a destructor may live in its frames.
ErrorData *run_in_subtransaction(void (*fn)(void *), void *arg);

template <typename F> auto pg_call(F &&f) -> decltype(f()) {
    using R = decltype(f());
    sigjmp_buf *volatile saved_stack = PG_exception_stack;
    ErrorContextCallback *volatile saved_context = error_context_stack;
    MemoryContext volatile saved_mcxt = CurrentMemoryContext;
    sigjmp_buf local;
    ErrorData *volatile edata = nullptr;

    // f may also throw a C++ exception: PG_exception_stack must not be left
    // pointing into this frame once it is gone.
    auto run = [&]() -> R {
        try {
            return f();
        } catch (...) {
            PG_exception_stack = saved_stack;
            error_context_stack = saved_context;
            throw;
        }
    };
    if constexpr (std::is_void_v<R>) {
        if (sigsetjmp(local, 0) == 0) {
            PG_exception_stack = &local;
            run();
        } else {
            MemoryContextSwitchTo(saved_mcxt);
            edata = CopyErrorData();
            FlushErrorState();
        }
        PG_exception_stack = saved_stack;
        error_context_stack = saved_context;
        if (edata)
            throw PgError(edata);
    } else {
        // Written between sigsetjmp and a possible longjmp: volatile.
        static_assert(std::is_scalar_v<R>, "pg_call returns plain values only");
        volatile R result{};
        if (sigsetjmp(local, 0) == 0) {
            PG_exception_stack = &local;
            result = run();
        } else {
            MemoryContextSwitchTo(saved_mcxt);
            edata = CopyErrorData();
            FlushErrorState();
        }
        PG_exception_stack = saved_stack;
        error_context_stack = saved_context;
        if (edata)
            throw PgError(edata);
        return static_cast<R>(result);
    }
}

// Run f (which may throw) from a frame that PostgreSQL called. Returns f's
// value; on an exception, raises ERROR once all of f's objects are destroyed.
template <typename F> auto ks_guard(F &&f) -> decltype(f()) {
    ErrorData *pg_error = nullptr;
    GuardedError error;
    try {
        return f(); // also for void f()
    } catch (const PgError &e) {
        pg_error = e.edata();
    } catch (const Error &e) {
        error.set(e);
    } catch (const std::bad_alloc &) {
        error.set("out of memory");
    } catch (const std::exception &e) {
        error.set(e.what());
    } catch (...) {
        error.set("unknown C++ exception");
    }
    raise_guarded_error(pg_error, error);
}

} // namespace kafka_sync
