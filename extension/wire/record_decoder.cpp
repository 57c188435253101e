// Decoding of incoming Kafka records (see record_decoder.hpp).
#include "wire/record_decoder.hpp"

#include "wire/json_object_new.hpp"
#include "wire/json_scan.hpp"

#include <jansson.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string_view>
#include <system_error>

namespace kafka_sync {

namespace {

constexpr size_t kMaxIdentifier = 63; // NAMEDATALEN - 1

// The record's limits checked on its text in one pass that stops at the
// first excess, before jansson builds a tree of it (which takes some 0.3 s
// for 400,000 members); false with error set. Invalid JSON is jansson's to
// report.
bool within_json_limits(const char *data, size_t len, InterruptPoller &poller, std::string &error) {
    size_t members[kMaxNestingDepth + 1]; // of each open object so far (an empty one counts one)
    bool is_object[kMaxNestingDepth + 1];
    size_t depth = 0;
    size_t values = 1; // at least as many as there are: the root, one per container and comma
    bool in_string = false;
    size_t polled = 0;
    for (size_t i = 0; i < len; i++) {
        if (i - polled >= kInterruptCheckBytes) {
            poller.read(i - polled);
            polled = i;
        }
        const char c = data[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
            continue;
        }
        if (c == '"') {
            in_string = true;
            continue;
        }
        if (c == '}' || c == ']') {
            depth -= depth > 0;
            continue;
        }
        if (c != '{' && c != '[' && c != ',')
            continue;
        if (++values > kMaxJsonValues) {
            error = "the record value holds more than " + std::to_string(kMaxJsonValues) +
                    " JSON values (members and array elements), the most kafka_sync decodes";
            return false;
        }
        if (c == ',') {
            if (depth > 0 && is_object[depth] && ++members[depth] > kMaxObjectMembers) {
                error = "an object in the record value has more than " + std::to_string(kMaxObjectMembers) +
                        " members, the most kafka_sync accepts (a PostgreSQL table has at most 1600 columns)";
                return false;
            }
        } else if (++depth > kMaxNestingDepth) {
            error = "the record value nests deeper than " + std::to_string(kMaxNestingDepth) +
                    " levels, the most kafka_sync decodes (a change event is an envelope of flat rows)";
            return false;
        } else {
            members[depth] = 1;
            is_object[depth] = c == '{';
        }
    }
    return true;
}

// The record as jansson reads it, through json_load_callback (byte for byte
// what json_loadb reads, same errors), so that its parse can be interrupted
// too: an interrupt ends the input early, jansson gives up, and the
// interrupt is raised once jansson has returned (never thrown through it).
struct JanssonInput {
    JanssonInput(const char *d, size_t n, InterruptPoller &p) : data(d), len(n), poller(p) {}
    const char *data;
    size_t len;
    InterruptPoller &poller;
    size_t pos = 0;
    std::exception_ptr interrupted;

    static size_t read(void *buffer, size_t size, void *arg) {
        auto *in = static_cast<JanssonInput *>(arg);
        const size_t n = std::min(size, in->len - in->pos);
        try {
            in->poller.read(n);
        } catch (const Interrupted &interrupted) {
            in->interrupted = interrupted.cause;
            return static_cast<size_t>(-1);
        }
        memcpy(buffer, in->data + in->pos, n);
        in->pos += n;
        return n;
    }
};

std::string hex_of(const char *s, size_t len) {
    static const char digits[] = "0123456789abcdef";
    std::string out = "\\x";
    for (size_t i = 0; i < len; i++) {
        out.push_back(digits[static_cast<unsigned char>(s[i]) >> 4]);
        out.push_back(digits[static_cast<unsigned char>(s[i]) & 0xf]);
    }
    return out;
}

const char *string_field(json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : nullptr;
}

// A strict JSON reader over a mutable copy of a record value: strings are
// unescaped in place and NUL-terminated there. It accepts only what
// kafka_sync's own encoder writes without a schema (objects of strings,
// integers, booleans and nulls, simple escapes); every other input,
// valid or not, makes it give up, and jansson decodes it instead.
class PlainReader {
  public:
    PlainReader(char *p, char *end, InterruptPoller &poller) : p_(p), end_(end), polled_(p), poller_(poller) {}

