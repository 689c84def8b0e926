-- Writes a directory tree read from a backup (another point in time of the same file
-- system) into a new place of the live file system, as one script: tree_copy.lua
-- with its source in the arguments instead of the database. Slices are counted once
-- more in `sliceRef`, as a copy's are, so the live file system frees an object only
-- when neither side uses it. Objects the live file system freed since the backup are
-- gone: the files that used them are damaged (docs/operations.md).
--
-- ARGV: now, m, m destination path components (missing directories before the last
-- are made), then the nodes, the tree's top first: inode, attr, has symlink (0/1),
-- symlink, xattr pair count, pairs, has stats (0/1), 3 stats, chunk count, per chunk:
-- index, slice count, slices; then the entry count and per entry: directory inode,
-- name, type, inode; then has quota (0/1), quota. Inodes are the backup's.

local now = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
if m < 1 then return redis.error_reply('KELP_BAD_DESTINATION') end
local dst_path = {}
for i = 1, m do dst_path[i] = ARGV[2 + i] end
local at = 3 + m
local function arg()
  local v = ARGV[at]
  at = at + 1
  return v
end

local nodes = {}
for i = 1, tonumber(arg()) do
  local nd = { ino = tonumber(arg()), attr = arg(), x = {}, chunks = {} }
  local has_link, target = arg(), arg()
  if has_link == '1' then nd.symlink = target end
  for j = 1, 2 * tonumber(arg()) do nd.x[j] = arg() end
  if arg() == '1' then nd.stats = { arg(), arg(), arg() } end
  for _ = 1, tonumber(arg()) do
    local index, slices = arg(), {}
    for k = 1, tonumber(arg()) do slices[k] = arg() end
    nd.chunks[#nd.chunks + 1] = { index, slices }
  end
  nodes[i] = nd
end
local entries, links, first = {}, {}, {}
for i = 1, tonumber(arg()) do
  local e = { tonumber(arg()), arg(), tonumber(arg()), tonumber(arg()) }
  entries[i] = e
  local ino = e[4]
  if links[ino] then
    links[ino] = links[ino] + 1
  else
    links[ino] = 1
    first[ino] = e[1]
  end
end
local quota = nil
if arg() == '1' then quota = arg() end

-- The destination: existing directories, then ones to make, then a free name.
local dst, make_from = walk(dst_path, m - 1)
if not dst then return redis.error_reply(make_from) end
local new_name = dst_path[m]
if not make_from and lookup(dst, new_name) then return redis.error_reply('KELP_EXISTS') end
local made = 0
if make_from then made = m - make_from end
local take = take_inodes(#nodes + made)
if make_from then dst = make_dirs(dst, dst_path, make_from, m - 1, take, now) end

local new = {}
for _, nd in ipairs(nodes) do new[nd.ino] = take() end

local function import(nd, parent)
  local attr, to = nd.attr, new[nd.ino]
  local t, len = kind(attr), length(attr)
  if t == 2 then
    attr = with_links(attr, nlink(attr), parent)
    if nd.stats then
      for i, k in ipairs({ 'dirUsedSpace', 'dirDataLength', 'dirUsedInodes' }) do
        redis.call('HSET', k, num(to), nd.stats[i])
      end
    end
  elseif links[nd.ino] and links[nd.ino] > 1 then
    attr = with_links(attr, links[nd.ino], 0)
  else
    attr = with_links(attr, 1, parent)
  end
  redis.call('SET', 'i' .. num(to), attr)
  for i = 1, #nd.x, 2 * BATCH do
    local part = {}
    for j = i, math.min(i + 2 * BATCH - 1, #nd.x) do part[#part + 1] = nd.x[j] end
    redis.call('HSET', 'x' .. num(to), unpack(part))
  end
  for _, chunk in ipairs(nd.chunks) do
    add_slices('c' .. num(to) .. '_' .. chunk[1], chunk[2])
  end
  if t == 3 and nd.symlink then redis.call('SET', 's' .. num(to), nd.symlink) end
  used_space = used_space + align4k(len)
  inodes = inodes + 1
end

local top = nodes[1].ino
import(nodes[1], dst)
for i = 2, #nodes do import(nodes[i], new[first[nodes[i].ino]]) end
link_entries(entries, new, links)
add_subdir(dst, new_name, new[top])
account()
if quota then
  redis.call('HSET', 'dirQuota', num(new[top]), quota)
  redis.call('HSET', 'dirQuotaUsedSpace', num(new[top]), used_space - align4k(4096))
  redis.call('HSET', 'dirQuotaUsedInodes', num(new[top]), inodes - 1)
end
return { num(new[top]), #entries }
