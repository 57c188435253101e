// Reading a record value's text without a tree (see json_scan.hpp).
#include "wire/json_scan.hpp"

#include <algorithm>
#include <cstring>

namespace kafka_sync {

bool valid_utf8(const char *s, size_t len) {
    const auto *p = reinterpret_cast<const unsigned char *>(s);
    size_t i = 0;
    while (i < len) {
        const unsigned char c = p[i];
        if (c < 0x80) {
            if (c == 0)
                return false;
            i++;
            continue;
        }
        // the length a lead byte announces, and the range of the byte after it
        size_t n;
        unsigned char lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 3;
            lo = c == 0xe0 ? 0xa0 : lo; // shorter forms are overlong
            hi = c == 0xed ? 0x9f : hi; // ED A0-BF are surrogates
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 4;
            lo = c == 0xf0 ? 0x90 : lo; // overlong
            hi = c == 0xf4 ? 0x8f : hi; // F4 90 and above: beyond U+10FFFF
        } else {
            return false; // a continuation byte, C0/C1 (overlong ASCII), F5-FF (beyond U+10FFFF)
        }
        if (len - i < n || p[i + 1] < lo || p[i + 1] > hi)
            return false;
        for (size_t k = 2; k < n; k++)
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
        i += n;
    }
    return true;
}

bool distinct_names(std::vector<std::string_view> &keys) {
    if (keys.size() <= kNamesSearched)
        return true;
    std::sort(keys.begin(), keys.end());
    return std::adjacent_find(keys.begin(), keys.end()) == keys.end();
}

namespace {

// JSON's whitespace at p passed over.
const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

// The values a schema may hold: the record's limit less what a plain payload can add
// (the wrapper, and an envelope and four rows of kMaxObjectMembers each).
constexpr size_t kMaxSchemaValues = kMaxJsonValues - 8 * kMaxObjectMembers;

// A string (p at its quote) passed over: the byte after it, or nullptr.
// name: its raw text, for a member name, which must hold no escape.
const char *skip_string(const char *p, const char *end, std::string_view *name) {
    const char *start = ++p;
    unsigned char any = 0;
    while (p < end) {
        const unsigned char c = static_cast<unsigned char>(*p);
        if (c == '"') {
            const size_t n = static_cast<size_t>(p - start);
            if (any >= 0x80 && !valid_utf8(start, n))
                return nullptr;
            if (name)
                *name = std::string_view(start, n);
            return p + 1;
        }
        if (c < 0x20)
            return nullptr;
        if (c == '\\') {
            if (name || end - p < 2 || !strchr("\"\\/bfnrt", p[1]) || p[1] == '\0')
                return nullptr; // \u: jansson checks its surrogates and \u0000
            p += 2;
            continue;
        }
        any |= c;
        p++;
    }
    return nullptr;
}

// A scalar other than a string (p at it) passed over: true, false, null, or
// an integer of at most 18 digits (reals and larger integers: jansson's
// limits); the byte after it, or nullptr.
const char *skip_word_or_integer(const char *p, const char *end) {
    for (const char *w : {"true", "false", "null"}) {
        const size_t n = strlen(w);
        if (*p == *w)
            return static_cast<size_t>(end - p) >= n && memcmp(p, w, n) == 0 ? p + n : nullptr;
    }
    const char *digits = p + (*p == '-');
    const char *q = digits;
    while (q < end && *q >= '0' && *q <= '9')
        q++;
    const size_t n = static_cast<size_t>(q - digits);
    if (n == 0 || n > 18 || (n > 1 && *digits == '0'))
        return nullptr;
    if (q < end && (*q == '.' || *q == 'e' || *q == 'E'))
        return nullptr;
    return q;
}

// The JSON value at p (no whitespace before it), one level inside the
// record's object, passed over as described above kMaxSchemaValues: the
// byte after it, or nullptr to give up. names: one list per nesting level,
// for the member names of the object open there (storage reused).
const char *skip_schema_value(const char *p, const char *end, InterruptPoller &poller,
                              std::vector<std::vector<std::string_view>> &names) {
    constexpr size_t kBase = 1; // the record's object
    bool is_object[kMaxNestingDepth + 1];
    size_t members[kMaxNestingDepth + 1];
    size_t open = 0; // containers of the value still open
    size_t values = 0;
    const char *polled = p;
    names.resize(kMaxNestingDepth + 1);
    auto ws = [&] { p = skip_ws(p, end); };
    // a member name and its colon, p at the name; duplicates: jansson's error
    auto member_name = [&] {
        ws();
        std::string_view name;
        if (p == end || *p != '"' || !(p = skip_string(p, end, &name)))
            return false;
        std::vector<std::string_view> &seen = names[open];
        if (seen.size() < kNamesSearched && std::find(seen.begin(), seen.end(), name) != seen.end())
            return false;
        seen.push_back(name);
        ws();
        return p < end && *p++ == ':';
    };
    for (;;) {
        if (static_cast<size_t>(p - polled) >= kInterruptCheckBytes) {
            poller.read(static_cast<size_t>(p - polled));
            polled = p;
        }
        // a value, p at it
        ws();
        if (p == end)
            return nullptr;
        if (*p == '{' || *p == '[') {
            if (++values > kMaxSchemaValues || kBase + ++open > kMaxNestingDepth)
                return nullptr;
            is_object[open] = *p++ == '{';
            members[open] = 1;
            names[open].clear();
            ws();
            if (p < end && *p == (is_object[open] ? '}' : ']')) {
                p++;
                open--;
            } else {
                if (is_object[open] && !member_name())
                    return nullptr;
                continue;
            }
        } else if (!(p = *p == '"' ? skip_string(p, end, nullptr) : skip_word_or_integer(p, end))) {
            return nullptr;
        }
        // after a value: the next one of its container, or the container's end
        for (;;) {
            if (open == 0)
                return p;
            ws();
            if (p == end)
                return nullptr;
            if (*p == ',') {
                p++;
                if (++values > kMaxSchemaValues)
                    return nullptr;
                if (is_object[open] && (++members[open] > kMaxObjectMembers || !member_name()))
                    return nullptr;
                break;
            }
            if (*p != (is_object[open] ? '}' : ']'))
                return nullptr;
            p++;
            if (is_object[open] && !distinct_names(names[open]))
                return nullptr;
            open--;
        }
    }
}

// How many schemas a reader keeps (the tables of one chunk of records, most
// recently seen first), and the largest it keeps.
constexpr size_t kSchemasKept = 8;
constexpr size_t kSchemaKeptBytes = 256 * 1024;

} // namespace

