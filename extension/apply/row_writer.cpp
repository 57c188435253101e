// One row of a table, read and written through the executor (see row_writer.hpp).
#include "apply/row_writer.hpp"
#include "apply/run_as_owner.hpp"

extern "C" {
#include "access/genam.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/sysattr.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
}

struct RowWriter {
    Relation rel;
    Oid key_index;
    EState *estate;
    ResultRelInfo *rri;
    EPQState epq;
    TupleTableSlot *search; /* the key to look for (virtual) */
    TupleTableSlot *local;  /* the row found, locked */
    TupleTableSlot *next;   /* the row to write (virtual) */
    bool found;
    /*
     * The key index scan, begun at the first lookup and kept until the
     * writer closes: beginning one costs more than the lookup itself (its
     * state is ~27 kB, allocated and freed each time). The index relation
     * is the one ExecOpenIndices opened.
     */
    Relation key_rel;
    IndexScanDesc scan;
    SnapshotData dirty; /* sees rows of transactions in progress, to wait for them */
    int nkeys;
    ScanKeyData keys[INDEX_MAX_KEYS];
};

bool row_writer_usable(Relation rel) {
    if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rules != nullptr)
        return false;
    /* policies apply to the SQL path's statements: let them */
    if (check_enable_rls(RelationGetRelid(rel), InvalidOid, true) == RLS_ENABLED)
        return false;
    /* the SQL path's statements check privileges (and report a missing one) */
    const AclMode needed = ACL_SELECT | ACL_INSERT | ACL_UPDATE | ACL_DELETE;
    if (pg_class_aclmask(RelationGetRelid(rel), GetUserId(), needed, ACLMASK_ALL) != needed)
        return false;
    /* statement triggers and transition tables fire only for statements */
    if (const TriggerDesc *td = rel->trigdesc)
        if (td->trig_insert_before_statement || td->trig_insert_after_statement || td->trig_update_before_statement ||
            td->trig_update_after_statement || td->trig_delete_before_statement || td->trig_delete_after_statement ||
            td->trig_insert_new_table || td->trig_update_old_table || td->trig_update_new_table ||
            td->trig_delete_old_table || td->trig_insert_instead_row || td->trig_update_instead_row ||
            td->trig_delete_instead_row)
            return false;
    return true;
}

Oid row_writer_key_index(Relation rel) {
    Oid index = RelationGetReplicaIndex(rel);
    return OidIsValid(index) ? index : RelationGetPrimaryKeyIndex(rel);
}

RowWriter *row_writer_open(Oid relid, Oid key_index) {
    auto *w = static_cast<RowWriter *>(palloc0(sizeof(RowWriter)));
    w->rel = table_open(relid, NoLock);
    w->key_index = key_index;

    EState *estate = CreateExecutorState();
    RangeTblEntry *rte = makeNode(RangeTblEntry);
    rte->rtekind = RTE_RELATION;
    rte->relid = relid;
    rte->relkind = w->rel->rd_rel->relkind;
    rte->rellockmode = RowExclusiveLock;
    ExecInitRangeTable(estate, list_make1(rte));
    ResultRelInfo *rri = makeNode(ResultRelInfo);
    InitResultRelInfo(rri, w->rel, 1, nullptr, 0);
    /*
     * The trigger functions' lookup info lives as long as the executor state:
     * looked up lazily, it would take the memory context current at the
     * first firing (one change's), and a later change would call through
     * what that context's reset freed (a SECURITY DEFINER function's cached
     * settings, say).
     */
    if (TriggerDesc *td = rri->ri_TrigDesc)
        for (int i = 0; i < td->numtriggers; i++)
            fmgr_info_cxt(td->triggers[i].tgfoid, &rri->ri_TrigFunctions[i], estate->es_query_cxt);
    /* what ExecGetTriggerResultRel and the trigger code look in */
    estate->es_opened_result_relations = lappend(estate->es_opened_result_relations, rri);
    ExecOpenIndices(rri, false);
    EvalPlanQualInit(&w->epq, estate, nullptr, NIL, -1);
    w->estate = estate;
    w->rri = rri;
    TupleDesc desc = RelationGetDescr(w->rel);
    w->search = ExecInitExtraTupleSlot(estate, desc, &TTSOpsVirtual);
    w->next = ExecInitExtraTupleSlot(estate, desc, &TTSOpsVirtual);
    w->local = table_slot_create(w->rel, &estate->es_tupleTable);
    return w;
}

