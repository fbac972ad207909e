"""The deployment's steps in Redis, each one Lua script, so each is atomic.

Keys, under the deployment's prefix ``P`` (``--deployment NAME`` + ``:``):

* ``P:leases``: sorted set, node -> when its lease ends (ms, Redis ``TIME``)
* ``P:instances``: hash, node -> the id of the process holding the name
* ``P:nodes``: hash, node -> its status, JSON (written at its heartbeat)
* ``P:seq``: the admission sequence (deployment admission order)
* ``P:order``: sorted set, ``node|seq|address`` by seq: every client, in
  admission order (the address is in the member, so a listing taken from
  it always has one)
* ``P:clients:NODE``: hash, ``seq|address`` -> the client's row
  (tab-separated; its counters as of the node's last heartbeat)
* ``P:stop``: the stop generation (DESCONEXION increments it)
* ``P:listing:ID``: a LISTAR's snapshot of the order, for a few seconds
* channel ``P:events``: ``stop GEN NODE``, published with the increment

Every time is Redis's own (``TIME``), never a node's clock, so machines
with skewed clocks agree on leases.  A node whose lease has ended is
*reaped* by whichever node notices first: its clients leave the order, its
share of the cap is freed.  Scripts build key names from the prefix, so
this is for a single Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

from typing import Final

_COMMON: Final = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function zrem_all(key, members)
  for i = 1, #members, 500 do
    redis.call('ZREM', key, unpack(members, i, math.min(i + 499, #members)))
  end
end

local function reap(p, node)
  local fields = redis.call('HKEYS', p .. 'clients:' .. node)
  local members = {}
  for i, field in ipairs(fields) do members[i] = node .. '|' .. field end
  zrem_all(p .. 'order', members)
  redis.call('DEL', p .. 'clients:' .. node)
  redis.call('ZREM', p .. 'leases', node)
  redis.call('HDEL', p .. 'nodes', node)
  redis.call('HDEL', p .. 'instances', node)
end

local function reap_expired(p, now)
  local dead = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', '(' .. now)
  for _, node in ipairs(dead) do reap(p, node) end
  return dead
end

-- Clients that left: their rows and places go (idempotent: sending the
-- same departures twice, after a lost reply, changes nothing).
local function depart(p, node, fields)
  local members = {}
  for i, field in ipairs(fields) do
    members[i] = node .. '|' .. field
    redis.call('HDEL', p .. 'clients:' .. node, field)
  end
  zrem_all(p .. 'order', members)
end

local function holds(p, node, instance, now)
  if redis.call('HGET', p .. 'instances', node) ~= instance then return false end
  local ends = redis.call('ZSCORE', p .. 'leases', node)
  return ends ~= false and tonumber(ends) >= now
end
"""

#: ARGV: prefix, node, instance, lease_ms, info, highest seq, then
#: ``seq|address, row`` for every client the node has.  Returns ``{-1}`` when a live
#: node of another process holds the name; else ``{now, stop generation}``.
REGISTER: Final = (
    _COMMON
    + r"""
local p, node, instance, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
reap_expired(p, now)
local owner = redis.call('HGET', p .. 'instances', node)
if owner and owner ~= instance then return {-1} end
reap(p, node)
redis.call('ZADD', p .. 'leases', now + lease, node)
redis.call('HSET', p .. 'instances', node, instance)
redis.call('HSET', p .. 'nodes', node, ARGV[5])
local n = (#ARGV - 6) / 2
for i = 0, n - 1 do
  local field, row = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  redis.call('ZADD', p .. 'order', string.match(field, '^(%d+)|'), node .. '|' .. field)
  redis.call('HSET', p .. 'clients:' .. node, field, row)
end
if tonumber(redis.call('GET', p .. 'seq') or '0') < tonumber(ARGV[6]) then
  redis.call('SET', p .. 'seq', ARGV[6])
end
return {now, tonumber(redis.call('GET', p .. 'stop') or '0')}
"""
)

