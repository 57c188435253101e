// libpq connection and the kafka_sync SQL calls (see db_session.hpp).
#include "db_session.hpp"

#include "log.hpp"
#include "pg_array.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace kafka_sync_sidecar {

namespace {

constexpr uint32_t kTextOid = 25;
constexpr uint32_t kBoolOid = 16;

const char *kSubscriptionsSql =
    "SELECT sub_name, peer_node, brokers, topic, start, on_error, kafka_config::text, next_offset, "
    "coalesce(allowed_kafka_properties, ''), partial_transaction_wait_ms, partial_transaction_hold_ms, "
    "last_applied_lsn::text, streamed_transaction_memory_kb FROM kafka_sync.sidecar_subscriptions()";

int64_t int_column(PGresult *res, int row, int col) {
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), nullptr, 10);
}

// Server notices (e.g. "there is no transaction in progress" after a failed
// COMMIT) go to the debug log, not straight to stderr.
void on_notice(void *, const char *message) {
    LOG_DEBUG("database: %s", one_line(message).c_str());
}

std::string text_column(PGresult *res, int row, int col) {
    return PQgetisnull(res, row, col) ? std::string() : std::string(PQgetvalue(res, row, col));
}

// The options libpq reads from dsn, or null for a plain database name or a
// string it cannot parse (error then set, unmasked).
PQconninfoOption *parse_dsn(const std::string &dsn, std::string &error) {
    // libpq's test whether a dbname is a connection string to expand
    const bool conninfo = dsn.find('=') != std::string::npos || dsn.compare(0, 13, "postgresql://") == 0 ||
                          dsn.compare(0, 11, "postgres://") == 0;
    if (!conninfo)
        return nullptr;
    char *errmsg = nullptr;
    PQconninfoOption *options = PQconninfoParse(dsn.c_str(), &errmsg);
    if (!options)
        error = errmsg ? one_line(errmsg) : "out of memory";
    PQfreemem(errmsg);
    return options;
}

// libpq's own reading of the options given, secrets masked: the form shown
// when the textual masking left a secret value in sight.
std::string describe_options(const PQconninfoOption *options) {
    std::string out;
    for (const PQconninfoOption *o = options; o->keyword; o++) {
        if (!o->val)
            continue;
        if (!out.empty())
            out += ' ';
        out += o->keyword;
        out += '=';
        if (o->dispchar[0] == '*') {
            out += "****";
            continue;
        }
        std::string value = o->val;
        bool plain = !value.empty() && value.find_first_of(" \t\n\r\f\v'\\") == std::string::npos;
        if (plain) {
            out += value;
            continue;
        }
        out += '\'';
        for (char c : value) {
            if (c == '\'' || c == '\\')
                out += '\\';
            out += c;
        }
        out += '\'';
    }
    return out;
}

} // namespace

const std::vector<std::string> &conninfo_secret_keywords() {
    // built once (the first call is on the main thread, before any runner),
    // never freed: no global object with a destructor
    static const std::vector<std::string> *keywords = [] {
        auto *out = new std::vector<std::string>;
        char *errmsg = nullptr;
        // "" parses to every option libpq knows, without the environment's defaults
        if (PQconninfoOption *all = PQconninfoParse("", &errmsg)) {
            for (const PQconninfoOption *o = all; o->keyword; o++)
                if (o->dispchar[0] == '*')
                    out->push_back(o->keyword);
            PQconninfoFree(all);
        }
        PQfreemem(errmsg);
        if (out->empty()) // out of memory: at least the two libpq 15 has
            *out = {"password", "sslpassword"};
        return out;
    }();
    return *keywords;
}

std::string mask_dsn(const std::string &dsn) {
    std::string masked = mask_conninfo(dsn, conninfo_secret_keywords());
    // Cross-check with libpq's own parse: should a secret value still be in
    // sight (a grammar the scan does not know), libpq's reading is shown.
    std::string error;
    PQconninfoOption *options = parse_dsn(dsn, error);
    if (!options)
        return masked;
    bool in_sight = false;
    for (const PQconninfoOption *o = options; o->keyword; o++)
        if (o->val && o->val[0] && o->dispchar[0] == '*' && masked.find(o->val) != std::string::npos)
            in_sight = true;
    if (in_sight)
        masked = describe_options(options);
    PQconninfoFree(options);
    return masked;
}