void row_writer_close(RowWriter *w) {
    if (w->scan)
        index_endscan(w->scan);
    EvalPlanQualEnd(&w->epq);
    ExecCloseIndices(w->rri);
    ExecResetTupleTable(w->estate->es_tupleTable, false);
    FreeExecutorState(w->estate);
    table_close(w->rel, NoLock);
    pfree(w);
}

/* Where the table's own code runs (defaults, constraints, BEFORE triggers, AFTER triggers at the change's end). */
static void as_owner_begin(RowWriter *w, OwnerContext *ctx) {
    switch_to_owner(w->rel->rd_rel->relowner, RelationGetRelationName(w->rel), ctx);
}

void row_writer_begin_change(RowWriter *w) {
    PushActiveSnapshot(GetTransactionSnapshot());
    /* what BEFORE UPDATE/DELETE triggers lock the row with: the rows earlier changes wrote must be visible */
    w->estate->es_output_cid = GetCurrentCommandId(true);
    AfterTriggerBeginQuery();
    w->found = false;
}

void row_writer_end_change(RowWriter *w) {
    OwnerContext owner;
    as_owner_begin(w, &owner);
    AfterTriggerEndQuery(w->estate);
    restore_user(&owner);
    /* the found row's buffer pin is not kept from one change to the next */
    ExecClearTuple(w->local);
    PopActiveSnapshot();
    CommandCounterIncrement();
}

namespace {

void store(TupleTableSlot *slot, const Datum *values, const bool *isnull) {
    ExecClearTuple(slot);
    const int natts = slot->tts_tupleDescriptor->natts;
    memcpy(slot->tts_values, values, sizeof(Datum) * natts);
    memcpy(slot->tts_isnull, isnull, sizeof(bool) * natts);
    ExecStoreVirtualTuple(slot);
}

/*
 * The key index's scan, begun once: one equality key per index column, on
 * the column's type as the index's operator family compares it (the key
 * index is a unique btree on plain columns: a primary key or a replica
 * identity index).
 */
void begin_key_scan(RowWriter *w) {
    for (int i = 0; i < w->rri->ri_NumIndices && !w->key_rel; i++)
        if (RelationGetRelid(w->rri->ri_IndexRelationDescs[i]) == w->key_index)
            w->key_rel = w->rri->ri_IndexRelationDescs[i];
    if (!w->key_rel)
        elog(ERROR, "kafka_sync: key index %u of table \"%s\" is not open", w->key_index,
             RelationGetRelationName(w->rel));
    Relation idx = w->key_rel;
    w->nkeys = IndexRelationGetNumberOfKeyAttributes(idx);
    for (int i = 0; i < w->nkeys; i++) {
        if (idx->rd_index->indkey.values[i] == 0)
            elog(ERROR, "kafka_sync: key index \"%s\" has an expression column", RelationGetRelationName(idx));
        const Oid type = idx->rd_opcintype[i];
        const Oid op = get_opfamily_member(idx->rd_opfamily[i], type, type, BTEqualStrategyNumber);
        if (!OidIsValid(op))
            elog(ERROR, "kafka_sync: no equality operator for column %d of key index \"%s\"", i + 1,
                 RelationGetRelationName(idx));
        ScanKeyInit(&w->keys[i], i + 1, BTEqualStrategyNumber, get_opcode(op), (Datum)0);
        w->keys[i].sk_collation = idx->rd_indcollation[i];
    }
    InitDirtySnapshot(w->dirty);
    w->scan = index_beginscan(w->rel, idx, &w->dirty, w->nkeys, 0);
}

/*
 * The row with the key of w->search, locked, into w->local: what
 * RelationFindReplTupleByIndex does, on the kept scan. A row of a
 * transaction in progress is waited for, and the lookup starts over; so
 * does a row updated or deleted concurrently before it could be locked.
 */
bool find_by_key(RowWriter *w) {
    /*
     * The scan lives as long as the writer, in the executor state's memory:
     * it allocates on first use (a btree scan its killed-items array), and
     * the caller's context is a change's, reset after it.
     */
    MemoryContext caller = MemoryContextSwitchTo(w->estate->es_query_cxt);
    if (!w->scan)
        begin_key_scan(w);
    for (int i = 0; i < w->nkeys; i++) {
        const AttrNumber attno = w->key_rel->rd_index->indkey.values[i];
        w->keys[i].sk_argument = w->search->tts_values[attno - 1];
        if (w->search->tts_isnull[attno - 1])
            w->keys[i].sk_flags |= SK_ISNULL;
        else
            w->keys[i].sk_flags &= ~SK_ISNULL;
    }
    MemoryContextSwitchTo(caller);
    for (;;) {
        MemoryContextSwitchTo(w->estate->es_query_cxt);
        index_rescan(w->scan, w->keys, w->nkeys, nullptr, 0);
        bool found = false;
        TransactionId wait_for = InvalidTransactionId;
        /* a unique index: at most one row of the key is visible to the dirty snapshot */
        if (index_getnext_slot(w->scan, ForwardScanDirection, w->local)) {
            ExecMaterializeSlot(w->local);
            wait_for = TransactionIdIsValid(w->dirty.xmin) ? w->dirty.xmin : w->dirty.xmax;
            found = !TransactionIdIsValid(wait_for);
        }
        /* the index and heap pages are not kept pinned until the next lookup (VACUUM waits for pins) */
        index_rescan(w->scan, nullptr, w->nkeys, nullptr, 0);
        MemoryContextSwitchTo(caller);
        if (TransactionIdIsValid(wait_for)) {
            XactLockTableWait(wait_for, nullptr, nullptr, XLTW_None);
            continue;
        }
        if (!found)
            return false;
        TM_FailureData tmfd;
        PushActiveSnapshot(GetLatestSnapshot());
        const TM_Result res = table_tuple_lock(w->rel, &w->local->tts_tid, GetLatestSnapshot(), w->local,
                                               GetCurrentCommandId(false), LockTupleExclusive, LockWaitBlock, 0, &tmfd);
        PopActiveSnapshot();
        switch (res) {
        case TM_Ok: return true;
        case TM_Updated:
        case TM_Deleted: continue; /* changed by a transaction that committed meanwhile: look again */
        case TM_Invisible:
            elog(ERROR, "kafka_sync: attempted to lock an invisible row of table \"%s\"",
                 RelationGetRelationName(w->rel));
            break;
        default:
            elog(ERROR, "kafka_sync: unexpected table_tuple_lock status %u on table \"%s\"", res,
                 RelationGetRelationName(w->rel));
        }
    }
}

} // namespace

