// InflightTransactions (see inflight.hpp).
#include "produce/inflight.hpp"

#include <stdexcept>

namespace kafka_sync {

InflightTransactions::Txn *InflightTransactions::find(Seq seq) {
    if (seq < first_seq_ || seq - first_seq_ >= txns_.size())
        return nullptr;
    return &txns_[seq - first_seq_];
}

InflightTransactions::Seq InflightTransactions::begin(uint64_t commit_lsn) {
    if (commit_lsn < last_lsn_)
        throw std::logic_error("transactions must enter the in-flight ring in commit order");
    last_lsn_ = commit_lsn;
    txns_.push_back(Txn{commit_lsn, 0, false});
    return first_seq_ + txns_.size() - 1;
}

void InflightTransactions::record_produced(Seq seq) {
    Txn *t = find(seq);
    if (!t || t->ended)
        throw std::logic_error("record produced for a transaction that is not open");
    t->pending++;
    unacked_++;
}

void InflightTransactions::end(Seq seq) {
    Txn *t = find(seq);
    if (!t)
        throw std::logic_error("end of an unknown transaction");
    t->ended = true;
}

void InflightTransactions::record_acknowledged(Seq seq) {
    Txn *t = find(seq);
    // An acknowledgement for a popped transaction cannot happen: it was popped
    // only after all its records were acknowledged.
    if (!t || t->pending == 0)
        throw std::logic_error("acknowledgement for a record that is not in flight");
    t->pending--;
    unacked_--;
}

uint64_t InflightTransactions::take_confirmable() {
    uint64_t lsn = 0;
    while (!txns_.empty() && txns_.front().ended && txns_.front().pending == 0) {
        lsn = txns_.front().commit_lsn;
        txns_.pop_front();
        first_seq_++;
    }
    return lsn;
}

} // namespace kafka_sync
