// SPDX-License-Identifier: GPL-2.0
/* dmcore_kunit's copy of the dmcore C shim (see Kbuild). */
#include "shim.c"