std::string mask_dsn_message(const std::string &message, const std::string &dsn) {
    std::string out = mask_conninfo_message(message, dsn, conninfo_secret_keywords());
    std::string error;
    if (PQconninfoOption *options = parse_dsn(dsn, error)) {
        std::vector<std::string> secrets;
        for (const PQconninfoOption *o = options; o->keyword; o++)
            if (o->val && o->dispchar[0] == '*')
                secrets.push_back(o->val);
        PQconninfoFree(options);
        out = mask_values(out, secrets);
    }
    return out;
}

bool check_dsn(const std::string &dsn, std::string &error, bool &has_secret) {
    has_secret = false;
    std::string parse_error;
    PQconninfoOption *options = parse_dsn(dsn, parse_error);
    if (!parse_error.empty()) {
        error = mask_conninfo_message(parse_error, dsn, conninfo_secret_keywords());
        return false;
    }
    if (options) {
        for (const PQconninfoOption *o = options; o->keyword; o++)
            if (o->val && o->val[0] && o->dispchar[0] == '*')
                has_secret = true;
        PQconninfoFree(options);
    }
    return true;
}

bool DbSession::connect(std::string &error) {
    close();
    // Keywords before "dbname" are defaults the DSN may override: TCP
    // keepalives notice a vanished server within a minute, not two hours.
    // application_name comes after it and wins: the server recognises the
    // session applying a subscription by it (subscription_status shows
    // "no sidecar" without one, drop_subscription ends it).
    const char *keywords[] = {"keepalives_idle",
                              "keepalives_interval",
                              "keepalives_count",
                              "connect_timeout",
                              "dbname",
                              "application_name",
                              nullptr};
    const char *values[] = {"20", "10", "3", "10", dsn_.c_str(), application_name_.c_str(), nullptr};
    PGconn *conn = PQconnectdbParams(keywords, values, 1);
    if (!conn) {
        error = "out of memory";
        return false;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        // libpq may quote a piece of the connection string it cannot use
        error = mask_dsn_message(one_line(PQerrorMessage(conn)), dsn_);
        PQfinish(conn);
        return false;
    }
    PQsetNoticeProcessor(conn, on_notice, nullptr);
    // What a crash loses is read from Kafka again: the offset and the origin
    // progress commit with the rows. So commits need not wait for the WAL
    // flush (native logical replication's apply workers do the same).
    // The search_path apply_chunk pins, for apply_transactions too (a
    // procedure that commits cannot pin it itself).
    PGresult *res = PQexec(conn, "SET synchronous_commit = off; SET search_path = pg_catalog, pg_temp");
    const bool set_ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!set_ok) {
        error = one_line(PQerrorMessage(conn));
        PQfinish(conn);
        return false;
    }
    conn_ = conn;
    std::lock_guard<std::mutex> guard(cancel_mutex_);
    cancel_ = PQgetCancel(conn_);
    return true;
}

void DbSession::close() {
    {
        std::lock_guard<std::mutex> guard(cancel_mutex_);
        if (cancel_)
            PQfreeCancel(cancel_);
        cancel_ = nullptr;
    }
    if (conn_)
        PQfinish(conn_);
    conn_ = nullptr;
    pending_ = Pending::None;
    chunk_prepared_ = transactions_prepared_ = false;
}

void DbSession::cancel() {
    std::lock_guard<std::mutex> guard(cancel_mutex_);
    if (cancel_) {
        char errbuf[256];
        PQcancel(cancel_, errbuf, sizeof errbuf);
    }
}

DbStatus DbSession::usable() const {
    if (!conn_)
        return DbStatus{DbStatus::Kind::Lost, "", "no connection"};
    if (pending_ != Pending::None)
        return DbStatus{DbStatus::Kind::Failed, "",
                        "internal error: the result of the apply call in flight was not read"};
    return DbStatus();
}

DbStatus DbSession::check(PGresult *res, ExecStatusType expected) {
    DbStatus st;
    if (res && PQresultStatus(res) == expected)
        return st;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
    st.sqlstate = state ? state : "";
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : nullptr;
    st.message = one_line(primary ? primary : (conn_ ? PQerrorMessage(conn_) : "no connection"));
    if (st.message.empty())
        st.message = "unexpected result " + std::string(res ? PQresStatus(PQresultStatus(res)) : "(none)");
    // Class 08 (connection exception) and 57P01..57P03 (the server is shutting
    // down or restarting) end the session even if libpq has not noticed yet.
    if (!conn_ || PQstatus(conn_) != CONNECTION_OK || st.sqlstate.compare(0, 2, "08") == 0 || st.sqlstate == "57P01" ||
        st.sqlstate == "57P02" || st.sqlstate == "57P03") {
        st.kind = DbStatus::Kind::Lost;
        close();
    } else if (st.sqlstate == "42704" || st.sqlstate == "55000") {
        st.kind = DbStatus::Kind::Gone;
    } else {
        st.kind = DbStatus::Kind::Failed;
    }
    return st;
}

