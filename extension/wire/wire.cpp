// See wire.hpp.
#include "wire/wire.hpp"

#include <charconv>

namespace kafka_sync::wire {

namespace {

bool parse_hex32(std::string_view s, uint32_t &out) {
    if (s.empty() || s.size() > 8)
        return false;
    uint32_t v = 0;
    for (char c : s) {
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return false;
        v = v << 4 | static_cast<uint32_t>(d);
    }
    out = v;
    return true;
}

uint32_t read_u32(const char *p) {
    const auto *u = reinterpret_cast<const unsigned char *>(p);
    return uint32_t(u[0]) << 24 | uint32_t(u[1]) << 16 | uint32_t(u[2]) << 8 | uint32_t(u[3]);
}

void put_u32(std::string &out, uint32_t v) {
    const char b[4] = {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
    out.append(b, 4);
}

} // namespace

bool parse_lsn(std::string_view text, uint64_t &lsn) {
    const size_t slash = text.find('/');
    if (slash == std::string_view::npos)
        return false;
    uint32_t hi, lo;
    if (!parse_hex32(text.substr(0, slash), hi) || !parse_hex32(text.substr(slash + 1), lo))
        return false;
    lsn = uint64_t(hi) << 32 | lo;
    return true;
}

// PostgreSQL's %X: upper-case hex digits, no leading zeros (no snprintf: once per record produced).
static char *append_hex(char *p, uint32_t v) {
    char digits[8];
    int n = 0;
    do {
        digits[n++] = "0123456789ABCDEF"[v & 0xf];
        v >>= 4;
    } while (v != 0);
    while (n > 0)
        *p++ = digits[--n];
    return p;
}

std::string format_lsn(uint64_t lsn) {
    char buf[20];
    char *p = append_hex(buf, static_cast<uint32_t>(lsn >> 32));
    *p++ = '/';
    p = append_hex(p, static_cast<uint32_t>(lsn));
    return std::string(buf, static_cast<size_t>(p - buf));
}

bool parse_count(std::string_view s, int64_t &out) {
    if (s.empty() || s.size() > 18)
        return false;
    int64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (c - '0');
    }
    if (v <= 0)
        return false;
    out = v;
    return true;
}

bool parse_int64(std::string_view text, int64_t &out) {
    const size_t digits = text.size() - (!text.empty() && text[0] == '-' ? 1 : 0);
    if (digits == 0 || digits > 18)
        return false;
    int64_t v;
    const char *end = text.data() + text.size();
    const std::from_chars_result r = std::from_chars(text.data(), end, v);
    if (r.ec != std::errc() || r.ptr != end)
        return false;
    out = v;
    return true;
}

void append_header(std::string &blob, std::string_view name, const char *value, size_t size) {
    put_u32(blob, static_cast<uint32_t>(name.size()));
    blob.append(name.data(), name.size());
    if (!value) {
        put_u32(blob, kNullValue);
        return;
    }
    put_u32(blob, static_cast<uint32_t>(size));
    blob.append(value, size);
}

bool HeaderReader::next(std::string_view &name, const char *&value, size_t &size) {
    if (malformed_ || pos_ >= len_)
        return false;
    const size_t left = len_ - pos_;
    if (left < 4) {
        malformed_ = true;
        return false;
    }
    const uint32_t nlen = read_u32(data_ + pos_);
    if (nlen > left - 4 || left - 4 - nlen < 4) {
        malformed_ = true;
        return false;
    }
    name = std::string_view(data_ + pos_ + 4, nlen);
    const size_t vpos = pos_ + 4 + nlen;
    const uint32_t vlen = read_u32(data_ + vpos);
    if (vlen == kNullValue) {
        value = nullptr;
        size = 0;
        pos_ = vpos + 4;
        return true;
    }
    if (vlen > len_ - vpos - 4) {
        malformed_ = true;
        return false;
    }
    value = data_ + vpos + 4;
    size = vlen;
    pos_ = vpos + 4 + vlen;
    return true;
}

void HeaderFacts::note(std::string_view name, const char *value, size_t size) {
    const std::string_view text = value ? std::string_view(value, size) : std::string_view();
    if (name == kLsn) {
        has_lsn = value && parse_lsn(text, lsn);
        if (!has_lsn)
            lsn = 0;
    } else if (name == kSeq) {
        if (!(value && parse_count(text, seq)))
            seq = 0;
    } else if (name == kTxnEnd) {
        txn_end = true;
        if (!(value && parse_count(text, txn_records)))
            txn_records = 0;
    } else if (name == kSnapshot) {
        snapshot = true;
    } else if (name == kCommitTs) {
        has_commit_ts = value && parse_int64(text, commit_ts_ms);
        if (!has_commit_ts)
            commit_ts_ms = 0;
    } else if (name == kOrigin) {
        origin = text;
    } else if (name == kIncarnation) {
        incarnation = text.size() <= kMaxIncarnationBytes ? text : std::string_view();
    } else if (name == kStream) {
        stream = text == "change"   ? StreamEvent::Change
                 : text == "commit" ? StreamEvent::Commit
                 : text == "abort"  ? StreamEvent::Abort
                 : text == "reset"  ? StreamEvent::Reset
                                    : StreamEvent::Invalid;
    } else if (name == kXid || name == kSubxid) {
        int64_t id = 0;
        const bool ok = value && parse_count(text, id) && id <= INT64_C(0xFFFFFFFF);
        (name == kXid ? has_xid : has_subxid) = ok;
        (name == kXid ? xid : subxid) = ok ? static_cast<uint32_t>(id) : 0;
    }
}

} // namespace kafka_sync::wire