#: ARGV: prefix, node, instance, cap, how many departures follow, their
#: ``seq|address`` fields, then one address per connection in accept order.
#: The departures go first (so churn does not fill the cap between
#: heartbeats); then it admits as many as the deployment-wide cap allows,
#: counting the clients of every node whose lease runs.  Returns ``{-1}`` when this node is not
#: registered (its lease ended, or Redis lost its keys); else
#: ``{admitted, first seq, now}``: the first ``admitted`` addresses are in.
ADMIT: Final = (
    _COMMON
    + r"""
local p, node, instance, cap = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
if not holds(p, node, instance, now) then return {-1} end
local gone = tonumber(ARGV[5])
depart(p, node, {unpack(ARGV, 6, 5 + gone)})
local total = 0
for _, live in ipairs(redis.call('ZRANGEBYSCORE', p .. 'leases', now, '+inf')) do
  total = total + redis.call('HLEN', p .. 'clients:' .. live)
end
local base = 5 + gone
local k = math.max(0, math.min(#ARGV - base, cap - total))
if k == 0 then return {0, 0, now} end
local first = redis.call('INCRBY', p .. 'seq', k) - k + 1
for j = 0, k - 1 do
  local field = (first + j) .. '|' .. ARGV[base + 1 + j]
  redis.call('ZADD', p .. 'order', first + j, node .. '|' .. field)
  redis.call('HSET', p .. 'clients:' .. node, field, ARGV[base + 1 + j] .. '\t' .. now)
end
return {k, first, now}
"""
)

#: ARGV: prefix, node, instance, lease_ms, info, how many departures
#: follow, their ``seq|address`` fields, then ``seq|address, row`` for every
#: client whose counters changed.  Renews the lease and reaps
#: expired nodes.  Returns ``{-1}`` when this node is not registered; else
#: ``{now, stop generation, nodes...}`` (name, info pairs of the live nodes).
HEARTBEAT: Final = (
    _COMMON
    + r"""
local p, node, instance, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
reap_expired(p, now)
if redis.call('HGET', p .. 'instances', node) ~= instance then return {-1} end
redis.call('ZADD', p .. 'leases', now + lease, node)
redis.call('HSET', p .. 'nodes', node, ARGV[5])
local gone = tonumber(ARGV[6])
depart(p, node, {unpack(ARGV, 7, 6 + gone)})
for i = 7 + gone, #ARGV, 2 do
  if redis.call('HEXISTS', p .. 'clients:' .. node, ARGV[i]) == 1 then
    redis.call('HSET', p .. 'clients:' .. node, ARGV[i], ARGV[i + 1])
  end
end
local reply = {now, tonumber(redis.call('GET', p .. 'stop') or '0')}
local nodes = redis.call('HGETALL', p .. 'nodes')
for i = 1, #nodes do reply[#reply + 1] = nodes[i] end
return reply
"""
)

#: ARGV: prefix, node, instance.  A node leaving: its clients, share and
#: lease go at once (others need not wait for the lease).
LEAVE: Final = (
    _COMMON
    + r"""
local p, node, instance = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', p .. 'instances', node) == instance then reap(p, node) end
return 1
"""
)

#: ARGV: prefix, node.  A node known dead (its supervisor saw it exit):
#: its clients and share go now, not when its lease ends.
FORGET: Final = (
    _COMMON
    + r"""
reap(ARGV[1], ARGV[2])
return 1
"""
)

#: ARGV: prefix, node.  DESCONEXION: the next stop generation, announced.
STOP: Final = r"""
local p = ARGV[1]
local generation = redis.call('INCR', p .. 'stop')
redis.call('PUBLISH', p .. 'events', 'stop ' .. generation .. ' ' .. ARGV[2])
return generation
"""

#: ARGV: prefix, listing id, first index, part size, snapshot TTL (ms).
#: LISTAR, one part per call: at index 0 the order is copied into a
#: snapshot of its own (``P:listing:ID``, expiring), so every part comes
#: from the same moment, and no call handles more than one part.  Returns
#: ``{now, total, member, row, member, row...}``; a row is ``""`` for a
#: client that left since the snapshot.
LIST: Final = (
    _COMMON
    + r"""
local p, start, size = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local snapshot = p .. 'listing:' .. ARGV[2]
if start == 0 then
  redis.call('COPY', p .. 'order', snapshot)
  redis.call('PEXPIRE', snapshot, ARGV[5])
end
local total = redis.call('ZCARD', snapshot)
local reply = {now_ms(), total}
for _, member in ipairs(redis.call('ZRANGE', snapshot, start, start + size - 1)) do
  local node, field = string.match(member, '^([^|]*)|(.*)$')
  reply[#reply + 1] = member
  reply[#reply + 1] = redis.call('HGET', p .. 'clients:' .. node, field) or ''
end
if start + size >= total then redis.call('DEL', snapshot) end
return reply
"""
)
