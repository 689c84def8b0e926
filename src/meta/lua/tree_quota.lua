-- Makes a directory tree's missing directories and sets the last one's directory
-- quota: a tree-layout volume's own directory, whose quota its `--subdir` mount
-- shows as the volume's size. Run again with the same path it only sets the quota,
-- which is how a volume grows; the usage counters are never reset.
--
-- ARGV: now (unix seconds), max bytes, max inodes (0: no limit), m, m path components.
-- Returns the directory's inode.

local now = tonumber(ARGV[1])
local max_space = tonumber(ARGV[2])
local max_inodes = tonumber(ARGV[3])
local m = tonumber(ARGV[4])
if m < 1 then return redis.error_reply('KELP_BAD_DESTINATION') end

local dir, first_missing = 1, nil
for i = 1, m do
  local child = lookup(dir, ARGV[4 + i])
  if not child then first_missing = i break end
  if not is_dir(child) then return redis.error_reply('KELP_NOT_A_DIRECTORY') end
  dir = child
end
if first_missing then
  local take = take_inodes(m - first_missing + 1)
  for i = first_missing, m do
    local ino = take()
    mkdir(dir, ARGV[4 + i], ino, now)
    dir = ino
  end
  account()
end
redis.call('HSET', 'dirQuota', num(dir), be_put(max_space, 8) .. be_put(max_inodes, 8))
redis.call('HSETNX', 'dirQuotaUsedSpace', num(dir), '0')
redis.call('HSETNX', 'dirQuotaUsedInodes', num(dir), '0')
return num(dir)
