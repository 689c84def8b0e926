-- Copies a directory tree of one JuiceFS file system into another place of the same
-- file system, as one script: the copy is a state that existed (docs/snapshots.md).
--
-- ARGV: max_entries, now (unix seconds), n, n source path components, m, m
-- destination path components (the last is the new name; missing directories
-- before it are made, owned by root, 0755).
--
-- Every check is made before the first write: a script that fails half way keeps
-- what it wrote, so the only errors after the first write would be the server's own.

-- Arguments.
local max_entries = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local src_path = {}
for i = 1, n do src_path[i] = ARGV[3 + i] end
local m = tonumber(ARGV[4 + n])
local dst_path = {}
for i = 1, m do dst_path[i] = ARGV[4 + n + i] end
if m < 1 then return redis.error_reply('KELP_BAD_DESTINATION') end

-- The source: an existing directory.
local src = 1
for _, name in ipairs(src_path) do
  src = lookup(src, name)
  if not src then return redis.error_reply('KELP_NO_SOURCE') end
end
if not is_dir(src) then return redis.error_reply('KELP_NOT_A_DIRECTORY') end

-- The destination: existing directories, then ones to make, then a free name.
local dst, make_from = walk(dst_path, m - 1)
if not dst then return redis.error_reply(make_from) end
local new_name = dst_path[m]
if not make_from and lookup(dst, new_name) then return redis.error_reply('KELP_EXISTS') end

-- Walk the source breadth first. `order` lists each inode once; `links` counts the
-- entries naming it inside the tree; `first` is the directory it was first seen in.
local order, links, first, entries = {}, {}, {}, {}
local queue, head = { src }, 1
while queue[head] do
  local dir = queue[head]
  head = head + 1
  if dir == dst then return redis.error_reply('KELP_INSIDE_SOURCE') end
  local flat = redis.call('HGETALL', 'd' .. num(dir))
  for i = 1, #flat, 2 do
    local e = flat[i + 1]
    local ino = be_get(e, 2, 8)
    entries[#entries + 1] = { dir, flat[i], string.byte(e, 1), ino }
    if #entries > max_entries then return redis.error_reply('KELP_TOO_MANY ' .. num(max_entries)) end
    if links[ino] then
      links[ino] = links[ino] + 1
    else
      links[ino] = 1
      first[ino] = dir
      order[#order + 1] = ino
      if string.byte(e, 1) == 2 then queue[#queue + 1] = ino end
    end
  end
end

local made = 0
if make_from then made = m - make_from end
local take = take_inodes(1 + #order + made)

-- Missing destination directories.
if make_from then dst = make_dirs(dst, dst_path, make_from, m - 1, take, now) end

-- The copies.
local new = {}
new[src] = take()
for _, ino in ipairs(order) do new[ino] = take() end

local function copy_hash(from, to)
  local flat = redis.call('HGETALL', from)
  for i = 1, #flat, 2 * BATCH do
    local args = {}
    for j = i, math.min(i + 2 * BATCH - 1, #flat) do args[#args + 1] = flat[j] end
    redis.call('HSET', to, unpack(args))
  end
end

local function copy_node(ino, parent)
  local attr = redis.call('GET', 'i' .. num(ino))
  local to = new[ino]
  local t = kind(attr)
  local len = length(attr)
  if t == 2 then
    attr = with_links(attr, nlink(attr), parent)
    for _, k in ipairs({ 'dirUsedSpace', 'dirDataLength', 'dirUsedInodes' }) do
      local v = redis.call('HGET', k, num(ino))
      if v then redis.call('HSET', k, num(to), v) end
    end
  elseif links[ino] and links[ino] > 1 then
    attr = with_links(attr, links[ino], 0)
  else
    attr = with_links(attr, 1, parent)
  end
  redis.call('SET', 'i' .. num(to), attr)
  copy_hash('x' .. num(ino), 'x' .. num(to))
  if t == 1 and len > 0 then
    for c = 0, math.floor(len / CHUNK) do
      local slices = redis.call('LRANGE', 'c' .. num(ino) .. '_' .. c, 0, -1)
      add_slices('c' .. num(to) .. '_' .. c, slices)
    end
  elseif t == 3 then
    local target = redis.call('GET', 's' .. num(ino))
    if target then redis.call('SET', 's' .. num(to), target) end
  end
  used_space = used_space + align4k(len)
  inodes = inodes + 1
end

copy_node(src, dst)
for _, ino in ipairs(order) do copy_node(ino, new[first[ino]]) end
link_entries(entries, new, links)
add_subdir(dst, new_name, new[src])
account()
-- A copy of a tree with a directory quota (a volume, or a snapshot of one) gets the
-- same quota, counting what it holds from the start: a clone's capacity then counts
-- the data it began with, and a restore from a snapshot finds the usage there.
local quota = redis.call('HGET', 'dirQuota', num(src))
if quota then
  redis.call('HSET', 'dirQuota', num(new[src]), quota)
  redis.call('HSET', 'dirQuotaUsedSpace', num(new[src]), used_space - align4k(4096))
  redis.call('HSET', 'dirQuotaUsedInodes', num(new[src]), inodes - 1)
end
return { num(new[src]), #entries }
