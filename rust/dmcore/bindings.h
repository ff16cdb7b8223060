/* SPDX-License-Identifier: GPL-2.0 */
/* Input of the module-local bindgen run (see Kbuild): what kernel::bindings lacks on 6.12. */
#include <linux/device-mapper.h>
#include <linux/dm-io.h>
#include <linux/dm-kcopyd.h>
#include <linux/crc32c.h>
#include <linux/bio.h>
#include <linux/completion.h>
#include <linux/net.h>
#include <linux/in.h>
#include <net/net_namespace.h>
#include <net/sock.h>
#include "shim.h"

/*
 * Constants defined as cast macros, which bindgen cannot evaluate: exported as typed constants
 * (the kernel's RUST_CONST_HELPER trick), so their values come from the headers, not from us.
 */
const blk_status_t DMCORE_BLK_STS_OK = BLK_STS_OK;
const blk_status_t DMCORE_BLK_STS_NOTSUPP = BLK_STS_NOTSUPP;
const blk_status_t DMCORE_BLK_STS_TIMEOUT = BLK_STS_TIMEOUT;
const blk_status_t DMCORE_BLK_STS_NOSPC = BLK_STS_NOSPC;
const blk_status_t DMCORE_BLK_STS_IOERR = BLK_STS_IOERR;
const blk_status_t DMCORE_BLK_STS_DM_REQUEUE = BLK_STS_DM_REQUEUE;
const blk_status_t DMCORE_BLK_STS_AGAIN = BLK_STS_AGAIN;
const blk_opf_t DMCORE_REQ_OP_MASK = REQ_OP_MASK;
const blk_opf_t DMCORE_REQ_FUA = REQ_FUA;
const blk_opf_t DMCORE_REQ_PREFLUSH = REQ_PREFLUSH;
const gfp_t DMCORE_GFP_NOIO = GFP_NOIO;
const gfp_t DMCORE_GFP_KERNEL = GFP_KERNEL;
const int DMCORE_IPPROTO_TCP = IPPROTO_TCP;
