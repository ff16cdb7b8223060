// SPDX-License-Identifier: GPL-2.0
/* This module's copy of the dmcore C shim (see Kbuild). */
#include "../dmcore/shim.c"
