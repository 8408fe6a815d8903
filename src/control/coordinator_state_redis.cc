// The coordinator's state in Redis (>= 6; tested with Debian's 7.0).
//
// Every mutation is one Lua script (EVALSHA), so it is atomic across all
// coordinators sharing the Redis. Keys (all under "shardwire:v1:", binary-safe):
//
//   kv:<key>          string   rendezvous value; counters as decimal text (INCRBY)
//   kvgen             string   counter bumped by every Put/Add (KvGeneration)
//   src:<source_id>   hash     one source (fields below); key TTL = delete_after,
//                              renewed by every register/heartbeat, so a source
//                              vanishes even when no coordinator runs
//   srcidx:<hex(id)>  set      source ids of one model identity (hex of the identity)
//   srcall            set      every source id
//   job:<hex(job)>    hash     one job (fields below)
//   jobs              set      hex job names (for the reaper)
//   state_id          string   32 hex digits naming this state (CoordinatorState::StateId);
//                              set once (SET NX), no TTL: gone only with the data
//
// The source id sets are cleaned lazily: a member whose hash is gone is removed
// by the next ListSources or Reap. Their TTL is extended (never shortened) to
// delete_after by every register/heartbeat, so an idle deployment leaves
// nothing behind.
//
// Source hash fields: v = "1" (format), mi = model identity, ix = hex(mi),
// rg = registered unix ms, hb = last heartbeat unix ms (decimal), st = "1" when a loader
// marked it STALE, "2" when the reaper noted that its lease ran out (no mark), else "",
// sr = stale reason, mu = until when (unix ms) a loader's mark
// holds st = "1" against heartbeats (absent: no hold), rec = the rest of the record in the
// "SWS1" blob below. State is derived at read time: STALE when st = "1" or
// now - hb >= stale_after; gone when now - hb >= delete_after (deleted on sight,
// in addition to the key TTL, because callers pass `now`).
//
// Job hash fields: e = membership epoch (decimal); per member id M:
// r:M = "SWM1" blob, h:M = last heartbeat unix ms, v:M = committed version
// (decimal uint64, compared as digit strings so no precision is lost in Lua),
// j:M = joined unix ms. Members past member_expire_after are removed (and the
// epoch bumped): all of them by Join, GetJob and Reap; by HeartbeatMember, Leave
// and CommitVersion only the member named (the in-memory state expires all there
// too; the next GetJob or Reap brings both to the same members and epoch).
//
// Blobs: 4-byte magic, then fields each as a little-endian uint32 length and
// that many bytes. SWS1: instance_id, rank, world_size (decimal), layout,
// layout_fingerprint, metadata, attribute count (decimal), then key, value per
// attribute. SWM1: role (decimal), group, rank, world_size, layout, metadata,
// attribute count, key, value per attribute.
//
// Errors from scripts come back as error replies "<KIND> <message>" with KIND
// one of NOTFOUND, EXISTS, PRECOND, BADARG, CORRUPT, mapped to ErrorCodes;
// WRONGTYPE (a key of the wrong type, i.e. corrupt) maps to kCorruptData.
// STATELOST <stored id> answers a bound call (Put, Add, the job scripts; their
// last ARGV is the state id the caller is bound to, '' for none) when state_id
// holds another id or none, before the script changes anything: kFailedPrecondition.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>

#include "control/coordinator_state.h"
#include "control/coordinator_state_redis.h"
#include "control/redis_clock.h"
#include "control/redis_connection.h"
#include "control/redis_pipeline.h"
#include "control/rendezvous_internal.h"
#include "control/state_id.h"

