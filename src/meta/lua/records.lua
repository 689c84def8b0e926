-- Shared by kelp's metadata scripts (prepended to each): the JuiceFS record layouts
-- and helpers to read and write them.
--
-- Record layouts (juicefs pkg/meta): i<ino> attributes, 72 bytes, big-endian
-- (flags 1, type<<12|mode 2, uid 4, gid 4, three times of 8+4, nlink 4, length 8,
-- rdev 4, parent 8, then optional ACL ids and tier); d<ino> name -> type 1 + inode 8;
-- c<ino>_<n> lists of 24-byte slices (pos 4, id 8, size 4, off 4, len 4);
-- s<ino> symlink target; x<ino> xattrs; p<ino> parent -> links, for hard links;
-- dirQuota <ino> -> max space 8 + max inodes 8 (0: no limit).
--
-- A script's effects replicate, not the script: on KeyDB 6.3 (Redis 6) a script
-- would otherwise be re-run on every other master over its own data.
if redis.replicate_commands then redis.replicate_commands() end

local CHUNK = 67108864
local BATCH = 1000

local function num(s)
  return string.format('%.0f', s)
end

local function be_get(s, off, n)
  local v = 0
  for i = off, off + n - 1 do v = v * 256 + string.byte(s, i) end
  return v
end

local function be_put(v, n)
  local t = {}
  for i = n, 1, -1 do
    t[i] = string.char(v % 256)
    v = math.floor(v / 256)
  end
  return table.concat(t)
end

local function kind(attr) return math.floor(string.byte(attr, 2) / 16) end
local function nlink(attr) return be_get(attr, 48, 4) end
local function length(attr) return be_get(attr, 52, 8) end
local function with_links(attr, links, parent)
  return string.sub(attr, 1, 47) .. be_put(links, 4) .. string.sub(attr, 52, 63) ..
    be_put(parent, 8) .. string.sub(attr, 72)
end
local function align4k(len)
  if len == 0 then return 4096 end
  return (math.floor((len - 1) / 4096) + 1) * 4096
end

local function lookup(dir, name)
  local e = redis.call('HGET', 'd' .. num(dir), name)
  if not e then return nil end
  return be_get(e, 2, 8)
end

local function is_dir(ino)
  local a = redis.call('GET', 'i' .. num(ino))
  return a and kind(a) == 2
end


local used_space, inodes = 0, 0
-- A directory's usage statistics from its entries, as juicefs computes a missing one:
-- a regular file counts its length rounded up to 4 KiB, anything else 4 KiB.
local function dir_stat_calc(dir)
  local space, len, nodes = 0, 0, 0
  local entries = redis.call('HGETALL', 'd' .. num(dir))
  for i = 2, #entries, 2 do
    local a = redis.call('GET', 'i' .. num(be_get(entries[i], 2, 8)))
    if a then
      nodes = nodes + 1
      if kind(a) == 1 then
        len = len + length(a)
        space = space + align4k(length(a))
      else
        space = space + 4096
      end
    end
  end
  redis.call('HSET', 'dirUsedSpace', num(dir), num(space))
  redis.call('HSET', 'dirDataLength', num(dir), num(len))
  redis.call('HSET', 'dirUsedInodes', num(dir), num(nodes))
