// One libpq connection to the local database and the kafka_sync SQL calls the
// sidecar makes on it (the contract with the extension). Used by one thread;
// only cancel() may be called from another.
#pragma once

#include "record.hpp"
#include "subscription.hpp"

#include <libpq-fe.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace kafka_sync_sidecar {

// The conninfo keywords libpq marks secret (dispchar "*": password,
// sslpassword, and whatever a later libpq adds), read from libpq itself.
const std::vector<std::string> &conninfo_secret_keywords();

// The local database's connection string fit for a log line or a message:
// every secret replaced by "****" (see mask_conninfo()).
std::string mask_dsn(const std::string &dsn);

// A message about dsn (libpq's: it may quote a piece of it) with dsn's secrets masked.
std::string mask_dsn_message(const std::string &message, const std::string &dsn);

// Whether libpq can parse dsn (a plain database name counts); error is libpq's
// reason, masked. has_secret: it holds a value for a secret keyword.
bool check_dsn(const std::string &dsn, std::string &error, bool &has_secret);

struct DbStatus {
    enum class Kind {
        Ok,
        Gone,   // undefined_object / object_not_in_prerequisite_state: the subscription was dropped or paused
        Lost,   // the connection is gone (the session was closed)
        Failed, // any other SQL error: the transaction, if any, is aborted
    };
    Kind kind = Kind::Ok;
    std::string sqlstate;
    std::string message; // one line

    bool ok() const { return kind == Kind::Ok; }
};

struct ApplyResult {
    int64_t applied = 0;
    int64_t skipped = 0;
    int64_t conflicts = 0;
    int64_t dead_letters = 0;
    std::optional<int64_t> failed_offset; // careful mode, on_error = 'pause'
    std::string failed_error;
};

// An apply call's records, encoded as its binary array parameters. Built
// before the previous call's result is awaited, so that the server, done
// with one call, waits only for the next one's bytes, not for their encoding.
class ApplyCall {
  public:
    // apply_chunk: records of one local transaction (careful: record by record).
    static ApplyCall chunk(const std::vector<Record> &records, bool careful);
    // apply_transactions: complete source transactions, each committed on its own.
    static ApplyCall transactions(const std::vector<Record> &records);

  private:
    friend class DbSession;
    ApplyCall(const std::vector<Record> &records, bool chunk, bool careful);
    bool chunk_;
    bool careful_;
    std::string offsets_, keys_, values_, headers_;
};

class DbSession {
  public:
    // application_name is the session's, whatever the DSN says (see connect()).
    DbSession(std::string dsn, std::string application_name)
        : dsn_(std::move(dsn)), application_name_(std::move(application_name)) {}
    ~DbSession() { close(); }
    DbSession(const DbSession &) = delete;
    DbSession &operator=(const DbSession &) = delete;

    bool connect(std::string &error);
    void close();
    bool connected() const { return conn_ != nullptr; }
    PGconn *conn() { return conn_; }

    // A statement without parameters: BEGIN, COMMIT, ROLLBACK, LISTEN ...
    DbStatus exec(const char *sql);
    // COMMIT, failing unless the server really committed (an aborted
    // transaction "commits" as ROLLBACK).
    DbStatus commit();
    // The enabled subscriptions; only_sub: just that one (none if it is not enabled).
    // kafka_sync._begin_resync(): resynchronise from the peer's snapshot at
    // snapshot_offset (lsn header snapshot_lsn) after the gap from gap_offset.
    DbStatus begin_resync(const std::string &sub, int64_t gap_offset, int64_t snapshot_offset, uint64_t snapshot_lsn);
    // kafka_sync.apply_hold(): the next_offset stored from now on stays at or
    // below hold_offset (-1: no hold).
    DbStatus set_hold(const std::string &sub, int64_t hold_offset);
    // kafka_sync.apply_stream_begin() / apply_stream_commit() (in the open
    // transaction): a peer's transaction applied while it is in progress;
    // applies false: not to be committed here (roll back).
    DbStatus stream_begin(const std::string &sub);
    // The database's enabled subscriptions (of every sidecar).
    DbStatus count_enabled_subscriptions(int64_t &count);
    DbStatus stream_commit(const std::string &sub, const std::string &headers, int64_t next_offset, bool &applies);
    DbStatus read_subscriptions(std::vector<SubscriptionConfig> &out, const std::string *only_sub = nullptr);
    // The apply calls are sent without waiting for their result, so that the
    // next records are consumed while the server applies these; one at a
    // time: receive_apply() must read the result before the session is used
    // again (any other call fails until then).
    // apply_transactions is a CALL outside a transaction block: the server
    // commits each source transaction on its own; on error, the ones before it stay.
    DbStatus send_apply(const std::string &sub, const ApplyCall &call);
    DbStatus receive_apply(ApplyResult &out);
    bool apply_pending() const { return pending_ != Pending::None; }
    // record: the failed record, or null when it is not at hand.
    DbStatus record_failure(const std::string &sub, int64_t offset, const Record *record, const std::string &error);
    DbStatus report_progress(const std::string &sub, std::optional<int64_t> high_water, const std::string &error);

    // Asks the server to cancel the statement running now (any thread).
    void cancel();

  private:
    DbStatus check(PGresult *res, ExecStatusType expected);
    DbStatus usable() const; // Lost without a connection, Failed while an apply call is in flight

    enum class Pending { None, Chunk, Transactions };
    Pending pending_ = Pending::None;
    // The apply calls are named statements of this connection, prepared at
    // their first use (see send_apply).
    bool chunk_prepared_ = false;
    bool transactions_prepared_ = false;

    std::string dsn_;
    std::string application_name_;
    PGconn *conn_ = nullptr;
    std::mutex cancel_mutex_;
    PGcancel *cancel_ = nullptr;
};

} // namespace kafka_sync_sidecar
