// Streamed transactions of a peer's topic (see stream_tracker.hpp).
#include "stream_tracker.hpp"

#include <algorithm>

namespace kafka_sync_sidecar {

namespace wire = kafka_sync::wire;

bool StreamReplay::applies(const Record &record) const {
    if (record.stream != wire::StreamEvent::Change || record.xid != xid || record.offset < first_offset ||
        record.offset >= commit_offset)
        return false;
    // the last range starting at or before the offset
    auto after =
        std::upper_bound(discarded.begin(), discarded.end(), record.offset,
                         [](int64_t offset, const std::pair<int64_t, int64_t> &r) { return offset < r.first; });
    return after == discarded.begin() || record.offset >= std::prev(after)->second;
}

int64_t StreamTracker::hold() const {
    int64_t hold = -1;
    for (const auto &entry : open_)
        if (hold < 0 || entry.second.first_offset < hold)
            hold = entry.second.first_offset;
    return hold;
}

void StreamTracker::drop_kept(Open &o) {
    kept_bytes_ -= o.kept_bytes;
    o.kept_bytes = 0;
    std::vector<Record>().swap(o.kept);
}

void StreamTracker::forget(uint32_t xid) {
    auto it = open_.find(xid);
    if (it == open_.end())
        return;
    drop_kept(it->second);
    open_.erase(it);
}

std::vector<Record> StreamTracker::stop_keeping(uint32_t xid) {
    std::vector<Record> out;
    auto it = open_.find(xid);
    if (it == open_.end())
        return out;
    Open &o = it->second;
    o.keeping = false;
    kept_bytes_ -= o.kept_bytes;
    o.kept_bytes = 0;
    out.swap(o.kept);
    return out;
}

void StreamTracker::keep(Open &o, Record &record) {
    if (!o.keeping)
        return;
    const size_t bytes = record.bytes();
    while (kept_bytes_ + bytes > keep_limit_) {
        // over budget: the transaction keeping the most goes back to Kafka
        Open *largest = &o;
        for (auto &entry : open_)
            if (entry.second.keeping && entry.second.kept_bytes > largest->kept_bytes)
                largest = &entry.second;
        largest->keeping = false;
        drop_kept(*largest);
        if (largest == &o)
            return;
    }
    o.kept_bytes += bytes;
    kept_bytes_ += bytes;
    o.kept.push_back(std::move(record));
}

StreamTracker::Outcome StreamTracker::add(Record &record, uint64_t applied_lsn) {
    Outcome out;
    if (record.stream == wire::StreamEvent::Reset) {
        // the producer decodes again from before everything open: what it does not stream again never ends
        reset();
        return out;
    }
    const uint32_t xid = record.xid;
    if (xid == 0 || record.stream == wire::StreamEvent::Invalid ||
        (record.stream == wire::StreamEvent::Commit && (!record.has_lsn || !record.has_commit_ts))) {
        out.kind = Outcome::Kind::Foreign;
        return out;
    }
    auto it = open_.find(xid);
    const std::string what = "streamed transaction " + std::to_string(xid);

    switch (record.stream) {
    case wire::StreamEvent::Change: {
        if (it != open_.end() && record.offset <= it->second.last_offset)
            return out; // read again
        if (it != open_.end() && record.seq == 1) {
            // The producer restarted and streams it again from its start.
            out.note = "discarded an incomplete copy of " + what + " (" + std::to_string(it->second.records) +
                       " records from offset " + std::to_string(it->second.first_offset) +
                       "): it started over at offset " + std::to_string(record.offset);
            forget(xid);
            it = open_.end();
        }
        if (it == open_.end()) {
            if (open_.size() >= kMaxOpen) {
                out.kind = Outcome::Kind::Skip;
                out.note = "more than " + std::to_string(kMaxOpen) + " streamed transactions are open in the topic; " +
                           what + " (from offset " + std::to_string(record.offset) + ") is not followed";
                return out;
            }
            Open fresh;
            fresh.first_offset = record.offset;
            fresh.from_start = record.seq == 1;
            fresh.keeping = fresh.from_start;
            it = open_.emplace(xid, std::move(fresh)).first;
        }
        Open &o = it->second;
        o.last_offset = record.offset;
        o.records++;
        if (record.subxid != 0 && record.subxid != xid && !o.too_many &&
            o.subxact_index.find(record.subxid) == o.subxact_index.end()) {
            if (o.subxacts.size() >= kMaxSubtransactions) {
                o.too_many = true; // an abort of this one could not be followed
                o.subxacts.clear();
                o.subxact_index.clear();
            } else {
                o.subxact_index.emplace(record.subxid, o.subxacts.size());
                o.subxacts.emplace_back(record.subxid, record.offset);
            }
        }
        keep(o, record);
        return out;
    }
    case wire::StreamEvent::Abort: {
        if (it == open_.end() || record.offset <= it->second.last_offset)
            return out; // nothing of it is open here, or read again
        Open &o = it->second;
        o.last_offset = record.offset;
        if (record.subxid == 0 || record.subxid == xid) {
            forget(xid);
            return out;
        }
        // A subtransaction aborted: its records and those of the
        // subtransactions begun after it (its own, or later siblings that
        // ended before it did) are taken back, as PostgreSQL does.
        auto found = o.subxact_index.find(record.subxid);
        if (found == o.subxact_index.end())
            return out; // none of its records was streamed
        const size_t i = found->second;
        int64_t from = o.subxacts[i].second;
        // the ranges stay disjoint and ordered: this one ends after all before it
        while (!o.discarded.empty() && o.discarded.back().second >= from) {
            from = std::min(from, o.discarded.back().first);
            o.discarded.pop_back();
        }
        o.discarded.emplace_back(from, record.offset);
        // what it took back is the end of what is kept
        while (!o.kept.empty() && o.kept.back().offset >= from) {
            o.kept_bytes -= o.kept.back().bytes();
            kept_bytes_ -= o.kept.back().bytes();
            o.kept.pop_back();
        }
        for (size_t j = i; j < o.subxacts.size(); j++)
            o.subxact_index.erase(o.subxacts[j].first);
        o.subxacts.resize(i);
        return out;
    }
    case wire::StreamEvent::Commit: {
        if (it != open_.end() && record.offset <= it->second.last_offset)
            return out; // read again
        const bool whole = it != open_.end() && it->second.from_start;
        if (!whole) {
            out.kind = Outcome::Kind::Skip;
            const bool empty = it == open_.end() && record.txn_records == 0;
            if (!empty && record.lsn > applied_lsn)
                out.note = "the commit of " + what + " (lsn " + format_lsn(record.lsn) + ") is at offset " +
                           std::to_string(record.offset) +
                           ", but its first records lie before where this subscription began reading: it is not "
                           "applied here (SELECT kafka_sync.resnapshot() on the peer brings its rows)";
            if (it != open_.end())
                forget(xid);
            return out;
        }
        Open &o = it->second;
        if (o.too_many) {
            out.kind = Outcome::Kind::Skip;
            out.note = what + " (lsn " + format_lsn(record.lsn) + ") has more than " +
                       std::to_string(kMaxSubtransactions) +
                       " subtransactions, more than this sidecar follows: it is not applied here (SELECT "
                       "kafka_sync.resnapshot() on the peer brings its rows)";
            forget(xid);
            return out;
        }
        if (record.txn_records != o.records)
            out.note = what + " (lsn " + format_lsn(record.lsn) + ") has " + std::to_string(o.records) +
                       " records here, its commit record at offset " + std::to_string(record.offset) + " says " +
                       (record.txn_records > 0 ? std::to_string(record.txn_records) : std::string("nothing valid"));
        out.kind = Outcome::Kind::Replay;
        out.replay.xid = xid;
        out.replay.first_offset = o.first_offset;
        out.replay.commit_offset = record.offset;
        out.replay.lsn = record.lsn;
        out.replay.commit_ts_ms = record.commit_ts_ms;
        out.replay.discarded = o.discarded;
        if (o.keeping) {
            out.replay.kept = true;
            out.replay.records = std::move(o.kept);
            kept_bytes_ -= o.kept_bytes;
            o.kept_bytes = 0;
            o.kept.clear();
        }
        return out;
    }
    default: out.kind = Outcome::Kind::Foreign; return out;
    }
}

} // namespace kafka_sync_sidecar