DbStatus DbSession::exec(const char *sql) {
    if (DbStatus u = usable(); !u.ok())
        return u;
    PGresult *res = PQexec(conn_, sql);
    DbStatus st = check(res, PQresultStatus(res) == PGRES_TUPLES_OK ? PGRES_TUPLES_OK : PGRES_COMMAND_OK);
    PQclear(res);
    return st;
}

DbStatus DbSession::commit() {
    if (DbStatus u = usable(); !u.ok())
        return u;
    PGresult *res = PQexec(conn_, "COMMIT");
    DbStatus st = check(res, PGRES_COMMAND_OK);
    if (st.ok() && strcmp(PQcmdStatus(res), "COMMIT") != 0)
        st = DbStatus{DbStatus::Kind::Failed, "",
                      std::string("the transaction was rolled back (") + PQcmdStatus(res) + ")"};
    PQclear(res);
    return st;
}

DbStatus DbSession::read_subscriptions(std::vector<SubscriptionConfig> &out, const std::string *only_sub) {
    out.clear();
    if (DbStatus u = usable(); !u.ok())
        return u;
    PGresult *res;
    if (only_sub) {
        std::string sql = std::string(kSubscriptionsSql) + " WHERE sub_name = $1";
        const char *params[] = {only_sub->c_str()};
        res = PQexecParams(conn_, sql.c_str(), 1, nullptr, params, nullptr, nullptr, 0);
    } else {
        res = PQexec(conn_, kSubscriptionsSql);
    }
    DbStatus st = check(res, PGRES_TUPLES_OK);
    if (st.ok()) {
        for (int i = 0; i < PQntuples(res); i++) {
            SubscriptionConfig s;
            s.name = text_column(res, i, 0);
            s.peer = text_column(res, i, 1);
            s.brokers = text_column(res, i, 2);
            s.topic = text_column(res, i, 3);
            s.start = text_column(res, i, 4);
            s.on_error = text_column(res, i, 5);
            s.kafka_config = text_column(res, i, 6);
            if (!PQgetisnull(res, i, 7))
                s.next_offset = int_column(res, i, 7);
            s.allowed_kafka_properties = text_column(res, i, 8);
            if (!PQgetisnull(res, i, 9))
                s.partial_wait_ms = std::max<int64_t>(int_column(res, i, 9), 1000);
            if (!PQgetisnull(res, i, 10))
                s.partial_hold_ms = std::max<int64_t>(int_column(res, i, 10), 1000);
            if (!PQgetisnull(res, i, 11))
                (void)parse_lsn(PQgetvalue(res, i, 11), s.last_applied_lsn);
            if (!PQgetisnull(res, i, 12))
                s.stream_keep_bytes = static_cast<size_t>(std::max<int64_t>(int_column(res, i, 12), 0)) * 1024;
            out.push_back(std::move(s));
        }
    }
    PQclear(res);
    return st;
}

ApplyCall ApplyCall::chunk(const std::vector<Record> &records, bool careful) {
    return ApplyCall(records, true, careful);
}

ApplyCall ApplyCall::transactions(const std::vector<Record> &records) {
    return ApplyCall(records, false, false);
}

// Parameters $2..$5 of apply_chunk and apply_transactions: the records as
// binary arrays.
ApplyCall::ApplyCall(const std::vector<Record> &records, bool chunk, bool careful) : chunk_(chunk), careful_(careful) {
    std::vector<int64_t> offsets_v;
    std::vector<const std::string *> keys_v, values_v, headers_v;
    offsets_v.reserve(records.size());
    keys_v.reserve(records.size());
    values_v.reserve(records.size());
    headers_v.reserve(records.size());
    for (const Record &r : records) {
        offsets_v.push_back(r.offset);
        keys_v.push_back(r.key ? &*r.key : nullptr);
        values_v.push_back(r.value ? &*r.value : nullptr);
        headers_v.push_back(&r.headers);
    }
    offsets_ = encode_int8_array(offsets_v);
    keys_ = encode_bytea_array(keys_v);
    values_ = encode_bytea_array(values_v);
    headers_ = encode_bytea_array(headers_v);
}

