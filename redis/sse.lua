#!lua name=nginx_sse
--[[
nginx-sse publishing function: history + notification in one atomic call.

  FCALL sse_publish 0 <channel> <payload> [maxlen=N] [ttl=SECONDS] [to=USER,...] [prefix=P]

1. takes the next global sequence number N from <P>:seq (one counter for all
   channels, so one SSE id orders events across every channel a browser
   multiplexes);
2. appends {d=payload, p=previous id on this channel, t=audience} to the
   stream <P>:h:<channel> with entry id N-0, keeps its last `maxlen` entries
   (default 1000) and lets an idle channel's history expire after `ttl`
   seconds (default 86400; 0 = never);
3. records N as the channel's last id in the hash <P>:last (used to detect
   history that is gone);
4. publishes "\x1esse1 id=N [prefix=P] [to=...]\n<payload>" on <channel>, the
   envelope nginx-sse reads (`prefix=` only when P is not the default: an
   nginx configured with another `sse_redis_prefix` skips the event, whose id
   belongs to another sequence);
and returns N. The default prefix P is "sse". Keys are not declared, so this
needs a standalone Redis (or one where all these keys live on one node).

Epochs (Redis Sentinel). Replication is asynchronous: after a failover the
new master may not have the last ids the old one issued, and INCR would issue
them again, to other events. nginx behind Sentinel calls
  FCALL sse_epochs 0 [P]
which records this master's replication id in <P>:replid. From then on, the
first publish on a master whose replication id differs (a promoted replica, a
restarted server) starts a new epoch: the sequence jumps to the next multiple
of 10^12, above any id the lost master can have issued, and each channel's
first entry of the epoch names the epoch's start as its previous id, so that
a client resuming from before it is told of a gap (sse-gap) instead of
silently missing what was lost. Without <P>:replid (no Sentinel), ids are
plain INCR values, as they always were.
]]

local EPOCH = 1000000000000

local function replid()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
end

-- A new epoch if this master is not the one that issued the last ids.
local function check_epoch(prefix)
  local mark = redis.call('GET', prefix .. ':replid')
  if not mark then return end
  local now = replid()
  if now == mark then return end
  local seq = tonumber(redis.call('GET', prefix .. ':seq') or '0')
  local start = (math.floor(seq / EPOCH) + 1) * EPOCH
  redis.call('SET', prefix .. ':seq', string.format('%d', start))
  redis.call('SET', prefix .. ':replid', now)
end

-- User ids follow the channel name rules: 1 to 128 bytes of A-Z a-z 0-9
-- _ - . @ in non-empty segments separated by ':'.
local function valid_user(u)
  if #u < 1 or #u > 128 then return false end
  for seg in string.gmatch(u .. ':', '([^:]*):') do
    if not string.find(seg, '^[%w_%-%.@]+$') then return false end
  end
  return true
end

local function valid_audience(list)
  for u in string.gmatch(list .. ',', '([^,]*),') do
    if not valid_user(u) then return false end
  end
  return true
end

-- Options after the payload: maxlen=, ttl=, to=, prefix=.
local function options(args, first)
  local o = { maxlen = 1000, ttl = 86400, prefix = 'sse' }
  for i = first, #args do
    local k, v = string.match(args[i], '^(%w+)=(.*)$')
    if k == 'maxlen' and tonumber(v) and tonumber(v) >= 1 then o.maxlen = math.floor(tonumber(v))
    elseif k == 'ttl' and tonumber(v) and tonumber(v) >= 0 then o.ttl = math.floor(tonumber(v))
    elseif k == 'to' and valid_audience(v) then o.to = v
    elseif k == 'prefix' and string.find(v, '^[%w_%-%.@:]+$') then o.prefix = v
    else return nil, 'bad option "' .. args[i] .. '"' end
  end
  return o
end

