// One subscription's loop (see subscription_runner.hpp).
//
// State lives only in the database: the consumer always starts at the
// next_offset committed with the applied rows, so whatever was not committed
// (a crash, a lost connection, a rollback) is simply read again, and the
// extension skips what its origin progress says is already applied.
#include "subscription_runner.hpp"

#include "log.hpp"

#include <algorithm>
#include <cinttypes>
#include <optional>

namespace kafka_sync_sidecar {

namespace {

constexpr int kPollMs = 100;
constexpr auto kReportInterval = std::chrono::seconds(1);
constexpr auto kLogInterval = std::chrono::seconds(10);
constexpr auto kOffsetRetry = std::chrono::seconds(10);
constexpr auto kGapCheck = std::chrono::seconds(1);

} // namespace

SubscriptionRunner::SubscriptionRunner(const std::string &dsn, SubscriptionConfig config)
    : name_(config.name), config_(std::move(config)), db_(dsn, "kafka_sync_sidecar " + name_),
      streams_(config_.stream_keep_bytes) {}

SubscriptionRunner::~SubscriptionRunner() {
    request_stop();
    join();
}

void SubscriptionRunner::start() {
    thread_ = std::thread([this] { run(); });
}

void SubscriptionRunner::request_stop() {
    {
        std::lock_guard<std::mutex> guard(sleep_mutex_);
        stop_ = true;
    }
    sleep_cv_.notify_all();
}

void SubscriptionRunner::join() {
    if (thread_.joinable())
        thread_.join();
}

bool SubscriptionRunner::sleep_ms(int ms) {
    std::unique_lock<std::mutex> lock(sleep_mutex_);
    return !sleep_cv_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return stop_.load(); });
}

void SubscriptionRunner::run() {
    LOG_INFO("subscription %s started (peer %s, topic %s, brokers %s, on_error %s)", name_.c_str(),
             config_.peer.c_str(), config_.topic.c_str(), config_.brokers.c_str(), config_.on_error.c_str());
    last_log_ = Clock::now();
    while (!stop_ && !quit_) {
        if (!db_.connected() && !connect_db())
            continue;
        if (!consumer_.is_open() && !open_consumer())
            continue;
        if (!positioned_ && !position())
            continue;
        iterate();
    }
    shutdown();
    LOG_INFO("subscription %s stopped", name_.c_str());
    finished_ = true;
}

bool SubscriptionRunner::connect_db() {
    std::string error;
    if (db_.connect(error)) {
        if (db_down_)
            LOG_INFO("subscription %s: database connection regained", name_.c_str());
        db_down_ = false;
        db_backoff_ms_ = 500;
        positioned_ = false;
        txn_open_ = false;
        return true;
    }
    if (!db_down_)
        LOG_WARNING("subscription %s: database connection lost: %s (retrying)", name_.c_str(), error.c_str());
    db_down_ = true;
    sleep_ms(db_backoff_ms_);
    db_backoff_ms_ = std::min(db_backoff_ms_ * 2, 10000);
    return false;
}

bool SubscriptionRunner::open_consumer() {
    std::string error;
    if (consumer_.open(config_, error))
        return true;
    // Only a change of the subscription (a new runner) can fix the settings.
    note_kafka_state(error);
    DbStatus st = db_.report_progress(name_, std::nullopt, error);
    if (st.kind == DbStatus::Kind::Lost)
        db_lost(st.message);
    sleep_ms(30000);
    return false;
}

bool SubscriptionRunner::position() {
    std::vector<SubscriptionConfig> rows;
    DbStatus st = db_.read_subscriptions(rows, &name_);
    if (!st.ok()) {
        if (st.kind == DbStatus::Kind::Lost)
            db_lost(st.message);
        else {
            LOG_WARNING("subscription %s: cannot read its position: %s", name_.c_str(), st.message.c_str());
            sleep_ms(5000);
        }
        return false;
    }
    if (rows.empty()) {
        LOG_INFO("subscription %s is no longer enabled (paused or dropped)", name_.c_str());
        quit_ = true;
        return false;
    }
    int64_t offset;
    std::string error;
    if (!resolve_start_offset(rows[0], offset, error) || !consumer_.assign(offset, error)) {
        LOG_WARNING("subscription %s: %s", name_.c_str(), error.c_str());
        sleep_ms(5000);
        return false;
    }
    if (offset != logged_start_)
        LOG_INFO("subscription %s: consuming %s from %s", name_.c_str(), config_.topic.c_str(),
                 describe_offset(offset).c_str());
    logged_start_ = offset;
    assembler_.reset();
    txn_open_ = false;
    seeking_snapshot_ = false;
    gap_problem_.clear();
    await_end_ = AwaitEnd();
    forget_streams();
    applied_lsn_ = rows[0].last_applied_lsn;
    if (!update_hold())
        return false;
    positioned_ = true;
    position_ = offset >= 0 ? offset : -1;
    committed_next_ = rows[0].next_offset ? *rows[0].next_offset : -1;
    last_record_ = last_assign_ = Clock::now();
    return true;
}

