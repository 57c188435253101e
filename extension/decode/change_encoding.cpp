// Heap tuples in, Kafka key and value bytes out (see change_encoding.hpp).
#include "decode/change_encoding.hpp"

#include "boundary/pg_boundary.hpp"
#include "common/unix_time.hpp"
#include "wire/record_encoder.hpp"

extern "C" {
#include "access/detoast.h"
#include "access/htup_details.h"
#include "mb/pg_wchar.h"
#include "utils/timestamp.h"
}

namespace {

using kafka_sync::FieldValue;
using kafka_sync::RowImage;

enum class ImageKind {
    Full,    /* every published column */
    KeyOnly, /* old tuple under the default replica identity: others are not logged */
};

/*
 * Fill values[] from tuple. Unchanged TOASTed values (still on disk, not in
 * the WAL) are Absent: the record says nothing about them rather than
 * carrying a placeholder that a consumer could mistake for data.
 */
void fill_image(RelationInfo *info, Relation rel, HeapTuple tuple, ImageKind kind, bool from_wal, FieldValue *values) {
    TupleDesc tupdesc = RelationGetDescr(rel);
    const bool convert = GetDatabaseEncoding() != PG_UTF8;
    for (int i = 0; i < info->ncolumns; i++) {
        FieldValue &v = values[i];
        if (kind == ImageKind::KeyOnly && !info->is_key[i]) {
            v.state = FieldValue::State::Absent;
            continue;
        }
        bool isnull;
        Datum d = heap_getattr(tuple, info->attnums[i], tupdesc, &isnull);
        if (isnull) {
            v.state = FieldValue::State::Null;
            continue;
        }
        Form_pg_attribute att = TupleDescAttr(tupdesc, info->attnums[i] - 1);
        /* From a table (snapshot), the output function detoasts on its own. */
        if (from_wal && att->attlen == -1 && VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(d))) {
            v.state = FieldValue::State::Absent;
            continue;
        }
        char *text = OutputFunctionCall(&info->out_funcs[i], d);
        if (convert)
            text = pg_server_to_any(text, strlen(text), PG_UTF8);
        v.state = FieldValue::State::Present;
        v.text = text;
        v.len = strlen(text);
    }
}

kafka_sync::SourceMeta source_meta(const ChangeSource *source) {
    kafka_sync::SourceMeta meta;
    meta.commit_ts_ms = source->commit_ts_ms;
    meta.xid = source->xid;
    meta.lsn = source->commit_lsn;
    meta.snapshot = source->snapshot;
    return meta;
}

uint64 next_collection_order(RelationInfo *info, const ChangeSource *source) {
    if (info->txn_seen != source->txn_seq) {
        info->txn_seen = source->txn_seq;
        info->txn_changes = 0;
    }
    return ++info->txn_changes;
}

} // namespace

void encode_row_change(RelationInfo *info, Relation rel, char op, HeapTuple oldtuple, HeapTuple newtuple,
                       const ChangeSource *source, uint64 total_order, EncodedRecord *out,
                       const SnapshotRowVersion *version) {
    const size_t n = static_cast<size_t>(info->ncolumns);
    auto *old_values = static_cast<FieldValue *>(palloc0(sizeof(FieldValue) * Max(n, 1)));
    auto *new_values = static_cast<FieldValue *>(palloc0(sizeof(FieldValue) * Max(n, 1)));
    const bool full_old = rel->rd_rel->relreplident == REPLICA_IDENTITY_FULL;

    if (oldtuple)
        fill_image(info, rel, oldtuple, full_old ? ImageKind::Full : ImageKind::KeyOnly, true, old_values);
    if (newtuple)
        fill_image(info, rel, newtuple, ImageKind::Full, op != 'r', new_values);

    RowImage before{old_values, n};
    RowImage after{new_values, n};
    kafka_sync::ChangeEvent ev;
    ev.op = static_cast<kafka_sync::Op>(op);
    ev.before = oldtuple ? &before : nullptr;
    ev.after = newtuple ? &after : nullptr;
    ev.source = source_meta(source);
    if (version) {
        ev.source.has_row_ts = version->has_ts;
        ev.source.row_ts_ms = version->ts_ms;
        ev.source.row_origin = version->origin;
    }
    ev.event_ts_ms = unix_ms_now();
    ev.total_order = total_order;
    ev.data_collection_order = next_collection_order(info, source);
    const RowImage *key = op == 'd' ? (oldtuple ? &before : nullptr) : &after;

    kafka_sync::ks_guard([&]() {
        out->key.clear();
        out->value.clear();
        out->has_key = key && info->encoder->encode_key(*key, out->key);
        info->encoder->encode_value(ev, out->value);
    });
}

void encode_truncate(RelationInfo *info, const ChangeSource *source, uint64 total_order, EncodedRecord *out) {
    kafka_sync::ChangeEvent ev;
    ev.op = kafka_sync::Op::Truncate;
    ev.source = source_meta(source);
    ev.event_ts_ms = unix_ms_now();
    ev.total_order = total_order;
    ev.data_collection_order = next_collection_order(info, source);
    kafka_sync::ks_guard([&]() {
        out->key.clear();
        out->value.clear();
        out->has_key = false;
        info->encoder->encode_value(ev, out->value);
    });
}