local function entry_of(payload, prev, to)
  local entry = { 'd', payload, 'p', prev }
  if to then
    entry[#entry + 1] = 't'
    entry[#entry + 1] = to
  end
  return entry
end

local function envelope(id, o, payload)
  local header = '\30sse1 id=' .. id
  if o.prefix ~= 'sse' then header = header .. ' prefix=' .. o.prefix end
  if o.to then header = header .. ' to=' .. o.to end
  return header .. '\n' .. payload
end

-- The previous id to record: the first entry of an epoch names the epoch's
-- start (what came before may be lost).
local function prev_in_epoch(id, prev)
  local epoch_start = math.floor(id / EPOCH) * EPOCH
  if epoch_start > 0 and tonumber(prev) < epoch_start then
    return string.format('%d', epoch_start)
  end
  return prev
end

--[[
Redis Cluster: FCALL sse_publish 1 <P>:{<channel>}:s <payload> [options]
The key is the channel's state, a hash that shares the channel's slot ({channel}
is its hash tag): n = the channel's sequence, r = the replication id of the
node that issued it; the history is the Redis Stream <P>:{<channel>}:h. Naming
the real key lets the cluster run the call where the key is, also while its
slot migrates (a name that no key has would be sent to the importing node
before the history has moved there). The event is published with SPUBLISH
(sharded pub/sub). Epochs are always on: the first publish on a node whose
replication id is not the one recorded (a promoted replica, a restarted node)
moves the channel's sequence to the next multiple of 10^12. The prefix comes
from the key (prefix= is refused here).
]]
local function publish_sharded(key, args)
  local prefix, channel = string.match(key, '^(.-):{(.*)}:s$')
  local payload = args[1]
  if not prefix or not payload then
    return redis.error_reply('usage: FCALL sse_publish 1 <prefix>:{<channel>}:s <payload> [maxlen=N] [ttl=S] [to=U,...]')
  end
  if not string.find(prefix, '^[%w_%-%.@:]+$') then
    return redis.error_reply('bad prefix "' .. prefix .. '"')
  end
  if string.find(channel, '^sse:') then
    return redis.error_reply('channels starting with "sse:" are reserved')
  end
  local o, err = options(args, 2)
  if not o then return redis.error_reply(err) end
  if o.prefix ~= 'sse' then
    return redis.error_reply('prefix= is given by the key in a cluster')
  end
  o.prefix = prefix
  local state, stream = key, prefix .. ':{' .. channel .. '}:h'
  local now = replid()
  local seq = redis.call('HGET', state, 'n') or '0'
  if redis.call('HGET', state, 'r') ~= now then
    if tonumber(seq) > 0 then
      seq = string.format('%d', (math.floor(tonumber(seq) / EPOCH) + 1) * EPOCH)
      redis.call('HSET', state, 'n', seq)
    end
    redis.call('HSET', state, 'r', now)
  end
  local id = redis.call('HINCRBY', state, 'n', 1)
  local prev = prev_in_epoch(id, seq)
  redis.call('XADD', stream, 'MAXLEN', o.maxlen, id .. '-0', unpack(entry_of(payload, prev, o.to)))
  if o.ttl > 0 then redis.call('EXPIRE', stream, o.ttl) end
  redis.call('SPUBLISH', channel, envelope(id, o, payload))
  return id
end

local function publish(keys, args)
  if #keys == 1 then return publish_sharded(keys[1], args) end
  local channel, payload = args[1], args[2]
  if not channel or not payload then
    return redis.error_reply('usage: FCALL sse_publish 0 <channel> <payload> [maxlen=N] [ttl=S] [to=U,...] [prefix=P]')
  end
  if string.find(channel, '^sse:') then
    return redis.error_reply('channels starting with "sse:" are reserved')
  end
  local o, err = options(args, 3)
  if not o then return redis.error_reply(err) end

  local stream = o.prefix .. ':h:' .. channel
  local last = o.prefix .. ':last'
  check_epoch(o.prefix)
  local id = redis.call('INCR', o.prefix .. ':seq')
  local prev = prev_in_epoch(id, redis.call('HGET', last, channel) or '0')
  redis.call('XADD', stream, 'MAXLEN', o.maxlen, id .. '-0', unpack(entry_of(payload, prev, o.to)))
  redis.call('HSET', last, channel, id)
  if o.ttl > 0 then redis.call('EXPIRE', stream, o.ttl) end
  redis.call('PUBLISH', channel, envelope(id, o, payload))
  return id
end

local function epochs(keys, args)
  local prefix = args[1] or 'sse'
  if not string.find(prefix, '^[%w_%-%.@:]+$') then
    return redis.error_reply('bad prefix "' .. prefix .. '"')
  end
  redis.call('SET', prefix .. ':replid', replid(), 'NX')
  return 'OK'
end

redis.register_function('sse_publish', publish)
redis.register_function('sse_epochs', epochs)