void SubscriptionRunner::iterate() {
    const auto now = Clock::now();
    if (now - last_report_ >= kReportInterval) {
        note_kafka_state(problem()); // logged even while a transaction is open
        if (!txn_open_) {
            if (!await_apply())
                return;
            report_progress();
            if (!db_.connected() || quit_)
                return;
        }
    }
    if (now - last_log_ >= kLogInterval)
        log_progress();
    // A source transaction applied in part holds its locks and the
    // database's apply lock: not while waiting for a record (Kafka down,
    // producer gone), nor for longer than the hold limit before its end is
    // in Kafka (a peer's transaction that never ends, or a huge one).
    if (txn_open_ && assembler_.streaming()) {
        /* waiting for Kafka, not for the server: a slow apply call is no stall */
        const bool stalled =
            now - std::max(last_record_, last_apply_result_) > std::chrono::milliseconds(config_.partial_wait_ms);
        const bool held = now - txn_began_ > std::chrono::milliseconds(config_.partial_hold_ms) &&
                          assembler_.streaming_first_offset() != whole_first_offset_;
        if (stalled || held) {
            if (await_apply())
                roll_back_partial(stalled);
            return;
        }
    }
    if (eager_.active &&
        (now - std::max(eager_.last_record, last_apply_result_) > std::chrono::milliseconds(config_.partial_wait_ms) ||
         now - txn_began_ > std::chrono::milliseconds(config_.partial_hold_ms))) {
        demote_eager("it held its local transaction open past kafka_sync.partial_transaction_wait or _hold");
        return;
    }
    // The stored offset is out of range: when Kafka no longer has those
    // records, look for a snapshot of the peer after them; otherwise (the
    // topic is being re-created, say) try again now and then.
    if (!txn_open_ && consumer_.offset_out_of_range() &&
        now - last_assign_ > (seeking_snapshot_ ? kOffsetRetry : kGapCheck)) {
        if (await_apply() && !start_seeking_snapshot())
            positioned_ = false;
        return;
    }
    Record record;
    if (consumer_.poll(assembler_.has_pending() ? 0 : kPollMs, record)) {
        last_record_ = now;
        received_++;
        position_ = record.offset + 1;
        if (eager_.active && !eager_owns(record))
            demote_eager("a record of another transaction came in between");
        if (seeking_snapshot_)
            seeking_record(record);
        else if (await_end_.active)
            awaiting_end_record(record);
        else if (replay_.active)
            replay_record(std::move(record));
        else if (record.stream != kafka_sync::wire::StreamEvent::None)
            stream_record(std::move(record));
        else {
            const uint64_t recoveries = recoveries_;
            if (streams_.open() > 0 && record.xid != 0 && record.has_lsn) {
                streams_.committed_whole(record.xid); // streamed before a producer restart, then committed whole
                (void)update_hold();
            }
            if (recoveries_ == recoveries) // else what was read since is read again
                assembler_.add(std::move(record));
        }
    } else {
        // nothing immediately available: the server's result first, then commit what is complete
        if (!await_apply())
            return;
        assembler_.idle();
        if (eager_.active && !eager_send())
            return;
    }
    execute_steps();
}

bool SubscriptionRunner::start_seeking_snapshot() {
    int64_t low = 0, high = 0;
    std::string error;
    const int64_t assigned = consumer_.assigned_offset();
    if (assigned < 0 || !consumer_.query_watermarks(low, high, error))
        return false;
    if (assigned >= low && assigned <= high)
        return false; // in range now: position() assigns it again
    // seeking already, and retention deleted the records being read: on from the new first one
    const int64_t gap = seeking_snapshot_ ? gap_offset_ : assigned;
    gap_offset_ = gap;
    gap_problem_ = "records of " + config_.topic + " from offset " + std::to_string(gap) +
                   " on, not applied here yet, are no longer in Kafka (deleted by retention or compaction, or the "
                   "topic was re-created): the peer's changes in them are missing from this database; waiting for a "
                   "snapshot of node " +
                   config_.peer +
                   " in the topic to resynchronise from: run SELECT "
                   "kafka_sync.resnapshot() on node " +
                   config_.peer;
    if (!consumer_.assign(low, error)) {
        LOG_WARNING("subscription %s: %s", name_.c_str(), error.c_str());
        return false;
    }
    LOG_WARNING("subscription %s: %s (reading on from offset %" PRId64 ")", name_.c_str(), gap_problem_.c_str(), low);
    seeking_snapshot_ = true;
    assembler_.reset();
    forget_streams(); // the hold stays until the resynchronisation stores its offset
    last_assign_ = Clock::now();
    return true;
}

