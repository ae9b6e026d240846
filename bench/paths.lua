-- wrk script: requests the paths listed in a file (one a line), in turn, each
-- thread starting at its own offset. Usage: wrk -s bench/paths.lua URL -- FILE
local threads = 0

function setup(thread)
  thread:set("offset", threads)
  threads = threads + 1
end

local paths, i = {}, 0

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then paths[#paths + 1] = line end
  end
  i = (offset or 0) * 7919 % #paths
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
