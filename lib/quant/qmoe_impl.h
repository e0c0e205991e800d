/* qmoe_impl.h — private constants of the qmoe code's serialised form
 * (lib/quant/qmoe_code.c; the byte layout is in docs/qmoe.md and at the top
 * of qmoe_code.c). Tests include it to build malformed blobs. */
#ifndef MT_QMOE_IMPL_H
#define MT_QMOE_IMPL_H

#include "moetool/mt_qmoe.h"

#define MT_QMOE_MAGIC "QMOE"       /* matrix blob                      */
#define MT_QMOE_DICT_MAGIC "QMDT"  /* dictionary parameters            */
#define MT_QMOE_VERSION 1
#define MT_QMOE_HEADER_BYTES 40    /* matrix blob header                */
#define MT_QMOE_DICT_BYTES 40      /* dictionary parameters, whole      */
#define MT_QMOE_SCALES_F16 1       /* scale type: f16 (lo, hi) per row  */

#endif