void SubscriptionRunner::seeking_record(const Record &record) {
    if (!record.snapshot || record.seq != 1 || !record.has_lsn)
        return; // not applied: the snapshot that follows holds what it changed
    DbStatus st = db_.begin_resync(name_, gap_offset_, record.offset, record.lsn);
    if (st.kind == DbStatus::Kind::Lost) {
        db_lost(st.message); // position() finds the gap again
        seeking_snapshot_ = false;
        return;
    }
    if (!st.ok()) {
        LOG_WARNING("subscription %s: cannot resynchronise from the snapshot at offset %" PRId64 ": %s", name_.c_str(),
                    record.offset, st.message.c_str());
        return; // a later snapshot may do
    }
    LOG_WARNING("subscription %s: records from offset %" PRId64 " to %" PRId64 " of %s are lost; resynchronising "
                "from the snapshot of node %s at offset %" PRId64 " (lsn %s)",
                name_.c_str(), gap_offset_, record.offset - 1, config_.topic.c_str(), config_.peer.c_str(),
                record.offset, format_lsn(record.lsn).c_str());
    seeking_snapshot_ = false;
    gap_problem_.clear();
    positioned_ = false; // position() reads next_offset: the snapshot's first record
}

bool SubscriptionRunner::await_apply() {
    if (!in_flight_.active)
        return true;
    in_flight_.active = false;
    std::vector<Record> records = std::move(in_flight_.records);
    ApplyResult result;
    DbStatus st = db_.receive_apply(result);
    last_apply_result_ = Clock::now();
    if (!st.ok() && eager_.active && st.kind != DbStatus::Kind::Lost)
        return eager_failed(st); // its records wait in Kafka for the commit
    if (!st.ok())
        return apply_failed(st); // apply_transactions: the transactions it committed are skipped when read again
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - in_flight_.started).count();
    if (in_flight_.chunk) {
        LOG_DEBUG("subscription %s: apply_chunk of %zu records (offsets %" PRId64 "..%" PRId64 "%s) took %.1f ms",
                  name_.c_str(), records.size(), records.front().offset, records.back().offset,
                  txn_careful_ ? ", careful" : "", ms);
        if (result.failed_offset)
            return pause_on_record(records, result);
        txn_counts_.applied += result.applied;
        txn_counts_.skipped += result.skipped;
        txn_counts_.conflicts += result.conflicts;
        txn_counts_.dead_letters += result.dead_letters;
        return true;
    }
    LOG_DEBUG("subscription %s: apply_transactions of offsets %" PRId64 "..%" PRId64 " took %.1f ms", name_.c_str(),
              txn_first_offset_, txn_last_offset_, ms);
    txn_counts_ = result; // apply_transactions committed its own local transactions
    note_committed();
    return true;
}

void SubscriptionRunner::execute_steps() {
    if (eager_.active && !assembler_.empty())
        demote_eager("another transaction is to be applied"); // never inside its local transaction
    for (const std::string &note : assembler_.take_notes())
        LOG_WARNING("subscription %s: %s", name_.c_str(), note.c_str());
    std::vector<ApplyStep> steps = assembler_.take_steps();
    for (size_t i = 0; i < steps.size(); i++) {
        // Complete transactions alone in their local transaction: the server
        // commits each on its own, in one round trip.
        const bool whole = !txn_open_ && steps[i].kind == ApplyStep::Kind::Send && !steps[i].careful &&
                           i + 1 < steps.size() && steps[i + 1].kind == ApplyStep::Kind::Commit;
        if (whole) {
            if (!run_transactions(steps[i]))
                break;
            i++; // its Commit
            continue;
        }
        if (!run_step(steps[i]))
            break; // recovery reset the assembler: the rest is read again
    }
}

bool SubscriptionRunner::run_transactions(ApplyStep &step) {
    const ApplyCall call = ApplyCall::transactions(step.records); // while the server applies the previous call
    if (!await_apply())
        return false;
    txn_careful_ = false;
    txn_first_offset_ = step.records.front().offset;
    txn_last_offset_ = step.records.back().offset;
    in_flight_.started = Clock::now();
    DbStatus st = db_.send_apply(name_, call);
    if (!st.ok())
        return apply_failed(st);
    in_flight_.active = true;
    in_flight_.chunk = false;
    return true;
}

bool SubscriptionRunner::run_step(ApplyStep &step) {
    std::optional<ApplyCall> call; // encoded while the server applies the previous call
    if (step.kind == ApplyStep::Kind::Send)
        call = ApplyCall::chunk(step.records, step.careful);
    if (!await_apply())
        return false;
    DbStatus st;
    switch (step.kind) {
    case ApplyStep::Kind::Send: {
        if (!txn_open_) {
            txn_careful_ = step.careful;
            txn_first_offset_ = step.records.front().offset;
            txn_last_offset_ = step.records.back().offset;
            txn_counts_ = ApplyResult();
            txn_began_ = Clock::now();
            st = db_.exec("BEGIN");
            if (!st.ok())
                return apply_failed(st);
            txn_open_ = true;
        }
        txn_last_offset_ = step.records.back().offset;
        in_flight_.started = Clock::now();
        st = db_.send_apply(name_, *call);
        if (!st.ok())
            return apply_failed(st);
        in_flight_.active = true;
        in_flight_.chunk = true;
        in_flight_.records = std::move(step.records);
        return true;
    }
    case ApplyStep::Kind::Commit:
        st = db_.commit();
        if (!st.ok())
            return apply_failed(st);
        note_committed();
        return true;
    case ApplyStep::Kind::Rollback: return roll_back();
    }
    return true;
}

