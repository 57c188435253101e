// See run_as_owner.hpp. An error between the two calls needs no cleanup: the
// (sub)transaction's abort restores the user and the settings.
#include "apply/run_as_owner.hpp"

extern "C" {
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
}

namespace {

/* The role that called the apply function now running (become_function_owner): the sidecar's. */
Oid apply_caller = InvalidOid;

} // namespace

void switch_to_owner(Oid owner, const char *table, OwnerContext *ctx) {
    GetUserIdAndSecContext(&ctx->save_userid, &ctx->save_sec_context);
    ctx->save_nestlevel = -1;
    /*
     * Checked for the role that called the apply function, as it was when it
     * called (not the outer role of the session: a function of that role's
     * could call the apply function on behalf of a more privileged one).
     */
    const Oid caller = OidIsValid(apply_caller) ? apply_caller : GetUserId();
    if (!is_member_of_role(caller, owner))
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("role \"%s\" cannot apply changes to %s as its owner \"%s\"",
                               GetUserNameFromId(caller, false), table, GetUserNameFromId(owner, false)),
                        errdetail("A peer's changes run as the owner of the table they write."),
                        errhint("Connect the sidecar as a superuser, or GRANT \"%s\" TO \"%s\".",
                                GetUserNameFromId(owner, false), GetUserNameFromId(caller, false))));
    if (owner == ctx->save_userid)
        return;
    if (is_member_of_role(owner, caller)) {
        /* each may become the other: nothing to protect */
        SetUserIdAndSecContext(owner, ctx->save_sec_context);
        return;
    }
    SetUserIdAndSecContext(owner, ctx->save_sec_context | SECURITY_RESTRICTED_OPERATION);
    ctx->save_nestlevel = NewGUCNestLevel();
}

void restore_user(const OwnerContext *ctx) {
    if (ctx->save_nestlevel >= 0)
        AtEOXact_GUC(false, ctx->save_nestlevel);
    SetUserIdAndSecContext(ctx->save_userid, ctx->save_sec_context);
}

void become_function_owner(Oid fn_oid, OwnerContext *ctx) {
    GetUserIdAndSecContext(&ctx->save_userid, &ctx->save_sec_context);
    ctx->save_nestlevel = -1;
    HeapTuple tp = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn_oid));
    if (!HeapTupleIsValid(tp))
        elog(ERROR, "cache lookup failed for function %u", fn_oid);
    const Oid owner = ((Form_pg_proc)GETSTRUCT(tp))->proowner;
    ReleaseSysCache(tp);
    apply_caller = ctx->save_userid;
    SetUserIdAndSecContext(owner, ctx->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
    /* the owner's statements never resolve a name through the caller's search_path */
    ctx->save_nestlevel = NewGUCNestLevel();
    (void)set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0,
                            false);
}

Oid table_owner(Oid relid) {
    HeapTuple tp = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
    if (!HeapTupleIsValid(tp))
        elog(ERROR, "cache lookup failed for relation %u", relid);
    Oid owner = ((Form_pg_class)GETSTRUCT(tp))->relowner;
    ReleaseSysCache(tp);
    return owner;
}