const char *ConnectSchemas::pass(const char *p, const char *end, InterruptPoller &poller) {
    const size_t avail = static_cast<size_t>(end - p);
    for (size_t i = 0; i < known_.size(); i++) {
        const std::string &k = known_[i];
        if (k.size() <= avail && memcmp(p, k.data(), k.size()) == 0) {
            poller.read(k.size());
            std::rotate(known_.begin(), known_.begin() + static_cast<ptrdiff_t>(i),
                        known_.begin() + static_cast<ptrdiff_t>(i) + 1);
            return p + known_.front().size();
        }
    }
    const char *after = skip_schema_value(p, end, poller, names_);
    const size_t n = after ? static_cast<size_t>(after - p) : 0;
    if (after && n <= kSchemaKeptBytes) {
        if (known_.size() < kSchemasKept)
            known_.emplace_back();
        std::rotate(known_.begin(), known_.end() - 1, known_.end()); // the oldest (or the new one) first
        known_.front().assign(p, n);
    }
    return after;
}

namespace {

// Whether the text at p starts with the quoted name (quotes included): no
// escape can spell a letter, so no other spelling is that name.
bool at_name(const char *p, const char *end, std::string_view quoted) {
    return static_cast<size_t>(end - p) >= quoted.size() && memcmp(p, quoted.data(), quoted.size()) == 0;
}

// The object at p (its opening brace) passed over by its brackets and
// strings alone: the byte after its closing brace, or nullptr. It is not
// checked: a decoder reads it after. Its own member names must be plain (no
// escape) and neither "schema" nor "payload".
const char *payload_extent(const char *p, const char *end) {
    size_t depth = 0;
    bool expect_name = false; // the next string at depth 1 is a member name
    while (p < end) {
        const char c = *p;
        if (c == '"') {
            const char *start = ++p;
            bool escaped = false;
            while (p < end && *p != '"') {
                if (*p == '\\') {
                    escaped = true;
                    p += end - p > 1 ? 2 : 1;
                } else {
                    p++;
                }
            }
            if (p == end)
                return nullptr;
            if (depth == 1 && expect_name) {
                const std::string_view name(start, static_cast<size_t>(p - start));
                if (escaped || name == "schema" || name == "payload")
                    return nullptr;
                expect_name = false;
            }
        } else if (c == '{' || c == '[') {
            if (++depth > kMaxNestingDepth - 1) // inside the record, P is one level deeper
                return nullptr;
            expect_name = depth == 1;
        } else if (c == '}' || c == ']') {
            if (--depth == 0)
                return p + 1;
        } else if (c == ',' && depth == 1) {
            expect_name = true;
        }
        p++;
    }
    return nullptr;
}

} // namespace

std::optional<std::string_view> connect_payload(std::string_view value, ConnectSchemas &schemas) {
    const char *end = value.data() + value.size();
    const char *p = skip_ws(value.data(), end);
    if (p == end || *p != '{')
        return std::nullopt;
    InterruptPoller poller(nullptr);
    const char *payload = nullptr, *payload_end = nullptr;
    bool schema = false;
    for (int member = 0; member < 2; member++) {
        p = skip_ws(p + 1, end); // after the brace or the comma
        const bool is_schema = !schema && at_name(p, end, "\"schema\"");
        const bool is_payload = !payload && at_name(p, end, "\"payload\"");
        if (!is_schema && !is_payload)
            return std::nullopt;
        p = skip_ws(p + (is_schema ? 8 : 9), end);
        if (p == end || *p != ':')
            return std::nullopt;
        p = skip_ws(p + 1, end);
        if (is_schema) {
            schema = true;
            p = schemas.pass(p, end, poller);
        } else {
            payload = p;
            p = p < end && *p == '{' ? payload_extent(p, end) : nullptr;
            payload_end = p;
        }
        if (!p)
            return std::nullopt;
        p = skip_ws(p, end);
        if (p == end || *p != (member == 0 ? ',' : '}'))
            return std::nullopt;
    }
    if (skip_ws(p + 1, end) != end)
        return std::nullopt;
    return std::string_view(payload, static_cast<size_t>(payload_end - payload));
}

} // namespace kafka_sync