// apply_chunk (or BEGIN/COMMIT) raised an error: roll back and read the
// failed local transaction's records again, one source transaction per local
// transaction with careful=true, so that a bad record is dead-lettered (or
// pauses the subscription) without taking the other records with it.
bool SubscriptionRunner::apply_failed(const DbStatus &st) {
    if (st.kind == DbStatus::Kind::Lost) {
        db_lost(st.message);
        return false;
    }
    if (!roll_back())
        return false;
    // The same SQLSTATEs can come from the data itself (a type that does not
    // exist here): believe "dropped or paused" only when the list agrees.
    if (st.kind == DbStatus::Kind::Gone && !still_enabled()) {
        LOG_INFO("subscription %s was paused or dropped (%s)", name_.c_str(), st.message.c_str());
        quit_ = true;
        return false;
    }
    if (!db_.connected() || stop_)
        return false;
    const int64_t first = recovery_start(txn_first_offset_);
    const int64_t through = std::max(txn_last_offset_, assembler_.careful_through());
    if (!txn_careful_) {
        LOG_WARNING("subscription %s: applying offsets %" PRId64 "..%" PRId64
                    " failed (%s: %s); applying them again one transaction at a time",
                    name_.c_str(), first, txn_last_offset_, st.sqlstate.c_str(), st.message.c_str());
    } else {
        apply_problem_ = "apply failed at offset " + std::to_string(first) + ": " + st.message;
        LOG_WARNING("subscription %s: careful apply from offset %" PRId64 " failed (%s: %s); retrying in %d s",
                    name_.c_str(), first, st.sqlstate.c_str(), st.message.c_str(), retry_backoff_ms_ / 1000);
        sleep_ms(retry_backoff_ms_);
        retry_backoff_ms_ = std::min(retry_backoff_ms_ * 2, 60000);
    }
    restart_from(first, through);
    return false;
}

// Careful mode with on_error = 'pause' found a record it cannot apply.
bool SubscriptionRunner::pause_on_record(const std::vector<Record> &records, const ApplyResult &result) {
    if (!roll_back())
        return false;
    const int64_t offset = *result.failed_offset;
    const Record *failed = nullptr;
    for (const Record &r : records)
        if (r.offset == offset)
            failed = &r;
    DbStatus st = db_.record_failure(name_, offset, failed, result.failed_error);
    if (st.ok() || st.kind == DbStatus::Kind::Gone) {
        LOG_WARNING("subscription %s paused: the record at offset %" PRId64 " cannot be applied: %s", name_.c_str(),
                    offset, one_line(result.failed_error).c_str());
        quit_ = true;
        return false;
    }
    if (st.kind == DbStatus::Kind::Lost) {
        db_lost(st.message);
        return false;
    }
    LOG_WARNING("subscription %s: cannot record the failed record at offset %" PRId64 ": %s", name_.c_str(), offset,
                st.message.c_str());
    sleep_ms(retry_backoff_ms_);
    retry_backoff_ms_ = std::min(retry_backoff_ms_ * 2, 60000);
    restart_from(recovery_start(txn_first_offset_), std::max(txn_last_offset_, assembler_.careful_through()));
    return false;
}

void SubscriptionRunner::restart_from(int64_t first_offset, int64_t careful_through) {
    recoveries_++;
    eager_ = Eager(); // its local transaction went with the recovery's rollback
    assembler_.reset();
    await_end_ = AwaitEnd();
    if (replay_.active) {
        if (first_offset < replay_.what.first_offset) {
            // a failure before the replay: read on as if for the first time
            replay_.active = false;
            streams_.finished(replay_.what.xid); // opened again from its first record
        } else {
            // the replay starts over (its commit is in Kafka)
            first_offset = replay_.what.first_offset;
            replay_.emitted = 0;
            whole_first_offset_ = -1;
        }
    }
    std::string error;
    if (!consumer_.assign(first_offset, error)) {
        LOG_WARNING("subscription %s: %s", name_.c_str(), error.c_str());
        positioned_ = false; // position() reads next_offset again
        return;
    }
    if (careful_through >= 0)
        assembler_.apply_carefully_through(careful_through);
    position_ = first_offset;
    last_record_ = last_assign_ = Clock::now();
}

void SubscriptionRunner::roll_back_partial(bool stalled) {
    if (replay_.active) {
        // a streamed transaction's commit is in Kafka already: no end to wait for, read it again
        LOG_WARNING("subscription %s: %s while applying streamed transaction %u (from offset %" PRId64
                    "); rolling back what was applied of it and reading it again",
                    name_.c_str(), stalled ? "no record came for a while" : "it was held open too long",
                    replay_.what.xid, replay_.what.first_offset);
        if (roll_back())
            restart_from(replay_.what.first_offset, assembler_.careful_through());
        return;
    }
    AwaitEnd a;
    a.active = true;
    a.lsn = assembler_.streaming_lsn();
    a.first_offset = assembler_.streaming_first_offset();
    a.careful_through = assembler_.careful_through();
    a.records = position_ - a.first_offset;
    if (stalled)
        LOG_WARNING("subscription %s: no record for %.0f s inside transaction %s (from offset %" PRId64
                    "); rolling back what was applied of it, and applying it when its last record is in Kafka "
                    "(kafka_sync.partial_transaction_wait)",
                    name_.c_str(), config_.partial_wait_ms / 1000.0, format_lsn(a.lsn).c_str(), a.first_offset);
    else
        LOG_WARNING("subscription %s: transaction %s (from offset %" PRId64 ") was applied in part for %.0f s and "
                    "its last record is not in Kafka yet; rolling back what was applied of it (it held locks), and "
                    "applying it when its last record is there (kafka_sync.partial_transaction_hold)",
                    name_.c_str(), format_lsn(a.lsn).c_str(), a.first_offset, config_.partial_hold_ms / 1000.0);
    if (!roll_back())
        return;
    // The consumer reads on from where it is: every record since the first
    // belongs to the transaction (the assembler saw no end).
    assembler_.reset();
    await_end_ = a;
    apply_problem_.clear();
}