DbStatus DbSession::send_apply(const std::string &sub, const ApplyCall &call) {
    if (DbStatus u = usable(); !u.ok())
        return u;
    const Oid types[6] = {kTextOid, kInt8ArrayOid, kByteaArrayOid, kByteaArrayOid, kByteaArrayOid, kBoolOid};
    const char *params[6] = {sub.c_str(),         call.offsets_.data(), call.keys_.data(),
                             call.values_.data(), call.headers_.data(), call.careful_ ? "t" : "f"};
    const int lengths[6] = {0,
                            static_cast<int>(call.offsets_.size()),
                            static_cast<int>(call.keys_.size()),
                            static_cast<int>(call.values_.size()),
                            static_cast<int>(call.headers_.size()),
                            0};
    const int formats[6] = {0, 1, 1, 1, 1, 0};
    const char *sql = call.chunk_ ? "SELECT applied, skipped, conflicts, dead_letters, failed_offset, failed_error "
                                    "FROM kafka_sync.apply_chunk($1::text, $2::int8[], $3::bytea[], $4::bytea[], "
                                    "$5::bytea[], $6::bool)"
                                  : "CALL kafka_sync.apply_transactions($1::text, $2::int8[], $3::bytea[], "
                                    "$4::bytea[], $5::bytea[], NULL, NULL, NULL)";
    // A named statement, not PQexecParams' unnamed one: the server plans an
    // unnamed statement for its parameters' values, folding each into the plan
    // as a constant, and copies the plan; with megabytes of records a call
    // (Connect schemas make a record five times larger) those copies cost
    // more than decoding the records. A named statement soon gets a generic
    // plan, which reads the parameters where they arrived.
    const char *name = call.chunk_ ? "kafka_sync_apply_chunk" : "kafka_sync_apply_transactions";
    bool &prepared = call.chunk_ ? chunk_prepared_ : transactions_prepared_;
    const int nparams = call.chunk_ ? 6 : 5;
    if (!prepared) {
        PGresult *res = PQprepare(conn_, name, sql, nparams, types);
        DbStatus st = check(res, PGRES_COMMAND_OK);
        PQclear(res);
        if (!st.ok())
            return st;
        prepared = true;
    }
    // In blocking mode the whole message is written before this returns.
    if (!PQsendQueryPrepared(conn_, name, nparams, params, lengths, formats, 0))
        return check(nullptr, PGRES_TUPLES_OK);
    pending_ = call.chunk_ ? Pending::Chunk : Pending::Transactions;
    return DbStatus();
}

DbStatus DbSession::receive_apply(ApplyResult &out) {
    out = ApplyResult();
    const Pending kind = pending_;
    pending_ = Pending::None;
    if (!conn_)
        return DbStatus{DbStatus::Kind::Lost, "", "no connection"};
    if (kind == Pending::None)
        return DbStatus{DbStatus::Kind::Failed, "", "internal error: no apply call in flight"};
    PGresult *res = PQgetResult(conn_);
    // the statement's end: read to the last result so that the session is free
    while (PGresult *more = PQgetResult(conn_))
        PQclear(more);
    DbStatus st = check(res, PGRES_TUPLES_OK);
    const char *what = kind == Pending::Chunk ? "apply_chunk" : "apply_transactions";
    if (st.ok() && PQntuples(res) == 1) {
        out.applied = int_column(res, 0, 0);
        out.skipped = int_column(res, 0, 1);
        out.conflicts = int_column(res, 0, 2);
        if (kind == Pending::Chunk) {
            out.dead_letters = int_column(res, 0, 3);
            if (!PQgetisnull(res, 0, 4)) {
                out.failed_offset = int_column(res, 0, 4);
                out.failed_error = text_column(res, 0, 5);
            }
        }
    } else if (st.ok()) {
        st = DbStatus{DbStatus::Kind::Failed, "",
                      std::string(what) + " returned " + std::to_string(PQntuples(res)) + " rows"};
    }
    PQclear(res);
    return st;
}

DbStatus DbSession::record_failure(const std::string &sub, int64_t offset, const Record *record,
                                   const std::string &error) {
    if (DbStatus u = usable(); !u.ok())
        return u;
    const std::string off = std::to_string(offset);
    const Oid types[6] = {kTextOid, 20, kByteaOid, kByteaOid, kByteaOid, kTextOid};
    const char *params[6] = {sub.c_str(),
                             off.c_str(),
                             record && record->key ? record->key->data() : nullptr,
                             record && record->value ? record->value->data() : nullptr,
                             record ? record->headers.data() : nullptr,
                             error.c_str()};
    const int lengths[6] = {0,
                            0,
                            record && record->key ? static_cast<int>(record->key->size()) : 0,
                            record && record->value ? static_cast<int>(record->value->size()) : 0,
                            record ? static_cast<int>(record->headers.size()) : 0,
                            0};
    const int formats[6] = {0, 0, 1, 1, 1, 0};
    PGresult *res = PQexecParams(conn_,
                                 "SELECT kafka_sync.record_failure($1::text, $2::int8, $3::bytea, $4::bytea, "
                                 "$5::bytea, $6::text)",
                                 6, types, params, lengths, formats, 0);
    DbStatus st = check(res, PGRES_TUPLES_OK);
    PQclear(res);
    return st;
}