namespace shardwire::control {
namespace {

constexpr std::string_view kPrefix = "shardwire:v1:";

// ---------------------------------------------------------------- Lua scripts

// Shared helpers, prepended to every script.
constexpr std::string_view kPrelude = R"lua(
local P = 'shardwire:v1:'
local function fail(kind, msg) return redis.error_reply(kind .. ' ' .. msg) end
local function is_err(r) return type(r) == 'table' and r.err ~= nil end
-- A bound call (CoordinatorState, "Bound calls"): its last ARGV is the state id it is bound to
-- ('' = unbound). The error when Redis holds another id or none (the data was lost).
local function state_lost(sid)
  if sid == '' then return nil end
  local cur = redis.call('GET', P .. 'state_id')
  if cur ~= sid then return fail('STATELOST', cur or '') end
  return nil
end
-- Scripts check every key and field they will write before the first write: Redis does not
-- roll a script back when a command fails part-way, so a corrupt key found late would leave
-- the change half-applied. These return nil when fine, else a CORRUPT message naming the key.
-- `key` missing or of Redis type `want`:
local function wrong_type(key, want)
  local t = redis.call('TYPE', key).ok
  if t == 'none' or t == want then return nil end
  return key .. ' is a ' .. t .. ', not a ' .. want
end
-- Whether text `v` is a counter INCRBY/HINCRBY accept and can bump: what Redis's string2ll
-- parses ('0', or an optional '-' and digits without a leading zero, within int64; not "007",
-- "-0", "+1", " 1" or 20 digits), and below 9e18, so that the small increments of a script
-- (1 per call, 1 per expired member) cannot overflow int64 either. Redis refuses any other
-- value only when the increment runs, after the script's earlier writes.
local function is_counter(v)
  if v == '0' then return true end
  local digits = string.match(v, '^%-?([1-9]%d*)$')
  if not digits or #digits > 19 then return false end
  if #digits < 19 then return true end
  if string.sub(v, 1, 1) == '-' then return digits <= '9223372036854775808' end
  return digits < '9000000000000000000'
end
-- String `key` missing or a counter (is_counter) INCR/INCRBY can bump:
local function bad_counter(key)
  local t = wrong_type(key, 'string')
  if t then return t end
  local v = redis.call('GET', key)
  if v and not is_counter(v) then return key .. ' holds ' .. v .. ', not an integer counter' end
  return nil
end
-- Hash `key` missing or a hash whose field `f` is missing or a counter (is_counter) HINCRBY can bump:
local function bad_hash_counter(key, f)
  local t = wrong_type(key, 'hash')
  if t then return t end
  local v = redis.call('HGET', key, f)
  if v and not is_counter(v) then return key .. ': field ' .. f .. ' holds ' .. v .. ', not an integer counter' end
  return nil
end
local function extend(key, d)
  local t = redis.call('PTTL', key)
  if t == -1 or (t >= 0 and t < d) then redis.call('PEXPIRE', key, d) end
end
-- Loads source `id`: returns 'ok', hb, ix, st | 'absent' | 'corrupt', message.
-- Deletes it (and its index entries) when its lease is over at `now`.
local function src_load(id, now, d)
  local key = P .. 'src:' .. id
  local r = redis.pcall('HMGET', key, 'hb', 'ix', 'st')
  if is_err(r) then return 'corrupt', key .. ': ' .. r.err end
  if not r[1] then
    if redis.call('EXISTS', key) == 1 then return 'corrupt', key .. ': field hb missing' end
    return 'absent'
  end
  local hb = tonumber(r[1])
  if not hb or not r[2] then return 'corrupt', key .. ': field hb or ix malformed' end
  if now - hb >= d then
    local bad = wrong_type(P .. 'srcidx:' .. r[2], 'set') or wrong_type(P .. 'srcall', 'set')
    if bad then return 'corrupt', bad end
    redis.call('DEL', key)
    redis.call('SREM', P .. 'srcidx:' .. r[2], id)
    redis.call('SREM', P .. 'srcall', id)
    return 'absent'
  end
  return 'ok', hb, r[2], r[3]
end
-- A heartbeat or repeated registration of source hash `key` at `now`, whose field st is
-- `st` ('1': a loader's mark; '2': the reaper's note of a lease that ran out, no mark):
-- clears either, unless a loader's mark still holds (field mu, only ever set beside
-- st = '1'). A source with neither costs no read and no write. Returns nil for a source
-- without a loader's mark; an error message for a malformed mu; else false, the mark's
-- reason (field sr) and whether the mark still holds.
local function src_unmark(key, now, st)
  if st == '2' then
    redis.call('HSET', key, 'st', '', 'sr', '')
    return nil
  end
  if st ~= '1' then return nil end
  local f = redis.call('HMGET', key, 'mu', 'sr')
  local sr = f[2] or ''
  if f[1] then
    local until_ms = tonumber(f[1])
    if not until_ms then return key .. ': field mu malformed' end
    if now < until_ms then return false, sr, true end
  end
  redis.call('HSET', key, 'st', '', 'sr', '')
  redis.call('HDEL', key, 'mu')
  return false, sr, false
end
local function member_drop(key, mid)
  redis.call('HDEL', key, 'r:' .. mid, 'h:' .. mid, 'v:' .. mid, 'j:' .. mid)
end
-- Loads member `mid` of job hash `key`: 'live', hb | 'absent' | 'corrupt', message.
-- A member past its lease is dropped (epoch bumped) and reported absent.
local function member_load(key, mid, now, m)
  local bad = bad_hash_counter(key, 'e')
  if bad then return 'corrupt', bad end
  local hb = redis.pcall('HGET', key, 'h:' .. mid)
  if is_err(hb) then return 'corrupt', key .. ': ' .. hb.err end
  if not hb then return 'absent' end
  local n = tonumber(hb)
  if not n then return 'corrupt', key .. ': field h:' .. mid .. ' malformed' end
  if now - n >= m then
    member_drop(key, mid)
    redis.call('HINCRBY', key, 'e', 1)
    return 'absent'
  end
  return 'live', n
end
-- The members of job hash `key` past their lease: returns their ids (a list), or nil, message.
-- Writes nothing; checks the key's type, the epoch and every heartbeat field, so a script can
-- call it before its first write and then drop them (job_drop) without failing half-way.
local function job_scan(key, now, m)
  local bad = bad_hash_counter(key, 'e')
  if bad then return nil, bad end
  local fields = redis.call('HKEYS', key)
  local expired = {}
  for _, f in ipairs(fields) do
    if string.sub(f, 1, 2) == 'h:' then
      local hb = tonumber(redis.call('HGET', key, f))
      if not hb then return nil, key .. ': field ' .. f .. ' malformed' end
      if now - hb >= m then expired[#expired + 1] = string.sub(f, 3) end
    end
  end
  return expired
end
-- Drops the members `expired` (from job_scan) of job hash `key` and bumps the epoch by their
-- count; returns the count.
local function job_drop(key, expired)
  for _, mid in ipairs(expired) do member_drop(key, mid) end
  if #expired > 0 then redis.call('HINCRBY', key, 'e', #expired) end
  return #expired
end
-- Drops every member of job hash `key` past its lease; returns count or nil, message.
-- Checks every heartbeat field and the epoch before it drops anyone (nothing half-done).
local function job_expire(key, now, m)
  local expired, err = job_scan(key, now, m)
  if not expired then return nil, err end
  return job_drop(key, expired)
end
)lua";

// ARGV: key, value, bound state id
constexpr std::string_view kPutScript = R"lua(
local lost = state_lost(ARGV[#ARGV])
if lost then return lost end
local bad = bad_counter(P .. 'kvgen')
if bad then return fail('CORRUPT', bad) end
redis.call('SET', P .. 'kv:' .. ARGV[1], ARGV[2])
redis.call('INCR', P .. 'kvgen')
return 1
)lua";

// ARGV: key, delta, request id ('' = none), its TTL in ms, bound state id. Returns the new value as decimal
// text (no double rounding); a request id applied before to the same key returns the first result
// unchanged (the marker is keyed by the length-prefixed key and the id, so ids never collide
// across keys).
constexpr std::string_view kAddScript = R"lua(
local lost = state_lost(ARGV[#ARGV])
if lost then return lost end
local k = P .. 'kv:' .. ARGV[1]
local req = ARGV[3] ~= '' and (P .. 'addreq:' .. #ARGV[1] .. ':' .. ARGV[1] .. ARGV[3]) or nil
if req then
  local seen = redis.call('GET', req)
  if seen then return seen end
end
local bad = bad_counter(P .. 'kvgen')
if bad then return fail('CORRUPT', bad) end
local r = redis.pcall('INCRBY', k, ARGV[2])
if is_err(r) then
  -- The value's fault: not a counter, or the sum would overflow. Anything else (READONLY,
  -- OOM, MISCONF, NOREPLICAS: checked at a script's first write) goes back as Redis said it.
  local e = r.err
  if e:find('not an integer', 1, true) or e:find('overflow', 1, true) or e:find('WRONGTYPE', 1, true) then
    return fail('BADARG', e)
  end
  return r
end
redis.call('INCR', P .. 'kvgen')
local v = redis.call('GET', k)
if req then redis.call('SET', req, v, 'PX', ARGV[4]) end
return v
)lua";

// ARGV: id, now, delete_ms, identity, hex(identity), rec, proposed ('1': the caller chose the id)
// Returns 1 for a new record; for a proposed id whose live record holds the same identity and
// rec (a repeat: its lease renewed as a heartbeat would), {stored registration time, the stale
// reason of a loader's mark that still holds it, else ''}.
constexpr std::string_view kRegisterScript = R"lua(
local id, now, d = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local key = P .. 'src:' .. id
if ARGV[7] == '1' then
  local s, hb, _, st = src_load(id, now, d)
  if s == 'corrupt' then return fail('CORRUPT', hb) end
  if s == 'ok' then
    local r = redis.call('HMGET', key, 'mi', 'rec', 'rg')
    if r[1] ~= ARGV[4] or r[2] ~= ARGV[6] or not r[3] then
      return fail('EXISTS', 'source ' .. id .. ' is registered with other contents')
    end
    local bad, sr, held = src_unmark(key, now, st)
    if bad then return fail('CORRUPT', bad) end
    if now > hb then redis.call('HSET', key, 'hb', ARGV[2]) end
    redis.call('PEXPIRE', key, d)
    extend(P .. 'srcidx:' .. ARGV[5], d)
    extend(P .. 'srcall', d)
    return {r[3], held and sr or ''}
  end
elseif redis.call('EXISTS', key) == 1 then
  return fail('EXISTS', key)
end
local bad = wrong_type(P .. 'srcidx:' .. ARGV[5], 'set') or wrong_type(P .. 'srcall', 'set')
if bad then return fail('CORRUPT', bad) end
redis.call('HSET', key, 'v', '1', 'mi', ARGV[4], 'ix', ARGV[5], 'rg', ARGV[2], 'hb', ARGV[2],
           'st', '', 'sr', '', 'rec', ARGV[6])
redis.call('PEXPIRE', key, d)
redis.call('SADD', P .. 'srcidx:' .. ARGV[5], id)
extend(P .. 'srcidx:' .. ARGV[5], d)
redis.call('SADD', P .. 'srcall', id)
extend(P .. 'srcall', d)
return 1
)lua";

// ARGV: id, now, delete_ms
// Returns 1 for a source that carried no mark; for a marked one {1 (READY: the mark is
// cleared) or 2 (STALE: it still holds), the mark's reason}.
constexpr std::string_view kHeartbeatScript = R"lua(
local id, now, d = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local s, hb, ix, st = src_load(id, now, d)
if s == 'corrupt' then return fail('CORRUPT', hb) end
if s == 'absent' then return fail('NOTFOUND', 'source ' .. id .. ' is not registered (or its lease ended)') end
local key = P .. 'src:' .. id
local bad, sr, held = src_unmark(key, now, st)
if bad then return fail('CORRUPT', bad) end
if now > hb then redis.call('HSET', key, 'hb', ARGV[2]) end
redis.call('PEXPIRE', key, d)
extend(P .. 'srcidx:' .. ix, d)
extend(P .. 'srcall', d)
if bad == nil then return 1 end
return {held and 2 or 1, sr}
)lua";

// ARGV: id, now, delete_ms, reason, held until (unix ms; '': no hold, a running hold stays)
constexpr std::string_view kMarkStaleScript = R"lua(
local id, now, d = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local s, msg = src_load(id, now, d)
if s == 'corrupt' then return fail('CORRUPT', msg) end
if s == 'absent' then return fail('NOTFOUND', 'source ' .. id .. ' is not registered') end
redis.call('HSET', P .. 'src:' .. id, 'st', '1', 'sr', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', P .. 'src:' .. id, 'mu', ARGV[5]) end
return 1
)lua";

// ARGV: id, now, delete_ms
constexpr std::string_view kDeregisterScript = R"lua(
local id, now, d = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local s, msg, ix = src_load(id, now, d)
if s == 'corrupt' then return fail('CORRUPT', msg) end
if s == 'absent' then return fail('NOTFOUND', 'source ' .. id .. ' is not registered') end
local bad = wrong_type(P .. 'srcidx:' .. ix, 'set') or wrong_type(P .. 'srcall', 'set')
if bad then return fail('CORRUPT', bad) end
redis.call('DEL', P .. 'src:' .. id)
redis.call('SREM', P .. 'srcidx:' .. ix, id)
redis.call('SREM', P .. 'srcall', id)
return 1
)lua";

// ARGV: hex(identity) or '' for all, now, stale_ms, delete_ms, state filter ('', '1', '2'),
// count only ('1') or not ('').
// Returns 7 entries per source: id, state, mi, rg, hb, sr, rec; counting only: the number of
// READY and of STALE sources (no record leaves Redis).
constexpr std::string_view kListScript = R"lua(
local now, stale, d, filter = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local count_only = ARGV[6] == '1'
local set = P .. 'srcall'
if ARGV[1] ~= '' then set = P .. 'srcidx:' .. ARGV[1] end
local ids = redis.pcall('SMEMBERS', set)
if is_err(ids) then return fail('CORRUPT', set .. ': ' .. ids.err) end
local out = {}
local counts = {0, 0}
for _, id in ipairs(ids) do
  local s, hb, ix, st = src_load(id, now, d)
  if s == 'corrupt' then return fail('CORRUPT', hb) end
  if s == 'absent' or (ARGV[1] ~= '' and ix ~= ARGV[1]) then
    -- Gone, or the id now names a record of another identity (its old record expired by
    -- TTL, which cleans no index, and the id was registered again): not this identity's.
    redis.call('SREM', set, id)
  else
    local state = '1'
    if st == '1' or now - hb >= stale then state = '2' end
    if count_only then
      counts[tonumber(state)] = counts[tonumber(state)] + 1
    elseif filter == '' or filter == state then
      local r = redis.call('HMGET', P .. 'src:' .. id, 'mi', 'rg', 'hb', 'sr', 'rec')
      -- A reason only for a loader's mark; a lease that ran out gets one built from hb by
      -- the reader (the reaper's note, st '2', dates from when it first ran out).
      if st ~= '1' then r[4] = '' end
      out[#out + 1] = id
      out[#out + 1] = state
      for i = 1, 5 do out[#out + 1] = r[i] end
    end
  end
end
if count_only then return counts end
return out
)lua";

// ARGV: hex(job), now, member_ms, member_id, rec, bound state id
constexpr std::string_view kJoinScript = R"lua(
local lost = state_lost(ARGV[#ARGV])
if lost then return lost end
local now, m, mid = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local key = P .. 'job:' .. ARGV[1]
local bad = wrong_type(P .. 'jobs', 'set')
if bad then return fail('CORRUPT', bad) end
-- Everything is checked before the first write (job_scan reads the epoch and every member's
-- heartbeat, the joining member's too): a corrupt field found after the joining member's
-- expired entry was dropped would leave the job half-changed.
local expired, err = job_scan(key, now, m)
if not expired then return fail('CORRUPT', err) end
local hb = tonumber(redis.call('HGET', key, 'h:' .. mid))
if hb and now - hb < m then return fail('EXISTS', 'member ' .. mid .. ' is already a live member of the job') end
job_drop(key, expired)
redis.call('HSET', key, 'r:' .. mid, ARGV[5], 'h:' .. mid, ARGV[2], 'v:' .. mid, '0', 'j:' .. mid, ARGV[2])
redis.call('HINCRBY', key, 'e', 1)
redis.call('SADD', P .. 'jobs', ARGV[1])
return redis.call('HGETALL', key)
)lua";

// ARGV: hex(job), now, member_ms, member_id, bound state id
constexpr std::string_view kHeartbeatMemberScript = R"lua(
local lost = state_lost(ARGV[#ARGV])
if lost then return lost end
local now, m, mid = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local key = P .. 'job:' .. ARGV[1]
local s, hb = member_load(key, mid, now, m)
if s == 'corrupt' then return fail('CORRUPT', hb) end
if s == 'absent' then return fail('NOTFOUND', 'member ' .. mid .. ' is not a live member of the job') end
if now > hb then redis.call('HSET', key, 'h:' .. mid, ARGV[2]) end
return 1
)lua";

// ARGV: hex(job), now, member_ms, member_id, bound state id
constexpr std::string_view kLeaveScript = R"lua(
local lost = state_lost(ARGV[#ARGV])
if lost then return lost end
local now, m, mid = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local key = P .. 'job:' .. ARGV[1]
local s, msg = member_load(key, mid, now, m)
if s == 'corrupt' then return fail('CORRUPT', msg) end
if s == 'absent' then return fail('NOTFOUND', 'member ' .. mid .. ' is not a live member of the job') end
member_drop(key, mid)
redis.call('HINCRBY', key, 'e', 1)
return 1
)lua";

// ARGV: hex(job), now, member_ms, bound state id
constexpr std::string_view kGetJobScript = R"lua(
local lost = state_lost(ARGV[#ARGV])
if lost then return lost end
local now, m = tonumber(ARGV[2]), tonumber(ARGV[3])
local key = P .. 'job:' .. ARGV[1]
local n, err = job_expire(key, now, m)
if not n then return fail('CORRUPT', err) end
if redis.call('HEXISTS', key, 'e') == 0 then return fail('NOTFOUND', 'no such job') end
return redis.call('HGETALL', key)
)lua";

// ARGV: hex(job), now, member_ms, member_id, version (decimal uint64), bound state id
constexpr std::string_view kCommitScript = R"lua(
local lost = state_lost(ARGV[#ARGV])
if lost then return lost end
local now, m, mid, ver = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local key = P .. 'job:' .. ARGV[1]
local s, msg = member_load(key, mid, now, m)
if s == 'corrupt' then return fail('CORRUPT', msg) end
if s == 'absent' then return fail('NOTFOUND', 'member ' .. mid .. ' is not a live member of the job') end
local cur = redis.call('HGET', key, 'v:' .. mid)
if not cur or not string.match(cur, '^%d+$') then return fail('CORRUPT', key .. ': field v:' .. mid .. ' malformed') end
if #ver < #cur or (#ver == #cur and ver < cur) then
  return fail('PRECOND', 'member ' .. mid .. ' committed version ' .. cur .. '; version ' .. ver .. ' would go backwards')
end
redis.call('HSET', key, 'v:' .. mid, ver)
return 1
)lua";

// ARGV: now, stale_ms, delete_ms, member_ms. Returns {marked, deleted, expired}.
// Corrupt records are skipped (reported by the reads that meet them).
constexpr std::string_view kReapScript = R"lua(
local now, stale, d, m = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local marked, deleted, expired = 0, 0, 0
local ids = redis.pcall('SMEMBERS', P .. 'srcall')
if not is_err(ids) then
  for _, id in ipairs(ids) do
    local key = P .. 'src:' .. id
    local r = redis.pcall('HMGET', key, 'hb', 'ix', 'st')
    if not is_err(r) then
      local hb = tonumber(r[1])
      if not r[1] then
        if redis.call('EXISTS', key) == 0 then redis.call('SREM', P .. 'srcall', id) end
      elseif hb and r[2] then
        if now - hb >= d then
          if not wrong_type(P .. 'srcidx:' .. r[2], 'set') then  -- checked only here: rare, and per source
            redis.call('DEL', key)
            redis.call('SREM', P .. 'srcidx:' .. r[2], id)
            redis.call('SREM', P .. 'srcall', id)
            deleted = deleted + 1
          end
        elseif now - hb >= stale and (r[3] or '') == '' then
          -- st '2': STALE by its lease, noted with the reason listings show; not a loader's
          -- mark, so the source's next heartbeat clears it without reporting a mark.
          redis.call('HSET', key, 'st', '2', 'sr',
                     'no heartbeat for ' .. (now - hb) .. ' ms (stale after ' .. ARGV[2] .. ' ms)')
          marked = marked + 1
        end
      end
    end
  end
end
local jobs = redis.pcall('SMEMBERS', P .. 'jobs')
if not is_err(jobs) then
  for _, j in ipairs(jobs) do
    local key = P .. 'job:' .. j
    if redis.call('EXISTS', key) == 0 then
      redis.call('SREM', P .. 'jobs', j)
    else
      local n = job_expire(key, now, m)
      if n then expired = expired + n end
    end
  end
end
return {marked, deleted, expired}
)lua";

// ARGV: a new state id. Keeps the stored id when there is one, else stores ARGV[1];
// returns the id now stored. No TTL: the id lives as long as the data it names.
constexpr std::string_view kStateIdScript = R"lua(
redis.call('SET', P .. 'state_id', ARGV[1], 'NX')
return redis.call('GET', P .. 'state_id')
)lua";

RedisScript MakeScript(std::string name, std::string_view body) {
  std::string full(kPrelude);
  full += body;
  return RedisScript{std::move(name), std::move(full)};
}

// ---------------------------------------------------------------- blob codec

void PutField(std::string& out, std::string_view field) {
  std::uint32_t n = static_cast<std::uint32_t>(field.size());
  char len[4] = {static_cast<char>(n & 0xFF), static_cast<char>((n >> 8) & 0xFF), static_cast<char>((n >> 16) & 0xFF),
                 static_cast<char>((n >> 24) & 0xFF)};
  out.append(len, 4);
  out.append(field);
}

std::string_view BytesView(const std::vector<std::byte>& b) {
  return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
}

std::vector<std::byte> ToBytes(std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return std::vector<std::byte>(p, p + s.size());
}

void PutAttributes(std::string& out, const std::map<std::string, std::string>& attrs) {
  PutField(out, std::to_string(attrs.size()));
  for (const auto& [k, v] : attrs) {
    PutField(out, k);
    PutField(out, v);
  }
}

// Reads fields of a blob; every failure names `where` (the Redis key and field).
class BlobReader {
 public:
  BlobReader(std::string_view blob, std::string where) : rest_(blob), where_(std::move(where)) {}

  Status Magic(std::string_view magic) {
    if (rest_.substr(0, magic.size()) != magic) return Corrupt(fmt::format("magic is not {}", magic));
    rest_.remove_prefix(magic.size());
    return Status::Ok();
  }
  Result<std::string_view> Field() {
    if (rest_.size() < 4) return Corrupt("truncated (field length)");
    const auto* u = reinterpret_cast<const unsigned char*>(rest_.data());
    std::uint32_t n = u[0] | (u[1] << 8) | (u[2] << 16) | (static_cast<std::uint32_t>(u[3]) << 24);
    rest_.remove_prefix(4);
    if (rest_.size() < n) return Corrupt(fmt::format("truncated (field of {} bytes)", n));
    std::string_view f = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return f;
  }
  template <typename T>
  Result<T> Number() {
    SW_ASSIGN_OR_RETURN(std::string_view f, Field());
    T v{};
    auto [ptr, ec] = std::from_chars(f.data(), f.data() + f.size(), v);
    if (f.empty() || ec != std::errc() || ptr != f.data() + f.size()) {
      return Corrupt(fmt::format("'{}' is not a number", f));
    }
    return v;
  }
  Result<std::map<std::string, std::string>> Attributes() {
    SW_ASSIGN_OR_RETURN(std::uint32_t n, Number<std::uint32_t>());
    if (n > 100000) return Corrupt(fmt::format("{} attributes", n));
    std::map<std::string, std::string> out;
    for (std::uint32_t i = 0; i < n; ++i) {
      SW_ASSIGN_OR_RETURN(std::string_view k, Field());
      SW_ASSIGN_OR_RETURN(std::string_view v, Field());
      out.emplace(std::string(k), std::string(v));
    }
    return out;
  }
  Status End() {
    if (!rest_.empty()) return Corrupt(fmt::format("{} trailing bytes", rest_.size()));
    return Status::Ok();
  }
  Status Corrupt(std::string_view what) const { return CorruptData(fmt::format("Redis record {}: {}", where_, what)); }

 private:
  std::string_view rest_;
  std::string where_;
};

std::string EncodeSource(const SourceRecord& r) {
  std::string out = "SWS1";
  PutField(out, r.instance_id);
  PutField(out, std::to_string(r.rank));
  PutField(out, std::to_string(r.world_size));
  PutField(out, r.layout);
  PutField(out, r.layout_fingerprint);
  PutField(out, BytesView(r.metadata));
  PutAttributes(out, r.attributes);
  return out;
}

Status DecodeSource(std::string_view blob, const std::string& where, SourceRecord* r) {
  BlobReader in(blob, where);
  SW_RETURN_IF_ERROR(in.Magic("SWS1"));
  SW_ASSIGN_OR_RETURN(std::string_view inst, in.Field());
  r->instance_id = std::string(inst);
  SW_ASSIGN_OR_RETURN(r->rank, in.Number<int>());
  SW_ASSIGN_OR_RETURN(r->world_size, in.Number<int>());
  SW_ASSIGN_OR_RETURN(std::string_view layout, in.Field());
  r->layout = std::string(layout);
  SW_ASSIGN_OR_RETURN(std::string_view fp, in.Field());
  r->layout_fingerprint = std::string(fp);
  SW_ASSIGN_OR_RETURN(std::string_view md, in.Field());
  r->metadata = ToBytes(md);
  SW_ASSIGN_OR_RETURN(r->attributes, in.Attributes());
  return in.End();
}

std::string EncodeMember(const JobMember& m) {
  std::string out = "SWM1";
  PutField(out, std::to_string(static_cast<int>(m.role)));
  PutField(out, m.group);
  PutField(out, std::to_string(m.rank));
  PutField(out, std::to_string(m.world_size));
  PutField(out, m.layout);
  PutField(out, BytesView(m.metadata));
  PutAttributes(out, m.attributes);
  return out;
}

Status DecodeMember(std::string_view blob, const std::string& where, JobMember* m) {
  BlobReader in(blob, where);
  SW_RETURN_IF_ERROR(in.Magic("SWM1"));
  SW_ASSIGN_OR_RETURN(int role, in.Number<int>());
  if (role != static_cast<int>(JobRole::kPublisher) && role != static_cast<int>(JobRole::kSubscriber)) {
    return in.Corrupt(fmt::format("role {}", role));
  }
  m->role = static_cast<JobRole>(role);
  SW_ASSIGN_OR_RETURN(std::string_view group, in.Field());
  m->group = std::string(group);
  SW_ASSIGN_OR_RETURN(m->rank, in.Number<int>());
  SW_ASSIGN_OR_RETURN(m->world_size, in.Number<int>());
  SW_ASSIGN_OR_RETURN(std::string_view layout, in.Field());
  m->layout = std::string(layout);
  SW_ASSIGN_OR_RETURN(std::string_view md, in.Field());
  m->metadata = ToBytes(md);
  SW_ASSIGN_OR_RETURN(m->attributes, in.Attributes());
  return in.End();
}

std::string Hex(std::string_view s) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char c : s) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

template <typename T>
bool ParseNumber(std::string_view s, T* out) {
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return !s.empty() && ec == std::errc() && ptr == s.data() + s.size();
}

std::string_view ReplyText(const redisReply* r) {
  return r->str == nullptr ? std::string_view() : std::string_view(r->str, r->len);
}

class RedisCoordinatorState final : public CoordinatorState {
 public:
  RedisCoordinatorState(std::unique_ptr<RedisConnectionPool> pool,
                        std::vector<std::unique_ptr<RedisPipeline>> pipelines, LeasePolicy policy)
      : pool_(std::move(pool)),
        pipelines_(std::move(pipelines)),
        policy_(policy),
        stale_ms_(std::to_string(std::max<std::int64_t>(1, LeaseMs(policy.source_stale_after_s)))),
        delete_ms_(std::to_string(std::max<std::int64_t>(1, LeaseMs(policy.source_delete_after_s)))),
        member_ms_(std::to_string(std::max<std::int64_t>(1, LeaseMs(policy.member_expire_after_s)))),
        rng_(std::random_device{}()),
        put_(MakeScript("put", kPutScript)),
        add_(MakeScript("add", kAddScript)),
        register_(MakeScript("register_source", kRegisterScript)),
        heartbeat_(MakeScript("heartbeat_source", kHeartbeatScript)),
        mark_stale_(MakeScript("mark_source_stale", kMarkStaleScript)),
        deregister_(MakeScript("deregister_source", kDeregisterScript)),
        list_(MakeScript("list_sources", kListScript)),
        join_(MakeScript("join_job", kJoinScript)),
        heartbeat_member_(MakeScript("heartbeat_member", kHeartbeatMemberScript)),
        leave_(MakeScript("leave_job", kLeaveScript)),
        get_job_(MakeScript("get_job", kGetJobScript)),
        commit_(MakeScript("commit_version", kCommitScript)),
        reap_(MakeScript("reap", kReapScript)),
        state_id_script_(MakeScript("state_id", kStateIdScript)) {}

  ~RedisCoordinatorState() override { pipelines_.clear(); }

  Status Put(const std::string& key, std::span<const std::byte> value, const std::string& state_id) override {
    SW_RETURN_IF_ERROR(control::ValidateKey(key));
    SW_RETURN_IF_ERROR(control::ValidateValueSize(value.size(), key));
    std::string_view v(reinterpret_cast<const char*>(value.data()), value.size());
    SW_ASSIGN_OR_RETURN(RedisReplyPtr r, pool_->Eval(put_, {key, v, state_id}, /*idempotent=*/true));
    return CheckBoundReply(*r, "Put of key '" + key + "'", state_id);
  }

  Result<std::optional<std::vector<std::byte>>> Get(const std::string& key) override {
    SW_RETURN_IF_ERROR(control::ValidateKey(key));
    std::string k = std::string(kPrefix) + "kv:" + key;
    SW_ASSIGN_OR_RETURN(RedisReplyPtr r, pool_->Command({"GET", k}, true));
    if (r->type == REDIS_REPLY_NIL) return std::optional<std::vector<std::byte>>();
    if (r->type == REDIS_REPLY_STRING) return std::optional<std::vector<std::byte>>(ToBytes(ReplyText(r.get())));
    if (r->type == REDIS_REPLY_ERROR) SW_RETURN_IF_ERROR(MapError(ReplyText(r.get()), "Get of key '" + key + "'", k));
    return CorruptData(fmt::format("Redis key {}: unexpected reply type {}", k, r->type));
  }

  Result<std::int64_t> Add(const std::string& key, std::int64_t delta, const std::string& request_id,
                           const std::string& state_id) override {
    SW_RETURN_IF_ERROR(control::ValidateKey(key));
    std::string d = std::to_string(delta);
    SW_ASSIGN_OR_RETURN(RedisReplyPtr r,
                        pool_->Eval(add_, {key, d, request_id, std::to_string(kAddRequestIdTtlMs), state_id}, false));
    SW_RETURN_IF_ERROR(CheckBoundReply(*r, "Add to key '" + key + "'", state_id));
    std::int64_t v = 0;
    if (r->type != REDIS_REPLY_STRING || !ParseNumber(ReplyText(r.get()), &v)) {
      return CorruptData(fmt::format("Redis key {}kv:{}: counter reply is not a number", kPrefix, key));
    }
    return v;
  }

  Result<std::uint64_t> KvGeneration() override {
    std::string k = std::string(kPrefix) + "kvgen";
    SW_ASSIGN_OR_RETURN(RedisReplyPtr r, pool_->Command({"GET", k}, true));
    // An error reply (LOADING while a restarted Redis replays its append-only file, BUSY,
    // WRONGTYPE) is Redis's answer, not the counter's value: mapped like every other reply.
    SW_RETURN_IF_ERROR(CheckReply(*r, "KvGeneration"));
    if (r->type == REDIS_REPLY_NIL) return std::uint64_t{0};
    std::uint64_t v = 0;
    if (r->type != REDIS_REPLY_STRING || !ParseNumber(ReplyText(r.get()), &v)) {
      return CorruptData(fmt::format("Redis key {}: not a counter", k));
    }
    return v;
  }

  Result<SourceRecord> RegisterSource(SourceRecord record, std::int64_t now_ms) override {
    record.state = SourceState::kReady;
    record.stale_reason.clear();
    record.registered_unix_ms = now_ms;
    record.last_heartbeat_unix_ms = now_ms;
    std::string rec = EncodeSource(record);
    std::string ix = Hex(record.model_identity);
    std::string now = std::to_string(now_ms);
    const bool proposed = !record.source_id.empty();
    for (int attempt = 0; attempt < 8; ++attempt) {
      if (!proposed) record.source_id = NewSourceId();
      SW_ASSIGN_OR_RETURN(
          RedisReplyPtr r,
          pool_->Eval(register_,
                      {record.source_id, now, delete_ms_, record.model_identity, ix, rec, proposed ? "1" : ""}, false));
      const bool exists = r->type == REDIS_REPLY_ERROR && ReplyText(r.get()).substr(0, 7) == "EXISTS ";
      if (exists && !proposed) continue;  // a random id collided: draw another
      if (exists) return AlreadyExists(std::string(ReplyText(r.get()).substr(7)));
      SW_RETURN_IF_ERROR(CheckReply(*r, "RegisterSource"));
      if (r->type == REDIS_REPLY_ARRAY) {  // a repeat of a proposed id's registration
        if (r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
            r->element[1]->type != REDIS_REPLY_STRING ||
            !ParseNumber(ReplyText(r->element[0]), &record.registered_unix_ms)) {
          return CorruptData(fmt::format("Redis record {}src:{}: field rg is not a number", kPrefix, record.source_id));
        }
        if (r->element[1]->len > 0) {  // a loader's mark still holds it STALE
          record.state = SourceState::kStale;
          record.stale_reason = std::string(ReplyText(r->element[1]));
        }
      }
      return record;
    }
    return Internal("RegisterSource: 8 random source ids in a row collided");
  }

  Result<SourceCounts> CountSources(std::int64_t now_ms) override {
    SW_ASSIGN_OR_RETURN(RedisReplyPtr r,
                        pool_->Eval(list_, {"", std::to_string(now_ms), stale_ms_, delete_ms_, "", "1"}, false));
    SW_RETURN_IF_ERROR(CheckReply(*r, "CountSources"));
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_INTEGER ||
        r->element[1]->type != REDIS_REPLY_INTEGER || r->element[0]->integer < 0 || r->element[1]->integer < 0) {
      return CorruptData("CountSources: Redis script returned a malformed reply");
    }
    return SourceCounts{static_cast<std::uint64_t>(r->element[0]->integer),
                        static_cast<std::uint64_t>(r->element[1]->integer)};
  }

  Result<SourceHeartbeat> HeartbeatSource(const std::string& source_id, std::int64_t now_ms) override {
    SW_ASSIGN_OR_RETURN(RedisReplyPtr r,
                        pool_->Eval(heartbeat_, {source_id, std::to_string(now_ms), delete_ms_}, true));
    return HeartbeatFound(*r);
  }

  Result<std::vector<SourceRecord>> ListSources(const std::string& model_identity, std::optional<SourceState> state,
                                                std::int64_t now_ms) override {
    std::string filter = state ? std::to_string(static_cast<int>(*state)) : std::string();
    SW_ASSIGN_OR_RETURN(
        RedisReplyPtr r,
        pool_->Eval(list_, {Hex(model_identity), std::to_string(now_ms), stale_ms_, delete_ms_, filter, ""}, false));
    SW_RETURN_IF_ERROR(CheckReply(*r, "ListSources"));
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 7 != 0) {
      return CorruptData("ListSources: Redis script returned a malformed reply");
    }
    std::vector<SourceRecord> out;
    out.reserve(r->elements / 7);
    for (size_t i = 0; i < r->elements; i += 7) {
      redisReply** e = r->element + i;
      std::string id(ReplyText(e[0]));
      std::string where = fmt::format("{}src:{}", kPrefix, id);
      for (int f = 0; f < 7; ++f) {
        if (e[f]->type != REDIS_REPLY_STRING) {
          return CorruptData(fmt::format("Redis record {}: a field is missing", where));
        }
      }
      SourceRecord rec;
      rec.source_id = id;
      rec.state = ReplyText(e[1]) == "2" ? SourceState::kStale : SourceState::kReady;
      rec.model_identity = std::string(ReplyText(e[2]));
      if (!ParseNumber(ReplyText(e[3]), &rec.registered_unix_ms) ||
          !ParseNumber(ReplyText(e[4]), &rec.last_heartbeat_unix_ms)) {
        return CorruptData(fmt::format("Redis record {}: field rg or hb is not a number", where));
      }
      if (rec.state == SourceState::kStale) {
        rec.stale_reason = std::string(ReplyText(e[5]));
        if (rec.stale_reason.empty()) {
          rec.stale_reason =
              fmt::format("no heartbeat for {} ms (stale after {} ms)", now_ms - rec.last_heartbeat_unix_ms, stale_ms_);
        }
      }
      SW_RETURN_IF_ERROR(DecodeSource(ReplyText(e[6]), where + " field rec", &rec));
      out.push_back(std::move(rec));
    }
    std::sort(out.begin(), out.end(), [](const SourceRecord& a, const SourceRecord& b) {
      if (a.instance_id != b.instance_id) return a.instance_id < b.instance_id;
      if (a.rank != b.rank) return a.rank < b.rank;
      return a.source_id < b.source_id;
    });
    return out;
  }

  Status MarkSourceStale(const std::string& source_id, const std::string& reason, std::int64_t now_ms,
                         bool hold) override {
    SW_ASSIGN_OR_RETURN(
        RedisReplyPtr r,
        pool_->Eval(
            mark_stale_,
            {source_id, std::to_string(now_ms), delete_ms_, reason.empty() ? std::string("marked stale") : reason,
             hold ? std::to_string(MarkHeldUntilMs(now_ms, LeaseMs(policy_.source_mark_hold_s))) : std::string()},
            true));
    return CheckReply(*r, "MarkSourceStale");
  }

  Status DeregisterSource(const std::string& source_id) override {
    // Deregistration removes whatever record exists, even one whose lease
    // ended (now = 0 disables the lease check), as the in-memory state does.
    SW_ASSIGN_OR_RETURN(RedisReplyPtr r, pool_->Eval(deregister_, {source_id, "0", delete_ms_}, false));
    return CheckReply(*r, "DeregisterSource");
  }

  Result<JobView> JoinJob(const std::string& job, JobMember member, std::int64_t now_ms,
                          const std::string& state_id) override {
    std::string hex = Hex(job);
    SW_ASSIGN_OR_RETURN(
        RedisReplyPtr r,
        pool_->Eval(join_, {hex, std::to_string(now_ms), member_ms_, member.member_id, EncodeMember(member), state_id},
                    false));
    SW_RETURN_IF_ERROR(CheckBoundReply(*r, "JoinJob of '" + member.member_id + "' to job '" + job + "'", state_id));
    return DecodeJob(job, *r);
  }

  Status HeartbeatMember(const std::string& job, const std::string& member_id, std::int64_t now_ms,
                         const std::string& state_id) override {
    SW_ASSIGN_OR_RETURN(
        RedisReplyPtr r,
        pool_->Eval(heartbeat_member_, {Hex(job), std::to_string(now_ms), member_ms_, member_id, state_id}, true));
    return CheckBoundReply(*r, "HeartbeatMember of job '" + job + "'", state_id);
  }

  Status LeaveJob(const std::string& job, const std::string& member_id, std::int64_t now_ms,
                  const std::string& state_id) override {
    SW_ASSIGN_OR_RETURN(
        RedisReplyPtr r,
        pool_->Eval(leave_, {Hex(job), std::to_string(now_ms), member_ms_, member_id, state_id}, false));
    return CheckBoundReply(*r, "LeaveJob of job '" + job + "'", state_id);
  }

  Result<JobView> GetJob(const std::string& job, std::int64_t now_ms, const std::string& state_id) override {
    SW_ASSIGN_OR_RETURN(RedisReplyPtr r,
                        pool_->Eval(get_job_, {Hex(job), std::to_string(now_ms), member_ms_, state_id}, false));
    SW_RETURN_IF_ERROR(CheckBoundReply(*r, "GetJob of job '" + job + "'", state_id));
    return DecodeJob(job, *r);
  }

  Status CommitVersion(const std::string& job, const std::string& member_id, std::uint64_t version, std::int64_t now_ms,
                       const std::string& state_id) override {
    SW_ASSIGN_OR_RETURN(RedisReplyPtr r, pool_->Eval(commit_,
                                                     {Hex(job), std::to_string(now_ms), member_ms_, member_id,
                                                      std::to_string(version), state_id},
                                                     true));
    return CheckBoundReply(*r, "CommitVersion of job '" + job + "'", state_id);
  }

  // The heartbeats go through the pipelines, taken in turn: concurrent ones
  // share one write and one connection per pipeline (redis_pipeline.h); the
  // same script and ARGV as above. Several pipelines, so that one leader
  // thread descheduled on a busy machine stalls only its share of heartbeats.
  RedisPipeline& NextPipeline() {
    return *pipelines_[next_pipeline_.fetch_add(1, std::memory_order_relaxed) % pipelines_.size()];
  }

  // A batch (coordinator_state.h) of this thread on this state: every heartbeat of
  // it is held on one pipeline, which EndHeartbeatBatch() flushes.
  struct Batch {
    const RedisCoordinatorState* state = nullptr;
    RedisPipeline* pipeline = nullptr;
  };
  static Batch& ThisThreadBatch() {
    thread_local Batch batch;
    return batch;
  }

  void BeginHeartbeatBatch() override { ThisThreadBatch() = Batch{this, &NextPipeline()}; }

  void EndHeartbeatBatch() override {
    Batch& b = ThisThreadBatch();
    if (b.state != this) return;
    RedisPipeline* p = b.pipeline;
    b = Batch{};
    p->Flush();
  }

  void SubmitHeartbeat(const RedisScript& script, std::vector<std::string> args, RedisPipeline::Callback done) {
    Batch& b = ThisThreadBatch();
    if (b.state == this) {
      b.pipeline->Submit(script, std::move(args), /*idempotent=*/true, std::move(done), /*hold=*/true);
    } else {
      NextPipeline().Submit(script, std::move(args), /*idempotent=*/true, std::move(done));
    }
  }

  void HeartbeatSourceAsync(const std::string& source_id, std::int64_t now_ms, SourceHeartbeatCallback done) override {
    SubmitHeartbeat(heartbeat_, {source_id, std::to_string(now_ms), delete_ms_},
                    [this, done = std::move(done)](Result<RedisReplyPtr> r) {
                      if (!r.ok()) return done(r.status());
                      done(HeartbeatFound(**r));
                    });
  }

  void HeartbeatMemberAsync(const std::string& job, const std::string& member_id, std::int64_t now_ms,
                            DoneCallback done, const std::string& state_id) override {
    // No refresh of the cached id on a lost state here: `done` runs on a pipeline's thread and
    // must not block (the reaper or the next synchronous bound call refreshes it).
    SubmitHeartbeat(heartbeat_member_, {Hex(job), std::to_string(now_ms), member_ms_, member_id, state_id},
                    [this, job, state_id, done = std::move(done)](Result<RedisReplyPtr> r) {
                      if (!r.ok()) return done(r.status());
                      done(StateLostOr(**r, "HeartbeatMember of job '" + job + "'", state_id));
                    });
  }

  std::string StateId() override {
    std::lock_guard lock(state_id_mu_);
    return state_id_;
  }

  Status RefreshStateId() override {
    const std::string key = std::string(kPrefix) + "state_id";
    SW_ASSIGN_OR_RETURN(RedisReplyPtr r, pool_->Eval(state_id_script_, {NewStateId()}, /*idempotent=*/true));
    SW_RETURN_IF_ERROR(CheckReply(*r, "RefreshStateId"));
    if (r->type != REDIS_REPLY_STRING || !IsStateId(ReplyText(r.get()))) {
      return CorruptData(fmt::format("Redis key {}: not a state id (32 lowercase hex digits)", key));
    }
    std::string id(ReplyText(r.get()));
    std::lock_guard lock(state_id_mu_);
    if (!state_id_.empty() && id != state_id_) {
      spdlog::warn(
          "coordinator state id changed from {} to {}: Redis at {} lost the coordinator's state (flushed, or "
          "restarted without persistence); clients bound to the old state get FAILED_PRECONDITION",
          state_id_, id, pool_->url());
    }
    state_id_ = std::move(id);
    return Status::Ok();
  }

  Status CheckStateId(const std::string& state_id) override {
    if (state_id.empty()) return Status::Ok();
    const std::string key = std::string(kPrefix) + "state_id";
    SW_ASSIGN_OR_RETURN(RedisReplyPtr r, pool_->Command({"GET", key}, /*idempotent=*/true));
    SW_RETURN_IF_ERROR(CheckReply(*r, "the state id check"));
    if (r->type == REDIS_REPLY_STRING && ReplyText(r.get()) == state_id) return Status::Ok();
    SW_RETURN_IF_ERROR(RefreshStateId());  // none stored (flushed) or another: the new one
    return StateGone(state_id, StateId());
  }

  std::int64_t NowMs() override { return clock_.NowMs(); }

  Status SyncClock() override {
    if (clock_refused_.load(std::memory_order_relaxed)) return Status::Ok();  // the wall clock, said at connect
    return clock_.Sync([this]() -> Result<std::int64_t> {
      SW_ASSIGN_OR_RETURN(RedisReplyPtr r, pool_->Command({"TIME"}, /*idempotent=*/true));
      SW_RETURN_IF_ERROR(CheckReply(*r, "TIME"));
      return ParseRedisTimeUs(*r, "Redis at " + pool_->url());
    });
  }

  /// The connect function's first SyncClock failed other than for Redis's availability (an ACL
  /// user without +time: NOPERM; a renamed TIME; a proxy without it): NowMs stays this
  /// machine's wall clock, as before RedisClock, and SyncClock does nothing. Logged once.
  void UseWallClock(const Status& why) {
    spdlog::warn(
        "coordinator: Redis at {} refused TIME ({}): this coordinator's wall clock is its clock for leases, so "
        "coordinators sharing this Redis must keep their clocks in step (NTP; docs/coordinator_redis.md, "
        "\"Clocks\")",
        pool_->url(), why.ToString());
    clock_refused_.store(true, std::memory_order_relaxed);
  }

  Result<ReapStats> Reap(std::int64_t now_ms) override {
    SW_ASSIGN_OR_RETURN(RedisReplyPtr r,
                        pool_->Eval(reap_, {std::to_string(now_ms), stale_ms_, delete_ms_, member_ms_}, false));
    SW_RETURN_IF_ERROR(CheckReply(*r, "Reap"));
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3) return Internal("Reap: malformed script reply");
    ReapStats s;
    s.sources_marked_stale = static_cast<int>(r->element[0]->integer);
    s.sources_deleted = static_cast<int>(r->element[1]->integer);
    s.members_expired = static_cast<int>(r->element[2]->integer);
    return s;
  }

 private:
  std::string NewSourceId() {
    std::lock_guard lock(rng_mu_);
    return fmt::format("src-{:016x}", rng_());
  }

  // Maps an error reply of a script ("<KIND> message") or of Redis to a Status.
  Status MapError(std::string_view err, const std::string& what, std::string_view key = {}) const {
    auto rest = [&](size_t n) { return std::string(err.substr(std::min(n, err.size()))); };
    if (err.substr(0, 9) == "NOTFOUND ") return NotFound(fmt::format("{}: {}", what, rest(9)));
    if (err.substr(0, 7) == "EXISTS ") return AlreadyExists(fmt::format("{}: {}", what, rest(7)));
    if (err.substr(0, 8) == "PRECOND ") return FailedPrecondition(fmt::format("{}: {}", what, rest(8)));
    if (err.substr(0, 7) == "BADARG ") return InvalidArgument(fmt::format("{}: {}", what, rest(7)));
    if (err.substr(0, 8) == "CORRUPT ") return CorruptData(fmt::format("{}: Redis record {}", what, rest(8)));
    if (err.find("WRONGTYPE") != std::string_view::npos) {
      return CorruptData(key.empty() ? fmt::format("{}: a Redis key it uses has the wrong type: {}", what, err)
                                     : fmt::format("{}: Redis key {} has the wrong type: {}", what, key, err));
    }
    if (IsRedisNotReadyError(err)) {
      return Unavailable(fmt::format("{}: Redis at {} is not ready: {}", what, pool_->url(), err));
    }
    return Internal(fmt::format("{}: Redis at {} replied with an error: {}", what, pool_->url(), err));
  }

  // The heartbeat script's reply (kHeartbeatScript): 1, or {1 | 2, the mark's reason}.
  // (No source id in the message: the asynchronous path would copy it for every heartbeat.)
  Result<SourceHeartbeat> HeartbeatFound(const redisReply& r) const {
    SW_RETURN_IF_ERROR(CheckReply(r, "HeartbeatSource"));
    SourceHeartbeat found;
    if (r.type == REDIS_REPLY_INTEGER && r.integer == 1) return found;
    if (r.type != REDIS_REPLY_ARRAY || r.elements != 2 || r.element[0]->type != REDIS_REPLY_INTEGER ||
        (r.element[0]->integer != 1 && r.element[0]->integer != 2) || r.element[1]->type != REDIS_REPLY_STRING) {
      return CorruptData("HeartbeatSource: Redis script returned a malformed reply");
    }
    found.state = r.element[0]->integer == 2 ? SourceState::kStale : SourceState::kReady;
    found.stale_reason.assign(r.element[1]->str, r.element[1]->len);
    return found;
  }

  Status CheckReply(const redisReply& r, const std::string& what) const {
    if (r.type == REDIS_REPLY_ERROR) return MapError(ReplyText(&r), what);
    return Status::Ok();
  }

  // CheckReply for a bound call's script: "STATELOST <stored id>" (state_lost in kPrelude) is
  // StateGone naming the bound id and the stored one.
  Status StateLostOr(const redisReply& r, const std::string& what, const std::string& state_id) const {
    if (r.type == REDIS_REPLY_ERROR && ReplyText(&r).substr(0, 10) == "STATELOST ") {
      return StateGone(state_id, ReplyText(&r).substr(10)).WithContext(what);
    }
    return CheckReply(r, what);
  }

  // StateLostOr, and on a lost state the cached id is re-read at once (a new one stored when
  // Redis holds none) rather than at the reaper's next pass, so Ping hands new clients the
  // state they will be served from.
  Status CheckBoundReply(const redisReply& r, const std::string& what, const std::string& state_id) {
    const bool lost = r.type == REDIS_REPLY_ERROR && ReplyText(&r).substr(0, 10) == "STATELOST ";
    if (lost) {
      if (Status refreshed = RefreshStateId(); !refreshed.ok()) {
        spdlog::warn("after a lost coordinator state: {}", refreshed.ToString());
      }
    }
    return StateLostOr(r, what, state_id);
  }

  Result<JobView> DecodeJob(const std::string& job, const redisReply& r) const {
    std::string where = fmt::format("{}job:{}", kPrefix, Hex(job));
    if (r.type != REDIS_REPLY_ARRAY || r.elements % 2 != 0) {
      return CorruptData(fmt::format("Redis record {}: malformed reply", where));
    }
    JobView view;
    view.job = job;
    std::map<std::string, JobMember> members;
    std::map<std::string, int> seen;  // member id -> bit set of fields r,h,v,j
    for (size_t i = 0; i < r.elements; i += 2) {
      std::string_view f = ReplyText(r.element[i]);
      std::string_view v = ReplyText(r.element[i + 1]);
      if (f == "e") {
        if (!ParseNumber(v, &view.membership_epoch)) {
          return CorruptData(fmt::format("Redis record {}: epoch '{}' is not a number", where, v));
        }
        continue;
      }
      if (f.size() < 2 || f[1] != ':') return CorruptData(fmt::format("Redis record {}: unknown field", where));
      std::string id(f.substr(2));
      JobMember& m = members[id];
      m.member_id = id;
      bool ok = true;
      switch (f[0]) {
        case 'r':
          SW_RETURN_IF_ERROR(DecodeMember(v, where + " field r:" + id, &m));
          seen[id] |= 1;
          break;
        case 'h':
          ok = ParseNumber(v, &m.last_heartbeat_unix_ms);
          seen[id] |= 2;
          break;
        case 'v':
          ok = ParseNumber(v, &m.committed_version);
          seen[id] |= 4;
          break;
        case 'j':
          ok = ParseNumber(v, &m.joined_unix_ms);
          seen[id] |= 8;
          break;
        default:
          return CorruptData(fmt::format("Redis record {}: unknown field", where));
      }
      if (!ok) return CorruptData(fmt::format("Redis record {}: field {}:{} is not a number", where, f[0], id));
    }
    for (auto& [id, m] : members) {
      if (seen[id] != 15) return CorruptData(fmt::format("Redis record {}: member '{}' is incomplete", where, id));
      view.members.push_back(std::move(m));
    }
    return view;
  }

  std::unique_ptr<RedisConnectionPool> pool_;
  // Stopped first by the destructor (they point at the scripts below).
  std::vector<std::unique_ptr<RedisPipeline>> pipelines_;
  std::atomic<unsigned> next_pipeline_{0};
  LeasePolicy policy_;
  const std::string stale_ms_, delete_ms_, member_ms_;
  std::mutex rng_mu_;
  std::mt19937_64 rng_;
  const RedisScript put_, add_, register_, heartbeat_, mark_stale_, deregister_, list_, join_, heartbeat_member_,
      leave_, get_job_, commit_, reap_, state_id_script_;
  std::mutex state_id_mu_;
  std::string state_id_;  // empty until the first RefreshStateId (done by the connect function)
  RedisClock clock_;      // synchronised by the connect function, then by the reaper every second
  std::atomic<bool> clock_refused_{false};  // UseWallClock
};

}  // namespace

const RedisScript& RedisHeartbeatSourceScript() {
  static const RedisScript script = MakeScript("heartbeat_source", kHeartbeatScript);
  return script;
}

Result<std::unique_ptr<CoordinatorState>> ConnectRedisCoordinatorState(const std::string& url, LeasePolicy policy,
                                                                       RedisStateOptions options) {
  SW_ASSIGN_OR_RETURN(auto pool, RedisConnectionPool::Connect(url, options.timeout_s, options.max_connections));
  if (options.pipelines < 1) return InvalidArgument("Redis state needs at least one heartbeat pipeline");
  std::vector<std::unique_ptr<RedisPipeline>> pipelines;
  for (int i = 0; i < options.pipelines; ++i) {
    SW_ASSIGN_OR_RETURN(auto p, RedisPipeline::Start(url, options.timeout_s, 100000, options.reply_spin_us));
    pipelines.push_back(std::move(p));
  }
  auto state = std::make_unique<RedisCoordinatorState>(std::move(pool), std::move(pipelines), policy);
  SW_RETURN_IF_ERROR(state->RefreshStateId());
  if (Status s = state->SyncClock(); !s.ok()) {
    if (s.code() == ErrorCode::kUnavailable || s.code() == ErrorCode::kTimedOut) return s;
    state->UseWallClock(s);
  }
  return std::unique_ptr<CoordinatorState>(std::move(state));
}

Result<std::unique_ptr<CoordinatorState>> ConnectRedisCoordinatorState(const std::string& url, LeasePolicy policy,
                                                                       double connect_timeout_s) {
  RedisStateOptions options;
  options.timeout_s = connect_timeout_s;
  return ConnectRedisCoordinatorState(url, policy, options);
}

}  // namespace shardwire::control
