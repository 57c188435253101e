// Streamed transactions of a peer's topic (see stream_tracker.hpp).
#include "stream_tracker.hpp"

#include <algorithm>

namespace kafka_sync_sidecar {

namespace wire = kafka_sync::wire;

bool StreamReplay::applies(const Record &record) const {
    if (record.stream != wire::StreamEvent::Change || record.xid != xid || record.offset < first_offset ||
        record.offset >= commit_offset)
        return false;
    for (const auto &range : discarded)
        if (record.offset >= range.first && record.offset < range.second)
            return false;
    return true;
}

int64_t StreamTracker::hold() const {
    int64_t hold = -1;
    for (const auto &entry : open_)
        if (hold < 0 || entry.second.first_offset < hold)
            hold = entry.second.first_offset;
    return hold;
}

StreamTracker::Outcome StreamTracker::add(const Record &record, uint64_t applied_lsn) {
    Outcome out;
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
            open_.erase(it);
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
            it = open_.emplace(xid, std::move(fresh)).first;
        }
        Open &o = it->second;
        o.last_offset = record.offset;
        o.records++;
        if (record.subxid != 0 && record.subxid != xid && o.subxacts.size() < kMaxSubtransactions &&
            std::none_of(o.subxacts.begin(), o.subxacts.end(),
                         [&](const std::pair<uint32_t, int64_t> &s) { return s.first == record.subxid; }))
            o.subxacts.emplace_back(record.subxid, record.offset);
        return out;
    }
    case wire::StreamEvent::Abort: {
        if (it == open_.end() || record.offset <= it->second.last_offset)
            return out; // nothing of it is open here, or read again
        Open &o = it->second;
        o.last_offset = record.offset;
        if (record.subxid == 0 || record.subxid == xid) {
            open_.erase(it);
            return out;
        }
        // A subtransaction aborted: its records and those of the
        // subtransactions begun after it (its own, or later siblings that
        // ended before it did) are taken back, as PostgreSQL does.
        for (size_t i = 0; i < o.subxacts.size(); i++) {
            if (o.subxacts[i].first != record.subxid)
                continue;
            o.discarded.emplace_back(o.subxacts[i].second, record.offset);
            o.subxacts.resize(i);
            break;
        }
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
                open_.erase(it);
            return out;
        }
        Open &o = it->second;
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
        return out;
    }
    default: out.kind = Outcome::Kind::Foreign; return out;
    }
}

} // namespace kafka_sync_sidecar
