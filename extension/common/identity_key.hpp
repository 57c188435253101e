// The columns that identify a row of a table, for both sides: the source
// publishes them as a change's "before" key, the apply side looks rows up and
// keeps tombstones by them. One definition, so that both always agree.
#pragma once

extern "C" {
#include "postgres.h"

#include "nodes/bitmapset.h"
#include "utils/relcache.h"
}

namespace kafka_sync {

/*
 * The columns of rel's replica identity index, else of its primary key
 * (empty: neither), as RelationGetIndexAttrBitmap returns them: attnums
 * offset by FirstLowInvalidHeapAttributeNumber, in attnum order.
 */
Bitmapset *identity_key_columns(Relation rel);

} // namespace kafka_sync