std::string SubscriptionRunner::await_problem() const {
    return "waiting for the last record of transaction " + format_lsn(await_end_.lsn) + " (from offset " +
           std::to_string(await_end_.first_offset) + ", " + std::to_string(await_end_.records) +
           " records so far) to apply it whole; nothing of it is applied or held meanwhile";
}

void SubscriptionRunner::awaiting_end_record(const Record &record) {
    await_end_.records++;
    const bool ends = !record.snapshot && record.has_lsn && record.lsn == await_end_.lsn && record.txn_end;
    // a partial copy (a producer restarted): the assembler discards it when read again
    const bool other = record.snapshot || (record.has_lsn && (record.lsn != await_end_.lsn || record.seq == 1));
    if (!ends && !other)
        return;
    const AwaitEnd a = await_end_;
    await_end_ = AwaitEnd();
    LOG_INFO("subscription %s: %s of transaction %s is in Kafka at offset %" PRId64 "; applying it from offset "
             "%" PRId64,
             name_.c_str(), ends ? "the last record" : "the record after an incomplete copy", format_lsn(a.lsn).c_str(),
             record.offset, a.first_offset);
    whole_first_offset_ = ends ? a.first_offset : -1;
    restart_from(a.first_offset, a.careful_through);
}

void SubscriptionRunner::forget_streams() {
    eager_ = Eager();
    streams_.reset();
    replay_ = Replay();
    replay_pending_ = ReplayPending();
}

bool SubscriptionRunner::update_hold() {
    const int64_t hold = streams_.hold();
    if (hold == hold_sent_)
        return true;
    if (!await_apply())
        return false;
    DbStatus st = db_.set_hold(name_, hold);
    if (st.kind == DbStatus::Kind::Lost) {
        db_lost(st.message);
        return false;
    }
    if (!st.ok()) {
        // without the hold a restart could pass the open transaction's start: apply nothing more
        LOG_WARNING("subscription %s: cannot hold its stored offset at %" PRId64 " for a streamed transaction: %s",
                    name_.c_str(), hold, st.message.c_str());
        db_lost(st.message);
        return false;
    }
    hold_sent_ = hold;
    return true;
}

void SubscriptionRunner::stream_record(Record record) {
    const bool eager = eager_.active && record.xid == eager_.xid;
    const bool fresh_start = record.stream == kafka_sync::wire::StreamEvent::Change && record.seq == 1;
    const size_t open_before = streams_.open();
    StreamTracker::Outcome out = streams_.add(record, applied_lsn_);
    if (!out.note.empty())
        LOG_WARNING("subscription %s: %s", name_.c_str(), out.note.c_str());
    switch (out.kind) {
    case StreamTracker::Outcome::Kind::Foreign:
        demote_eager("an unreadable stream record came in between"); // the assembler applies it on its own
        assembler_.add(std::move(record));
        return;
    case StreamTracker::Outcome::Kind::Replay:
        if (eager)
            eager_commit(out.replay, std::move(record));
        else
            start_replay(out.replay, std::move(record));
        return;
    case StreamTracker::Outcome::Kind::Wait:
    case StreamTracker::Outcome::Kind::Skip: break;
    }
    if (eager && record.stream == kafka_sync::wire::StreamEvent::Change) {
        eager_add(std::move(record)); // the tracker keeps nothing of it
        return;
    }
    if (eager && record.stream == kafka_sync::wire::StreamEvent::Abort) {
        // the whole transaction (a subtransaction's abort demoted it before)
        LOG_DEBUG("subscription %s: streamed transaction %u aborted", name_.c_str(), eager_.xid);
        demote_eager(std::string());
    } else if (eager) {
        demote_eager("its commit record is not applied here"); // skipped by the tracker (see its warning)
    } else if (fresh_start && out.kind == StreamTracker::Outcome::Kind::Wait && streams_.open() == 1 &&
               open_before == 0) {
        try_start_eager(record.xid, record);
    }
    (void)update_hold();
}

bool SubscriptionRunner::eager_owns(const Record &record) const {
    using kafka_sync::wire::StreamEvent;
    if (record.xid != eager_.xid)
        return false;
    // not a copy starting over (a producer restarted), nor a commit that cannot be applied as one
    return (record.stream == StreamEvent::Change && record.seq != 1) ||
           (record.stream == StreamEvent::Commit && record.has_lsn && record.has_commit_ts) ||
           (record.stream == StreamEvent::Abort && (record.subxid == 0 || record.subxid == record.xid));
}

