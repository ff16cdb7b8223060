#!/usr/bin/env bash
# device-mapper loads dm-wbcache / dm-repl by itself from a table line (request_module("dm-<target>")).
. "$(dirname "$0")/lib.sh"

O=$(loopdev origin 64); C=$(loopdev cache 16); D=$(loopdev data 64)
S=$(sectors "$O")
check_fails "autoload: dm_wbcache not loaded yet" grep -qw '^dm_wbcache' /proc/modules
check_fails "autoload: dm_repl not loaded yet" grep -qw '^dm_repl' /proc/modules
check_match "autoload: modinfo shows the dm-wbcache alias" 'alias: +dm-wbcache' "$(modinfo dm_wbcache)"
check_match "autoload: modinfo shows the dm-repl alias" 'alias: +dm-repl' "$(modinfo dm_repl)"
check "autoload: create wbcache from a table line" dmsetup create auto_wbc --table "0 $S wbcache $O $C 4096 0"
check "autoload: dm_wbcache got loaded" grep -qw '^dm_wbcache' /proc/modules
check "autoload: create repl from a table line" dmsetup create auto_repl --table "0 $S repl primary $D 10.0.0.2:7789 0"
check "autoload: dm_repl got loaded" grep -qw '^dm_repl' /proc/modules
check_match "autoload: dmsetup targets lists wbcache" 'wbcache +v1\.0\.0' "$(dmsetup targets)"
check_match "autoload: dmsetup targets lists repl" 'repl +v0\.3\.0' "$(dmsetup targets)"
check_fails "autoload: module in use cannot be removed" rmmod dm_wbcache
check "autoload: remove devices" dm_remove auto_wbc auto_repl
check "autoload: rmmod dm_wbcache after use" rmmod dm_wbcache
check "autoload: rmmod dm_repl after use" rmmod dm_repl
cleanup_dm
finish