bool row_writer_find(RowWriter *w, const Datum *values, const bool *isnull, TransactionId *xmin) {
    store(w->search, values, isnull);
    w->found = find_by_key(w);
    if (w->found) {
        bool null;
        *xmin = DatumGetTransactionId(slot_getsysattr(w->local, MinTransactionIdAttributeNumber, &null));
    }
    return w->found;
}

void row_writer_insert(RowWriter *w, const Datum *values, const bool *isnull) {
    store(w->next, values, isnull);
    OwnerContext owner;
    as_owner_begin(w, &owner);
    ExecSimpleRelationInsert(w->rri, w->estate, w->next);
    restore_user(&owner);
    w->found = false;
}

void row_writer_update(RowWriter *w, const Datum *values, const bool *isnull, const bool *replace) {
    if (!w->found)
        elog(ERROR, "kafka_sync: update of a row that was not looked up");
    slot_getallattrs(w->local);
    TupleTableSlot *next = w->next;
    ExecClearTuple(next);
    const int natts = next->tts_tupleDescriptor->natts;
    for (int i = 0; i < natts; i++) {
        next->tts_values[i] = replace[i] ? values[i] : w->local->tts_values[i];
        next->tts_isnull[i] = replace[i] ? isnull[i] : w->local->tts_isnull[i];
    }
    ExecStoreVirtualTuple(next);
    EvalPlanQualSetSlot(&w->epq, next);
    OwnerContext owner;
    as_owner_begin(w, &owner);
    ExecSimpleRelationUpdate(w->rri, w->estate, &w->epq, w->local, next);
    restore_user(&owner);
    w->found = false;
}

void row_writer_delete(RowWriter *w) {
    if (!w->found)
        elog(ERROR, "kafka_sync: delete of a row that was not looked up");
    EvalPlanQualSetSlot(&w->epq, w->local);
    OwnerContext owner;
    as_owner_begin(w, &owner);
    ExecSimpleRelationDelete(w->rri, w->estate, &w->epq, w->local);
    restore_user(&owner);
    w->found = false;
}
