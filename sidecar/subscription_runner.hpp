// One subscription's thread: its own database connection and Kafka consumer,
// the consume -> group -> apply loop, recovery from database and Kafka
// outages, careful re-application after an error, and progress reports.
#pragma once

#include "db_session.hpp"
#include "kafka_consumer.hpp"
#include "stream_tracker.hpp"
#include "subscription.hpp"
#include "txn_assembler.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace kafka_sync_sidecar {

class SubscriptionRunner {
  public:
    SubscriptionRunner(const std::string &dsn, SubscriptionConfig config);
    ~SubscriptionRunner(); // stops and joins
    SubscriptionRunner(const SubscriptionRunner &) = delete;
    SubscriptionRunner &operator=(const SubscriptionRunner &) = delete;

    void start();
    // Finish (small transactions) or roll back (a streamed one) and close.
    void request_stop();
    // Interrupts the statement running now (shutdown taking too long).
    void cancel_statement() { db_.cancel(); }
    // The thread has ended: stopped, or the subscription was dropped/paused.
    bool finished() const { return finished_; }
    void join();
    const SubscriptionConfig &config() const { return config_; }

  private:
    using Clock = std::chrono::steady_clock;

    void run();
    bool connect_db();
    bool open_consumer();
    bool position();
    void iterate();
    void execute_steps();
    bool run_step(ApplyStep &step);
    bool apply_failed(const DbStatus &st);
    bool pause_on_record(const std::vector<Record> &records, const ApplyResult &result);
    bool run_transactions(ApplyStep &step);
    // Reads the result of the apply call in flight, if any, and does what it
    // calls for; false when it failed (recovery reset what was read since).
    bool await_apply();
    void restart_from(int64_t first_offset, int64_t careful_through);
    // A source transaction applied in part waited too long for its next record
    // (stalled) or for its end (held): roll the part back and read ahead.
    void roll_back_partial(bool stalled);
    void awaiting_end_record(const Record &record);
    // kafka_sync.streaming (stream_tracker.hpp): a record marked
    // kafka_sync.stream outside a replay, and each record read in a replay.
    void stream_record(Record record);
    void start_replay(StreamReplay &replay, Record commit);
    void replay_record(Record record);
    // Tells the server the offset the stored next_offset must not pass (the
    // oldest open streamed transaction's start); false when it failed.
    bool update_hold();
    void report_progress();
    void log_progress();
    void note_kafka_state(const std::string &problem);
    void db_lost(const std::string &message);
    bool still_enabled();
    bool roll_back();
    void note_committed();
    void shutdown();
    // Sleeps unless a stop is requested; false when it is.
    bool sleep_ms(int ms);

    std::string name_; // config_.name, for log lines
    SubscriptionConfig config_;
    DbSession db_;
    KafkaConsumer consumer_;
    TxnAssembler assembler_;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> finished_{false};
    std::mutex sleep_mutex_;
    std::condition_variable sleep_cv_;

    bool quit_ = false;       // dropped or paused: end without touching it again
    bool positioned_ = false; // the consumer is assigned for this database session
    bool db_down_ = false;    // a "lost" line was logged
    int db_backoff_ms_ = 500;
    int retry_backoff_ms_ = 1000;
    std::string kafka_problem_; // as last logged ("" = fine)
    std::string apply_problem_; // an SQL error that keeps a careful apply failing
    // Records the subscription had not applied are gone from the topic: it
    // reads on from the first offset Kafka has, applying nothing, until the
    // first record of a peer's snapshot, and resynchronises from there.
    bool seeking_snapshot_ = false;
    int64_t gap_offset_ = -1;
    std::string gap_problem_; // reported as the Kafka problem meanwhile
    bool start_seeking_snapshot();
    void seeking_record(const Record &record);
    std::string problem() const {
        if (seeking_snapshot_)
            return gap_problem_;
        std::string p = consumer_.problem();
        return p.empty() && await_end_.active ? await_problem() : p;
    }

    // A source transaction rolled back by roll_back_partial: the records
    // that follow are read without being applied (nothing is held) until its
    // last record is in Kafka; then it is read again from its first offset
    // and applied whole, with no hold limit (every record is there).
    struct AwaitEnd {
        bool active = false;
        uint64_t lsn = 0;
        int64_t first_offset = -1;
        int64_t careful_through = -1;
        int64_t records = 0;
    };
    AwaitEnd await_end_;
    int64_t whole_first_offset_ = -1; // the source transaction known complete in Kafka
    std::string await_problem() const;

    // Streamed transactions: those open, the one being read again for its
    // commit (replay_), and the hold the server has for this session.
    StreamTracker streams_;
    struct Replay {
        bool active = false;
        StreamReplay what;
        int64_t emitted = 0; // its records handed to the assembler
    };
    Replay replay_;
    // The last replay handed over, until its local transaction commits: a
    // failure there reads it again from its first record.
    struct ReplayPending {
        bool active = false;
        int64_t first_offset = -1;
        int64_t commit_offset = -1;
    };
    ReplayPending replay_pending_;
    // A streamed transaction applied while it runs (nothing else comes
    // meanwhile): its records go to apply_chunk as they arrive, in one local
    // transaction that apply_stream_commit() ends at its commit record.
    // Anything else in between, a conflict or an error, a rolled-back
    // subtransaction, or the partial_transaction limits end it (demote):
    // rolled back, it is applied at its commit as any streamed transaction.
    struct Eager {
        bool active = false;
        uint32_t xid = 0;
        int64_t first_offset = -1;
        int64_t last_offset = -1;
        std::vector<Record> chunk; // not sent yet
        size_t chunk_bytes = 0;
        int64_t records = 0; // handed to it (sent or not)
        Clock::time_point last_record{};
    };
    Eager eager_;
    bool eager_owns(const Record &record) const;
    void try_start_eager(uint32_t xid, Record &first);
    void eager_add(Record record);
    bool eager_send();
    void demote_eager(const std::string &why);
    bool eager_failed(const DbStatus &st);
    void eager_commit(StreamReplay &replay, Record commit);
    int64_t hold_sent_ = -1;
    uint64_t recoveries_ = 0; // restart_from / db_lost calls: what was read since is read again
    // Where a recovery that would read from first_offset must read from: the
    // first record of a streamed transaction handed over but not committed.
    int64_t recovery_start(int64_t first_offset);
    uint64_t applied_lsn_ = 0; // the subscription's last_applied_lsn when positioned
    void forget_streams();

    // The open local transaction.
    bool txn_open_ = false;
    Clock::time_point txn_began_{};
    bool txn_careful_ = false;
    int64_t txn_first_offset_ = 0;
    int64_t txn_last_offset_ = 0;
    ApplyResult txn_counts_;
    // The apply call in flight: the server applies it while the next
    // records are consumed and grouped.
    struct InFlight {
        bool active = false;
        bool chunk = false;          // apply_chunk (else apply_transactions)
        std::vector<Record> records; // apply_chunk: for a failed record
        Clock::time_point started{};
    };
    InFlight in_flight_;

    // Progress.
    int64_t logged_start_ = -3;   // the start offset last logged
    int64_t position_ = -1;       // next offset to consume, when known
    int64_t committed_next_ = -1; // next_offset as committed, when known
    int64_t high_water_ = -1;
    uint64_t received_ = 0, received_at_log_ = 0;
    uint64_t applied_ = 0, skipped_ = 0, conflicts_ = 0, dead_letters_ = 0;
    Clock::time_point last_report_{}, last_log_{}, last_record_{}, last_assign_{}, last_apply_result_{};
};

} // namespace kafka_sync_sidecar
