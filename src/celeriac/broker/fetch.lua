-- celeriac's fetch (celeriac.broker.fetch): pops the first message and records it as held in
-- the same step (kombu's unacked entry [message, exchange, routing_key], its index score,
-- celeriac's in-flight set), so it is never only in a worker's memory. A message over its limit
-- of lost deliveries (it took its worker down each time: out of memory, a segfault) goes to its
-- queue's dead letters instead of running again. Finding nothing, it deletes the doorbells:
-- their messages have been taken.
--
-- KEYS: the lists in fetch order (`lists` of them), unacked, unacked_index, this channel's
-- fetch key, then the doorbells of the queues fetched from.
-- ARGV: read by name; fetch.py puts the line that names them (its ``Arguments``) before this.
local n = tonumber(lists)
local limit = tonumber(max_lost_deliveries)
local unacked, unacked_index, fetch_key = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
for i = 1, n do
  local item = redis.call('RPOP', KEYS[i])
  -- A list consumed without acknowledgements (Celery's reply queues): only popped, as kombu does.
  if item and string.sub(records, i, i) == '0' then
    return {KEYS[i], item}
  end
  while item do
    local ok, message = pcall(cjson.decode, item)
    local tag, exchange, routing_key
    if ok and type(message) == 'table' and type(message['properties']) == 'table' then
      local properties = message['properties']
      tag = properties['delivery_tag']
      local info = properties['delivery_info']
      if type(info) == 'table' then
        exchange = info['exchange']
        routing_key = info['routing_key']
      end
    end
    local valid = type(tag) == 'string' and type(exchange) == 'string'
      and type(routing_key) == 'string'
    local deliveries = 0
    if valid then
      deliveries = redis.call('HINCRBY', deliveries_key, tag, 1)
    end
    if valid and limit > 0 and deliveries > limit then
      local id = tag
      if type(message['headers']) == 'table' and type(message['headers']['id']) == 'string' then
        id = message['headers']['id']
      end
      redis.call('HSET', dead_letter_entries, id, cjson.encode({
        id = id, queue = routing_key, deliveries = deliveries - 1, at = tonumber(now),
        reason = 'its worker was lost on each of ' .. (deliveries - 1) .. ' deliveries',
        message = item}))
      redis.call('ZADD', dead_letters_prefix .. routing_key, now, id)
      redis.call('ZADD', all_dead_letters, now, id)
      redis.call('HDEL', deliveries_key, tag)
      redis.call('ZREM', unacked_index, tag)
      redis.call('HDEL', unacked, tag)
      redis.call('ZREM', in_flight_prefix .. routing_key, tag)
      item = redis.call('RPOP', KEYS[i])
    elseif valid then
      redis.call('HSET', unacked, tag,
        '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
      redis.call('ZADD', unacked_index, now, tag)
      redis.call('ZADD', in_flight_prefix .. routing_key, 0, tag)
      redis.call('SET', fetch_key, nonce .. ':' .. tag, 'EX', fetch_key_ttl)
      return {KEYS[i], item}
    else
      -- Not a kombu message (no delivery tag or routing key): kept for a person to look at.
      redis.call('LPUSH', undeliverable, item)
      item = redis.call('RPOP', KEYS[i])
    end
  end
end
for i = n + 4, #KEYS do
  redis.call('DEL', KEYS[i])
end
return false
