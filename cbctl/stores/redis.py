"""Circuits in Redis, for fleets of processes and hosts (`redis://` and `rediss://`).

Each circuit is one hash, `{prefix}circuit:{name}`. Every operation is one call of one Lua script
(EVALSHA; loaded once per server), which mirrors the pure functions of `cbctl.state` line for
line and runs atomically on the server, with the server's clock (`TIME`), so hosts with skewed
clocks still agree. The script writes only when the circuit changes: admitting a call to a CLOSED
circuit is one read-only round trip, a recorded failure one round trip.

`redis` (redis-py) is imported when a store is created, not when cbctl is imported. Every
network call has a socket timeout, and after the server failed to answer the store fails fast
(StoreUnavailableError without touching the network) for `retry_interval` seconds, so a dead
Redis costs a degraded breaker almost nothing per call. Passwords never reach a message.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Self

from cbctl.errors import StateError, StoreUnavailableError
from cbctl.journal import JOURNAL_LIMIT, TransitionEvent, process_source, wall_time
from cbctl.redaction import scrub, url_secrets
from cbctl.state import (
    BreakerConfig,
    CircuitState,
    Outage,
    Permit,
    Snapshot,
    StoredCircuit,
    Update,
    decode_buckets,
    decode_leases,
    decode_marks,
)
from cbctl.stores._records import decoded, load_all_checked

if TYPE_CHECKING:
    import redis as redis_py

__all__ = ["RedisStore"]

_STATES: Final = {state.value: state for state in CircuitState}
_NO_CONFIG: Final = ("", "", "", "")
_POLICY_ARG: Final = 12
"""The ARGV slots (0-based in `_args`'s tuple) of backoff_factor, max_timeout and jitter."""
_WINDOW_ARG: Final = 15
"""The ARGV slots (0-based) of window_calls, failure_rate_threshold, minimum_calls,
slow_call_duration and slow_call_rate_threshold; the slow-call flag of an outcome follows, then
window_seconds."""
_SOURCE_ARG: Final = 23
"""The ARGV slot of the journal's source (the length follows): past every argument an operation
takes, with '' (read as absent) in between."""

# ARGV: op, time offset, failure_threshold, timeout, success_threshold, half_open_max_calls
#       (empty: the stored settings; then ARGV[13..15] hold backoff_factor, max_timeout ('' =
#       none) and jitter), permit generation ('' = none; for 'reconcile': the
#       generation the breaker last saw), permit lease ('0' = not a trial), error text
#       (failure, reconcile) or target state (force), then for 'failure' the write's op id, the
#       requested open duration ('' = none) and the jitter's draw, for
#       'reconcile' the failures, the seconds left open ('' = not open) and the op ids, for
#       'force' the hold's seconds ('' = until reset), reason and owner. ARGV[16..20]: window_calls,
#       failure_rate_threshold, minimum_calls, slow_call_duration, slow_call_rate_threshold ('' =
#       off), ARGV[21] '1' for a slow call ('success', 'failure'), ARGV[22] window_seconds.
#       ARGV[23] and ARGV[24] (after '' padding): the source of a transition (pid@host) and the
#       journal's length; KEYS: circuit, journal stream, journal id counter.
# Every operation but 'load' first ends a hold whose expiry has come, like 'reset' (state.expire).
# Reply: {now, permit generation or '', permit lease, changed, before[20], after[20] if changed,
#         journal id if the state changed}; a snapshot's fields are FIELDS' (backoff, open
#         duration and the window last). A 'load' reply is {now, 33 fields}: NAMES'.
# A window's masks are kept as the ages of their set bits ("0 3 17", state.encode_marks), a time
# window's buckets as "number:calls:failures:slow", newest first (state.encode_buckets).
# A missing circuit replies {now} to 'load'. Leases are "id:deadline" pairs (state.encode_leases).
_SCRIPT: Final = r"""
if redis.replicate_commands then redis.replicate_commands() end
local key = KEYS[1]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2])

local function num(v)
  if v == false or v == nil or v == '' then return nil end
  return tonumber(v)
end
local function str(v)
  if v == nil then return '' end
  if type(v) == 'number' then
    if v == math.floor(v) and math.abs(v) < 1e15 then return string.format('%d', v) end
    return string.format('%.17g', v)
  end
  if type(v) == 'boolean' then return v and '1' or '0' end
  if type(v) == 'table' then
    local parts = {}
    for i, lease in ipairs(v) do parts[i] = str(lease[1]) .. ':' .. str(lease[2]) end
    return table.concat(parts, ' ')
  end
  return v
end
local function leases_of(text)
  local out = {}
  for id, deadline in string.gmatch(text or '', '(%d+):(%S+)') do
    out[#out + 1] = {tonumber(id), tonumber(deadline)}
  end
  return out
end

local NAMES = {'s', 'fc', 'sc', 'g', 'ls', 'ta', 'oa', 'ca', 'f', 'lf', 'le', 'hu', 'hr', 'ho',
               'ft', 'to', 'st', 'hm', 'bo', 'od', 'bf', 'mt', 'ji', 'wn', 'wf', 'ws', 'wr', 'wc',
               'mc', 'sd', 'sr', 'wb', 'wt'}
local raw = redis.call('HMGET', key, unpack(NAMES))
local exists = raw[1] ~= false
local legacy = exists and raw[5] == false
if legacy then
  -- written before per-trial leases: one trial count ('tr') sharing one deadline ('td')
  local old = redis.call('HMGET', key, 'tr', 'td')
  local count, parts = tonumber(old[1]) or 0, {}
  if num(old[2]) ~= nil then
    for i = 1, count do parts[i] = string.format('%d', i) .. ':' .. old[2] end
  end
  raw[5] = table.concat(parts, ' ')
  raw[6] = string.format('%d', count)
end

if op == 'load' then
  if not exists then return {str(now)} end
  local out = {str(now)}
  for i = 1, 33 do out[i + 1] = raw[i] or '' end
  return out
end

local b
if exists then
  b = {s = raw[1], fc = tonumber(raw[2]), sc = tonumber(raw[3]), g = tonumber(raw[4]),
       ls = leases_of(raw[5]), ta = tonumber(raw[6]), oa = num(raw[7]), ca = num(raw[8]),
       f = raw[9] == '1', lf = num(raw[10]), le = raw[11] or '', hu = num(raw[12]),
       hr = raw[13] or '', ho = raw[14] or '', bo = num(raw[19]), od = num(raw[20]),
       wn = tonumber(raw[24]) or 0, wf = raw[25] or '', ws = raw[26] or '', wb = raw[32] or ''}
  if b.le == '' then b.le = nil end
  if b.hr == '' then b.hr = nil end
  if b.ho == '' then b.ho = nil end
else
  b = {s = 'closed', fc = 0, sc = 0, g = 0, ls = {}, ta = 0, ca = now, f = false, wn = 0,
       wf = '', ws = '', wb = ''}
end

local ft, to, st, hm, bf, mt, ji, wc, wr, mc, sd, sr, wt
if ARGV[3] ~= '' then
  ft, to, st, hm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  bf, mt, ji = tonumber(ARGV[13]) or 1, num(ARGV[14]), tonumber(ARGV[15]) or 0
  wc, wr, mc, sd, sr = num(ARGV[16]), num(ARGV[17]), num(ARGV[18]), num(ARGV[19]), num(ARGV[20])
  wt = num(ARGV[22])
elseif exists and raw[15] then
  ft, to, st, hm = tonumber(raw[15]), tonumber(raw[16]), tonumber(raw[17]), tonumber(raw[18])
  bf, mt, ji = tonumber(raw[21]) or 1, num(raw[22]), tonumber(raw[23]) or 0
  wr, wc, mc, sd, sr = num(raw[27]), num(raw[28]), num(raw[29]), num(raw[30]), num(raw[31])
  wt = num(raw[33])
else
  ft, to, st, hm, bf, mt, ji = 5, 30.0, 2, 1, 1, nil, 0
end
local slow = ARGV[21] == '1'
-- the count window (state._tally, window_rates): masks as ages, the oldest dropped at wc
local function shifted(text, add)
  local out = {}
  if add then out[1] = '0' end
  for age in string.gmatch(text or '', '%d+') do
    local older = tonumber(age) + 1
    if older < wc then out[#out + 1] = string.format('%d', older) end
  end
  return table.concat(out, ' ')
end
local function marks(text)
  local n = 0
  for _ in string.gmatch(text or '', '%d+') do n = n + 1 end
  return n
end
-- the time window (state._stamp, window_rates): WINDOW_BUCKETS = 10 buckets of wt / 10 seconds
local windowed = wc ~= nil or wt ~= nil
local function buckets_of(text)
  local out = {}
  for n, c, f, s in string.gmatch(text or '', '(%-?%d+):(%d+):(%d+):(%d+)') do
    out[#out + 1] = {tonumber(n), tonumber(c), tonumber(f), tonumber(s)}
  end
  return out
end
local function stamped(text, failed)
  local number = math.floor(now / (wt / 10))
  local held = buckets_of(text)
  local newest = number
  if held[1] ~= nil and held[1][1] > newest then newest = held[1][1] end
  local kept, found = {}, false
  for _, bucket in ipairs(held) do
    if newest - bucket[1] < 10 then
      if bucket[1] == number then
        bucket[2] = bucket[2] + 1
        if failed then bucket[3] = bucket[3] + 1 end
        if slow then bucket[4] = bucket[4] + 1 end
        found = true
      end
      kept[#kept + 1] = bucket
    end
  end
  if not found and newest - number < 10 then
    kept[#kept + 1] = {number, 1, failed and 1 or 0, slow and 1 or 0}
  end
  table.sort(kept, function(x, y) return x[1] > y[1] end)
  local parts = {}
  for i, bucket in ipairs(kept) do
    parts[i] = string.format('%d:%d:%d:%d', bucket[1], bucket[2], bucket[3], bucket[4])
  end
  return table.concat(parts, ' ')
end
-- open-duration backoff (state._opening, BreakerConfig.backs_off / open_cap)
local backs_off = bf > 1 or ji > 0 or mt ~= nil
local cap = mt
if cap == nil then
  if bf > 1 then cap = to * 10 else cap = to end
end
local function span_of(x)
  if x.od ~= nil then return x.od end
  return to
end

local stored = b
if b.f and b.hu ~= nil and now >= b.hu then
  -- the hold has expired: it ends like a reset, then the operation runs (state.expire)
  local e = {}
  for k, v in pairs(b) do e[k] = v end
  e.s = 'closed'; e.g = b.g + 1; e.ca = now; e.ls = {}; e.ta = 0
  e.fc = 0; e.sc = 0; e.oa = nil; e.f = false; e.hu = nil; e.hr = nil; e.ho = nil
  e.bo = nil; e.od = nil; e.wn = 0; e.wf = ''; e.ws = ''; e.wb = ''
  b = e
end

local a = {}
for k, v in pairs(b) do a[k] = v end
local function enter(state)
  a.s = state; a.g = b.g + 1; a.ca = now; a.ls = {}; a.ta = 0; a.wn = 0; a.wf = ''; a.ws = ''
  a.wb = ''
end
local function tally(failed)
  if wt ~= nil then a.wb = stamped(b.wb, failed); return end
  a.wn = math.min(wc, b.wn + 1); a.wf = shifted(b.wf, failed); a.ws = shifted(b.ws, slow)
end
local function rate_trips(failed)
  local n, failures, slows = a.wn, 0, 0
  if wt ~= nil then
    n = 0
    for _, bucket in ipairs(buckets_of(a.wb)) do
      n = n + bucket[2]; failures = failures + bucket[3]; slows = slows + bucket[4]
    end
  else
    failures, slows = marks(a.wf), marks(a.ws)
  end
  local least = mc or wc or 100
  if n < least or n == 0 then return false end
  if failed and wr ~= nil and failures / n >= wr then return true end
  return sr ~= nil and slows / n >= sr
end
local function opening(nominal, draw, delay)
  if not backs_off then a.bo = nil; a.od = nil; return end
  local span = nominal * (1.0 - ji * draw)
  if delay ~= nil and delay > span then span = math.min(delay, cap) end
  a.bo = nominal; a.od = span
end
local pg = num(ARGV[7])
local plm = tonumber(ARGV[8]) or 0
local function live()
  local out = {}
  for _, lease in ipairs(b.ls) do
    if now < lease[2] then out[#out + 1] = lease end
  end
  return out
end
local function holds()
  for _, lease in ipairs(b.ls) do
    if lease[1] == plm and now < lease[2] then return true end
  end
  return false
end
local function without()
  local out = {}
  for _, lease in ipairs(b.ls) do
    if lease[1] ~= plm then out[#out + 1] = lease end
  end
  return out
end
local function current(late)
  if pg == nil then return b.s == 'closed' end
  if pg ~= b.g then return false end
  if b.s == 'half_open' then return plm ~= 0 and (late or holds()) end
  return true
end

local permit_g, permit_lease = nil, 0
local ops = nil
if op == 'admit' then
  if b.s == 'closed' then
    permit_g = b.g
  elseif b.s == 'open' then
    local waiting = b.oa ~= nil and math.max(0, b.oa + span_of(b) - now) > 0
    if not (b.f or waiting) then
      enter('half_open'); a.sc = 0; a.ls = {{1, now + to}}; a.ta = 1
      permit_g, permit_lease = a.g, 1
    end
  else
    local places = live()
    if #places < hm then
      local lease = b.ta + 1
      places[#places + 1] = {lease, now + to}
      a.ls = places; a.ta = lease
      permit_g, permit_lease = b.g, lease
    end
  end
elseif op == 'success' then
  permit_g, permit_lease = pg, plm
  if current() then
    if b.s == 'closed' then
      a.fc = 0
      if windowed then
        tally(false)
        if slow and not b.f and rate_trips(false) then
          enter('open'); a.sc = 0; a.oa = now
          opening(to, 0, nil)
        end
      end
    elseif b.s == 'half_open' then
      local successes = b.sc + 1
      if successes >= st then
        enter('closed'); a.fc = 0; a.sc = 0; a.oa = nil; a.bo = nil; a.od = nil
      else
        a.sc = successes; a.ls = without()
      end
    end
  end
elseif op == 'failure' then
  permit_g, permit_lease = pg, plm
  a.lf = now; a.le = ARGV[9]
  local delay, draw = num(ARGV[11]), tonumber(ARGV[12]) or 0
  if current(true) then
    if b.s == 'closed' then
      local failures = b.fc + 1
      a.fc = failures
      if windowed then tally(true) end
      if not b.f and (failures >= ft or (windowed and rate_trips(true))) then
        enter('open'); a.sc = 0; a.oa = now
        opening(to, draw, delay)
      end
    elseif b.s == 'half_open' then
      enter('open'); a.sc = 0; a.oa = now
      local nominal = b.bo or to
      opening(math.min(cap, nominal * bf), draw, delay)
    end
  end
  if ARGV[10] ~= nil and ARGV[10] ~= '' then
    -- remember the last 64 failure writes, so a write whose answer was lost is not counted again
    local recent = {}
    for id in string.gmatch(redis.call('HGET', key, 'op') or '', '%S+') do
      recent[#recent + 1] = id
    end
    recent[#recent + 1] = ARGV[10]
    while #recent > 64 do table.remove(recent, 1) end
    ops = table.concat(recent, ' ')
  end
elseif op == 'release' then
  permit_g, permit_lease = pg, plm
  if pg ~= nil and plm ~= 0 and current() then
    a.ls = without()
  end
elseif op == 'reconcile' then
  if not (b.f or (pg ~= nil and b.g ~= pg)) then
    local applied = 0
    if ARGV[12] ~= '' then
      local seen = {}
      for id in string.gmatch(redis.call('HGET', key, 'op') or '', '%S+') do seen[id] = true end
      for id in string.gmatch(ARGV[12], '%S+') do
        if seen[id] then applied = applied + 1 end
      end
    end
    local failures = math.max(0, tonumber(ARGV[10]) - applied)
    local open_for = num(ARGV[11])
    if open_for ~= nil and not (open_for > 0 and open_for <= cap) then
      if open_for <= 0 then open_for = nil else open_for = cap end
    end
    local span = to
    if open_for ~= nil and backs_off then span = open_for end
    local opened_at = nil
    if open_for ~= nil then opened_at = now - (span - open_for) end
    if b.s == 'open' then
      if opened_at ~= nil and b.oa ~= nil then
        if b.od == nil and not backs_off then
          if opened_at > b.oa then a.oa = opened_at end
        elseif now + open_for > b.oa + span_of(b) then
          a.od = now + open_for - b.oa
        end
      end
    elseif b.s == 'closed' and (failures > 0 or opened_at ~= nil) then
      if failures > 0 then a.lf = now; a.le = ARGV[9] end
      local count = b.fc + failures
      if opened_at == nil and count >= ft then opened_at = now end
      if opened_at ~= nil then
        enter('open'); a.fc = count; a.sc = 0; a.oa = opened_at
        if backs_off then a.bo = to; a.od = span end
      else
        a.fc = count
      end
    end
  end
elseif op == 'reset' then
  enter('closed'); a.fc = 0; a.sc = 0; a.oa = nil; a.f = false; a.hu = nil; a.hr = nil
  a.ho = nil; a.bo = nil; a.od = nil
elseif op == 'force' then
  enter(ARGV[9]); a.fc = 0; a.sc = 0; a.f = true; a.bo = nil; a.od = nil
  if ARGV[9] == 'open' then a.oa = now else a.oa = nil end
  a.hu = nil
  if ARGV[10] ~= '' then a.hu = now + tonumber(ARGV[10]) end
  a.hr = ARGV[11]; a.ho = ARGV[12]
  if a.hr == '' then a.hr = nil end
  if a.ho == '' then a.ho = nil end
else
  return redis.error_reply('cbctl: unknown operation ' .. op)
end

local FIELDS = {'s', 'fc', 'sc', 'g', 'ls', 'ta', 'oa', 'ca', 'f', 'lf', 'le', 'hu', 'hr', 'ho',
                'bo', 'od', 'wn', 'wf', 'ws', 'wb'}
local out = {str(now), str(permit_g), str(permit_lease), '0'}
local changed = not exists or ops ~= nil
for i, k in ipairs(FIELDS) do
  local before, after = str(stored[k]), str(a[k])
  out[4 + i] = before
  if before ~= after then changed = true end
end
if changed then
  out[4] = '1'
  local args = {}
  for i, k in ipairs(FIELDS) do
    local value = str(a[k])
    out[24 + i] = value
    args[#args + 1] = k
    args[#args + 1] = value
  end
  for i, v in ipairs({ft, to, st, hm}) do
    args[#args + 1] = NAMES[14 + i]
    args[#args + 1] = str(v)
  end
  for _, pair in ipairs({{'bf', str(bf)}, {'mt', str(mt)}, {'ji', str(ji)}, {'wr', str(wr)},
                         {'wc', str(wc)}, {'mc', str(mc)}, {'sd', str(sd)}, {'sr', str(sr)},
                         {'wt', str(wt)}}) do
    args[#args + 1] = pair[1]
    args[#args + 1] = pair[2]
  end
  if ops ~= nil then
    args[#args + 1] = 'op'
    args[#args + 1] = ops
  end
  if legacy then redis.call('HDEL', key, 'tr', 'td') end
  redis.call('HSET', key, unpack(args))
end
-- The transition journal (KEYS[2] a capped stream, KEYS[3] the id counter): one entry when the
-- state changed, in this same atomic call.
if out[4] == '1' and stored.s ~= a.s then
  local summary = ''
  if a.f then
    summary = 'held'
    if a.hr ~= nil then summary = 'held: ' .. a.hr end
    if a.ho ~= nil then summary = summary .. ' (by ' .. a.ho .. ')' end
  elseif stored.f then
    if stored.hu ~= nil and now >= stored.hu then summary = 'hold expired'
    else summary = 'hold lifted' end
  elseif a.s == 'open' then
    summary = str(a.le)
  end
  local id = redis.call('INCR', KEYS[3])
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[24], '*', 'id', id, 'at', str(now), 'p', stored.s,
             's', a.s, 'fc', str(a.fc), 'le', summary, 'src', ARGV[23])
  out[45] = str(id)
end
return out
"""


def _number(text: str) -> float | None:
    return float(text) if text else None


def _text(value: float | None) -> str:
    """A setting as the script reads it: '' for None (off), exact digits otherwise."""
    return "" if value is None else repr(value)


def _snapshot(fields: Sequence[str]) -> Snapshot:
    """A snapshot from the script's 20 strings (hash fields s, fc, ..., bo, od, wn, wf, ws, wb)."""
    return Snapshot(
        state=_STATES[fields[0]],
        failure_count=int(fields[1]),
        success_count=int(fields[2]),
        generation=int(fields[3]),
        leases=decode_leases(fields[4]),
        trials_admitted=int(fields[5]),
        opened_at=_number(fields[6]),
        changed_at=_number(fields[7]),
        forced=fields[8] == "1",
        last_failure_at=_number(fields[9]),
        last_error=fields[10] or None,
        hold_until=_number(fields[11]),
        hold_reason=fields[12] or None,
        hold_owner=fields[13] or None,
        backoff=_number(fields[14]),
        open_duration=_number(fields[15]),
        window_count=int(fields[16] or 0),
        failure_bits=decode_marks(fields[17]),
        slow_bits=decode_marks(fields[18]),
        window_buckets=decode_buckets(fields[19]),
    )


def _config(fields: Sequence[str]) -> BreakerConfig:
    """Settings from the hash fields ft, to, st, hm, bf, mt, ji, wr, wc, mc, sd, sr, wt ('' where
    never written)."""
    if not fields[0]:
        return BreakerConfig()
    return BreakerConfig(
        failure_threshold=int(fields[0]),
        timeout=float(fields[1]),
        success_threshold=int(fields[2]),
        half_open_max_calls=int(fields[3]),
        backoff_factor=float(fields[4] or 1),
        max_timeout=_number(fields[5]),
        jitter=float(fields[6] or 0),
        failure_rate_threshold=_number(fields[7]),
        window_calls=_whole(fields[8]),
        minimum_calls=_whole(fields[9]),
        slow_call_duration=_number(fields[10]),
        slow_call_rate_threshold=_number(fields[11]),
        window_seconds=_number(fields[12]),
    )


def _whole(text: str) -> int | None:
    return int(text) if text else None


def _loaded(reply: Sequence[str]) -> tuple[Snapshot, BreakerConfig]:
    """The snapshot and settings of a 'load' reply ({now, 33 fields}: NAMES)."""
    return (
        _snapshot([*reply[1:15], *reply[19:21], *reply[24:27], reply[32]]),
        _config([*reply[15:19], *reply[21:24], *reply[27:32], reply[33]]),
    )


def _failure_args(error: str, op: str | None, delay: float | None, draw: float) -> tuple[str, ...]:
    """A 'failure' operation's ARGV[9..12]: error text, op id, requested delay, jitter draw."""
    return error, op or "", "" if delay is None else repr(float(delay)), repr(float(draw))


def _event(name: str, fields: dict[str, str]) -> TransitionEvent | None:
    """A journal record from one stream entry; None for an entry this cbctl cannot read."""
    try:
        return TransitionEvent(
            id=int(fields["id"]),
            circuit=name,
            at=wall_time(float(fields["at"])),
            previous=_STATES[fields["p"]],
            state=_STATES[fields["s"]],
            failures=int(fields["fc"]),
            error=fields.get("le") or None,
            source=fields.get("src", ""),
        )
    except (KeyError, ValueError):
        return None


class RedisStore:
    """Circuits in Redis hashes; every operation one atomic server-side script.

    `prefix` namespaces the keys (several fleets can share one Redis). `socket_timeout` bounds
    every call; `retry_interval` is how long the store fails fast after Redis stopped answering.
    `time_offset` (for tests) returns seconds added to the server clock.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "cbctl:",
        socket_timeout: float = 1.0,
        retry_interval: float = 1.0,
        time_offset: Callable[[], float] | None = None,
    ) -> None:
        from cbctl.urls import parse_url

        self._url = url
        self._shown = parse_url(
            url, "state location", schemes=("redis", "rediss"), error=StateError
        ).shown
        self._secrets = tuple(url_secrets(url))
        self._prefix = prefix
        self._event_ids = f"{prefix}event-ids"
        self._socket_timeout = socket_timeout
        self._retry_interval = retry_interval
        self._time_offset = time_offset
        self._failed_until = 0.0
        self._failure = ""
        import redis as redis_py
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._errors: tuple[type[BaseException], ...] = (redis_py.RedisError, OSError)
        try:
            self._client: redis_py.Redis = redis_py.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
            )
        except (ValueError, redis_py.RedisError) as error:
            raise StateError(
                f"cannot use the Redis URL {self._shown}: {self._scrub(error)}"
            ) from error
        self._script = self._client.register_script(_SCRIPT)
        # redis.asyncio connections belong to the loop that made them: one client per loop,
        # made on first use, dropped with its loop.
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"<RedisStore {self._shown!r} prefix={self._prefix!r}>"

    @property
    def url(self) -> str:
        return self._shown

    def key(self, name: str) -> str:
        """The Redis key holding circuit `name`."""
        return f"{self._prefix}circuit:{name}"

    def events_key(self, name: str) -> str:
        """The Redis stream holding circuit `name`'s journal."""
        return f"{self._prefix}events:{name}"

    # -- talking to Redis -------------------------------------------------------------------------

    def _scrub(self, error: BaseException) -> str:
        return scrub(f"{type(error).__name__}: {error}".strip(), self._secrets)

    def _fail_fast(self) -> None:
        """Raise without touching the network while the last failure is recent."""
        if self._failed_until and time.monotonic() < self._failed_until:
            raise StoreUnavailableError(
                f"Redis at {self._shown} is unavailable: {self._failure} (retrying soon)"
            )

    def _unavailable(self, error: BaseException) -> StoreUnavailableError:
        """Note a failure to get an answer (fail fast from now on) and say why, scrubbed."""
        self._failed_until = time.monotonic() + self._retry_interval
        self._failure = self._scrub(error)
        return StoreUnavailableError(f"Redis at {self._shown} is unavailable: {self._failure}")

    def _guarded(self, action: Callable[[], Any]) -> Any:
        """Run one network action; any failure to get an answer is StoreUnavailableError."""
        self._fail_fast()
        try:
            result = action()
        except self._errors as error:
            raise self._unavailable(error) from error
        self._failed_until = 0.0
        return result

    async def _aguarded(self, action: Callable[[], Awaitable[Any]]) -> Any:
        """`_guarded` for the event loop; the whole exchange is bounded by `socket_timeout`,
        so a black-holed or stopped Redis costs an async caller at most that, never a hang."""
        self._fail_fast()
        try:
            async with asyncio.timeout(self._socket_timeout):
                result = await action()
        except self._errors as error:
            raise self._unavailable(error) from error
        self._failed_until = 0.0
        return result

    def _async_script(self) -> Any:
        """The Lua script on this loop's redis.asyncio client (made on first use)."""
        loop = asyncio.get_running_loop()
        made = self._async.get(loop)
        if made is None:
            import redis.asyncio as redis_async
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            client = redis_async.Redis.from_url(
                self._url,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._socket_timeout,
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
            )
            made = (client, client.register_script(_SCRIPT))
            self._async[loop] = made
        return made[1]

    async def _arun(
        self,
        op: str,
        name: str,
        config: BreakerConfig | None,
        permit: Permit | None = None,
        *extra: str,
        slow: bool = False,
    ) -> list[str]:
        args = self._args(op, config, permit, *extra, slow=slow)
        script = self._async_script()
        keys = self._keys(name)
        reply: list[str] = await self._aguarded(lambda: script(keys=keys, args=args))
        return reply

    def _offset(self) -> str:
        return repr(self._time_offset()) if self._time_offset is not None else "0"

    def _run(
        self,
        op: str,
        name: str,
        config: BreakerConfig | None,
        permit: Permit | None = None,
        *extra: str,
        slow: bool = False,
    ) -> list[str]:
        args = self._args(op, config, permit, *extra, slow=slow)
        keys = self._keys(name)
        reply: list[str] = self._guarded(lambda: self._script(keys=keys, args=args))
        return reply

    def _args(
        self,
        op: str,
        config: BreakerConfig | None,
        permit: Permit | None,
        *extra: str,
        slow: bool = False,
    ) -> tuple[str, ...]:
        """The script's arguments for one operation (see the script's header)."""
        settings = (
            _NO_CONFIG
            if config is None
            else (
                str(config.failure_threshold),
                repr(config.timeout),
                str(config.success_threshold),
                str(config.half_open_max_calls),
            )
        )
        args = (
            op,
            self._offset(),
            *settings,
            "" if permit is None else str(permit.generation),
            "0" if permit is None else str(permit.lease),
            *(extra or ("",)),
        )
        padded = [*args, *("",) * (_SOURCE_ARG - 1 - len(args))]
        if config is not None:
            cap = config.max_timeout
            padded[_POLICY_ARG : _POLICY_ARG + 3] = (
                repr(config.backoff_factor),
                "" if cap is None else repr(cap),
                repr(config.jitter),
            )
            padded[_WINDOW_ARG : _WINDOW_ARG + 5] = (
                _text(config.window_calls),
                _text(config.failure_rate_threshold),
                _text(config.minimum_calls),
                _text(config.slow_call_duration),
                _text(config.slow_call_rate_threshold),
            )
            padded[_WINDOW_ARG + 6] = _text(config.window_seconds)
        if slow:
            padded[_WINDOW_ARG + 5] = "1"
        return (*padded, process_source(), str(JOURNAL_LIMIT))

    def _keys(self, name: str) -> list[str]:
        """The script's keys for circuit `name`: its hash, its journal, the event-id counter."""
        return [self.key(name), self.events_key(name), self._event_ids]

    def _update(self, name: str, reply: list[str]) -> Update:
        def decode() -> tuple[Snapshot, BreakerConfig]:
            return _snapshot(reply[4:24]), BreakerConfig()

        before, _ = decoded(f"Redis at {self._shown}", name, decode)
        after = before
        if reply[3] == "1":
            after, _ = decoded(
                f"Redis at {self._shown}", name, lambda: (_snapshot(reply[24:44]), BreakerConfig())
            )
        now = float(reply[0])
        permit = Permit(int(reply[1]), int(reply[2])) if reply[1] else None
        return Update(before, after, now, permit)

    # -- the store protocol -----------------------------------------------------------------------

    def clock_now(self) -> float:
        seconds, micros = self._guarded(self._client.time)
        offset = self._time_offset() if self._time_offset is not None else 0.0
        return float(seconds) + float(micros) / 1_000_000 + offset

    def load(self, name: str) -> StoredCircuit | None:
        reply = self._run("load", name, None)
        return self._stored(name, reply)

    def _stored(self, name: str, reply: list[str]) -> StoredCircuit | None:
        if len(reply) == 1:
            return None
        snapshot, config = decoded(f"Redis at {self._shown}", name, lambda: _loaded(reply))
        return StoredCircuit(name, snapshot, config, float(reply[0]))

    def load_all(self) -> list[StoredCircuit]:
        start = len(self.key(""))
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.key("")) + "*"

        def every() -> list[tuple[str, list[str]]]:
            names = sorted({key[start:] for key in self._client.scan_iter(match=pattern)})
            pipeline = self._client.pipeline(transaction=False)
            for name in names:
                self._script(keys=[self.key(name)], args=("load", self._offset()), client=pipeline)
            return list(zip(names, pipeline.execute(), strict=True))

        replies = [(name, reply) for name, reply in self._guarded(every) if len(reply) > 1]
        if not replies:
            return []
        decoders = [(name, functools.partial(_loaded, reply)) for name, reply in replies]
        return load_all_checked(f"Redis at {self._shown}", decoders, float(replies[0][1][0]))

    def events(self, name: str | None = None, since: int | None = None) -> list[TransitionEvent]:
        """The journal of one circuit (or all) after cursor `since`, oldest first."""
        start = len(self.events_key(""))
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.events_key("")) + "*"

        def read() -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
            if name is not None:
                keys = [self.events_key(name)]
            else:
                keys = sorted(set(self._client.scan_iter(match=pattern)))
            pipeline = self._client.pipeline(transaction=False)
            for key in keys:
                pipeline.xrange(key)
            return list(zip(keys, pipeline.execute(), strict=True))

        found = []
        for key, entries in self._guarded(read):
            for _, fields in entries:
                event = _event(key[start:], fields)
                if event is not None and (since is None or event.id > since):
                    found.append(event)
        return sorted(found, key=lambda event: event.id)

    def admit(self, name: str, config: BreakerConfig) -> Update:
        return self._update(name, self._run("admit", name, config))

    def record_success(
        self, name: str, config: BreakerConfig, permit: Permit | None, slow: bool = False
    ) -> Update:
        return self._update(name, self._run("success", name, config, permit, slow=slow))

    def record_failure(
        self,
        name: str,
        config: BreakerConfig,
        permit: Permit | None,
        error: str,
        op: str | None = None,
        delay: float | None = None,
        draw: float = 0.0,
        slow: bool = False,
    ) -> Update:
        """`op` is remembered with the last 64 failure writes of the circuit, so that `reconcile`
        can tell a write that timed out here but reached the server from one that did not."""
        extra = _failure_args(error, op, delay, draw)
        return self._update(name, self._run("failure", name, config, permit, *extra, slow=slow))

    def release(self, name: str, config: BreakerConfig, permit: Permit | None) -> Update:
        return self._update(name, self._run("release", name, config, permit))

    def reconcile(self, name: str, config: BreakerConfig, outage: Outage) -> Update:
        known = None if outage.known_generation is None else Permit(outage.known_generation)
        return self._update(
            name,
            self._run(
                "reconcile",
                name,
                config,
                known,
                outage.error or "",
                str(outage.failures),
                "" if outage.open_for is None else repr(outage.open_for),
                " ".join(outage.ops),
            ),
        )

    # -- the same operations for async callers (redis.asyncio, same script) ---------------------

    async def aadmit(self, name: str, config: BreakerConfig) -> Update:
        return self._update(name, await self._arun("admit", name, config))

    async def arecord_success(
        self, name: str, config: BreakerConfig, permit: Permit | None, slow: bool = False
    ) -> Update:
        return self._update(name, await self._arun("success", name, config, permit, slow=slow))

    async def arecord_failure(
        self,
        name: str,
        config: BreakerConfig,
        permit: Permit | None,
        error: str,
        op: str | None = None,
        delay: float | None = None,
        draw: float = 0.0,
        slow: bool = False,
    ) -> Update:
        extra = _failure_args(error, op, delay, draw)
        reply = await self._arun("failure", name, config, permit, *extra, slow=slow)
        return self._update(name, reply)

    async def arelease(self, name: str, config: BreakerConfig, permit: Permit | None) -> Update:
        return self._update(name, await self._arun("release", name, config, permit))

    async def areconcile(self, name: str, config: BreakerConfig, outage: Outage) -> Update:
        known = None if outage.known_generation is None else Permit(outage.known_generation)
        return self._update(
            name,
            await self._arun(
                "reconcile",
                name,
                config,
                known,
                outage.error or "",
                str(outage.failures),
                "" if outage.open_for is None else repr(outage.open_for),
                " ".join(outage.ops),
            ),
        )

    async def aclose(self) -> None:
        """Close this loop's redis.asyncio client (the sync pool stays; see `close`)."""
        made = self._async.pop(asyncio.get_running_loop(), None)
        if made is not None:
            await made[0].aclose()

    def reset(self, name: str, config: BreakerConfig | None = None) -> Update:
        return self._update(name, self._run("reset", name, config))

    def force(
        self,
        name: str,
        config: BreakerConfig,
        state: CircuitState,
        *,
        for_: float | None = None,
        reason: str | None = None,
        owner: str | None = None,
    ) -> Update:
        if state is CircuitState.HALF_OPEN:
            raise ValueError("a circuit can be forced open or closed, not half-open")
        hold = "" if for_ is None else repr(float(for_))
        return self._update(
            name,
            self._run("force", name, config, None, state.value, hold, reason or "", owner or ""),
        )

    def forget(self, name: str) -> bool:
        """Delete the circuit's key (`cbctl forget`); True if there was one."""
        deleted: int = self._guarded(lambda: self._client.delete(self.key(name)))
        return deleted > 0

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