    enum class Kind { String, Integer, True, False, Null, Object, Other };

    void ws() {
        while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r'))
            p_++;
    }
    bool at_end() {
        ws();
        return p_ == end_;
    }
    bool eat(char c) {
        ws();
        if (p_ < end_ && *p_ == c) {
            p_++;
            return true;
        }
        return false;
    }
    Kind peek() {
        ws();
        if (p_ == end_)
            return Kind::Other;
        switch (*p_) {
        case '"': return Kind::String;
        case '{': return Kind::Object;
        case 't': return word("true") ? Kind::True : Kind::Other;
        case 'f': return word("false") ? Kind::False : Kind::Other;
        case 'n': return word("null") ? Kind::Null : Kind::Other;
        default: return (*p_ == '-' || (*p_ >= '0' && *p_ <= '9')) ? Kind::Integer : Kind::Other;
        }
    }
    // A string (p_ at its quote): its text, unescaped and NUL-terminated in
    // place; its length in last_length().
    const char *string() {
        if (!eat('"'))
            return nullptr;
        char *out = p_;
        unsigned char any = 0; // all bytes or'ed: below 0x80, plain ASCII
        // the common case, no escapes: nothing moves until the first one;
        // eight bytes at a time up to the first that is not plain ASCII
        // (the closing quote, say), then byte by byte
        while (end_ - p_ >= 8) {
            uint64_t word;
            memcpy(&word, p_, sizeof(word));
            const uint64_t special = special_bytes(word);
            if (special != 0) {
                p_ += __builtin_ctzll(special) / 8; // little-endian: the lowest byte comes first
                break;
            }
            p_ += 8;
        }
        while (p_ < end_) {
            const unsigned char c = static_cast<unsigned char>(*p_);
            if (c == '"' || c == '\\' || c < 0x20)
                break;
            any |= c;
            p_++;
        }
        char *w = p_;
        while (p_ < end_ && *p_ != '"') {
            unsigned char c = static_cast<unsigned char>(*p_);
            if (c < 0x20)
                return nullptr;
            if (c != '\\') {
                any |= c;
                *w++ = *p_++;
                continue;
            }
            if (++p_ == end_)
                return nullptr;
            switch (*p_) {
            case '"': *w++ = '"'; break;
            case '\\': *w++ = '\\'; break;
            case '/': *w++ = '/'; break;
            case 'b': *w++ = '\b'; break;
            case 'f': *w++ = '\f'; break;
            case 'n': *w++ = '\n'; break;
            case 'r': *w++ = '\r'; break;
            case 't': *w++ = '\t'; break;
            default: return nullptr; // \u escapes: jansson's job
            }
            p_++;
        }
        if (p_ == end_)
            return nullptr;
        p_++; // the closing quote, which the terminator may overwrite
        *w = '\0';
        last_length_ = static_cast<size_t>(w - out);
        return any < 0x80 || valid_utf8(out, last_length_) ? out : nullptr;
    }
    size_t last_length() const { return last_length_; }
    // An integer of at most 18 digits, as JSON writes it: its text.
    bool integer(std::string &text) {
        ws();
        const char *start = p_;
        if (p_ < end_ && *p_ == '-')
            p_++;
        const char *digits = p_;
        while (p_ < end_ && *p_ >= '0' && *p_ <= '9')
            p_++;
        const size_t n = static_cast<size_t>(p_ - digits);
        if (n == 0 || n > 18 || (n > 1 && *digits == '0') || (digits != start && n == 1 && *digits == '0'))
            return false; // jansson would write -0 as 0
        if (p_ < end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E'))
            return false; // a real: jansson writes it its own way
        text.assign(start, static_cast<size_t>(p_ - start));
        return true;
    }
    void skip_word(Kind k) { p_ += k == Kind::False ? 5 : 4; }
    // A member name spelled exactly name, quotes included (r before it):
    // no escape can spell a letter, so none other is that name.
    template <size_t N> bool at_name(const char (&name)[N]) {
        ws();
        return word(name);
    }
    // The unread text, to be passed over by another reader up to skip_to(),
    // which counted it towards the interrupt check.
    const char *pos() {
        ws();
        return p_;
    }
    const char *end() const { return end_; }
    void skip_to(const char *p) { p_ = polled_ = const_cast<char *>(p); }
    // Counts what was read since the last call towards the interrupt check.
    void poll() {
        poller_.read(static_cast<size_t>(p_ - polled_));
        polled_ = p_;
    }

  private:
    template <size_t N> bool word(const char (&w)[N]) {
        return static_cast<size_t>(end_ - p_) >= N - 1 && memcmp(p_, w, N - 1) == 0;
    }
    // The high bit set in each byte of the eight that is a quote, a
    // backslash, a control character or beyond ASCII. The zero-byte tricks
    // may also mark a byte above a true match, never one below it: the
    // lowest mark is exact.
    static uint64_t special_bytes(uint64_t x) {
        static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the first byte must be the lowest");
        constexpr uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        auto zero_bytes = [](uint64_t v) { return (v - ones) & ~v & highs; };
        return (x & highs) | zero_bytes(x ^ (ones * '"')) | zero_bytes(x ^ (ones * '\\')) |
               ((x - ones * 0x20) & ~x & highs);
    }
    char *p_;
    char *end_;
    size_t last_length_ = 0;
    char *polled_;
    InterruptPoller &poller_;
};

// A member's name and its colon (r at the name's quote), added to keys;
// false for a duplicate among the first names, or beyond kMaxObjectMembers
// (jansson reports that).
bool read_member_name(PlainReader &r, std::vector<std::string_view> &keys, std::string_view &key) {
    r.poll();
    if (keys.size() == kMaxObjectMembers)
        return false;
    const char *name = r.string();
    if (!name || !r.eat(':'))
        return false;
    key = std::string_view(name, r.last_length());
    if (keys.size() < kNamesSearched && std::find(keys.begin(), keys.end(), key) != keys.end())
        return false;
    keys.push_back(key);
    return true;
}

// A scalar value (r at it): its kind and its text (the string or integer
// text; nullptr for null; "true"/"false"); false for anything else.
// own(): a string to keep an integer's text in.
template <typename O> bool read_scalar(PlainReader &r, O own, PlainReader::Kind &kind, const char *&text) {
    kind = r.peek();
    text = nullptr;
    switch (kind) {
    case PlainReader::Kind::String: text = r.string(); return text != nullptr;
    case PlainReader::Kind::Integer: {
        std::string &digits = own();
        if (!r.integer(digits))
            return false;
        text = digits.c_str();
        return true;
    }
    case PlainReader::Kind::True:
    case PlainReader::Kind::False:
        text = kind == PlainReader::Kind::True ? "true" : "false";
        r.skip_word(kind);
        return true;
    case PlainReader::Kind::Null: r.skip_word(kind); return true;
    default: return false;
    }
}

// Reads an object of scalars, calling f(key, kind, text) for each member
// (text as read_scalar gives it).
// keys: storage for the member names seen (duplicates are jansson's to report).
template <typename O, typename F>
bool read_plain_object(PlainReader &r, std::vector<std::string_view> &keys, O own, F f) {
    if (!r.eat('{'))
        return false;
    keys.clear();
    if (r.eat('}'))
        return true;
    do {
        std::string_view key;
        PlainReader::Kind kind;
        const char *text;
        if (!read_member_name(r, keys, key) || !read_scalar(r, own, kind, text) || !f(key, kind, text))
            return false;
    } while (r.eat(','));
    return r.eat('}') && distinct_names(keys);
}

bool plain_identifier(const char *s) {
    return s && *s && strlen(s) <= kMaxIdentifier;
}

} // namespace

RecordDecoder::~RecordDecoder() {
    if (root_)
        json_decref(root_);
}

bool RecordDecoder::read_row(json_t *obj, const char *which, std::vector<DecodedColumn> &out, std::string &error) {
    InterruptPoller poller(interrupt_check_);
    const char *name;
    json_t *v;
    json_object_foreach(obj, name, v) {
        if (strlen(name) == 0 || strlen(name) > kMaxIdentifier) {
            error = std::string("a column name in \"") + which + "\" is empty or longer than 63 bytes";
            return false;
        }
        if (json_is_null(v)) {
            out.push_back({name, nullptr});
        } else if (json_is_string(v)) {
            out.push_back({name, json_string_value(v)});
        } else {
            // A numeric/boolean/nested value from a foreign producer: use its
            // JSON text, which is what PostgreSQL's input functions accept.
            char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
            if (!text) {
                error = "out of memory";
                return false;
            }
            std::string &kept = owned();
            kept = text;
            free(text);
            out.push_back({name, kept.c_str()});
            poller.read(kept.size()); // writing a large nested value out again takes time
        }
    }
    return true;
}

void RecordDecoder::reset(DecodedRecord &out) {
    out.reset();
    if (root_) {
        json_decref(root_);
        root_ = nullptr;
    }
    owned_used_ = 0;
}

std::string &RecordDecoder::owned() {
    if (owned_used_ == owned_.size())
        owned_.emplace_back();
    return owned_[owned_used_++];
}

bool RecordDecoder::decode_plain(const char *data, size_t len, DecodedRecord &out) {
    text_.assign(data, len);
    InterruptPoller poller(interrupt_check_);
    PlainReader r(text_.data(), text_.data() + text_.size(), poller);
    if (!r.eat('{'))
        return false;
    std::vector<std::string_view> &keys = keys_;
    const char *op = nullptr;
    const char *source_name = nullptr;
    bool has_source = false;
    auto own = [this]() -> std::string & { return owned(); };
    auto plain_row = [&](bool &present, std::vector<DecodedColumn> &cols) {
        if (r.peek() == PlainReader::Kind::Null) {
            r.skip_word(PlainReader::Kind::Null);
            return true;
        }
        present = true;
        return read_plain_object(r, inner_keys_, own, [&](std::string_view name, PlainReader::Kind, const char *text) {
            if (name.empty() || name.size() > kMaxIdentifier)
                return false;
            cols.push_back({name.data(), text}); // NUL-terminated in place
            return true;
        });
    };
    // the envelope's members and its closing brace (r after its opening one)
    auto envelope = [&]() {
        keys.clear();
        if (r.eat('}'))
            return true;
        do {
            std::string_view key;
            if (!read_member_name(r, keys, key))
                return false;
            bool ok;
            if (key == "before") {
                ok = plain_row(out.has_before, out.before);
            } else if (key == "after") {
                ok = plain_row(out.has_after, out.after);
            } else if (key == "source") {
                has_source = true;
                ok = read_plain_object(r, inner_keys_, own,
                                       [&](std::string_view k, PlainReader::Kind kind, const char *text) {
                                           const bool str = kind == PlainReader::Kind::String;
                                           if (k == "schema")
                                               out.schema = str ? text : nullptr;
                                           else if (k == "table")
                                               out.table = str ? text : nullptr;
                                           else if (k == "origin" && str)
                                               out.origin = text;
                                           else if (k == "name" && str)
                                               source_name = text;
                                           else if (k == "row_ts_ms" && kind == PlainReader::Kind::Integer) {
                                               out.has_row_ts = true;
                                               out.row_ts_ms = strtoll(text, nullptr, 10);
                                           } else if (k == "row_origin")
                                               out.row_origin = str && plain_identifier(text) ? text : nullptr;
                                           return true;
                                       });
            } else if (key == "transaction" && r.peek() == PlainReader::Kind::Object) {
                ok = read_plain_object(r, inner_keys_, own,
                                       [](std::string_view, PlainReader::Kind, const char *) { return true; });
            } else if (key == "schema" || key == "payload") {
                ok = false; // a wrapper of other members than these two, or inside a wrapper: jansson's job
            } else {
                // op, ts_ms, anything else of scalars
                PlainReader::Kind kind;
                const char *text;
                ok = read_scalar(r, own, kind, text);
                if (ok && key == "op" && kind == PlainReader::Kind::String)
                    op = text;
            }
            if (!ok)
                return false;
        } while (r.eat(','));
        return r.eat('}') && distinct_names(keys);
    };
    if (!r.at_name("\"schema\"") && !r.at_name("\"payload\"")) {
        if (!envelope())
            return false;
    } else {
        // The Kafka Connect wrapper, as jansson reads it when it has both
        // members: exactly these two (in either order), the schema passed
        // over, the payload read as a record without one.
        bool schema = false, payload = false;
        do {
            if (!schema && r.at_name("\"schema\"")) {
                schema = true;
                if (!r.string() || !r.eat(':'))
                    return false;
                const char *after = schemas_.pass(r.pos(), r.end(), poller);
                if (!after)
                    return false;
                r.skip_to(after);
            } else if (!payload && r.at_name("\"payload\"")) {
                payload = true;
                if (!r.string() || !r.eat(':') || !r.eat('{') || !envelope())
                    return false;
            } else {
                return false;
            }
        } while (r.eat(','));
        if (!r.eat('}') || !schema || !payload)
            return false;
    }
    if (!r.at_end())
        return false;
    // the rules decode_value applies, in the same words there
    if (!op || strlen(op) != 1 || !strchr("cudrt", op[0]) || !has_source)
        return false;
    out.op = op[0];
    if (!out.origin)
        out.origin = source_name;
    if (!plain_identifier(out.schema) || !plain_identifier(out.table))
        return false;
    if ((out.op == 'c' || out.op == 'r' || out.op == 'u') && !out.has_after)
        return false;
    if (out.op == 'd' && !out.has_before)
        return false;
    return true;
}

bool RecordDecoder::decode_value(const char *data, size_t len, DecodedRecord &out, std::string &error,
                                 bool plain_first) {
    try {
        reset(out);
        if (len > kMaxRecordValueBytes) {
            error = "the record value is " + std::to_string(len) + " bytes, more than the " +
                    std::to_string(kMaxRecordValueBytes >> 20) +
                    " MB kafka_sync decodes (no row this large can be synced)";
            return false;
        }
        read_in_place_ = plain_first && decode_plain(data, len, out);
        if (read_in_place_)
            return true;
        reset(out);
        return decode_tree(data, len, out, error);
    } catch (const Interrupted &interrupted) {
        reset(out);
        std::rethrow_exception(interrupted.cause);
    } catch (const std::bad_alloc &) {
        error = "out of memory";
        return false;
    } catch (...) {
        error = "could not decode the record";
        return false;
    }
}

// Any change event, through jansson's tree of it; the error of any record
// that is none.
bool RecordDecoder::decode_tree(const char *data, size_t len, DecodedRecord &out, std::string &error) {
    InterruptPoller poller(interrupt_check_);
    if (!within_json_limits(data, len, poller, error))
        return false;
    json_error_t jerr;
    JanssonInput input(data, len, poller);
    root_ = json_load_callback(JanssonInput::read, &input, JSON_REJECT_DUPLICATES, &jerr);
    if (input.interrupted)
        throw Interrupted{input.interrupted};
    if (!root_) {
        error = std::string("the record value is not valid JSON: ") + jerr.text + " at byte " +
                std::to_string(jerr.position);
        return false;
    }
    json_t *payload = root_;
    if (json_is_object(root_) && json_object_get(root_, "payload") && json_object_get(root_, "schema"))
        payload = json_object_get(root_, "payload");
    if (!json_is_object(payload)) {
        error = "the record value is not a change event (expected a JSON object)";
        return false;
    }
    const char *op = string_field(payload, "op");
    if (!op || strlen(op) != 1 || !strchr("cudrt", op[0])) {
        error = "the record value has no valid \"op\" (one of c, u, d, r, t)";
        return false;
    }
    out.op = op[0];
    json_t *source = json_object_get(payload, "source");
    if (!json_is_object(source)) {
        error = "the record value has no \"source\" object";
        return false;
    }
    out.schema = string_field(source, "schema");
    out.table = string_field(source, "table");
    if (!out.schema || !out.table || !*out.schema || !*out.table || strlen(out.schema) > kMaxIdentifier ||
        strlen(out.table) > kMaxIdentifier) {
        error = "the record's source has no valid \"schema\" and \"table\"";
        return false;
    }
    out.origin = string_field(source, "origin");
    if (!out.origin)
        out.origin = string_field(source, "name");
    // Snapshot rows carry their own version: when and where the row last changed.
    json_t *row_ts = json_object_get(source, "row_ts_ms");
    if (json_is_integer(row_ts)) {
        out.has_row_ts = true;
        out.row_ts_ms = json_integer_value(row_ts);
    }
    out.row_origin = string_field(source, "row_origin");
    if (out.row_origin && (!*out.row_origin || strlen(out.row_origin) > kMaxIdentifier))
        out.row_origin = nullptr;

    json_t *before = json_object_get(payload, "before");
    json_t *after = json_object_get(payload, "after");
    if (before && !json_is_null(before) && !json_is_object(before)) {
        error = "\"before\" is neither an object nor null";
        return false;
    }
    if (after && !json_is_null(after) && !json_is_object(after)) {
        error = "\"after\" is neither an object nor null";
        return false;
    }
    out.has_before = json_is_object(before);
    out.has_after = json_is_object(after);
    if (out.has_before && !read_row(before, "before", out.before, error))
        return false;
    if (out.has_after && !read_row(after, "after", out.after, error))
        return false;
    if ((out.op == 'c' || out.op == 'r' || out.op == 'u') && !out.has_after) {
        error = std::string("a \"") + out.op + "\" record needs an \"after\" row";
        return false;
    }
    if (out.op == 'd' && !out.has_before) {
        error = "a \"d\" record needs a \"before\" row";
        return false;
    }
    return true;
}

// A decimal integer as the producer writes it: an optional '-' and 1 to 18 digits.
bool decode_headers(const char *data, size_t len, DecodedHeaders &out, std::string &error, bool with_json) noexcept {
    try {
        out.reset();
        json_t *all = with_json ? json_object_new() : nullptr;
        if (with_json && !all) {
            error = "out of memory";
            return false;
        }
        wire::HeaderReader reader(data, len);
        wire::HeaderFacts facts;
        std::string_view name;
        const char *value;
        size_t size;
        while (reader.next(name, value, size)) {
            if (all) {
                const std::string key =
                    valid_utf8(name.data(), name.size()) ? std::string(name) : hex_of(name.data(), name.size());
                const std::string text =
                    !value || valid_utf8(value, size) ? std::string(value ? value : "", size) : hex_of(value, size);
                json_object_set_new(all, key.c_str(), !value ? json_null() : json_stringn(text.data(), text.size()));
            }
            facts.note(name, value, size);
        }
        const bool ok = !reader.malformed();
        out.has_lsn = facts.has_lsn;
        out.lsn = facts.lsn;
        out.has_commit_ts = facts.has_commit_ts;
        out.commit_ts_ms = facts.commit_ts_ms;
        out.has_txn_end = facts.txn_end;
        out.stream = facts.stream != wire::StreamEvent::None;
        out.stream_change = facts.stream == wire::StreamEvent::Change;
        out.origin.assign(facts.origin.data(), facts.origin.size());
        out.incarnation.assign(facts.incarnation.data(), facts.incarnation.size());
        if (all) {
            char *text = json_dumps(all, JSON_COMPACT | JSON_PRESERVE_ORDER);
            json_decref(all);
            out.as_json = text ? text : "{}";
            free(text);
        }
        if (!ok)
            error = "the record's headers are malformed";
        return ok;
    } catch (...) {
        error = "could not decode the record's headers";
        return false;
    }
}

} // namespace kafka_sync
