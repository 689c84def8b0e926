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
local path = {}
for i = 1, m do path[i] = ARGV[4 + i] end

-- Volumes made before kelp kept the root's statistics lack them: an expansion mends it.
if redis.call('HEXISTS', 'dirUsedSpace', '1') == 0 then dir_stat_calc(1) end
local dir, first_missing = walk(path, m)
if not dir then return redis.error_reply(first_missing) end
if first_missing then
  dir = make_dirs(dir, path, first_missing, m, take_inodes(m - first_missing + 1), now)
  account()
end
redis.call('HSET', 'dirQuota', num(dir), be_put(max_space, 8) .. be_put(max_inodes, 8))
redis.call('HSETNX', 'dirQuotaUsedSpace', num(dir), '0')
redis.call('HSETNX', 'dirQuotaUsedInodes', num(dir), '0')
return num(dir)
