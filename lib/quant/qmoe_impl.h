/* qmoe_impl.h — the qmoe code's serialised-form constants now live in the
 * public header (the runtime reads the format too); kept for the encoder
 * and the tests that build malformed blobs. */
#ifndef MT_QMOE_IMPL_H
#define MT_QMOE_IMPL_H

#include "moetool/mt_qmoe.h"

#endif
