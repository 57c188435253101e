// InflightTransactions: which source transactions Kafka has fully taken.
//
// The delivery promise hinges on this: the slot may confirm a transaction's
// commit LSN only when every record of it, and of every transaction before it,
// has been acknowledged by Kafka. Transactions enter in WAL (commit) order;
// acknowledgements may arrive in any order; the confirmable position only
// ever moves over a complete prefix. Pure C++, no PostgreSQL, unit-tested.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>

namespace kafka_sync {

class InflightTransactions {
  public:
    using Seq = uint64_t;

    // A transaction whose records are about to be produced; commit_lsn must
    // not go backwards. Returns its sequence number, the delivery opaque.
    Seq begin(uint64_t commit_lsn);
    // One more record of transaction seq handed to the producer.
    void record_produced(Seq seq);
    // All records of transaction seq have been produced.
    void end(Seq seq);
    // Kafka acknowledged one record of transaction seq.
    void record_acknowledged(Seq seq);

    // Pops every complete transaction at the front; returns the commit LSN
    // of the last one popped, or 0 if none completed.
    uint64_t take_confirmable();

    // Transaction seq was fully acknowledged and taken by take_confirmable.
    bool completed(Seq seq) const { return seq < first_seq_; }

    // The highest commit_lsn begun: begin(last_lsn()) is an entry that
    // confirms nothing new.
    uint64_t last_lsn() const { return last_lsn_; }
    bool empty() const { return txns_.empty(); }
    size_t size() const { return txns_.size(); }
    uint64_t unacknowledged_records() const { return unacked_; }

  private:
    struct Txn {
        uint64_t commit_lsn;
        uint64_t pending; // produced, not yet acknowledged
        bool ended;
    };
    Txn *find(Seq seq);

    std::deque<Txn> txns_; // txns_[i] has sequence first_seq_ + i
    Seq first_seq_ = 1;
    uint64_t last_lsn_ = 0;
    uint64_t unacked_ = 0;
};

} // namespace kafka_sync
