// What the record decoder (apply side) and the sidecar share for reading a
// record value's text without building a tree of it: the limits a record is
// held to, the interrupt poller of a long read, UTF-8 as PostgreSQL accepts
// it, and the check of a Kafka Connect schema (a record's "schema" member).
// Pure C++, no jansson: the sidecar links it too.
//
// The sidecar uses connect_payload() to hand the apply functions only the
// payload of a schema-wrapped record whose schema passed the same check the
// apply side's reader applies: the schema is the table's, the same for every
// row, and nothing apply reads, so the bytes of a default record the sidecar
// copies and sends shrink from some 2.6 kB to 0.4 kB (schema + payload
// against payload).
#pragma once

#include <cstddef>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kafka_sync {

// Members of any object of a record: a row has at most the 1600 columns of a
// PostgreSQL table (MaxHeapAttributeNumber), and no other object of a change
// event comes close (a foreign producer's nested JSON value is held to it too).
constexpr size_t kMaxObjectMembers = 1600;
// Nesting: a change event is an envelope of flat rows, three levels deep and
// a few more with the Connect schema or a foreign producer's nested value.
constexpr size_t kMaxNestingDepth = 64;
// JSON values (members and array elements) in a record that jansson reads:
// its tree costs some 60 bytes and 0.1 to 0.4 us a value. A million keeps
// that to some 64 MB and 0.4 s (256 MB of "0," would be gigabytes and
// seconds), far above a row of scalars.
constexpr size_t kMaxJsonValues = size_t(1) << 20;

// How much of a record is read between two interrupt checks: a few
// milliseconds' work at most, and no check at all for an ordinary record.
constexpr size_t kInterruptCheckBytes = 64 * 1024;

// Called while a record is read, about every kInterruptCheckBytes of it, so
// that a long read can be cancelled (the apply side runs CHECK_FOR_INTERRUPTS
// there); what it throws ends the read.
using InterruptCheck = void (*)();

// What the interrupt check threw, carried out of a reader's frames as
// itself, past the catch-alls that turn anything else into a bad record.
struct Interrupted {
    std::exception_ptr cause;
};

// Runs the interrupt check once another kInterruptCheckBytes of the record
// were read (so a small record never runs it). A null check: never.
class InterruptPoller {
  public:
    explicit InterruptPoller(InterruptCheck check) : check_(check) {}
    void read(size_t bytes) {
        unchecked_ += bytes;
        if (unchecked_ < kInterruptCheckBytes || !check_)
            return;
        unchecked_ = 0;
        try {
            check_();
        } catch (...) {
            throw Interrupted{std::current_exception()};
        }
    }

  private:
    InterruptCheck check_;
    size_t unchecked_ = 0;
};

// Text as PostgreSQL accepts it (pg_verify_mbstr: pg_utf8_islegal, and no
// NUL): each character in its shortest form, no surrogate (U+D800-DFFF),
// nothing beyond U+10FFFF. PostgreSQL's input functions do not check the
// encoding again: what passes here reaches a table as it is. jansson holds the
// strings it parses to the same rule (and refuses \u0000); the plain reader's
// strings and header values are raw bytes.
bool valid_utf8(const char *s, size_t len);

// Duplicate member names make the plain readers give up (jansson reports
// them). The first names of an object are searched name by name, the fastest
// way for a row of a few columns; a wider object is checked once it ended, by
// sorting: n log n, where searching each name was quadratic.
constexpr size_t kNamesSearched = 32;

// No name twice among an object's member names, once it ended (see
// kNamesSearched). May leave keys sorted.
bool distinct_names(std::vector<std::string_view> &keys);

// The Kafka Connect schemas of the tables a reader met lately. A record's
// "schema" value is checked (not read) in one linear pass against every rule
// that jansson and the record limits hold it to, so that what passes is
// what jansson accepts; anything the pass does not cover (\u escapes, reals,
// escaped member names) makes it give up, and jansson decides. Every row of
// a table carries the same schema text: one that passed before, byte for
// byte, passes again at the cost of a memcmp (a JSON value's extent and
// validity are its bytes' alone, and its place in the record is always the
// same: right inside the record's object).
class ConnectSchemas {
  public:
    // The schema value at p (no whitespace before it) passed over: the byte
    // after it, or nullptr to give up.
    const char *pass(const char *p, const char *end, InterruptPoller &poller);

  private:
    std::vector<std::string> known_;                   // latest first
    std::vector<std::vector<std::string_view>> names_; // member names per nesting level, while one is checked
};

// The payload of a Kafka Connect record, {"schema": S, "payload": P} with
// exactly these two members in either order, whose S passes schemas' check
// and whose P is an object with neither a "schema" nor a "payload" member
// (else a reader would unwrap it a second time): P's text, which a record
// decoder reads as it reads the whole record (P's own validity is left to
// it). nullopt for anything else, to be decoded whole. P alone is held to
// the limits of a record: the schema's values no longer count towards them.
std::optional<std::string_view> connect_payload(std::string_view value, ConnectSchemas &schemas);

} // namespace kafka_sync
