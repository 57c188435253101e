// See identity_key.hpp.
#include "common/identity_key.hpp"

extern "C" {
#include "utils/rel.h"
}

namespace kafka_sync {

Bitmapset *identity_key_columns(Relation rel) {
    Bitmapset *keys = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_IDENTITY_KEY);
    if (bms_is_empty(keys))
        keys = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_PRIMARY_KEY);
    return keys;
}

} // namespace kafka_sync