void SubscriptionRunner::try_start_eager(uint32_t xid, Record &first) {
    if (assembler_.careful() || replay_.active || replay_pending_.active || await_end_.active)
        return;
    // what committed before it is committed first
    assembler_.idle();
    const uint64_t recoveries = recoveries_;
    execute_steps();
    if (!await_apply() || recoveries_ != recoveries || txn_open_ || !assembler_.empty() || !db_.connected())
        return;
    // Only as the database's one subscription: this local transaction holds the database's apply lock for
    // as long as the source transaction runs, and another peer's changes would wait for it.
    int64_t enabled = 0;
    if (DbStatus st = db_.count_enabled_subscriptions(enabled); !st.ok() || enabled != 1) {
        if (st.kind == DbStatus::Kind::Lost)
            db_lost(st.message);
        return;
    }
    DbStatus st = db_.exec("BEGIN");
    if (st.ok()) {
        txn_open_ = true;
        st = db_.stream_begin(name_);
    }
    if (!st.ok()) {
        if (st.kind == DbStatus::Kind::Lost) {
            db_lost(st.message);
            return;
        }
        LOG_WARNING("subscription %s: cannot apply streamed transaction %u while it runs: %s", name_.c_str(), xid,
                    st.message.c_str());
        (void)roll_back();
        return;
    }
    eager_ = Eager();
    eager_.active = true;
    eager_.xid = xid;
    eager_.last_record = Clock::now();
    txn_careful_ = false;
    txn_counts_ = ApplyResult();
    txn_began_ = Clock::now();
    std::vector<Record> kept = streams_.stop_keeping(xid);
    if (kept.empty())
        kept.push_back(std::move(first)); // over the memory budget: the tracker did not take it
    for (Record &r : kept) {
        if (eager_.first_offset < 0)
            eager_.first_offset = r.offset;
        eager_add(std::move(r));
    }
    txn_first_offset_ = txn_last_offset_ = eager_.first_offset;
    LOG_DEBUG("subscription %s: applying streamed transaction %u while it runs, from offset %" PRId64, name_.c_str(),
              xid, eager_.first_offset);
}

void SubscriptionRunner::eager_add(Record record) {
    if (record.offset <= eager_.last_offset)
        return; // read again
    eager_.last_offset = record.offset;
    eager_.last_record = Clock::now();
    eager_.records++;
    eager_.chunk_bytes += record.bytes();
    eager_.chunk.push_back(std::move(record));
    if (eager_.chunk.size() >= AssemblerLimits().max_records || eager_.chunk_bytes >= AssemblerLimits().max_bytes)
        (void)eager_send();
}

// The records not sent yet to apply_chunk, while the server applies the last ones.
bool SubscriptionRunner::eager_send() {
    if (eager_.chunk.empty())
        return true;
    const ApplyCall call = ApplyCall::chunk(eager_.chunk, false);
    if (!await_apply() || !eager_.active)
        return false;
    std::vector<Record> records = std::move(eager_.chunk);
    eager_.chunk.clear();
    eager_.chunk_bytes = 0;
    txn_last_offset_ = records.back().offset;
    in_flight_.started = Clock::now();
    DbStatus st = db_.send_apply(name_, call);
    if (!st.ok()) {
        if (st.kind == DbStatus::Kind::Lost) {
            db_lost(st.message);
            return false;
        }
        return eager_failed(st);
    }
    in_flight_.active = true;
    in_flight_.chunk = true;
    in_flight_.records = std::move(records);
    return true;
}

// Ends the eager path: rolled back, the transaction is applied at its commit
// (the tracker reads it again from Kafka then). why empty: it aborted.
void SubscriptionRunner::demote_eager(const std::string &why) {
    if (!eager_.active)
        return;
    if (!why.empty())
        LOG_INFO("subscription %s: streamed transaction %u is applied at its commit, not while it runs: %s",
                 name_.c_str(), eager_.xid, why.c_str());
    (void)await_apply();
    if (!eager_.active)
        return; // it failed meanwhile, and eager_failed rolled it back
    eager_ = Eager();
    (void)roll_back();
}

// An apply call of the eager path failed: roll back; nothing to read again
// (the tracker has the transaction, to be read from Kafka at its commit).
bool SubscriptionRunner::eager_failed(const DbStatus &st) {
    LOG_INFO("subscription %s: streamed transaction %u is applied at its commit, not while it runs: %s", name_.c_str(),
             eager_.xid, st.message.c_str());
    eager_ = Eager();
    in_flight_.active = false;
    in_flight_.records.clear();
    return roll_back();
}