end
-- Counts a change of `dir`'s entries (already made) in its statistics. `juicefs
-- format` writes none for the root, and juicefs's own fsck calls a file system whose
-- root has entries but no statistics broken: a directory without them gets them
-- computed whole, as a juicefs client does the first time it changes one.
local function dir_stat_add(dir, space, len, nodes)
  if redis.call('HEXISTS', 'dirUsedSpace', num(dir)) == 1 then
    redis.call('HINCRBY', 'dirUsedSpace', num(dir), space)
    redis.call('HINCRBY', 'dirDataLength', num(dir), len)
    redis.call('HINCRBY', 'dirUsedInodes', num(dir), nodes)
  else
    dir_stat_calc(dir)
  end
end
local function add_subdir(parent, name, ino)
  redis.call('HSET', 'd' .. num(parent), name, string.char(2) .. be_put(ino, 8))
  local pa = redis.call('GET', 'i' .. num(parent))
  local grand = be_get(pa, 64, 8)
  redis.call('SET', 'i' .. num(parent), with_links(pa, nlink(pa) + 1, grand))
  dir_stat_add(parent, 4096, 0, 1)
end

-- A new directory `name` in `parent`, owned by root, 0755, with empty statistics.
local function mkdir(parent, name, ino, now)
  local times = (be_put(now, 8) .. be_put(0, 4)):rep(3)
  local attr = string.char(0) .. be_put(2 * 4096 + 493, 2) .. be_put(0, 4) .. be_put(0, 4) ..
    times .. be_put(2, 4) .. be_put(4096, 8) .. be_put(0, 4) .. be_put(parent, 8) .. string.char(0)
  redis.call('SET', 'i' .. num(ino), attr)
  for _, k in ipairs({ 'dirUsedSpace', 'dirDataLength', 'dirUsedInodes' }) do
    redis.call('HSET', k, num(ino), '0')
  end
  add_subdir(parent, name, ino)
  used_space = used_space + 4096
  inodes = inodes + 1
end

-- Follows `path[1..count]` from the root: the deepest directory that exists and the
-- index of the first component that does not (nil when all do), or nil and the
-- error code when a component is not a directory.
local function walk(path, count)
  local dir = 1
  for i = 1, count do
    local child = lookup(dir, path[i])
    if not child then return dir, i end
    if not is_dir(child) then return nil, 'KELP_NOT_A_DIRECTORY' end
    dir = child
  end
  return dir, nil
end

-- Makes `path[from..to]` below `dir` with inode numbers from `take`; returns the
-- last one made.
local function make_dirs(dir, path, from, to, take, now)
  for i = from, to do
    local ino = take()
    mkdir(dir, path[i], ino, now)
    dir = ino
  end
  return dir
end

-- Fresh inode numbers, above every batch a client has taken (juicefs: INCRBY
-- nextinode N returns v; the batch is v-N+1 .. v). A new file system has no counter
-- yet, so its first batch starts at 1, the root's number, which juicefs skips too.
local function take_inodes(count)
  local last = redis.call('INCRBY', 'nextinode', count)
  local next_ino = last - count + 1
  if next_ino < 2 then
    redis.call('INCRBY', 'nextinode', 2 - next_ino)
    next_ino = 2
  end
  return function()
    local v = next_ino
    next_ino = next_ino + 1
    return v
  end
end

local function account()
  redis.call('INCRBY', 'usedSpace', used_space)
  redis.call('INCRBY', 'totalInodes', inodes)
end

-- Appends `slices` to the chunk list `key` and counts one more reference to each
-- object they name, so the object outlives whichever tree deletes it first.
local function add_slices(key, slices)
  for i = 1, #slices, BATCH do
    local part = {}
    for j = i, math.min(i + BATCH - 1, #slices) do part[#part + 1] = slices[j] end
    redis.call('RPUSH', key, unpack(part))
  end
  for _, s in ipairs(slices) do
    local id = be_get(s, 5, 8)
    if id > 0 then
      redis.call('HINCRBY', 'sliceRef', 'k' .. num(id) .. '_' .. num(be_get(s, 13, 4)), 1)
    end
  end
end

-- Writes the new tree's directory entries ({dir, name, type, inode} of the old tree,
-- `new` mapping old inodes to new) and the parent counts of files with several
-- links, which JuiceFS keeps for hard links.
local function link_entries(entries, new, links)
  local parents = {}
  for _, e in ipairs(entries) do
    local dir, name, t, ino = e[1], e[2], e[3], e[4]
    redis.call('HSET', 'd' .. num(new[dir]), name, string.char(t) .. be_put(new[ino], 8))
    if links[ino] > 1 and t ~= 2 then
      parents[ino] = parents[ino] or {}
      parents[ino][new[dir]] = (parents[ino][new[dir]] or 0) + 1
    end
  end
  for ino, by in pairs(parents) do
    for dir, k in pairs(by) do redis.call('HINCRBY', 'p' .. num(new[ino]), num(dir), k) end
  end
end
