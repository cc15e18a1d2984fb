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

local function publish(keys, args)
  local channel, payload = args[1], args[2]
  if not channel or not payload then
    return redis.error_reply('usage: FCALL sse_publish 0 <channel> <payload> [maxlen=N] [ttl=S] [to=U,...] [prefix=P]')
  end
  if string.find(channel, '^sse:') then
    return redis.error_reply('channels starting with "sse:" are reserved')
  end
  local maxlen, ttl, to, prefix = 1000, 86400, nil, 'sse'
  for i = 3, #args do
    local k, v = string.match(args[i], '^(%w+)=(.*)$')
    if k == 'maxlen' and tonumber(v) and tonumber(v) >= 1 then maxlen = math.floor(tonumber(v))
    elseif k == 'ttl' and tonumber(v) and tonumber(v) >= 0 then ttl = math.floor(tonumber(v))
    elseif k == 'to' and valid_audience(v) then to = v
    elseif k == 'prefix' and string.find(v, '^[%w_%-%.@:]+$') then prefix = v
    else return redis.error_reply('bad option "' .. args[i] .. '"') end
  end

  local stream = prefix .. ':h:' .. channel
  local last = prefix .. ':last'
  check_epoch(prefix)
  local id = redis.call('INCR', prefix .. ':seq')
  local prev = redis.call('HGET', last, channel) or '0'
  local epoch_start = math.floor(id / EPOCH) * EPOCH
  if epoch_start > 0 and tonumber(prev) < epoch_start then
    -- The channel's first event of an epoch: what came before may be lost.
    prev = string.format('%d', epoch_start)
  end
  local entry = { 'd', payload, 'p', prev }
  if to then
    entry[#entry + 1] = 't'
    entry[#entry + 1] = to
  end
  redis.call('XADD', stream, 'MAXLEN', maxlen, id .. '-0', unpack(entry))
  redis.call('HSET', last, channel, id)
  if ttl > 0 then redis.call('EXPIRE', stream, ttl) end

  local header = '\30sse1 id=' .. id
  if prefix ~= 'sse' then header = header .. ' prefix=' .. prefix end
  if to then header = header .. ' to=' .. to end
  redis.call('PUBLISH', channel, header .. '\n' .. payload)
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