// The commit record of the transaction applied while it ran.
void SubscriptionRunner::eager_commit(StreamReplay &replay, Record commit) {
    if (!eager_send() || !await_apply() || !eager_.active) {
        if (db_.connected() && positioned_) // demoted on the way: the usual way
            start_replay(replay, std::move(commit));
        return;
    }
    if (commit.txn_records != eager_.records) {
        // not every record it streamed went this way: the usual way checks and tells
        demote_eager("it applied " + std::to_string(eager_.records) + " records, its commit record says " +
                     std::to_string(commit.txn_records));
        start_replay(replay, std::move(commit));
        return;
    }
    // its own hold goes: the offset stored with it is past its commit record
    streams_.finished(replay.xid);
    if (!update_hold() || !eager_.active)
        return;
    mark_committed(commit, replay.lsn, replay.commit_ts_ms, eager_.records + 1, true); // its last record
    bool applies = false;
    DbStatus st = db_.stream_commit(name_, commit.headers, commit.offset + 1, applies);
    if (st.ok() && applies) {
        txn_last_offset_ = commit.offset;
        st = db_.commit();
        if (st.ok()) {
            eager_ = Eager();
            note_committed();
            LOG_DEBUG("subscription %s: streamed transaction %u (lsn %s) committed, applied while it ran",
                      name_.c_str(), replay.xid, format_lsn(replay.lsn).c_str());
            return;
        }
    }
    if (st.kind == DbStatus::Kind::Lost) {
        db_lost(st.message);
        return;
    }
    LOG_INFO("subscription %s: streamed transaction %u (lsn %s) is applied the usual way%s%s", name_.c_str(),
             replay.xid, format_lsn(replay.lsn).c_str(), st.ok() ? " (applied before, or another incarnation's)" : ": ",
             st.ok() ? "" : st.message.c_str());
    eager_ = Eager();
    if (roll_back())
        start_replay(replay, std::move(commit));
}

// The commit record of a streamed transaction is in: what came before it is
// committed first (commit order), then its records are read again from the
// first, and handed to the assembler as one committed transaction ending
// with the commit record.
void SubscriptionRunner::start_replay(StreamReplay &replay, Record commit) {
    // no source transaction crosses a commit: an unfinished one is an incomplete copy
    assembler_.end_unfinished("a streamed transaction committed before its last record");
    assembler_.idle();
    const uint64_t recoveries = recoveries_;
    execute_steps();
    if (!await_apply() || recoveries_ != recoveries || !db_.connected() || !positioned_)
        return; // recovery reads the commit record again
    if (replay.kept)
        LOG_DEBUG("subscription %s: streamed transaction %u committed at offset %" PRId64 " (lsn %s); applying it",
                  name_.c_str(), replay.xid, replay.commit_offset, format_lsn(replay.lsn).c_str());
    else
        LOG_INFO("subscription %s: streamed transaction %u committed at offset %" PRId64 " (lsn %s); its records "
                 "outgrew kafka_sync.streamed_transaction_memory and are read again from offset %" PRId64,
                 name_.c_str(), replay.xid, replay.commit_offset, format_lsn(replay.lsn).c_str(), replay.first_offset);
    if (replay.kept) {
        // every record is here: hand them over, then go on after the commit record
        replay_.what = replay;
        replay_.emitted = 0;
        whole_first_offset_ = -1;
        std::vector<Record> records = std::move(replay.records);
        replay_.what.records.clear();
        replay_.active = true;
        for (Record &r : records)
            replay_record(std::move(r));
        replay_record(std::move(commit));
        return;
    }
    const int64_t careful_through = assembler_.careful_through();
    restart_from(replay.first_offset, careful_through);
    replay_.active = true;
    replay_.what = replay;
    replay_.emitted = 0;
    whole_first_offset_ = -1;
}

int64_t SubscriptionRunner::recovery_start(int64_t first_offset) {
    if (!replay_pending_.active)
        return first_offset;
    // the failed transaction holds (part of) a streamed one: read that again from its first record
    replay_pending_.active = false;
    return std::min(first_offset, replay_pending_.first_offset);
}

void SubscriptionRunner::replay_record(Record record) {
    const StreamReplay &r = replay_.what;
    if (record.offset < r.commit_offset) {
        if (!r.applies(record))
            return; // applied, skipped or waiting already, the first time it was read
        mark_committed(record, r.lsn, r.commit_ts_ms, ++replay_.emitted, false);
        if (replay_.emitted == 1)
            whole_first_offset_ = record.offset; // every record of it is in Kafka: no hold limit
        assembler_.add(std::move(record));
        return;
    }
    // The commit record ends the transaction (it applies nothing itself).
    mark_committed(record, r.lsn, r.commit_ts_ms, ++replay_.emitted, true);
    if (replay_.emitted == 1)
        whole_first_offset_ = record.offset;
    replay_pending_.active = true;
    replay_pending_.first_offset = r.first_offset;
    replay_pending_.commit_offset = r.commit_offset;
    replay_.active = false;
    streams_.finished(r.xid);
    assembler_.add(std::move(record));
    (void)update_hold();
}

// ROLLBACK of the open local transaction; false when the connection went
// with it (db_lost has reset what was read).
bool SubscriptionRunner::roll_back() {
    DbStatus st = db_.exec("ROLLBACK");
    txn_open_ = false;
    if (st.kind == DbStatus::Kind::Lost) {
        db_lost(st.message);
        return false;
    }
    return true;
}