DbStatus DbSession::report_progress(const std::string &sub, std::optional<int64_t> high_water,
                                    const std::string &error) {
    if (DbStatus u = usable(); !u.ok())
        return u;
    const std::string hw = high_water ? std::to_string(*high_water) : std::string();
    const char *params[3] = {sub.c_str(), high_water ? hw.c_str() : nullptr, error.empty() ? nullptr : error.c_str()};
    PGresult *res = PQexecParams(conn_, "SELECT kafka_sync.report_progress($1::text, $2::int8, $3::text)", 3, nullptr,
                                 params, nullptr, nullptr, 0);
    DbStatus st = check(res, PGRES_TUPLES_OK);
    PQclear(res);
    return st;
}

DbStatus DbSession::begin_resync(const std::string &sub, int64_t gap_offset, int64_t snapshot_offset,
                                 uint64_t snapshot_lsn) {
    if (DbStatus u = usable(); !u.ok())
        return u;
    const std::string gap = std::to_string(gap_offset), at = std::to_string(snapshot_offset);
    const std::string lsn = format_lsn(snapshot_lsn);
    const char *params[4] = {sub.c_str(), gap.c_str(), at.c_str(), lsn.c_str()};
    PGresult *res = PQexecParams(conn_, "SELECT kafka_sync._begin_resync($1::text, $2::int8, $3::int8, $4::pg_lsn)", 4,
                                 nullptr, params, nullptr, nullptr, 0);
    DbStatus st = check(res, PGRES_TUPLES_OK);
    PQclear(res);
    return st;
}

DbStatus DbSession::count_enabled_subscriptions(int64_t &count) {
    count = 0;
    if (DbStatus u = usable(); !u.ok())
        return u;
    PGresult *res = PQexec(conn_, "SELECT count(*) FROM kafka_sync.sidecar_subscriptions()");
    DbStatus st = check(res, PGRES_TUPLES_OK);
    if (st.ok())
        count = int_column(res, 0, 0);
    PQclear(res);
    return st;
}

DbStatus DbSession::stream_begin(const std::string &sub) {
    if (DbStatus u = usable(); !u.ok())
        return u;
    const char *params[1] = {sub.c_str()};
    PGresult *res =
        PQexecParams(conn_, "SELECT kafka_sync.apply_stream_begin($1::text)", 1, nullptr, params, nullptr, nullptr, 0);
    DbStatus st = check(res, PGRES_TUPLES_OK);
    PQclear(res);
    return st;
}

DbStatus DbSession::stream_commit(const std::string &sub, const std::string &headers, int64_t next_offset,
                                  bool &applies) {
    applies = false;
    if (DbStatus u = usable(); !u.ok())
        return u;
    const std::string offset = std::to_string(next_offset);
    const char *params[3] = {sub.c_str(), headers.data(), offset.c_str()};
    const int lengths[3] = {0, static_cast<int>(headers.size()), 0};
    const int formats[3] = {0, 1, 0}; // the header blob in binary
    PGresult *res = PQexecParams(conn_, "SELECT kafka_sync.apply_stream_commit($1::text, $2::bytea, $3::int8)", 3,
                                 nullptr, params, lengths, formats, 0);
    DbStatus st = check(res, PGRES_TUPLES_OK);
    if (st.ok())
        applies = PQntuples(res) == 1 && !PQgetisnull(res, 0, 0) && PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    return st;
}

DbStatus DbSession::set_hold(const std::string &sub, int64_t hold_offset) {
    if (DbStatus u = usable(); !u.ok())
        return u;
    const std::string hold = std::to_string(hold_offset);
    const char *params[2] = {sub.c_str(), hold_offset >= 0 ? hold.c_str() : nullptr};
    PGresult *res = PQexecParams(conn_, "SELECT kafka_sync.apply_hold($1::text, $2::int8)", 2, nullptr, params, nullptr,
                                 nullptr, 0);
    DbStatus st = check(res, PGRES_TUPLES_OK);
    PQclear(res);
    return st;
}

} // namespace kafka_sync_sidecar
