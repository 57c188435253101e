// One row of a table, read and written through the executor (see row_writer.hpp).
#include "apply/row_writer.hpp"

extern "C" {
#include "access/sysattr.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/acl.h"
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
    EvalPlanQualEnd(&w->epq);
    ExecCloseIndices(w->rri);
    ExecResetTupleTable(w->estate->es_tupleTable, false);
    FreeExecutorState(w->estate);
    table_close(w->rel, NoLock);
    pfree(w);
}

void row_writer_begin_change(RowWriter *w) {
    PushActiveSnapshot(GetTransactionSnapshot());
    /* what BEFORE UPDATE/DELETE triggers lock the row with: the rows earlier changes wrote must be visible */
    w->estate->es_output_cid = GetCurrentCommandId(true);
    AfterTriggerBeginQuery();
    w->found = false;
}

void row_writer_end_change(RowWriter *w) {
    AfterTriggerEndQuery(w->estate);
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

} // namespace

bool row_writer_find(RowWriter *w, const Datum *values, const bool *isnull, TransactionId *xmin) {
    store(w->search, values, isnull);
    w->found = RelationFindReplTupleByIndex(w->rel, w->key_index, LockTupleExclusive, w->search, w->local);
    if (w->found) {
        bool null;
        *xmin = DatumGetTransactionId(slot_getsysattr(w->local, MinTransactionIdAttributeNumber, &null));
    }
    return w->found;
}

void row_writer_insert(RowWriter *w, const Datum *values, const bool *isnull) {
    store(w->next, values, isnull);
    ExecSimpleRelationInsert(w->rri, w->estate, w->next);
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
    ExecSimpleRelationUpdate(w->rri, w->estate, &w->epq, w->local, next);
    w->found = false;
}

void row_writer_delete(RowWriter *w) {
    if (!w->found)
        elog(ERROR, "kafka_sync: delete of a row that was not looked up");
    EvalPlanQualSetSlot(&w->epq, w->local);
    ExecSimpleRelationDelete(w->rri, w->estate, &w->epq, w->local);
    w->found = false;
}
