// Source transactions -> apply_chunk calls and local transactions (see
// txn_assembler.hpp for the promises).
//
// A record without a valid kafka_sync.lsn header (foreign or hostile input)
// is a transaction of its own, complete at once, when it arrives between
// transactions. When it arrives inside an unfinished transaction it travels
// with that transaction instead of ending it: another producer can write into
// the topic at any moment, and treating its record as "a different
// transaction" would discard the first part of a genuine one whose remaining
// records then look like a transaction of their own (applied in part). The
// extension dead-letters the foreign record either way.
#include "txn_assembler.hpp"

#include <utility>

namespace kafka_sync_sidecar {

bool TxnAssembler::careful_from(int64_t first_offset) {
    if (careful_through_ >= 0 && first_offset > careful_through_)
        careful_through_ = -1; // past the transactions of the failed local transaction
    return careful_through_ >= 0;
}

void TxnAssembler::add(Record record) {
    // Snapshot rows need not be applied all together (each carries its own
    // version and applying it twice changes nothing); the extension commits
    // them grouped by row time, which is what makes their versions right
    // here. So they travel like small complete transactions, however many.
    if (record.snapshot) {
        if (current_.active)
            discard_current("a snapshot began before its last record");
        add_alone(std::move(record));
        return;
    }
    if (!current_.active) {
        if (!record.has_lsn) {
            add_alone(std::move(record));
            return;
        }
        open_group(std::move(record));
    } else if (!record.has_lsn) {
        append(std::move(record));
        if (current_.unsent.size() >= limits_.max_records || current_.unsent_bytes >= limits_.max_bytes)
            stream_current();
        return;
    } else if (record.lsn != current_.lsn || record.seq == 1) {
        // A producer restarted before the transaction's last record: what we
        // hold is a partial copy and the complete copy follows.
        discard_current(record.lsn != current_.lsn ? "the next transaction began before its last record"
                                                   : "it started over before its last record");
        open_group(std::move(record));
    } else {
        append(std::move(record));
    }

    if (current_.unsent.back().txn_end)
        complete_current();
    else if (current_.unsent.size() >= limits_.max_records || current_.unsent_bytes >= limits_.max_bytes)
        stream_current();
}

void TxnAssembler::add_alone(Record record) {
    size_t bytes = record.bytes();
    bool careful = careful_from(record.offset);
    std::vector<Record> one;
    one.push_back(std::move(record));
    add_complete(std::move(one), bytes, false, 0, careful);
}

void TxnAssembler::open_group(Record record) {
    current_ = OpenGroup();
    current_.active = true;
    current_.lsn = record.lsn;
    current_.first_offset = record.offset;
    current_.careful = careful_from(record.offset);
    append(std::move(record));
}

void TxnAssembler::append(Record record) {
    if (record.has_lsn)
        current_.count++;
    current_.unsent_bytes += record.bytes();
    current_.unsent.push_back(std::move(record));
}

void TxnAssembler::complete_current() {
    OpenGroup g = std::move(current_);
    current_ = OpenGroup();
    const Record &last = g.unsent.back();
    if (last.txn_records != g.count)
        notes_.push_back("transaction " + format_lsn(g.lsn) + " ending at offset " + std::to_string(last.offset) +
                         " has " + std::to_string(g.count) + " records here, its txn_end header says " +
                         (last.txn_records > 0 ? std::to_string(last.txn_records) : std::string("nothing valid")));
    if (g.streaming) {
        send(std::move(g.unsent), g.careful);
        emit(ApplyStep::Kind::Commit);
        return;
    }
    add_complete(std::move(g.unsent), g.unsent_bytes, true, g.lsn, g.careful);
}

void TxnAssembler::stream_current() {
    // The local transaction of a streamed source transaction holds nothing
    // else, so that discarding a partial copy rolls back only that copy.
    flush_pending();
    current_.streaming = true;
    send(std::move(current_.unsent), current_.careful);
    current_.unsent.clear();
    current_.unsent_bytes = 0;
}

void TxnAssembler::discard_current(const char *why) {
    notes_.push_back("discarded an incomplete copy of transaction " + format_lsn(current_.lsn) + " (" +
                     std::to_string(current_.count) + " records from offset " + std::to_string(current_.first_offset) +
                     "): " + why);
    if (current_.streaming)
        emit(ApplyStep::Kind::Rollback);
    current_ = OpenGroup();
}

void TxnAssembler::add_complete(std::vector<Record> records, size_t bytes, bool has_lsn, uint64_t lsn, bool careful) {
    if (careful) {
        flush_pending();
        send(std::move(records), true);
        emit(ApplyStep::Kind::Commit);
        return;
    }
    if (has_lsn && pending_has_lsn_ && lsn <= pending_max_lsn_)
        flush_pending(); // a duplicate: its original must be committed first
    if (!pending_.empty() &&
        (pending_.size() + records.size() > limits_.max_records || pending_bytes_ + bytes > limits_.max_bytes))
        flush_pending();
    for (auto &r : records)
        pending_.push_back(std::move(r));
    pending_bytes_ += bytes;
    if (has_lsn && (!pending_has_lsn_ || lsn > pending_max_lsn_)) {
        pending_has_lsn_ = true;
        pending_max_lsn_ = lsn;
    }
    if (pending_.size() >= limits_.max_records || pending_bytes_ >= limits_.max_bytes)
        flush_pending();
}

void TxnAssembler::flush_pending() {
    if (pending_.empty())
        return;
    send(std::move(pending_), false);
    emit(ApplyStep::Kind::Commit);
    pending_.clear();
    pending_bytes_ = 0;
    pending_has_lsn_ = false;
    pending_max_lsn_ = 0;
}

void TxnAssembler::send(std::vector<Record> records, bool careful) {
    ApplyStep step{ApplyStep::Kind::Send, std::move(records), careful};
    steps_.push_back(std::move(step));
}

void TxnAssembler::emit(ApplyStep::Kind kind) {
    ApplyStep step{kind, {}, false};
    steps_.push_back(std::move(step));
}

void TxnAssembler::idle() {
    flush_pending();
}

void TxnAssembler::finish() {
    flush_pending();
    if (current_.active && current_.streaming)
        emit(ApplyStep::Kind::Rollback);
    current_ = OpenGroup();
}

void TxnAssembler::reset() {
    current_ = OpenGroup();
    pending_.clear();
    pending_bytes_ = 0;
    pending_has_lsn_ = false;
    pending_max_lsn_ = 0;
    steps_.clear();
    careful_through_ = -1;
}

std::vector<ApplyStep> TxnAssembler::take_steps() {
    std::vector<ApplyStep> out;
    out.swap(steps_);
    return out;
}

std::vector<std::string> TxnAssembler::take_notes() {
    std::vector<std::string> out;
    out.swap(notes_);
    return out;
}

} // namespace kafka_sync_sidecar