// The local transaction (or apply_transactions' ones) committed: what it applied counts.
void SubscriptionRunner::note_committed() {
    txn_open_ = false;
    committed_next_ = txn_last_offset_ + 1;
    if (replay_pending_.active && txn_last_offset_ >= replay_pending_.commit_offset)
        replay_pending_.active = false;
    applied_ += txn_counts_.applied;
    skipped_ += txn_counts_.skipped;
    conflicts_ += txn_counts_.conflicts;
    dead_letters_ += txn_counts_.dead_letters;
    if (txn_counts_.dead_letters > 0)
        LOG_WARNING("subscription %s: %" PRId64 " records of offsets %" PRId64 "..%" PRId64
                    " could not be applied and were kept in kafka_sync.dead_letters",
                    name_.c_str(), txn_counts_.dead_letters, txn_first_offset_, txn_last_offset_);
    if (txn_careful_)
        retry_backoff_ms_ = 1000;
    apply_problem_.clear();
}

bool SubscriptionRunner::still_enabled() {
    std::vector<SubscriptionConfig> rows;
    DbStatus st = db_.read_subscriptions(rows, &name_);
    if (st.kind == DbStatus::Kind::Lost)
        db_lost(st.message);
    return !st.ok() || !rows.empty(); // in doubt, it is
}

void SubscriptionRunner::db_lost(const std::string &message) {
    if (!db_down_)
        LOG_WARNING("subscription %s: database connection lost: %s (reconnecting)", name_.c_str(), message.c_str());
    db_down_ = true;
    db_.close();
    positioned_ = false;
    seeking_snapshot_ = false;
    await_end_ = AwaitEnd();
    txn_open_ = false;
    in_flight_.active = false; // went with the session
    in_flight_.records.clear();
    assembler_.reset();
    forget_streams();
    hold_sent_ = -1; // went with the session too
    recoveries_++;
}

void SubscriptionRunner::report_progress() {
    last_report_ = Clock::now();
    std::optional<int64_t> hw = consumer_.high_water();
    if (hw)
        high_water_ = *hw;
    const std::string kafka = problem();
    note_kafka_state(kafka);
    DbStatus st = db_.report_progress(name_, hw, kafka.empty() ? apply_problem_ : kafka);
    if (st.kind == DbStatus::Kind::Lost)
        db_lost(st.message);
    else if (st.kind == DbStatus::Kind::Gone && !still_enabled())
        quit_ = true;
    else if (!st.ok())
        LOG_DEBUG("subscription %s: report_progress failed: %s", name_.c_str(), st.message.c_str());
}

void SubscriptionRunner::note_kafka_state(const std::string &problem) {
    // Only fine <-> failing is a state change: librdkafka's messages vary
    // from one reconnection attempt to the next.
    if (problem.empty() == kafka_problem_.empty())
        return;
    if (problem.empty())
        LOG_INFO("subscription %s: Kafka connection regained", name_.c_str());
    else
        LOG_WARNING("subscription %s: Kafka problem: %s", name_.c_str(), problem.c_str());
    kafka_problem_ = problem;
}

void SubscriptionRunner::log_progress() {
    const auto now = Clock::now();
    const double seconds =
        last_log_ == Clock::time_point{} ? 0 : std::chrono::duration<double>(now - last_log_).count();
    const double rate = seconds > 0 ? (received_ - received_at_log_) / seconds : 0;
    last_log_ = now;
    received_at_log_ = received_;
    if (std::optional<int64_t> hw = consumer_.high_water())
        high_water_ = *hw;
    const int64_t done = committed_next_ >= 0 ? committed_next_ : position_;
    std::string lag = high_water_ >= 0 && done >= 0 ? std::to_string(std::max<int64_t>(high_water_ - done, 0)) : "?";
    const std::string open_streams = streams_.open() > 0 ? ", " + std::to_string(streams_.open()) +
                                                               " streamed transactions open (from offset " +
                                                               std::to_string(streams_.hold()) + ")"
                                                         : std::string();
    LOG_INFO("subscription %s: %.1f records/s, lag %s, next offset %s, applied %" PRIu64 ", skipped %" PRIu64
             ", conflicts %" PRIu64 ", dead letters %" PRIu64 "%s%s%s",
             name_.c_str(), rate, lag.c_str(), committed_next_ >= 0 ? std::to_string(committed_next_).c_str() : "?",
             applied_, skipped_, conflicts_, dead_letters_, open_streams.c_str(),
             assembler_.careful() ? ", careful mode" : "",
             db_down_ ? ", database unreachable" : (kafka_problem_.empty() ? "" : ", Kafka problem"));
}

void SubscriptionRunner::shutdown() {
    if (db_.connected())
        (void)await_apply(); // what the server is applying completes (or fails) first
    in_flight_.active = false;
    if (!quit_ && db_.connected() && positioned_) {
        assembler_.finish(); // commits complete transactions, rolls back a streamed one
        execute_steps();
        if (db_.connected())
            (void)await_apply(); // the last of them
    }
    if (txn_open_ && db_.connected())
        db_.exec("ROLLBACK");
    txn_open_ = false;
    consumer_.close();
    db_.close();
}

} // namespace kafka_sync_sidecar
